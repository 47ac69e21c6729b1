"""The oracle: at a recorded node, the action whose recorded subtree reaches the best final validation loss.

It reads the answers off the trace tree, so it is an **upper bound** on what a policy could reach on the recorded
menu, not a policy one could deploy; every report marks it as such (``is_upper_bound = True``). Diverged runs
count as infinitely bad. Ties go to ``continue`` (the cheaper choice). At a node the library does not hold (off the
recorded tree) it has nothing to read and proposes ``continue``.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

from ..actions import Proposal
from ..snapshot import Snapshot


@dataclass
class OraclePolicy:
    library: object
    policy_id: str = "oracle"
    version: str = "1"
    is_upper_bound: bool = True
    _index: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        from ..query import TraceDB

        with TraceDB(self.library) as db:
            finals = db.sql("select run_id, final_val_loss from finals").to_pydict()
            runs = db.sql("select run_id, parent_run_id, branch_epoch, branch_action from runs").to_pydict()
        final = {r: (v if v is not None else math.inf) for r, v in zip(finals["run_id"], finals["final_val_loss"])}
        children: dict[str, list[tuple[int, str, str]]] = defaultdict(list)
        for rid, parent, epoch, action in zip(runs["run_id"], runs["parent_run_id"], runs["branch_epoch"], runs["branch_action"]):
            if parent is not None:
                children[parent].append((epoch, action, rid))
        best: dict[str, float] = {}

        def subtree(rid: str) -> float:
            if rid not in best:
                best[rid] = min([final.get(rid, math.inf)] + [subtree(c) for _, _, c in children.get(rid, ())])
            return best[rid]

        for rid in final:
            subtree(rid)
        self._final, self._children, self._best = final, children, best

    def values(self, run_id: str, epoch: int) -> dict[str, float]:
        """Best recorded final val loss reachable by each action at (run, epoch); empty off the tree."""
        if run_id not in self._final:
            return {}
        kids = self._children.get(run_id, ())
        out = {"continue": min([self._final[run_id]] + [self._best[c] for e, _, c in kids if e > epoch])}
        for e, action, c in kids:
            if e == epoch:
                out[action] = self._best[c]
        return out

    def decide(self, snapshot: Snapshot) -> Proposal:
        vals = self.values(snapshot.run_id, snapshot.epoch)
        if len(vals) <= 1:
            return Proposal(action="continue", reason="no recorded alternatives here")
        action = min(vals, key=lambda a: (vals[a], a != "continue"))
        return Proposal(action=action, reason=f"best recorded final val loss {vals[action]:.4g} (upper bound)")
