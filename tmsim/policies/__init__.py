"""Policies: the protocol, specs, the kinds registry, the baselines, the oracle and the policy-check runner."""
from .baselines import ConstantPolicy, PlateauPolicy, RandomPolicy, RulesPolicy, SequencePolicy
from .kinds import KINDS, kind_names, make_policy, register_kind
from .oracle import OraclePolicy
from .lookup import LookupPolicy
from .protocol import BatchPolicy, Policy, decide_batch, is_upper_bound, model_stats, trained_on
from .spec import PolicySpec, find_specs, load_spec

__all__ = ["KINDS", "BatchPolicy", "ConstantPolicy", "LookupPolicy", "OraclePolicy", "PlateauPolicy", "Policy", "PolicySpec",
           "RandomPolicy", "RulesPolicy", "SequencePolicy", "decide_batch", "find_specs", "is_upper_bound",
           "kind_names", "load_spec", "make_policy", "model_stats", "register_kind", "trained_on"]
