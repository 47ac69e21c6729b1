"""The counterfactual simulator: exact replay on recorded branches, the learned surrogate beyond them.

A rollout starts at a recorded root with the root's epochs up to the first decision. At each decision epoch the
policy sees the snapshot, the validator turns its proposal into an action, and:

- if the rollout is still on the recorded tree and the tree holds that action there (the same action name *and*
  the same hyperparameters, so a clamped value is not mistaken for the recorded one), the next segment is the
  real recording (**replayed**); a branch recorded with the exact value applied (``exact_action``, as
  ``tmsim evaluate`` records a ``set_*`` value or a clamped step) counts too;
- otherwise the surrogate predicts the next segment (**surrogate**), and the rollout stays on the surrogate;
- ``stop`` ends the rollout at that epoch.

Every simulated epoch row carries its ``source``; every rollout its replayed share. Rollouts of all roots advance
together, one decision step at a time: the policy's batched form is called once per step and the surrogate
predicts all off-tree segments of a step in one call.

A diverged run's final validation loss counts as ``DIVERGE_FACTOR`` times its initial validation loss (the
threshold it crossed), the same in replay and in truth, so scores stay finite and comparable.

Example
-------
>>> from tmsim.traces import load_library
>>> from tmsim.policies import RulesPolicy
>>> sim = Simulator(load_library("traces"))               # doctest: +SKIP
>>> rollouts = sim.rollout(RulesPolicy())                 # doctest: +SKIP
>>> rollouts[0].replayed_share                            # doctest: +SKIP
1.0
"""
from __future__ import annotations

import bisect
import gc
import math
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core.actions import Bounds, ValidatedAction, validate
from ..core.decision import RunInfo, build_snapshot, call_policy_batch, run_key
from ..core.hparams import Hyperparams
from ..core.menu import ACTION_TABLE, apply_action
from ..core.snapshot import EpochView
from ..core.outcome import final_val_loss
from ..traces.format import Library
from ..traces.index import TreeIndex
from .surrogate import Surrogate, action_features, horizon_features, run_context, state_features


@dataclass
class Rollout:
    """One policy's simulated run from one root."""

    root: str
    task: str
    scenario: str
    seed: int
    policy_id: str
    max_epochs: int = 0
    epochs: list[dict] = field(default_factory=list)
    views: list = field(default_factory=list)  # the epochs as a policy sees them (EpochView), made once per epoch
    decisions: list[dict] = field(default_factory=list)
    node: str | None = None  # the recorded run the rollout is on (None once off the tree)
    hparams: Hyperparams | None = None
    chain: dict[int, str] = field(default_factory=dict)
    done: bool = False
    diverged: bool = False
    stopped_at: int | None = None
    surrogate_segments: int = 0
    band: tuple[float, float] | None = None
    truncated: bool = False  # left the recorded tree with ``on_off_tree="truncate"``: no final value
    p_diverged: float = 0.0  # the surrogate's probability that the run diverged along the way (0 when replayed)
    run_key: str | None = None  # the key its snapshots carry (``Snapshot.run_key``): one per rollout

    @property
    def final_val_loss(self) -> float:
        """The final validation loss; a diverged run scores the divergence penalty (``DIVERGE_FACTOR`` times its
        initial validation loss). The surrogate calls a segment diverged when its probability reaches one half;
        ``p_diverged`` keeps the accumulated probability for safety scores."""
        return final_val_loss(self.epochs, self.diverged)

    @property
    def best_val_loss(self) -> float:
        """The lowest finite validation loss the run reached (epoch 0 included): what restoring the best checkpoint
        at the end keeps. A diverged run keeps its best before the divergence."""
        vals = [r["val_loss"] for r in self.epochs if r["val_loss"] is not None and math.isfinite(r["val_loss"])]
        return min(vals) if vals else math.inf

    @property
    def trained_epochs(self) -> int:
        """Epochs trained (epoch 0, the evaluation before training, not counted): the run's compute in epochs. A
        stopped run ends at its stop epoch, a diverged one at the divergence (the recorder stops there too)."""
        return sum(1 for r in self.epochs if r["epoch"] > 0)

    def train_seconds(self, surrogate_epoch_s: float | None = None) -> float:
        """Recorded wall-clock seconds of the epochs trained (``wall_time_s``: training plus evaluation); a
        surrogate epoch, which has no recorded time, counts ``surrogate_epoch_s`` (e.g. the task's mean recorded
        epoch time; 0 when not given)."""
        total = 0.0
        for r in self.epochs:
            if r["epoch"] > 0:
                w = r.get("wall_time_s")
                total += w if w is not None and math.isfinite(w) else (surrogate_epoch_s or 0.0)
        return total

    @property
    def replayed_share(self) -> float:
        trained = [r for r in self.epochs if r["epoch"] > 0]
        return sum(r["source"] == "replayed" for r in trained) / len(trained) if trained else 1.0

    @property
    def epochs_saved(self) -> int:
        """Epochs not trained because the policy stopped the run."""
        return self.max_epochs - self.stopped_at if self.stopped_at is not None else 0

    @property
    def interventions(self) -> int:
        return sum(1 for d in self.decisions if d["action"] != "continue")

    @property
    def off_tree(self) -> bool:
        return self.node is None

    def final_epoch(self) -> int:
        return self.epochs[-1]["epoch"]


class Simulator:
    """Replay on recorded branches, surrogate beyond them.

    ``replay=False`` hides the trees: only each root's first segment (up to the first decision) is read from the
    library and everything after it comes from the surrogate (used to measure fidelity on held-out trees).
    ``on_off_tree="truncate"`` ends a rollout that leaves the recorded tree instead of predicting it, and marks it
    ``truncated`` (exact replay only, as the truth of a fidelity measurement).
    """

    def __init__(self, library: Library | TreeIndex, surrogate: Surrogate | None = None, bounds: Bounds | None = None,
                 replay: bool = True, on_off_tree: str = "surrogate"):
        if on_off_tree not in ("surrogate", "truncate"):
            raise ValueError("on_off_tree must be 'surrogate' or 'truncate'")
        self.on_off_tree = on_off_tree
        self.index = library if isinstance(library, TreeIndex) else TreeIndex(library)
        self.surrogate = surrogate
        self.bounds = bounds or Bounds()
        self.replay = replay
        self._snap_cache: dict[tuple[str, int], Any] = {}
        self._calls = 0  # rollout calls so far (part of each rollout's run key)
        self._contexts: dict[str, Any] = {}  # root -> the surrogate's RunContext

    def roots(self, tasks=None, scenarios=None, seeds=None) -> list[str]:
        out = []
        for r in self.index.roots:
            m = self.index.meta[r]
            if (tasks is None or m["task"] in tasks) and (scenarios is None or m["scenario"] in scenarios) \
                    and (seeds is None or m["seed"] in seeds):
                out.append(r)
        return out

    # --- the rollout loop -------------------------------------------------------------------------------------
    def rollout(self, policy, roots: list[str] | None = None, timeout: float | None = None) -> list[Rollout]:
        """Roll ``policy`` out from every root (default: all roots of the library); returns one ``Rollout`` each."""
        # The library's index is hundreds of thousands of long-lived objects; a cyclic collection walks all of them,
        # and the rollout's many small snapshots trigger several (a third to half of a cold rollout's time, measured
        # by bench/test_bench_simulator.py). What a rollout allocates is freed by reference counting, so the cyclic
        # collector is paused for the call and restored after it, as it was.
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return self._rollout(policy, roots, timeout)
        finally:
            if was_enabled:
                gc.enable()

    def _rollout(self, policy, roots: list[str] | None, timeout: float | None) -> list[Rollout]:
        roots = self.roots() if roots is None else roots
        outs = [self._start(policy, r) for r in roots]
        # one key per rollout of this call: a policy that keeps per-run state finds it again at each decision of the
        # rollout, and a second call (another policy, or the same one again) starts from fresh keys
        self._calls += 1
        for i, o in enumerate(outs):
            o.run_key = run_key("rollout", id(self), self._calls, i, o.root)
        step = 1
        meta = self.index.meta
        while True:
            active = [o for o in outs if not o.done]
            if not active:
                return outs
            due = []
            for o in active:
                m, e = meta[o.root], o.epochs[-1]["epoch"]  # the rollout's final epoch
                if e == step * m["decide_every"] and e < m["max_epochs"]:
                    due.append(o)
            if due:
                self._decide(policy, due, timeout)
            self._advance([o for o in active if not o.done], step)
            step += 1

    def _start(self, policy, root: str) -> Rollout:
        m = self.index.meta[root]
        rows = self.index[root]
        first = m["decide_every"]
        o = Rollout(root, m["task"], m["scenario"], m["seed"], policy.policy_id, m["max_epochs"], node=root, hparams=m["hp_init"])
        last = min(first, m["max_epochs"])
        if not self._replay_segment(o, root, 0, last):
            for e in range(0, last + 1):
                if e not in rows:
                    break
                _push(o, *self.index.replayed(rows[e]))
                if rows[e]["diverged"]:
                    o.diverged = o.done = True
                    break
        if not self.replay:
            o.node = None
        return o

    def _replay_segment(self, o: Rollout, rid: str, lo: int, hi: int) -> bool:
        """Append the recorded epochs ``lo``..``hi`` of run ``rid`` to ``o`` (up to and including the first that
        diverged, which ends the rollout) when the run holds every one of them; False (nothing appended) when it
        does not, for the caller's epoch-by-epoch path."""
        outs, views, diverged = self.index.replayed_run(rid)
        if hi >= len(outs) or lo > hi:
            return False
        i = bisect.bisect_left(diverged, lo)
        end = diverged[i] if i < len(diverged) and diverged[i] <= hi else None
        stop = hi + 1 if end is None else end + 1
        o.epochs.extend(outs[lo:stop])
        o.views.extend(views[lo:stop])
        if end is not None:
            o.diverged = o.done = True
        return True

    def _snapshot_for(self, o: Rollout, d: int):
        m = self.index.meta[o.root]
        key = (o.node, d)
        if o.node is not None and key in self._snap_cache:
            return self._snap_cache[key]
        # the snapshot carries the rollout's key from the start (a later rollout reusing it gets a twin with its own)
        run = RunInfo(o.node or f"{o.root}~sim", m["task"], m["decide_every"], m["max_epochs"], m["n_losses"], o.run_key)
        snap = build_snapshot(run, o.views, o.chain, d, self.bounds)
        if o.node is not None:
            self._snap_cache[key] = snap
        return snap

    def _decide(self, policy, due: list[Rollout], timeout: float | None) -> None:
        snaps = [self._snapshot_for(o, o.epochs[-1]["epoch"]).with_run_key(o.run_key) for o in due]
        raws, lat = call_policy_batch(policy, snaps, timeout)
        for o, snap, raw, ms in zip(due, snaps, raws, lat):
            act, violations = validate(raw, snap, self.bounds)
            d = snap.epoch
            # the snapshot itself is kept (its hash is computed only when an audit asks for it)
            o.decisions.append({"epoch": d, "action": act.action, "violations": violations, "source": act.source,
                                "latency_ms": ms, "snapshot": snap, "applied": act})
            o.chain[d] = act.action if act.intervenes else "continue"
            self._apply(o, act, d, snap.hparams)

    def _apply(self, o: Rollout, act: ValidatedAction, d: int, seen: Hyperparams | None = None) -> None:
        if act.stop:
            o.stopped_at, o.done = d, True
            return
        if o.node is not None and act.intervenes:
            kids = self.index.children.get(o.node, {})
            child = kids.get((d, act.action))
            if child is None or not self._recorded_as(child, d, act, seen):
                child = self._exact_branch(kids, d, act)
            o.node = child  # None: off the recorded tree from here on
        o.hparams = act.hparams

    def _exact_branch(self, kids: dict, d: int, act: ValidatedAction) -> str | None:
        """The branch recorded with the exact value ``act`` sets, where the tree holds one (``exact_action``: what
        ``tmsim evaluate`` records for a ``set_*`` value or a clamped step that no menu branch holds), else None. Its
        recorded row after the fork must hold ``act``'s hyperparameters (an RL run's learned ``log_std`` aside: the
        branch's name holds the value it was set to)."""
        name = exact_action(act)
        child = kids.get((d, name)) if name is not None else None
        rec = self.index.hparams_at(child, d + 1) if child is not None else None
        if rec is None:
            return None
        same = rec == act.hparams if rec.log_std is None else rec.with_(log_std=None) == act.hparams.with_(log_std=None)
        return child if same else None

    def _recorded_as(self, child: str, d: int, act: ValidatedAction, seen: Hyperparams | None) -> bool:
        """Whether the recorded branch ``child`` trained the hyperparameters ``act`` applies at epoch ``d``. The
        recorded row after the fork holds the knobs in force; an RL run's ``log_std`` is learned, so that row holds
        it after an epoch of learning: there the action must be the menu action itself, unclamped, applied to the
        values the policy saw (as the recorder applied it), and every other knob must match."""
        rec = self.index.hparams_at(child, d + 1)
        if rec.log_std is None or seen is None:
            return rec == act.hparams
        return (rec.with_(log_std=None) == act.hparams.with_(log_std=None)
                and act.action in ACTION_TABLE and not ACTION_TABLE[act.action].is_set
                and apply_action(seen, act.action) == act.hparams)

    def _advance(self, active: list[Rollout], step: int) -> None:
        """Extend every active rollout to its next decision epoch (or the end): replay or surrogate."""
        need_model = []
        meta = self.index.meta
        for o in active:
            m = meta[o.root]
            d = o.epochs[-1]["epoch"]  # the rollout's final epoch
            nxt = min((d // m["decide_every"] + 1) * m["decide_every"], m["max_epochs"])
            if d >= m["max_epochs"]:
                o.done = True
                continue
            if o.node is not None:
                if self._replay_segment(o, o.node, d + 1, nxt):
                    if not o.done and o.epochs[-1]["epoch"] >= m["max_epochs"]:
                        o.done = True
                    continue
                rows = self.index[o.node]
                for e in range(d + 1, nxt + 1):
                    r = rows.get(e)
                    if r is None:  # the recording ends early only when it diverged
                        o.diverged = o.done = True
                        break
                    _push(o, *self.index.replayed(r))
                    if r["diverged"]:
                        o.diverged = o.done = True
                        break
            else:
                need_model.append((o, d, nxt))
            if not o.done and o.final_epoch() >= m["max_epochs"]:
                o.done = True
        if need_model:
            self._predict(need_model)

    def _predict(self, items: list[tuple[Rollout, int, int]]) -> None:
        if self.on_off_tree == "truncate":
            for o, _, _ in items:
                o.truncated = o.done = True
            return
        if self.surrogate is None:
            raise ValueError("a rollout left the recorded tree and no surrogate is loaded (run `tmsim surrogate fit`)")
        X, Xs, owners = [], [], []
        for i, (o, d, nxt) in enumerate(items):
            m = self.index.meta[o.root]
            prev_hp = self._hp_in_force(o)
            ctx = self._contexts.get(o.root) or self._contexts.setdefault(o.root, run_context(m))
            sf = state_features(o.epochs, prev_hp, ctx)
            af = action_features(prev_hp, o.hparams)
            for k in range(1, nxt - d + 1):
                X.append(sf + af + horizon_features(d, k, ctx))
                owners.append((i, k))
            Xs.append(sf + af + horizon_features(d, nxt - d, ctx))
        X = np.asarray(X, float)
        Y = self.surrogate.predict(X)
        # the band grows with the surrogate segments this rollout already went through (Surrogate.band)
        q = self.surrogate.band(X, np.asarray([items[i][0].surrogate_segments for i, _ in owners], int))
        p_div = self.surrogate.p_diverge(np.asarray(Xs, float))
        base = {i: dict(o.epochs[-1]) for i, (o, _, _) in enumerate(items)}
        for (i, k), y, (qlo, qhi) in zip(owners, Y, q):
            o, d, nxt = items[i]
            b = base[i]
            hp = o.hparams
            val = b["val_loss"] * math.exp(y[0])
            _push(o, {
                "epoch": d + k, "train_loss": b["train_loss"] * math.exp(y[1]), "val_loss": val,
                "train_acc": _clip01(b["train_acc"], y[3]), "val_acc": _clip01(b["val_acc"], y[2]),
                "grad_norm": None, "update_ratio": None, "lr": hp.lr, "weight_decay": hp.weight_decay,
                "dropout": hp.dropout, "aux_loss_weight": hp.aux_loss_weight, "diverged": False, "source": "surrogate",
                "val_lo": b["val_loss"] * math.exp(y[0] + qlo), "val_hi": b["val_loss"] * math.exp(y[0] + qhi),
            })
        for i, (o, d, nxt) in enumerate(items):
            o.surrogate_segments += 1
            o.p_diverged = 1 - (1 - o.p_diverged) * (1 - float(p_div[i]))
            if p_div[i] >= 0.5:
                o.epochs[-1]["diverged"] = True
                o.diverged = o.done = True
            last = o.epochs[-1]
            # The band of the segment's last epoch already spans every surrogate segment of this rollout.
            o.band = (math.log(last["val_lo"] / last["val_loss"]), math.log(last["val_hi"] / last["val_loss"]))

    def _hp_in_force(self, o: Rollout) -> Hyperparams:
        """The hyperparameters of the last epoch trained (before the action just validated)."""
        return Hyperparams.from_row(o.epochs[-1])


def exact_action(act: ValidatedAction) -> str | None:
    """The branch action that records ``act`` with its exact value: ``ACTION=VALUE``, VALUE the value ``act`` set its
    action's knob to, as ``repr`` writes the float (so ``float`` reads it back exactly; ``e+`` is written ``e``, since
    ``+`` separates the steps of a run id). ``set_lr`` to 0.0123 is ``set_lr=0.0123``, ``lr_up`` clamped to the bound
    10 is ``lr_up=10.0``. None for an action that sets no knob (``continue``, ``stop``)."""
    entry = ACTION_TABLE.get(act.action)
    value = getattr(act.hparams, entry.knob) if entry is not None and entry.knob is not None else None
    if value is None or not math.isfinite(value):
        return None
    return f"{act.action}={repr(float(value)).replace('e+', 'e')}"


def _push(o: Rollout, row: dict, view: EpochView | None = None) -> None:
    o.epochs.append(row)
    o.views.append(view or EpochView.from_row(row))


def _clip01(base: float | None, delta: float) -> float | None:
    return None if base is None else min(max(base + float(delta), 0.0), 1.0)


def final_band(o: Rollout) -> tuple[float, float] | None:
    """The 80% band of a rollout's final validation loss (None when it was fully replayed)."""
    if o.band is None or o.diverged:
        return None
    v = o.final_val_loss
    return v * math.exp(o.band[0]), v * math.exp(o.band[1])


def summarize_rollouts(rollouts: list[Rollout]) -> dict:
    """Counts every score needs: decisions, violations by kind, fallbacks, latencies, replayed share."""
    viol, n, fb, lat = Counter(), 0, 0, []
    for o in rollouts:
        for d in o.decisions:
            n += 1
            viol.update(d["violations"])
            fb += d["source"] == "fallback"
            lat.append(d["latency_ms"])
    epochs = sum(len([r for r in o.epochs if r["epoch"] > 0]) for o in rollouts)
    replayed = sum(sum(r["source"] == "replayed" for r in o.epochs if r["epoch"] > 0) for o in rollouts)
    return {"decisions": n, "violations": dict(viol), "fallback_rate": fb / n if n else 0.0,
            "latency_ms_p50": float(np.percentile(lat, 50)) if lat else 0.0,
            "latency_ms_p95": float(np.percentile(lat, 95)) if lat else 0.0,
            "epochs": epochs, "replayed_share": replayed / epochs if epochs else 1.0}
