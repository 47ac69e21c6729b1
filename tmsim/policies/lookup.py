"""The blind lookup: a reference policy that reads no telemetry at all.

It answers from a table learned on the library's *training* roots (even seeds by default, the tasks in
``holdout_tasks`` left out), on the labels ``gbm`` learns (``tmsim.policies.llm.finetune.build_dataset``): for every
recorded node of a training root, the action the oracle (best expected outcome over replicates) takes there,
weighted by its advantage over doing nothing, keyed by what a
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
    """See the module docs. ``train_seeds``: ``"even"`` or ``"odd"`` (the roots the table is learned on);
    ``holdout_tasks``: tasks never learned from (as ``gbm``'s, so the two read the same labels and split)."""

    needs_library = True

    def __init__(self, library, train_seeds: str = "even", holdout_tasks: list[str] | None = None,
                 policy_id: str = "blind-lookup", version: str = "2"):
        from .llm.finetune import build_dataset

        if train_seeds not in ("even", "odd"):
            raise TypeError("train_seeds must be 'even' or 'odd'")
        self.policy_id, self.version = policy_id, version
        self.trained_on = {"seeds": train_seeds, "holdout_tasks": list(holdout_tasks or [])}
        train, _ = build_dataset(library, train_seeds, None, True, holdout_tasks=holdout_tasks)
        votes: dict[tuple, Counter] = defaultdict(Counter)
        for e in train:
            s = e.snapshot
            votes[(s.task, s.epoch, _coords(s.hparams))][e.target] += e.weight
        self._table: dict[tuple, list[tuple[tuple, str]]] = defaultdict(list)
        for (task, d, point), counter in votes.items():
            best = max(sorted(counter), key=lambda a: (counter[a], a == "continue"))
            self._table[(task, d)].append((point, best))
        self.train_examples = len(train)

    def decide(self, snapshot: Snapshot) -> Proposal:
        entries = self._table.get((snapshot.task, snapshot.epoch))
        if not entries:
            return Proposal(action="continue", reason="no training root of this task decides at this epoch")
        q = _coords(snapshot.hparams)
        point, action = min(entries, key=lambda e: sum((a - b) ** 2 for a, b in zip(e[0], q)))
        if snapshot.offered and action not in snapshot.offered:
            action = "continue"
        return Proposal(action=action, reason="majority oracle action at the nearest training recipe (no telemetry read)")
