"""The counterfactual surrogate: what the next segment of a run would look like after an action, learned from trees.

Each training example is one recorded *segment*: the state of a run at a decision epoch ``d`` (its history), the
hyperparameters before and after the action taken there, and the epochs ``d+1 .. d+L`` that followed. Every
recorded branch and every do-nothing continuation in the library is one. Features are relative so they transfer
across tasks and loss scales: epoch fractions, log-ratios of the losses to their initial and best values, the
train/val gap, slopes of log loss, log-ratios of each knob to its initial value and across the action, and the
horizon ``k``. Targets are per-epoch log-ratios to the losses at ``d`` (and accuracy deltas), so a prediction is
"how much better or worse than now".

Models (scikit-learn): an ``ExtraTreesRegressor`` for the per-epoch targets (one row per horizon ``k``) and an
``ExtraTreesClassifier`` for the probability that the segment diverges. The 80% band comes from out-of-fold
residual quantiles per horizon (folds grouped by tree, so the band is calibrated on unseen runs): ``exp(pred + q10)`` to
``exp(pred + q90)`` times the current loss.

Saving uses skops (``.skops``), and loading passes an explicit list of trusted types: a file holding any other
type, or one that is not a skops archive, is refused with a clear error and nothing in it is executed. Beside each
saved file a small JSON sidecar holds its sha256 (and, in the cache, its identity): ``surrogate_for`` uses a cached
file only when it matches, so a file swapped into the cache is refitted, not used.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from ..core.hparams import KNOB_SCALE, RL_KNOBS, SUPERVISED_KNOBS, Hyperparams, is_rl

WINDOW = 5
STATE_NAMES = ["frac_epoch", "log_val_over_init", "log_train_over_init", "log_val_over_best", "log_gap",
               "val_slope", "train_slope", "val_rough", "frac_since_best",
               "log_lr_over_init", "log_wd", "dropout", "log_aux", "log_update_ratio", "log_decay", "opt_adaptive", "opt_momentum",
               "opt_coupled_l2"]
# the role slots (``knob_slots``): for an RL run, log_wd/dlog_wd hold ent_coef, dropout/d_dropout log_std and
# log_aux/dlog_aux clip_range
ACTION_NAMES = ["dlog_lr", "dlog_wd", "d_dropout", "dlog_aux"]
HORIZON_NAMES = ["k_seg", "frac_after"]
FEATURES = STATE_NAMES + ACTION_NAMES + HORIZON_NAMES
TARGETS = ["dlog_val", "dlog_train", "d_val_acc", "d_train_acc"]
_WD_EPS = 1e-5
#: Optimizer families that scale steps per parameter (their LR is a step size, not a gradient multiplier).
ADAPTIVE = frozenset({"adam", "adamw", "nadam", "radam", "adamax", "rmsprop", "adagrad", "adadelta", "adafactor", "lion"})
#: Adaptive families whose weight decay shrinks the weights directly, outside the adaptive step.
DECOUPLED = frozenset({"adamw", "adafactor", "lion"})
#: log10 update-to-weight ratio assumed where a run never recorded one (the median over the bundled library).
_UR_DEFAULT = -1.3


_ACTION_COLS = [len(STATE_NAMES) + i for i in range(len(ACTION_NAMES))]


def _no_action(X: np.ndarray) -> np.ndarray:
    """``X`` with the action features zeroed: the do-nothing counterpart of each row."""
    X = X.copy()
    X[:, _ACTION_COLS] = 0.0
    return X


def _forest_mean(forest, X: np.ndarray) -> np.ndarray:
    """A regression forest's prediction (the mean of its trees), computed tree by tree without the per-call
    overhead of ``forest.predict``; the simulator calls this once per decision step on small batches."""
    X32 = np.ascontiguousarray(X, dtype=np.float32)
    acc = np.zeros((len(X), forest.n_outputs_))
    for est in forest.estimators_:
        acc += est.tree_.predict(X32)[:, :, 0]
    return acc / len(forest.estimators_)


def _forest_proba(forest, X: np.ndarray) -> np.ndarray:
    """A single-output classification forest's ``predict_proba``, tree by tree without joblib's per-call overhead:
    the same sum in the same order as the forest's own on one thread (each tree's class fractions, float64, added to
    zeros, then divided by the tree count), so the same numbers."""
    X32 = np.ascontiguousarray(X, dtype=np.float32)
    k = int(forest.n_classes_)
    acc = np.zeros((len(X), k))
    for est in forest.estimators_:
        acc += est.tree_.predict(X32)[:, :k]
    acc /= len(forest.estimators_)
    return acc


def _fast_classifier(model) -> bool:
    """Whether ``model`` is a fitted single-output forest of plain decision trees (``_forest_proba`` applies)."""
    from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier

    return (type(model) in (RandomForestClassifier, ExtraTreesClassifier) and getattr(model, "n_outputs_", None) == 1
            and bool(getattr(model, "estimators_", None)) and hasattr(model.estimators_[0], "tree_"))


def _predict(model, X: np.ndarray) -> np.ndarray:
    """A fitted regressor's (n, targets) prediction; forests take the fast tree-by-tree path."""
    if hasattr(model, "estimators_") and hasattr(model, "n_outputs_") and hasattr(model.estimators_[0], "tree_"):
        return _forest_mean(model, X)
    out = np.asarray(model.predict(X), float)
    return out.reshape(len(X), -1)


def _serial(model):
    """Predict on one thread: a forest's threaded predict sums trees in a varying order, and the simulator must
    give the same numbers every time (fitting stays parallel: each tree is deterministic on its own)."""
    if model is not None and "n_jobs" in model.get_params():
        model.set_params(n_jobs=1)
    return model


def task_of(tree: str) -> str:
    """The task of a tree, from its root run id (``TASK:scenario:seed...``)."""
    return str(tree).split(":", 1)[0]


class SurrogateError(ValueError):
    """A surrogate file that cannot be used; the message names the file and why."""


def _log(x: float | None, default: float = 0.0) -> float:
    return math.log(x) if x is not None and x > 0 and math.isfinite(x) else default


def _fit_line(ys: list[float]) -> tuple[float, float]:
    """(slope per step, residual standard deviation) of a least-squares line through ``ys``."""
    # the closed form over the steps 0..n-1 (the simulator calls this twice per predicted segment, on a handful of
    # points: plain floats are several times faster than a numpy least-squares solve, and agree with it to rounding)
    n = len(ys)
    if n < 2:
        return 0.0, 0.0
    mx = (n - 1) / 2
    my = sum(ys) / n
    den = sum((i - mx) ** 2 for i in range(n))
    slope = sum((i - mx) * (y - my) for i, y in enumerate(ys)) / den
    if n == 2:
        return float(slope), 0.0
    c = my - slope * mx
    return float(slope), math.sqrt(sum((y - (slope * i + c)) ** 2 for i, y in enumerate(ys)) / n)


@dataclass(frozen=True)
class RunContext:
    """What the surrogate knows of a run besides its history: its initial hyperparameters, length, decision
    cadence, loss count and optimizer (family and settings, as recorded in ``runs``)."""

    hp_init: Hyperparams
    max_epochs: int
    decide_every: int
    n_losses: int = 1
    optimizer: str | None = None
    optimizer_settings: dict | None = None
    steps_per_epoch: float | None = None

    def decay_per_epoch(self, hp: Hyperparams) -> float:
        """log10 of the share of the weights that weight decay removes in one epoch: ``lr x weight_decay x steps``,
        over ``1 - momentum`` for SGD (its steady-state step); 1e-8 floors it."""
        spe = self.steps_per_epoch or 10.0
        mom = 1.0 / (1.0 - min(self.momentum, 0.99)) if self.adaptive == 0.0 else 1.0
        return math.log10(hp.lr * hp.weight_decay * spe * mom + 1e-8)

    @property
    def adaptive(self) -> float:
        """1 for optimizers with per-parameter step sizes (Adam and kin), 0 for SGD, 0.5 when not recorded."""
        if not self.optimizer:
            return 0.5
        return 1.0 if self.optimizer.lower() in ADAPTIVE else 0.0

    @property
    def coupled_l2(self) -> float:
        """1 where weight decay is an L2 term added to the gradient of an adaptive optimizer (``Adam``, ``RMSprop``,
        ...), so the per-parameter step size rescales it and it decays large weights less than ``lr x wd``; 0 where
        it shrinks the weights directly (SGD, where the L2 term is that shrink, and decoupled ``AdamW``-like ones);
        0.5 when not recorded."""
        if not self.optimizer:
            return 0.5
        return 1.0 if self.optimizer.lower() in ADAPTIVE - DECOUPLED else 0.0

    @property
    def momentum(self) -> float:
        """SGD's momentum or Adam's first beta (0.9 when not recorded)."""
        st = self.optimizer_settings or {}
        if isinstance(st.get("momentum"), (int, float)):
            return float(st["momentum"])
        betas = st.get("betas")
        if isinstance(betas, (list, tuple)) and betas and isinstance(betas[0], (int, float)):
            return float(betas[0])
        return 0.0 if (self.optimizer or "").lower() == "sgd" else 0.9


def run_context(meta: dict) -> RunContext:
    """The ``RunContext`` of a ``TreeIndex.meta`` entry."""
    return RunContext(meta["hp_init"], meta["max_epochs"], meta["decide_every"], meta.get("n_losses", 1),
                      meta.get("optimizer"), meta.get("optimizer_settings") or {}, meta.get("steps_per_epoch"))


def _update_ratio(hist: list[dict], lr: float) -> float:
    """log10 of the update-to-weight ratio at the end of ``hist``: the last recorded one, scaled by how the LR has
    changed since (rows the surrogate predicted have none); ``_UR_DEFAULT`` when the run never recorded one."""
    for h in reversed(hist):
        ur = h.get("update_ratio")
        if ur is not None and ur > 0 and math.isfinite(ur):
            scale = lr / h["lr"] if h.get("lr") else 1.0
            return math.log10(ur * scale) if scale > 0 else math.log10(ur)
    return _UR_DEFAULT


def state_features(hist: list[dict], hp: Hyperparams, ctx: RunContext) -> list[float]:
    """Relative features of a run's state at its last epoch (``hist`` rows carry train/val loss and acc).

    Slopes are per decision segment (per-epoch slope x ``decide_every``), so runs deciding at other cadences
    compare; ``val_rough`` is the residual spread of log val loss around its trend over the window (noise,
    oscillation). Accuracy is not a feature: only classification tasks have one, so it would tell tasks apart
    rather than describe a state."""
    first, last = hist[0], hist[-1]
    d = last["epoch"]
    E = ctx.max_epochs
    v0, t0 = first["val_loss"], first["train_loss"]
    vd, td = last["val_loss"], last["train_loss"]
    vals = [(h["epoch"], h["val_loss"]) for h in hist if h["val_loss"] is not None]
    best_epoch, best = min(vals, key=lambda p: p[1])
    win = [h for h in hist[-(WINDOW + 1):] if h["val_loss"] and h["train_loss"]]
    vslope, vrough = _fit_line([_log(h["val_loss"]) for h in win])
    tslope, _ = _fit_line([_log(h["train_loss"]) for h in win])
    hp_init = ctx.hp_init
    return [
        d / E, _log(vd / v0), _log(td / t0), _log(vd / best), _log(vd / td),
        vslope * ctx.decide_every, tslope * ctx.decide_every, vrough, (d - best_epoch) / E,
        _log(hp.lr / hp_init.lr), *_state_knobs(hp),
        _update_ratio(hist, hp.lr), ctx.decay_per_epoch(hp), ctx.adaptive, ctx.momentum,
        ctx.coupled_l2,
    ]


def _state_knobs(hp: Hyperparams) -> list[float]:
    """The knobs in force beyond the LR, by role slot (``knob_slots``): a regulariser on a log10 scale, a noise as it
    is, a secondary weight on a log scale (0 where absent)."""
    _, reg, noise, second = (getattr(hp, k) for k in knob_slots(hp))
    return [math.log10((reg or 0.0) + _WD_EPS), noise or 0.0, _log(second) if second is not None else 0.0]


def horizon_features(d: int, k: int, ctx: RunContext) -> list[float]:
    """The horizon of a predicted epoch ``d + k``: in decision segments and as a fraction of the run."""
    return [k / ctx.decide_every, (d + k) / ctx.max_epochs]


def _knob_change(scale: str, old: float | None, new: float | None) -> float:
    """A knob's change on its own scale (``tmsim.core.hparams.KNOB_SCALE``); 0 where the knob is absent."""
    if scale == "log":
        return _log(new / old) if old and new else 0.0
    if scale == "log10":
        return math.log10(new + _WD_EPS) - math.log10(old + _WD_EPS)
    return new - old


#: The knobs of a run by role: the step size, a regulariser, a noise, a secondary weight. A supervised run's are
#: (lr, weight_decay, dropout, aux_loss_weight); an RL run's (lr, ent_coef, log_std, clip_range), whose scales are the
#: same (log, log10, linear, log). A run has one kind or the other, never both, so one set of four slots serves both.
_ROLES = {False: SUPERVISED_KNOBS, True: RL_KNOBS}


def knob_slots(hp: Hyperparams) -> tuple[str, ...]:
    """The four knobs that fill the role slots for a run with ``hp``."""
    return _ROLES[is_rl(hp)]


def action_features(old: Hyperparams, new: Hyperparams) -> list[float]:
    """The action as the change of every knob on its own scale, one feature per role slot (``knob_slots``)."""
    return [_knob_change(KNOB_SCALE[k], getattr(old, k), getattr(new, k)) for k in knob_slots(old)]


@dataclass
class SegmentData:
    """Training rows: ``X`` (one row per segment epoch), ``Y`` targets, ``E`` the same targets minus those of the
    do-nothing continuation from the same fork (NaN where that pair is missing), ``cont`` (row is a do-nothing
    segment), ``groups`` (tree id, for splitting), and per-segment ``Xs``/``div`` for the divergence classifier.

    The chain of segments a recorded path went through is kept for the multi-segment band: ``seg`` (per row, the
    index of its segment in ``Xs``), and per segment ``prev`` (the segment that led to the state it starts from, -1
    at a root's first decision or where that segment is not in the data) and ``end`` (the row of its last epoch,
    -1 when the segment stopped early)."""

    X: np.ndarray
    Y: np.ndarray
    E: np.ndarray
    cont: np.ndarray
    groups: np.ndarray
    Xs: np.ndarray
    div: np.ndarray
    seg: np.ndarray | None = None
    prev: np.ndarray | None = None
    end: np.ndarray | None = None


#: Losses are floored here before log-ratios are taken: a regression run can fit its training rows exactly.
_LOSS_FLOOR = 1e-8


def _log_ratio(a: float, b: float) -> float:
    return math.log(max(a, _LOSS_FLOOR) / max(b, _LOSS_FLOOR))


def _targets(r: dict, base: dict) -> list[float]:
    return [_log_ratio(r["val_loss"], base["val_loss"]), _log_ratio(r["train_loss"], base["train_loss"]),
            (r["val_acc"] or 0.0) - (base["val_acc"] or 0.0), (r["train_acc"] or 0.0) - (base["train_acc"] or 0.0)]


def segment_data(index, run_filter=None) -> SegmentData:
    """Every recorded segment of a ``tmsim.traces.TreeIndex`` (optionally only trees passing ``run_filter``).

    Branches forked from the same state share their minibatches and dropout masks (the recorder restores the RNGs),
    so the difference between a branch and its do-nothing sibling is the action's effect with little sampling
    noise: ``E`` holds it, and the surrogate learns it separately from the do-nothing trajectory.
    """
    X, Y, E, C, G, Xs, div = [], [], [], [], [], [], []
    seg, end, starts, ends = [], [], [], {}
    for rid, meta in index.meta.items():
        if run_filter is not None and not run_filter(meta):
            continue
        rows = index[rid]
        start = meta["branch_epoch"] or 0
        every, E_ = meta["decide_every"], meta["max_epochs"]
        for d in range(every, E_, every):
            if d <= start or d not in rows or rows[d]["val_loss"] is None:
                continue
            hist = [rows[e] for e in range(0, d + 1)]
            now = hist[-1]
            hp = index.hparams_at(rid, d)
            ctx = run_context(meta)
            sf = state_features(hist, hp, ctx)
            nxt = min(d + every, E_)
            cont = {}
            for k in range(1, nxt - d + 1):
                r = rows.get(d + k)
                if r is None or r["diverged"] or r["val_loss"] is None or r["train_loss"] is None:
                    break
                cont[k] = _targets(r, now)
            targets = [(rid, hp)] + [(c, index.hparams_at(c, d + 1)) for (dd, a), c in index.children.get(rid, {}).items()
                                     if dd == d and a != "stop"]
            for target, hp_new in targets:
                if hp_new is None:
                    continue
                trows = index[target]
                af = action_features(hp, hp_new)
                diverged, last = False, -1
                for k in range(1, nxt - d + 1):
                    r = trows.get(d + k)
                    if r is None or r["diverged"] or r["val_loss"] is None or r["train_loss"] is None:
                        diverged = r is not None and bool(r["diverged"])
                        last = -1
                        break
                    last = len(X)
                    seg.append(len(Xs))
                    y = _targets(r, now)
                    X.append(sf + af + horizon_features(d, k, ctx))
                    Y.append(y)
                    E.append([a - b for a, b in zip(y, cont[k])] if k in cont else [math.nan] * 4)
                    C.append(target == rid)
                    G.append(meta["root_run_id"])
                # a segment starts from the state (run, epoch) that exactly one recorded segment ended in
                starts.append((rid, d))
                ends[(target, nxt)] = len(Xs)
                end.append(last)
                Xs.append(sf + af + horizon_features(d, nxt - d, ctx))
                div.append(diverged)
    prev = [ends.get(st, -1) for st in starts]
    return SegmentData(np.asarray(X, float), np.asarray(Y, float), np.asarray(E, float), np.asarray(C, bool),
                       np.asarray(G), np.asarray(Xs, float), np.asarray(div, bool),
                       np.asarray(seg, int), np.asarray(prev, int), np.asarray(end, int))


@runtime_checkable
class SurrogateModel(Protocol):
    """What the simulator needs of a surrogate; ``Surrogate`` (the forests below) is the default. Feature rows
    follow ``FEATURES``, targets ``TARGETS``."""

    info: dict

    def fit(self, data: "SegmentData") -> "SurrogateModel": ...

    def predict(self, X: np.ndarray) -> np.ndarray: ...

    def band(self, X: np.ndarray, depth=0) -> np.ndarray: ...

    def p_diverge(self, Xs: np.ndarray) -> np.ndarray: ...

    def save(self, path: str | Path) -> Path: ...

    @classmethod
    def load(cls, path: str | Path) -> "SurrogateModel": ...


#: Model classes the surrogate can be built from (``Surrogate(model=...)``); ``MODEL_CLASSES[0]`` is the default,
#: chosen on the fidelity protocol's validation split (docs/simulator.md, "Choosing the surrogate").
MODEL_CLASSES = ("forest", "boosting", "mlp", "knn")
#: The range of the out-of-fold effect calibration factor (``Surrogate._calibrate``).
EFFECT_SCALE = (0.25, 3.0)
#: Horizon bins of the band: a predicted epoch's place in its segment (``k_seg``), in fifths.
BAND_BINS = 5


#: Depths the band is calibrated for: a rollout's first surrogate segment (0) and the ones after it.
BAND_DEPTHS = 4
#: Fewer path residuals than this at a depth and bin, and the band there is extrapolated (``band_quantiles``).
BAND_MIN_ROWS = 50


def _band_bin(k_seg: np.ndarray) -> np.ndarray:
    return np.clip(np.ceil(np.asarray(k_seg, float) * BAND_BINS - 1e-9), 1, BAND_BINS).astype(int)


def band_quantiles(resid: np.ndarray, data: SegmentData) -> np.ndarray:
    """The 80% band, split-conformal along recorded paths: ``q[depth, bin]`` = the 10% and 90% quantiles of a
    path residual, for an epoch in horizon bin ``bin`` of a segment reached after ``depth`` predicted segments.

    ``resid`` holds out-of-fold residuals of ``dlog_val`` per row (recorded minus predicted, each segment predicted
    from its recorded starting state). A rollout's error after ``depth`` segments is the sum of the errors of the
    segments it chained, so the path residual of a row is its own residual plus the end-of-segment residuals of the
    ``depth`` segments that led to its segment on the recorded path (``SegmentData.prev``/``end``). Summing the
    residuals recorded on one path keeps the correlation between a path's segments as it was measured, instead of
    assuming it (adding the widths assumes the errors always have the same sign, adding in quadrature that they
    are independent). A depth and bin with fewer than ``BAND_MIN_ROWS`` residuals (a library of shallow trees)
    takes the band of the depth before plus the one-segment band (the widths add: the cautious rule)."""
    q = np.zeros((BAND_DEPTHS, BAND_BINS + 1, 2))
    b = _band_bin(data.X[:, FEATURES.index("k_seg")])
    path = resid.copy()
    ok = ~np.isnan(path)
    cur = data.seg.copy() if data.seg is not None else None
    for depth in range(BAND_DEPTHS):
        if depth > 0:
            if cur is None:
                ok[:] = False
            else:
                cur = np.where(cur >= 0, data.prev[np.maximum(cur, 0)], -1)  # the segment before
                last = np.where(cur >= 0, data.end[np.maximum(cur, 0)], -1)  # ... and its last row
                ok &= last >= 0
                path = path + np.where(last >= 0, resid[np.maximum(last, 0)], np.nan)
                ok &= ~np.isnan(path)
        for h in range(1, BAND_BINS + 1):
            r = path[(b == h) & ok]
            if len(r) >= BAND_MIN_ROWS or (depth == 0 and len(r)):
                q[depth, h] = np.quantile(r, [0.1, 0.9])
            elif depth == 0:
                q[depth, h] = (-0.1, 0.1)
            else:
                q[depth, h] = q[depth - 1, BAND_BINS] + q[0, h]
        q[depth, 0] = q[depth, 1]
    return q


def band_lookup(q: np.ndarray, bins: np.ndarray, depth=0) -> np.ndarray:
    """Rows of ``q`` (``band_quantiles``) for horizon ``bins`` at ``depth`` (an int or an array); past the last
    calibrated depth, each further segment adds the one-segment band of the last bin (widths add)."""
    bins = np.asarray(bins, int)
    depth = np.broadcast_to(np.asarray(depth, int), bins.shape)
    top = q.shape[0] - 1
    extra = np.maximum(depth - top, 0)[:, None]
    return q[np.minimum(depth, top), bins] + extra * q[0, BAND_BINS]


class Surrogate:
    """Predicts the next segment's per-epoch losses, an 80% band, and the probability of divergence.

    ``model`` picks the regressors of the do-nothing and effect models: ``forest`` (extremely randomised trees,
    the default), ``boosting`` (histogram gradient boosting, one per target), ``mlp`` (a standardised two-layer
    perceptron) or ``knn`` (standardised nearest neighbours). The divergence classifier is a forest in every
    class. ``band_groups`` picks the folds the band is calibrated on: ``task`` (whole tasks held out, when the
    data holds 3 or more; the band then measures the error on a task the model has not seen) or ``tree``.
    """

    def __init__(self, n_estimators: int = 80, min_samples_leaf: int = 5, max_samples: float | None = 0.5, seed: int = 0,
                 model: str = "forest", band_groups: str = "task", calibrate_effects: bool = True,
                 exclude: tuple[str, ...] = ()):
        if model not in MODEL_CLASSES:
            raise ValueError(f"unknown surrogate model {model!r} (one of {', '.join(MODEL_CLASSES)})")
        if band_groups not in ("task", "tree"):
            raise ValueError(f"band_groups must be 'task' or 'tree', not {band_groups!r}")
        self.params = dict(n_estimators=n_estimators, min_samples_leaf=min_samples_leaf, max_samples=max_samples,
                           seed=seed, model=model, band_groups=band_groups,
                           calibrate_effects=calibrate_effects, exclude=list(exclude))
        self.base = self.effect = self.clf = None
        self.q = None  # (BAND_DEPTHS, BAND_BINS + 1, 2): the band per depth and horizon bin (see band_quantiles)
        self.scale = np.ones(len(TARGETS))  # the effect model's out-of-fold stretch per target (see ``_calibrate``)
        self.info: dict = {}
        self.sha256: str | None = None  # the digest of the file this surrogate was saved to or loaded from
        self.identity: str | None = None  # ``surrogate_id`` when it came from ``surrogate_for``

    def _regressor(self, n_estimators: int):
        p = self.params
        if p["model"] == "forest":
            from sklearn.ensemble import ExtraTreesRegressor

            return ExtraTreesRegressor(**self._forest_settings(n_estimators))
        if p["model"] == "boosting":
            from sklearn.ensemble import HistGradientBoostingRegressor
            from sklearn.multioutput import MultiOutputRegressor

            return MultiOutputRegressor(HistGradientBoostingRegressor(
                max_iter=max(2 * n_estimators, 60), learning_rate=0.08, min_samples_leaf=max(p["min_samples_leaf"], 10),
                l2_regularization=1.0, random_state=p["seed"]))
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        if p["model"] == "mlp":
            from sklearn.neural_network import MLPRegressor

            return make_pipeline(StandardScaler(), MLPRegressor(hidden_layer_sizes=(64, 64), alpha=1e-3, max_iter=300,
                                                                early_stopping=True, random_state=p["seed"]))
        from sklearn.neighbors import KNeighborsRegressor

        return make_pipeline(StandardScaler(), KNeighborsRegressor(n_neighbors=25, weights="distance"))

    def _forest_settings(self, n_estimators: int) -> dict:
        """The settings every forest of this surrogate shares (the regressors of ``forest`` and the classifier)."""
        p = self.params
        return dict(n_estimators=n_estimators, min_samples_leaf=p["min_samples_leaf"], random_state=p["seed"], n_jobs=-1,
                    bootstrap=p["max_samples"] is not None, max_samples=p["max_samples"], max_features=0.6)

    def _classifier(self, n_estimators: int):
        from sklearn.ensemble import ExtraTreesClassifier

        return ExtraTreesClassifier(**self._forest_settings(n_estimators))

    def _mask(self, X: np.ndarray) -> np.ndarray:
        """``X`` with the excluded features set to 0 (a constant: the model cannot use them)."""
        if not self.params.get("exclude"):
            return X
        X = X.copy()
        X[:, [FEATURES.index(f) for f in self.params["exclude"]]] = 0.0
        return X

    def fit(self, data: SegmentData, calibrate: bool = True) -> "Surrogate":
        """Fit the do-nothing model on do-nothing segments, the effect model on paired differences, and the
        divergence classifier on all segments; then calibrate the band out of fold."""
        if len(data.X) == 0 or not data.cont.any():
            raise ValueError("no recorded segments to fit the surrogate on")
        if self.params.get("exclude"):
            data = replace(data, X=self._mask(data.X), Xs=self._mask(data.Xs))
        self.base, self.effect, self.clf = self._fit_models(data, self.params["n_estimators"])
        self.q = np.tile([-0.1, 0.1], (BAND_DEPTHS, BAND_BINS + 1, 1)) * np.arange(1, BAND_DEPTHS + 1)[:, None, None]
        tasks = sorted({task_of(g) for g in data.groups.tolist()})
        if calibrate:
            self.q, self.scale = self._calibrate(data, tasks)
        self.info = {"rows": int(len(data.X)), "segments": int(len(data.Xs)), "diverged_segments": int(data.div.sum()),
                     "trees": int(len(set(data.groups.tolist()))),
                     # the tasks it has seen (a root run id starts with its task): the zero-shot warning reads it
                     "tasks": tasks}
        return self

    def _fit_models(self, data: SegmentData, n_estimators: int, classifier: bool = True):
        base, effect = self._regressor(n_estimators), self._regressor(n_estimators)
        base.fit(_no_action(data.X[data.cont]), data.Y[data.cont])
        paired = ~np.isnan(data.E).any(axis=1)
        effect.fit(data.X[paired], data.E[paired])
        clf = None
        if classifier and data.div.any():
            clf = self._classifier(n_estimators).fit(data.Xs, data.div)
        return tuple(_serial(m) for m in (base, effect, clf))

    def _calibrate(self, data: SegmentData, tasks: list[str]) -> np.ndarray:
        """Cross-conformal band: out-of-fold residuals of dlog_val (recorded minus predicted), their 10% and 90%
        quantiles per horizon bin. Folds hold out whole tasks (``band_groups = "task"``, 3 tasks or more) or trees."""
        from sklearn.model_selection import GroupKFold

        by_task = self.params["band_groups"] == "task" and len(tasks) >= 3
        groups = np.array([task_of(g) for g in data.groups]) if by_task else data.groups
        n_folds = min(4, len(set(groups.tolist())))
        resid = np.full(len(data.X), np.nan)
        eff = np.full(data.E.shape, np.nan)
        if n_folds >= 2:
            for tr, te in GroupKFold(n_splits=n_folds).split(data.X, groups=groups):
                sub = SegmentData(data.X[tr], data.Y[tr], data.E[tr], data.cont[tr], groups[tr], data.Xs[:0], data.div[:0])
                if not sub.cont.any():
                    continue
                base, effect, _ = self._fit_models(sub, max(20, self.params["n_estimators"] // 3), classifier=False)
                eff[te] = _predict(effect, data.X[te])
                resid[te] = data.Y[te, 0] - _predict(base, _no_action(data.X[te]))[:, 0]
        # Effects calibrated out of fold: the least-squares factor that maps the predicted effects of action rows
        # (on folds the models did not see: other tasks, with band_groups "task") onto the recorded paired
        # differences, within EFFECT_SCALE. It stretches effects that averaging shrank toward zero and damps those
        # that do not carry over to an unseen task.
        scale = np.ones(len(TARGETS))
        rows = ~np.isnan(eff).any(axis=1) & ~np.isnan(data.E).any(axis=1) & ~data.cont
        for j in range(len(TARGETS)):
            p, y = eff[rows, j], data.E[rows, j]
            if len(p) >= 20 and float(p @ p) > 0:
                scale[j] = float(np.clip((p @ y) / (p @ p), *EFFECT_SCALE))
        if not self.params["calibrate_effects"]:
            scale = np.ones(len(TARGETS))
        resid = resid - eff[:, 0] * scale[0]  # recorded minus (do-nothing + stretched effect)
        return band_quantiles(resid, data), scale

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Targets (``TARGETS`` order) for feature rows ``X``: the do-nothing trajectory plus the action's effect."""
        X = self._mask(X)
        return _predict(self.base, _no_action(X)) + _predict(self.effect, X) * self.scale

    def band(self, X: np.ndarray, depth=0) -> np.ndarray:
        """(n, 2) 80% band of ``dlog_val`` (the low and high quantile of recorded minus predicted) for feature rows
        ``X``, by their place in the segment and ``depth``, the number of surrogate segments the rollout predicted
        before this one (an int or one per row; see ``band_quantiles``)."""
        return band_lookup(self.q, _band_bin(X[:, FEATURES.index("k_seg")]), depth)

    def p_diverge(self, Xs: np.ndarray) -> np.ndarray:
        if self.clf is None or len(Xs) == 0:
            return np.zeros(len(Xs))
        Xm = self._mask(Xs)
        proba = _forest_proba(self.clf, Xm) if _fast_classifier(self.clf) else self.clf.predict_proba(Xm)
        return proba[:, list(self.clf.classes_).index(True)] if True in self.clf.classes_ else np.zeros(len(Xs))

    # --- safe persistence ---------------------------------------------------------------------------------------
    def save(self, path: str | Path, identity: str | None = None) -> Path:
        """Write the surrogate to ``path`` atomically (a temporary file beside it, then a rename; the temporary file
        is removed on any failure, a full disk included), and beside it ``PATH.json`` with the file's sha256 (and
        ``identity``, see ``surrogate_id``). ``self.sha256`` is set to the digest of the written file."""
        import skops.io as sio

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {"format": FORMAT, "params": json.dumps(self.params), "info": json.dumps(self.info),
                 "features": json.dumps(FEATURES), "targets": json.dumps(TARGETS),
                 "base": self.base, "effect": self.effect, "clf": self.clf, "q": self.q,
                 "scale": np.asarray(self.scale, float)}
        data = sio.dumps(state)
        digest = hashlib.sha256(data).hexdigest()
        _write_atomic(path, data)
        _write_atomic(digest_path(path), (json.dumps({"format": DIGEST_FORMAT, "file": path.name, "sha256": digest,
                                                      "identity": identity}, indent=2) + "\n").encode())
        self.sha256 = digest
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Surrogate":
        """Load a saved surrogate, trusting only the types a surrogate is made of. ``sha256`` of the result is the
        digest of the bytes it was loaded from."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise SurrogateError(f"{path}: surrogate file not found (run `tmsim surrogate fit`)") from None
        except OSError as exc:
            raise SurrogateError(f"{path}: cannot be read ({exc})") from None
        return cls.from_bytes(data, str(path))

    @classmethod
    def from_bytes(cls, data: bytes, where: str = "surrogate") -> "Surrogate":
        """``load`` from the file's bytes (read once, so the bytes hashed are the bytes loaded)."""
        import skops.io as sio

        path = where
        try:
            found = set(sio.get_untrusted_types(data=data))
        except Exception as exc:
            raise SurrogateError(f"{path}: not a readable surrogate file ({type(exc).__name__}: {exc})") from None
        untrusted = sorted(t for t in found if t not in TRUSTED_TYPES)
        if untrusted:
            raise SurrogateError(f"{path}: refuses to load unexpected type(s) {untrusted}")
        try:
            state = sio.loads(data, trusted=sorted(found))
        except Exception as exc:
            raise SurrogateError(f"{path}: cannot be loaded ({type(exc).__name__}: {exc})") from None
        from sklearn.ensemble import ExtraTreesClassifier, ExtraTreesRegressor
        from sklearn.multioutput import MultiOutputRegressor
        from sklearn.pipeline import Pipeline

        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise SurrogateError(f"{path}: field 'format' is not {FORMAT!r}")
        regressor = (ExtraTreesRegressor, MultiOutputRegressor, Pipeline)
        expect = {"base": regressor, "effect": regressor, "clf": (ExtraTreesClassifier, type(None)),
                  "q": np.ndarray, "scale": np.ndarray, "params": str, "info": str, "features": str}
        for key, typ in expect.items():
            if key not in state or not isinstance(state[key], typ):
                raise SurrogateError(f"{path}: field {key!r} is missing or of the wrong type")
        if state["q"].ndim != 3 or state["q"].shape[1:] != (BAND_BINS + 1, 2):
            raise SurrogateError(f"{path}: field 'q' is not a band of shape (depths, {BAND_BINS + 1}, 2)")
        if json.loads(state["features"]) != FEATURES:
            raise SurrogateError(f"{path}: field 'features' does not match this tmsim; refit the surrogate")
        try:
            s = cls(**json.loads(state["params"]))
        except (TypeError, ValueError) as exc:
            raise SurrogateError(f"{path}: field 'params' does not match this tmsim ({exc}); refit the surrogate") from None
        s.base, s.effect, s.clf = (_serial(state[k]) for k in ("base", "effect", "clf"))
        s.q, s.info, s.scale = np.asarray(state["q"]), json.loads(state["info"]), np.asarray(state["scale"], float)
        s.sha256 = hashlib.sha256(data).hexdigest()
        return s

    def unseen_tasks(self, tasks) -> list[str]:
        """The ``tasks`` this surrogate was not fitted on (none known when its file predates this record)."""
        if "tasks" not in self.info:
            return []
        return sorted(t for t in set(tasks) if t not in set(self.info["tasks"]))

    def digest(self, path: str | Path) -> str:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()


DIGEST_FORMAT = "tmsim-surrogate-digest-1"
#: The surrogate file format; a file of another format (an older band or feature layout) is refused, and refitted
#: where it sits in the cache.
FORMAT = "tmsim-surrogate-3"


def digest_path(path: str | Path) -> Path:
    """The sidecar ``PATH.json`` that ``Surrogate.save`` writes beside a surrogate file: its sha256 and identity."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def _write_atomic(path: Path, data: bytes) -> None:
    """``data`` to ``path`` through a temporary file that is this process's own (another process writing the same
    cache never touches it) and that is removed on any failure."""
    import os
    import uuid

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


#: The only types a surrogate file may contain (checked before anything is loaded).
TRUSTED_TYPES = {
    "sklearn.ensemble._forest.ExtraTreesRegressor", "sklearn.ensemble._forest.ExtraTreesClassifier",
    "sklearn.tree._classes.ExtraTreeRegressor", "sklearn.tree._classes.ExtraTreeClassifier",
    "sklearn.tree._tree.Tree", "builtins.slice", "numpy.dtype", "numpy.ndarray", "numpy.float64", "numpy.int64",
    "numpy.random.mtrand.RandomState", "numpy.random._mt19937.MT19937", "numpy.random._pickle.__randomstate_ctor",
    "numpy.random._pickle.__bit_generator_ctor",
    # the other model classes (skops trusts scikit-learn's estimators, pipelines and scalers themselves)
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
}


def surrogate_id(library_hash: str, params: dict) -> str:
    """The identity of a surrogate: what it was fitted on and how (fitting is deterministic, so the same inputs give
    the same model). Promotion records carry it, and a cached file is found by it."""
    import sklearn

    from .. import __version__

    blob = json.dumps({"library": library_hash, "params": params, "features": FEATURES, "format": FORMAT,
                       "sklearn": sklearn.__version__, "tmsim": __version__}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def surrogate_for(index, library_hash: str, cache_dir: str | Path, n_estimators: int = 80, seed: int = 0,
                  log=None) -> tuple[Surrogate, str, Path]:
    """``(surrogate, sha256, path)`` for a library: loaded from ``cache_dir`` when a file with the same identity is
    there and matches the digest written beside it at save time, else fitted on every recorded segment and saved
    there. ``sha256`` is the digest of the file actually used (what a promotion record stores); the surrogate's
    ``identity`` attribute holds ``surrogate_id``. A cached file that does not match its digest (swapped or
    damaged) is refitted with a warning (``log``, or the ``tmsim.surrogate`` logger when ``log`` is None)."""
    params = Surrogate(n_estimators=n_estimators, seed=seed).params  # every setting, defaults included
    sid = surrogate_id(library_hash, params)
    path = Path(cache_dir) / f"{sid[:16]}.skops"

    def warn(msg: str) -> None:
        if log:
            log(f"warning: {msg}")
        else:
            logging.getLogger("tmsim.surrogate").warning("tmsim: warning: %s", msg)

    if path.exists():
        try:
            data = path.read_bytes()
            problem = _cache_problem(path, data, sid)
            if problem:
                warn(f"{problem}; refitting")
            else:
                sur = Surrogate.from_bytes(data, str(path))
                sur.identity = sid
                return sur, sur.sha256, path
        except (SurrogateError, OSError) as exc:
            warn(f"{exc}; refitting")
    if log:
        log(f"fitting the surrogate on the library (cached as {path})")
    sur = Surrogate(**params).fit(segment_data(index))
    sur.save(path, identity=sid)
    sur.identity = sid
    return sur, sur.sha256, path


def _cache_problem(path: Path, data: bytes, sid: str) -> str | None:
    """Why a cached surrogate file cannot be trusted as the one saved under identity ``sid`` (None: it can)."""
    side = digest_path(path)
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"{path}: no digest file {side.name} beside it (it was not written by tmsim)"
    except (OSError, ValueError) as exc:
        return f"{side}: not a readable digest file ({exc})"
    if not isinstance(meta, dict) or meta.get("format") != DIGEST_FORMAT:
        return f"{side}: field 'format' is not {DIGEST_FORMAT!r}"
    if meta.get("identity") != sid:
        return f"{side}: field 'identity' does not match the surrogate this library and settings need"
    if meta.get("sha256") != hashlib.sha256(data).hexdigest():
        return f"{path}: its sha256 does not match field 'sha256' of {side.name} (the file was changed after saving)"
    return None
