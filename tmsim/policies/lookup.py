"""The blind lookup: a reference policy that reads no telemetry at all.

It answers from a table learned on the library's *training* roots (even seeds by default): for every recorded node
of a training root, the action the oracle (best expected outcome over replicates) takes there, keyed by what a
policy can see without looking at the run's curves: the task, the decision epoch and the hyperparameters in force.
At a decision it takes the majority action of the nearest training key of the same task and epoch (distance in
log learning rate, log weight decay, dropout and log loss weight), so it also answers for recipes it has not seen
exactly. If a scenario could be recognised from its recipe alone, this policy would find it; a manager that does
not beat it is not reading the telemetry. It is a reference, not a candidate: it reads recorded answers of its
training roots, and a leaderboard marks the roots it was trained on.
"""
from __future__ import annotations

import math
from collections import Counter, defaultdict

from ..core.actions import Proposal
from ..core.snapshot import Snapshot

_WD_EPS = 1e-5


def _coords(hp) -> tuple[float, ...]:
    """The hyperparameters as a point: log lr, log weight decay, dropout, log loss weight (0 when absent)."""
    return (math.log(hp.lr), math.log(hp.weight_decay + _WD_EPS), hp.dropout,
            math.log(hp.aux_loss_weight) if hp.aux_loss_weight else 0.0)


class LookupPolicy:
    """See the module docs. ``train_seeds``: ``"even"`` or ``"odd"`` (the roots the table is learned on)."""

    needs_library = True

    def __init__(self, library, train_seeds: str = "even", policy_id: str = "blind-lookup", version: str = "1"):
        from ..traces.index import TreeIndex
        from .oracle import OraclePolicy

        if train_seeds not in ("even", "odd"):
            raise TypeError("train_seeds must be 'even' or 'odd'")
        index = library if isinstance(library, TreeIndex) else TreeIndex(library)
        self.policy_id, self.version = policy_id, version
        self.trained_on = {"seeds": train_seeds}
        parity = 0 if train_seeds == "even" else 1
        oracle = OraclePolicy(index)
        votes: dict[tuple, Counter] = defaultdict(Counter)
        for rid, m in index.meta.items():
            if m["seed"] % 2 != parity or m["branch_action"] == "stop" or m["source"] != "recorded":
                continue
            rows = index[rid]
            alive = m["end_epoch"] - (1 if m["status"] == "diverged" else 0)
            for d in range(m["decide_every"], m["max_epochs"], m["decide_every"]):
                if d <= (m["branch_epoch"] or 0) or d > alive or d not in rows:
                    continue
                vals = oracle.values(rid, d)
                if len(vals) > 1:
                    best = min(vals, key=lambda a: (vals[a], a != "continue"))
                    votes[(m["task"], d, _coords(index.hparams_at(rid, d)))][best] += 1
        self._table: dict[tuple, list[tuple[tuple, str]]] = defaultdict(list)
        for (task, d, point), counter in votes.items():
            self._table[(task, d)].append((point, counter.most_common(1)[0][0]))

    def decide(self, snapshot: Snapshot) -> Proposal:
        entries = self._table.get((snapshot.task, snapshot.epoch))
        if not entries:
            return Proposal(action="continue", reason="no training root of this task decides at this epoch")
        q = _coords(snapshot.hparams)
        point, action = min(entries, key=lambda e: sum((a - b) ** 2 for a, b in zip(e[0], q)))
        if snapshot.offered and action not in snapshot.offered:
            action = "continue"
        return Proposal(action=action, reason="majority oracle action at the nearest training recipe (no telemetry read)")

