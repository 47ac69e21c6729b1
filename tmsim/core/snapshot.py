"""The ``Snapshot``: everything a policy sees at a decision, and nothing it must not see.

A snapshot holds the run's per-epoch history of *training and validation* telemetry (never test metrics: the
``EpochView`` type has no field for them, and ``from_rows`` drops them), the hyperparameters in force, the epoch and
the budget left, the actions on offer, the run's past decisions with the change measured after each, and signals
computed in code so a small model need not do arithmetic.

Signals are relative, so the same thresholds mean the same thing on a 0.1-loss classifier and a 3.0-loss language
model: slopes are of ``log(loss)`` per epoch (``-0.05`` = falling 5% an epoch), the train/val gap is
``val_loss / train_loss - 1``, rises are relative to the best value so far.

Example
-------
>>> from tmsim.core import EpochView, Hyperparams, Snapshot
>>> rows = [EpochView(epoch=e, train_loss=1 / (e + 1), val_loss=0.6 + 0.05 * abs(e - 2), lr=0.1) for e in range(6)]
>>> s = Snapshot.build("demo", "digits-mlp", rows, Hyperparams(lr=0.1), max_epochs=20, decide_every=5)
>>> s.signals.overfitting
True
"""
from __future__ import annotations

import hashlib
import json
import math
import copy
import operator
from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import Any, Iterable, NamedTuple

from .hparams import Hyperparams, is_rl

#: Epochs of history used for slopes and shown in the prompt table.
WINDOW = 5
#: Signal thresholds (relative; documented in docs/policies.md).
OVERFIT_GAP = 0.25        # val_loss at least 25% above train_loss ...
OVERFIT_RISE = 0.05       # ... and val_loss 5% above its best, or rising while train falls
DIVERGE_RISE = 0.5        # val_loss 50% above its best, or a non-finite loss
PLATEAU_SLOPE = 0.01      # |slope of log val_loss| under 1% an epoch
COLLAPSE_LOG_STD = -1.6   # RL: action noise below std 0.2 (of an action range scaled to [-1, 1]) ...
COLLAPSE_SLOPE = -0.02    # ... while the return shortfall falls by less than 2% an epoch: exploration collapse
UNSAFE_COST = 0.8         # RL: the training episodes' safety cost above 80% of its budget


class EpochView(NamedTuple):
    """One epoch as a policy sees it (no test metrics, by construction). A named tuple: immutable for real, so a
    policy cannot change the history it is shown."""

    epoch: int
    train_loss: float | None = None
    val_loss: float | None = None
    train_acc: float | None = None
    val_acc: float | None = None
    grad_norm: float | None = None
    update_ratio: float | None = None
    lr: float | None = None
    weight_decay: float | None = None
    dropout: float | None = None
    aux_loss_weight: float | None = None
    # reinforcement-learning runs only (None elsewhere): the exploration knobs in force and PPO's telemetry
    ent_coef: float | None = None
    log_std: float | None = None
    clip_range: float | None = None
    ep_return: float | None = None          # mean return of the epoch's training episodes (exploring)
    ep_return_std: float | None = None
    ep_len: float | None = None
    val_return: float | None = None         # mean return of the deterministic policy on the validation episodes
    entropy: float | None = None            # mean policy entropy at the epoch's last update
    approx_kl: float | None = None
    clip_fraction: float | None = None
    explained_variance: float | None = None
    safety_cost: float | None = None        # mean per-episode safety cost of the training episodes
    safety_budget: float | None = None      # the budget it must stay under

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "EpochView":
        """Keep only the fields a policy may see; everything else in ``row`` (test metrics included) is dropped."""
        return cls(*[row.get(k, d) for k, d in _VIEW_DEFAULTS])


_VIEW_FIELDS = EpochView._fields
#: The fields of a supervised run's view; the RL fields enter a snapshot's hash only where a run has them, so a
#: supervised snapshot hashes as it always did.
_SL_FIELDS = EpochView._fields.index("ent_coef")
_VIEW_DEFAULTS = tuple((k, EpochView._field_defaults.get(k)) for k in _VIEW_FIELDS)


def as_views(history: Iterable[EpochView | dict]) -> tuple[EpochView, ...]:
    """``history`` as a tuple of ``EpochView``s (rows made views with ``EpochView.from_row``, views kept as they
    are); a tuple of views is returned as it is."""
    hist = history if type(history) is tuple else tuple(history)
    if len(set(map(type, hist))) <= 1 and (not hist or type(hist[0]) is EpochView):  # views only: nothing to make
        return hist
    return tuple(h if isinstance(h, EpochView) else EpochView.from_row(h) for h in hist)


class PastDecision(NamedTuple):
    """A decision this run already took and what followed: ``val_change`` is the relative change of validation
    loss from the decision to the next decision (or to now)."""

    epoch: int
    action: str
    val_change: float | None


class Signals(NamedTuple):
    """Signals computed in code from the history (see the module docs); an immutable named tuple."""

    gap: float | None
    gap_trend: float | None
    train_slope: float | None
    val_slope: float | None
    best_val_loss: float | None
    best_epoch: int | None
    epochs_since_best: int | None
    val_rise: float | None
    progress: float | None
    overfitting: bool
    diverging: bool
    plateau: bool
    cost_ratio: float | None = None   # RL: safety cost / budget at the last epoch
    collapse: bool = False            # RL: exploration collapse (see COLLAPSE_*)
    unsafe: bool = False              # RL: unsafe exploration (cost ratio above UNSAFE_COST)


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def _slope(xs: list[int], ys: list[float]) -> float | None:
    """Least-squares slope of ``ys`` over ``xs`` (None for fewer than 2 points)."""
    if len(ys) < 2:
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else None


#: the epochs of a window -> (their offsets from the mean, the sum of squared offsets), for ``_fits``
_FIT_X: dict[tuple, tuple[list[float], float]] = {}


def _fits(xs: list[int], *ys_lists: list[float]) -> list[float | None]:
    """``_slope`` over ``xs`` of each of ``ys_lists`` (2 or more points each), with the same arithmetic (``sum`` in
    the same order); the parts that depend on ``xs`` alone are computed once."""
    key = tuple(xs)
    hit = _FIT_X.get(key)
    if hit is None:
        n = len(xs)
        mx = sum(xs) / n
        dx = [x - mx for x in xs]
        hit = (dx, sum([d ** 2 for d in dx]))
        if len(_FIT_X) < 4096:  # a window of epochs: a few hundred distinct ones in a library
            _FIT_X[key] = hit
    dx, den = hit
    out = []
    for ys in ys_lists:
        my = sum(ys) / len(ys)
        out.append(sum([d * (y - my) for d, y in zip(dx, ys)]) / den if den else None)
    return out


_VAL_LOSS = operator.attrgetter("val_loss")


def compute_signals(history: tuple[EpochView, ...], window: int = WINDOW) -> Signals:
    """Signals from the history; the window is the last ``window + 1`` epochs (so ``window`` intervals)."""
    # Written for speed (the simulator builds a snapshot per decision): the best and first validation loss of a
    # history whose losses are all finite and positive are read by C loops, the window by walking back from the end;
    # the arithmetic is that of ``_slope`` and every result that of the plain definition (the trained epochs, the
    # last ``window + 1`` of them, the finite positive losses and their first minimum).
    isfinite, log = math.isfinite, math.log
    last = history[-1]
    n = window + 1
    if n > 0:
        win = []
        for h in reversed(history):
            if h.epoch > 0:
                win.append(h)
                if len(win) == n:
                    break
        if win:
            win.reverse()
        else:
            win = list(history)[-n:]
    else:
        win = ([h for h in history if h.epoch > 0] or list(history))[-n:]
    vl = list(map(_VAL_LOSS, history))
    low = min(vl) if None not in vl and isfinite(sum(vl)) else None  # every loss finite (a sum of them is) ...
    if low is not None and low > 0:  # ... and positive
        first, best = vl[0], low  # ``min`` keeps the first of equal minima, as ``index`` finds it
        best_epoch = history[vl.index(best)].epoch
    else:
        best = first = best_epoch = None
        for h in history:
            v = h.val_loss
            if v is not None and isfinite(v) and v > 0:
                if best is None:
                    first = best = v
                    best_epoch = h.epoch
                elif v < best:
                    best, best_epoch = v, h.epoch
    tx, ty, vx, vy, gx, gy = [], [], [], [], [], []
    for h in win:
        e, t, v = h.epoch, h.train_loss, h.val_loss
        t_ok = t is not None and isfinite(t) and t > 0
        if t_ok:
            tx.append(e)
            ty.append(log(t))
        if v is not None and isfinite(v):
            if v > 0:
                vx.append(e)
                vy.append(log(v))
            if t_ok:
                gx.append(e)
                gy.append(v / t - 1)
    if len(ty) >= 2 and tx == vx == gx:  # the usual case: every epoch of the window has both losses
        train_slope, val_slope, gap_trend = _fits(tx, ty, vy, gy)
    else:
        train_slope = _fits(tx, ty)[0] if len(ty) >= 2 else None
        val_slope = _fits(vx, vy)[0] if len(vy) >= 2 else None
        gap_trend = _fits(gx, gy)[0] if len(gy) >= 2 else None
    gap = gy[-1] if gy and gx[-1] == last.epoch else None
    cur = last.val_loss
    val_rise = cur / best - 1 if _finite(cur) and best else None
    progress = 1 - cur / first if _finite(cur) and first else None
    nonfinite = False
    for x in (last.train_loss, cur, last.grad_norm):
        if x is not None and not isfinite(x):
            nonfinite = True
            break
    diverging = nonfinite or (val_rise is not None and val_rise > DIVERGE_RISE)
    overfitting = (
        not diverging and gap is not None and gap > OVERFIT_GAP and (
            (val_rise is not None and val_rise > OVERFIT_RISE)
            or (val_slope is not None and train_slope is not None and val_slope > 0 > train_slope)
        )
    )
    plateau = (
        not diverging and not overfitting and val_slope is not None and abs(val_slope) < PLATEAU_SLOPE
        and (train_slope is None or train_slope > -PLATEAU_SLOPE)
    )
    rl = {}
    if is_rl(last):
        # an RL run: the loss is a return shortfall, so a train/val gap says nothing of overfitting
        overfitting = False
        cost_ratio = (last.safety_cost / last.safety_budget if _finite(last.safety_cost) and _finite(last.safety_budget)
                      and last.safety_budget > 0 else None)
        collapse = (not diverging and last.log_std is not None and last.log_std < COLLAPSE_LOG_STD
                    and (val_slope is None or val_slope > COLLAPSE_SLOPE))
        rl = {"cost_ratio": cost_ratio, "collapse": collapse, "unsafe": cost_ratio is not None and cost_ratio > UNSAFE_COST}
    return Signals(
        gap=gap, gap_trend=gap_trend, train_slope=train_slope, val_slope=val_slope, best_val_loss=best,
        best_epoch=best_epoch, epochs_since_best=(last.epoch - best_epoch) if best_epoch is not None else None,
        val_rise=val_rise, progress=progress, overfitting=overfitting, diverging=diverging, plateau=plateau, **rl,
    )


@dataclass(frozen=True)
class Snapshot:
    """What a policy sees at one decision. Build with ``Snapshot.build``; render with ``to_text``/``to_json``.

    ``run_id`` identifies the decision point for the audit trail and is opaque to policies: it is not shown in
    ``to_text`` and a policy must not parse it (only the oracle, an upper bound by design, looks runs up by it).
    The scenario a run was built to show is deliberately not in the snapshot: a manager must read the signals.

    ``run_key`` names the *run* a decision belongs to, for a policy that keeps per-run state (an Optuna trial, a
    scheduler): the simulator gives every rollout its own key, the same at each of its decisions whether the rollout
    stays on its recorded run, moves to a child branch or leaves the tree; the live hook gives one key per run. It is
    a salted hash: it reveals neither the run id nor the scenario, differs between commands, and is not part of
    ``hash`` (seed randomness from ``hash``, not from the key). ``None`` where decisions do not form a run (the
    independent decision points of ``tmsim policy check``).
    """

    run_id: str
    task: str
    epoch: int
    max_epochs: int
    decide_every: int
    hparams: Hyperparams
    history: tuple[EpochView, ...]
    signals: Signals
    decisions: tuple[PastDecision, ...] = ()
    interventions_left: int | None = None
    losses: int = 1
    offered: tuple[str, ...] = field(default=())
    run_key: str | None = None

    @classmethod
    def build(cls, run_id: str, task: str, history: Iterable[EpochView | dict], hparams: Hyperparams,
              max_epochs: int, decide_every: int, decisions: Iterable[PastDecision] = (),
              interventions_left: int | None = None, losses: int = 1, offered: tuple[str, ...] = (),
              run_key: str | None = None) -> "Snapshot":
        hist = as_views(history)
        if not hist:
            raise ValueError("a snapshot needs at least one epoch of history")
        values = (run_id, task, hist[-1].epoch, max_epochs, decide_every, hparams, hist, compute_signals(hist),
                  tuple(decisions), interventions_left, losses, tuple(offered), run_key)
        if cls is not Snapshot or not _PLAIN_INIT:
            return cls(*values)
        # what the dataclass's __init__ does (it sets the fields, in order, and nothing else), without its calls
        snap = object.__new__(cls)
        snap.__dict__.update(zip(_SNAPSHOT_FIELDS, values))
        return snap

    def with_run_key(self, run_key: str | None) -> "Snapshot":
        """The same snapshot under another run key (a shallow copy: everything else, the cached hash included, is
        shared; the key is not part of the hash)."""
        if run_key == self.run_key:
            return self
        twin = _shallow_copy(self)
        object.__setattr__(twin, "run_key", run_key)
        return twin

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "task": self.task, "epoch": self.epoch, "max_epochs": self.max_epochs,
                "decide_every": self.decide_every, "hparams": self.hparams.to_dict(),
                "history": [h._asdict() for h in self.history], "signals": self.signals._asdict(),
                "decisions": [d._asdict() for d in self.decisions], "interventions_left": self.interventions_left,
                "losses": self.losses, "offered": list(self.offered), "run_key": self.run_key}

    def private_copy(self) -> "Snapshot":
        """A copy for one policy call: its own ``Snapshot`` and ``Hyperparams`` objects (the history, signals and
        decisions are immutable tuples and are shared), so nothing a policy does to it reaches the original."""
        twin = _shallow_copy(self)
        object.__setattr__(twin, "hparams", _shallow_copy(self.hparams))
        return twin

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), default=str)

    @cached_property
    def hash(self) -> str:
        """A short, stable hash of the snapshot's content (for the audit trail); computed once per snapshot."""
        hp = self.hparams
        knobs = (hp.lr, hp.weight_decay, hp.dropout, hp.aux_loss_weight)
        if hp.ent_coef is not None or hp.log_std is not None or hp.clip_range is not None:
            knobs += (hp.ent_coef, hp.log_std, hp.clip_range)
        parts = (self.run_id, self.task, self.epoch, self.max_epochs, self.decide_every, knobs,
                 [tuple(h) if any(x is not None for x in h[_SL_FIELDS:]) else tuple(h[:_SL_FIELDS]) for h in self.history],
                 [(d.epoch, d.action, d.val_change) for d in self.decisions],
                 self.interventions_left, self.losses, list(self.offered))
        return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]

    def to_text(self, window: int = WINDOW) -> str:
        """A compact table for prompts: the last ``window`` epochs, the hyperparameters, signals, options."""
        hp = self.hparams
        if is_rl(hp):
            return self._rl_text(window)
        knobs = f"lr={hp.lr:.4g} weight_decay={hp.weight_decay:.4g} dropout={hp.dropout:.2g}"
        if hp.aux_loss_weight is not None:
            knobs += f" aux_loss_weight={hp.aux_loss_weight:.4g}"
        left = "unlimited" if self.interventions_left is None else str(self.interventions_left)
        lines = [
            f"task {self.task} | epoch {self.epoch}/{self.max_epochs} | decisions every {self.decide_every} epochs | interventions left {left}",
            f"hyperparameters: {knobs}",
            "epoch  train_loss  val_loss  train_acc  val_acc  grad_norm  update_ratio",
        ]
        for h in self.history[-window:]:
            lines.append(" ".join([f"{h.epoch:5d}", _f(h.train_loss, 11), _f(h.val_loss, 9), _f(h.train_acc, 10),
                                   _f(h.val_acc, 8), _f(h.grad_norm, 10), _f(h.update_ratio, 13)]))
        s = self.signals
        flags = [n for n in ("overfitting", "diverging", "plateau") if getattr(s, n)] or ["none"]
        lines.append(
            f"signals: gap {_pct(s.gap)} (trend {_pct(s.gap_trend)}/epoch), train slope {_pct(s.train_slope)}/epoch, "
            f"val slope {_pct(s.val_slope)}/epoch, best val {_f(s.best_val_loss, 0)} at epoch {s.best_epoch}, "
            f"val above best {_pct(s.val_rise)}; flags: {', '.join(flags)}"
        )
        return "\n".join(lines + self._tail("epoch", "val"))

    def _tail(self, point: str, measure: str) -> list[str]:
        """The past decisions with the change each was followed by, and the allowed actions."""
        out = []
        if self.decisions:
            out.append("past decisions: " + "; ".join(f"{point} {d.epoch} {d.action} -> {measure} {_pct(d.val_change)}"
                                                      for d in self.decisions))
        if self.offered:
            out.append(f"allowed actions: {', '.join(self.offered)}")
        return out

    def _rl_text(self, window: int) -> str:
        """``to_text`` for a reinforcement-learning run: returns (higher is better), exploration and safety."""
        hp = self.hparams
        knobs = " ".join(f"{k}={getattr(hp, k):.4g}" for k in ("lr", "ent_coef", "log_std", "clip_range")
                         if getattr(hp, k) is not None)
        left = "unlimited" if self.interventions_left is None else str(self.interventions_left)
        lines = [
            f"task {self.task} (reinforcement learning, PPO) | evaluation {self.epoch}/{self.max_epochs} | decisions "
            f"every {self.decide_every} evaluations | interventions left {left}",
            f"hyperparameters: {knobs}",
            "epoch  train_return  eval_return  entropy  approx_kl  clip_frac  expl_var  safety_cost/budget",
        ]
        for h in self.history[-window:]:
            cost = "-" if h.safety_cost is None else f"{h.safety_cost:.3g}/{_f(h.safety_budget, 0).strip()}"
            lines.append(" ".join([f"{h.epoch:5d}", _f(h.ep_return, 13), _f(h.val_return, 12), _f(h.entropy, 8),
                                   _f(h.approx_kl, 10), _f(h.clip_fraction, 10), _f(h.explained_variance, 9),
                                   cost.rjust(19)]))
        s = self.signals
        flags = [n for n, on in (("exploration collapse", s.collapse), ("unsafe exploration", s.unsafe),
                                 ("diverging", s.diverging), ("plateau", s.plateau)) if on] or ["none"]
        lines.append(f"signals: eval return shortfall slope {_pct(s.val_slope)}/evaluation, safety cost "
                     f"{'n/a' if s.cost_ratio is None else format(s.cost_ratio, '.0%')} of its budget; flags: {', '.join(flags)}")
        return "\n".join(lines + self._tail("evaluation", "shortfall"))


def _shallow_copy(obj: Any) -> Any:
    """``copy.copy(obj)``; for a plain ``Snapshot`` or ``Hyperparams`` (no ``__copy__`` or pickling hooks of their
    own) made directly, as ``copy.copy`` makes it: a new object of the type whose ``__dict__`` is updated from
    ``obj``'s."""
    if type(obj) in _PLAIN_COPY:
        twin = object.__new__(type(obj))
        twin.__dict__.update(obj.__dict__)
        return twin
    return copy.copy(obj)


_PLAIN_COPY = (Snapshot, Hyperparams)
_SNAPSHOT_FIELDS = tuple(f.name for f in fields(Snapshot))
#: Whether ``Snapshot.__init__`` only sets the fields (so ``Snapshot.build`` may set them itself)
_PLAIN_INIT = not hasattr(Snapshot, "__post_init__")


def _f(x: float | None, width: int) -> str:
    s = "-" if x is None else (f"{x:.4g}" if math.isfinite(x) else str(x))
    return s.rjust(width)


def _pct(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x * 100:+.1f}%"
