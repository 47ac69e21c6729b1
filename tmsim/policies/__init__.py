"""Policies: the protocol, specs, and the baseline policies (constant, rules, plateau, random, oracle)."""
from .base import KINDS, Policy, PolicySpec, decide_batch, find_specs, load_spec, make_policy
from .baselines import ConstantPolicy, PlateauPolicy, RandomPolicy, RulesPolicy, SequencePolicy
from .oracle import OraclePolicy

__all__ = ["KINDS", "ConstantPolicy", "OraclePolicy", "PlateauPolicy", "Policy", "PolicySpec", "RandomPolicy",
           "RulesPolicy", "SequencePolicy", "decide_batch", "find_specs", "load_spec", "make_policy"]
