"""Does a policy read the run? Its score against its score on another run's telemetry.

A policy that scores well because it recognises the recipe (the task, the epoch, the hyperparameters in force) makes
the same decisions whatever the run's curves say. This module measures that for any policy, of any kind, without
looking inside it: every policy is rolled out a second time with each snapshot's *telemetry history* (losses,
accuracies, gradient norms, update ratios, returns) swapped for that of a **donor**: another root of the same task and
the same recipe bucket (the nearest recipe of another seed or scenario family, in the blind lookup's coordinates:
log learning rate, log weight decay, dropout, log loss weight), at the same epochs, along the same actions where its
tree recorded them. Everything a recipe reader sees stays the run's own: the task, the epoch, the hyperparameter
columns of every history row, the past actions, the menu. The outcome of each decision is still the real run's.

``reads_run_delta_pct`` is the row's score (the median over roots of the expected change of final validation loss
against doing nothing) on swapped telemetry minus its real score, in points: positive when the policy does worse on
someone else's curves (it reads the run, and the run matters), zero when its decisions do not depend on the
telemetry at all. ``reads_run_p`` tests the per-root differences (swapped minus real, each the mean over the root's
replicates): a two-sided sign-flip permutation test of their signed-rank statistic (under the null that the
telemetry is irrelevant, each root's difference is as likely to have either sign); exactly 1 when no root's outcome
changed. ``reads_run_changed_share`` is the share of rollouts whose decisions changed under the swap.

Example
-------
>>> import numpy as np
>>> reads_run_test([np.zeros(3), np.zeros(2)], [np.zeros(3), np.zeros(2)])
(0.0, 1.0)
>>> d, p = reads_run_test([np.zeros(2)] * 12, [np.full(2, 5.0 + i) for i in range(12)])
>>> d, p < 0.01
(10.5, True)
"""
from __future__ import annotations

import random

import numpy as np
from scipy.stats import rankdata

from ..core.decision import RunInfo, build_snapshot
from ..core.snapshot import EpochView, Snapshot
from ..policies.lookup import _coords  # the blind lookup's recipe coordinates: one bucket rule for both

#: The fields of a history row that are telemetry (swapped); every other field (the epoch, the knobs in force) stays.
TELEMETRY = ("train_loss", "val_loss", "train_acc", "val_acc", "grad_norm", "update_ratio", "ep_return",
             "ep_return_std", "ep_len", "val_return", "entropy", "approx_kl", "clip_fraction", "explained_variance",
             "safety_cost", "safety_budget")
#: Sign flips drawn for the permutation test.
N_PERM = 10_000
#: Donor candidates: the nearest recipes of another group of the same task; one is drawn per root.
NEAREST = 3


def donors(index, roots: list[str], seed: int = 0) -> dict[str, str]:
    """{root: donor root}: for every root (one replicate of a group), a root of another group (seed or scenario) of
    the same task, run length and cadence, among the ``NEAREST`` nearest initial recipes, drawn with a fixed seed;
    the donor replicate is the root's own replicate where the donor has it. Roots with no candidate are absent."""
    meta = index.meta
    by_group: dict[tuple, dict[int, str]] = {}
    for r in index.roots:
        by_group.setdefault(meta[r]["group"], {})[meta[r]["replicate"]] = r
    out = {}
    for r in roots:
        m = meta[r]
        q = _coords(m["hp_init"])
        cands = []
        for g, reps in by_group.items():
            first = meta[next(iter(reps.values()))]
            if g == m["group"] or first["task"] != m["task"] or first["max_epochs"] != m["max_epochs"] \
                    or first["decide_every"] != m["decide_every"]:
                continue
            dist = sum((a - b) ** 2 for a, b in zip(_coords(first["hp_init"]), q))
            cands.append((dist, g))
        if not cands:
            continue
        cands.sort(key=lambda c: (c[0], repr(c[1])))
        rng = random.Random(f"{seed}/{m['group']}")
        g = cands[rng.randrange(min(NEAREST, len(cands)))][1]
        reps = by_group[g]
        out[r] = reps.get(m["replicate"], reps[min(reps)])
    return out


def _root_of(index, run_id: str) -> str | None:
    rid = run_id[:-4] if run_id.endswith("~sim") else run_id
    m = index.meta.get(rid)
    return None if m is None else m["root_run_id"] or rid


class SwappedTelemetry:
    """A policy wrapper: each snapshot it passes on carries the donor's telemetry history (see the module docs).
    Everything else (``policy_id``, ``trained_on``, ``close``, ...) is the wrapped policy's. ``swapped`` and
    ``unswapped`` count the snapshots it could and could not swap (a donor that diverged before that epoch)."""

    def __init__(self, policy, index, donor_of: dict[str, str], bounds):
        self._policy, self._index, self._donor_of, self._bounds = policy, index, donor_of, bounds
        self.swapped = self.unswapped = 0

    def __getattr__(self, name):
        return getattr(self._policy, name)

    def _donor_rows(self, donor: str, chain: dict[int, str], d: int) -> dict[int, dict] | None:
        node, every = donor, self._index.meta[donor]["decide_every"]
        for e in range(every, d, every):
            a = chain.get(e, "continue")
            if a != "continue":
                nxt = self._index.children.get(node, {}).get((e, a))
                if nxt is None:
                    break  # the donor's tree does not hold that action: its own path from here
                node = nxt
        rows = self._index[node]
        if all(e in rows for e in range(d + 1)):
            return rows
        rows = self._index[donor]  # the donor's do-nothing run
        return rows if all(e in rows for e in range(d + 1)) else None

    def swap(self, snap: Snapshot) -> Snapshot:
        """``snap`` with the donor's telemetry (``snap`` itself when there is no donor for its root)."""
        root = _root_of(self._index, snap.run_id)
        donor = self._donor_of.get(root) if root else None
        chain = {p.epoch: p.action for p in snap.decisions}
        rows = self._donor_rows(donor, chain, snap.epoch) if donor else None
        if rows is None:
            self.unswapped += 1
            return snap
        views = []
        for v in snap.history:
            dv = EpochView.from_row(rows[v.epoch])
            views.append(v._replace(**{k: getattr(dv, k) for k in TELEMETRY}))
        m = self._index.meta[root]
        run = RunInfo(snap.run_id, snap.task, snap.decide_every, snap.max_epochs, m["n_losses"])
        self.swapped += 1
        return build_snapshot(run, views, chain, snap.epoch, self._bounds).with_run_key(snap.run_key)

    def decide(self, snapshot: Snapshot):
        return self._policy.decide(self.swap(snapshot))

    def decide_batch(self, snapshots: list[Snapshot]):
        swapped = [self.swap(s) for s in snapshots]
        batch = getattr(self._policy, "decide_batch", None)
        return batch(swapped) if callable(batch) else [self._policy.decide(s) for s in swapped]


def reads_run_test(real: list[np.ndarray], swapped: list[np.ndarray], seed: int = 0) -> tuple[float, float]:
    """(the row's score on swapped telemetry minus its score, two-sided p-value). ``real`` and ``swapped`` hold, per
    root, the changes (% of final val loss vs doing nothing) of its replicates; a score is the median over roots of
    the replicate mean, as on the board. The p-value is a sign-flip permutation test of the Wilcoxon signed-rank
    statistic of the per-root differences (ranks, so one diverged root cannot swamp the rest); 1 when no root
    changed."""
    a_m, b_m = [], []
    for a, b in zip(real, swapped):
        a, b = np.asarray(a, float), np.asarray(b, float)
        if len(a) and len(b) and np.isfinite(a).any() and np.isfinite(b).any():
            a_m.append(float(np.nanmean(a)))
            b_m.append(float(np.nanmean(b)))
    if not a_m:
        return 0.0, 1.0
    d = np.asarray(b_m) - np.asarray(a_m)
    d = d[np.abs(d) > 1e-9]
    delta = float(np.median(b_m) - np.median(a_m))
    if not len(d):
        return 0.0, 1.0
    ranks = rankdata(np.abs(d))  # ties share their mean rank
    obs = float((np.sign(d) * ranks).sum())
    rng = np.random.default_rng(seed)
    signs = rng.choice([-1.0, 1.0], size=(N_PERM, len(d)))
    null = np.abs((signs * ranks).sum(axis=1))
    p = (1 + int((null >= abs(obs) - 1e-9).sum())) / (N_PERM + 1)
    return delta, float(p)


def changed_share(real: list, swapped: list) -> float:
    """The share of rollouts (paired by root) whose decision sequence differs under the swap."""
    by_root = {o.root: [d["action"] for d in o.decisions] for o in real}
    pairs = [(by_root.get(o.root), [d["action"] for d in o.decisions]) for o in swapped if o.root in by_root]
    return sum(a != b for a, b in pairs) / len(pairs) if pairs else 0.0
