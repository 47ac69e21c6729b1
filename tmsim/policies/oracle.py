"""The oracle: at a recorded node, the action whose recorded subtree reaches the best final validation loss.

It reads the answers off the trace tree, so it is an **upper bound** on what a policy could reach on the recorded
menu, not a policy one could deploy; every report marks it as such (``is_upper_bound = True``). Runs are scored by
the shared outcome rule (``tmsim.core.outcome``: a diverged run scores the divergence penalty, which is worse than
any run that did not diverge). Ties go to ``continue`` (the cheaper choice). At a node the library does not hold
(off the recorded tree) it has nothing to read and proposes ``continue``.
"""
from __future__ import annotations

from ..core.actions import Proposal
from ..core.snapshot import Snapshot


class OraclePolicy:
    """See the module docs. ``library`` is the ``TreeIndex`` (or ``Library``) whose recorded answers it reads."""

    needs_library = True
    is_upper_bound = True

    def __init__(self, library, policy_id: str = "oracle", version: str = "1"):
        from ..traces.index import TreeIndex

        index = library if isinstance(library, TreeIndex) else TreeIndex(library)
        self.index, self.policy_id, self.version = index, policy_id, version
        self._best: dict[str, float] = {}

    def _subtree(self, rid: str) -> float:
        """The best final val loss recorded in the subtree of ``rid`` (``rid`` itself included)."""
        if rid not in self._best:
            self._best[rid] = min([self.index.final_val_loss(rid)]
                                  + [self._subtree(c) for c in self.index.children.get(rid, {}).values()])
        return self._best[rid]

    def values(self, run_id: str, epoch: int) -> dict[str, float]:
        """Best recorded final val loss reachable by each action at (run, epoch); empty off the tree."""
        if run_id not in self.index.meta:
            return {}
        kids = self.index.children.get(run_id, {})
        out = {"continue": min([self.index.final_val_loss(run_id)] + [self._subtree(c) for (e, _), c in kids.items() if e > epoch])}
        for (e, action), c in kids.items():
            if e == epoch:
                out[action] = self._subtree(c)
        return out

    def decide(self, snapshot: Snapshot) -> Proposal:
        vals = self.values(snapshot.run_id, snapshot.epoch)
        if len(vals) <= 1:
            return Proposal(action="continue", reason="no recorded alternatives here")
        action = min(vals, key=lambda a: (vals[a], a != "continue"))
        return Proposal(action=action, reason=f"best recorded final val loss {vals[action]:.4g} (upper bound)")
