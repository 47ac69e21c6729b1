"""The torch-free data model every stage shares: hyperparameters, the one action table, the snapshot a policy sees,
the proposal and its validator, one decision (snapshot, guarded call, audit row), and the outcome rules.

Nothing here imports torch, DuckDB or scikit-learn, so a policy author, a validator in another service, or the live
hook's promotion check can use it on its own.
"""
from .actions import (FATAL, KNOBS, Answer, VIOLATIONS, Bounds, PolicyFailure, Proposal, ValidatedAction, action_json_schema,
                      offered_actions, parse_proposal, validate)
from .decision import (DEFAULT_TIMEOUT, RunInfo, answer, build_snapshot, call_policy, call_policy_batch, decision_row,
                       guarded, raw_text)
from .hparams import KNOB_SCALE, Hyperparams
from .menu import (ACTION_TABLE, ACTIONS, ALL_ACTIONS, RECORD_MENU, RECORD_MENU_MULTILOSS, SET_ACTIONS, Action,
                   apply_action, changing_actions, record_menu)
from .outcome import DIVERGE_FACTOR, divergence_penalty, final_val_loss, is_diverged
from .snapshot import EpochView, PastDecision, Signals, Snapshot

__all__ = ["DEFAULT_TIMEOUT", "Answer", "answer", "guarded", "ACTIONS", "ACTION_TABLE", "ALL_ACTIONS", "DIVERGE_FACTOR", "FATAL", "KNOBS", "KNOB_SCALE", "RECORD_MENU",
           "RECORD_MENU_MULTILOSS", "SET_ACTIONS", "VIOLATIONS", "Action", "Bounds", "EpochView", "Hyperparams",
           "PastDecision", "PolicyFailure", "Proposal", "RunInfo", "Signals", "Snapshot", "ValidatedAction",
           "action_json_schema", "apply_action", "build_snapshot", "call_policy", "changing_actions", "call_policy_batch",
           "decision_row", "divergence_penalty", "final_val_loss", "is_diverged", "offered_actions",
           "parse_proposal", "raw_text", "record_menu", "validate"]
