"""An example policy for docs/policies.md: act on the train/val gap, using only what the snapshot holds.

Rules, checked in order:

1. no interventions left -> ``continue``;
2. the run is still flagged as overfitting after an earlier ``lr_down`` -> ``weight_decay_up``;
3. the train/val gap is above ``gap_threshold`` and val loss is rising (more than ``rise_threshold`` above its
   best, or a positive slope) -> ``lr_down``;
4. otherwise ``continue``.

An action that is not on offer at this snapshot (for example ``weight_decay_up`` when weight decay is already at its
bound) is never proposed; the policy answers ``continue`` instead, so the validator has nothing to reject.
"""
from __future__ import annotations

from tmsim.core import Proposal
from tmsim.core import Snapshot


class GapPolicy:
    policy_id = "gap"
    version = "1"

    def __init__(self, gap_threshold: float = 0.5, rise_threshold: float = 0.02):
        self.gap_threshold = gap_threshold
        self.rise_threshold = rise_threshold

    def _allowed(self, snapshot: Snapshot, action: str) -> bool:
        return not snapshot.offered or action in snapshot.offered

    def decide(self, snapshot: Snapshot) -> Proposal:
        s = snapshot.signals
        if snapshot.interventions_left == 0:
            return Proposal(action="continue", reason="no interventions left")
        cut_before = any(d.action == "lr_down" for d in snapshot.decisions)
        if s.overfitting and cut_before and self._allowed(snapshot, "weight_decay_up"):
            return Proposal(action="weight_decay_up", reason="still overfitting after an LR cut")
        rising = (s.val_rise is not None and s.val_rise > self.rise_threshold) or (
            s.val_slope is not None and s.val_slope > 0)
        if s.gap is not None and s.gap > self.gap_threshold and rising and self._allowed(snapshot, "lr_down"):
            return Proposal(action="lr_down", reason=f"gap {s.gap:.2f} and val loss rising")
        return Proposal(action="continue", reason="no rule fired")
