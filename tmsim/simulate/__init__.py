"""Simulation: the counterfactual simulator (exact replay on recorded branches) and the learned surrogate beyond them."""
from .simulator import Rollout, Simulator, final_band, summarize_rollouts
from .surrogate import FEATURES, TARGETS, Surrogate, SurrogateError, SurrogateModel, segment_data, surrogate_for

__all__ = ["FEATURES", "Rollout", "Simulator", "Surrogate", "SurrogateError", "SurrogateModel", "TARGETS",
           "final_band", "segment_data", "summarize_rollouts", "surrogate_for"]
