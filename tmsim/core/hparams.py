"""The knobs a training manager may turn, and the hyperparameters in force.

``KNOBS`` is the one list of knobs; each has a *scale* that says how a change of it is measured (``log``: a factor,
``log10``: orders of magnitude with a small floor for knobs that start at zero, ``linear``: an absolute step). The
trace schema, the validator, the surrogate's features and the live hook's actuators all iterate over it.

Example
-------
>>> from tmsim.core import Hyperparams
>>> hp = Hyperparams.from_row({"lr": 0.1, "weight_decay": 0.0, "dropout": 0.1, "aux_loss_weight": None, "val_loss": 1.0})
>>> hp.with_(lr=0.05).lr
0.05
>>> Hyperparams.from_row({"init_lr": 0.2}, prefix="init_")
Hyperparams(lr=0.2, weight_decay=0.0, dropout=0.0, aux_loss_weight=None, ent_coef=None, log_std=None, clip_range=None)
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Mapping

#: Every knob, in the order of trace columns and feature vectors.
KNOBS = ("lr", "weight_decay", "dropout", "aux_loss_weight", "ent_coef", "log_std", "clip_range")
#: How a change of each knob is measured (see the module docs).
KNOB_SCALE = {"lr": "log", "weight_decay": "log10", "dropout": "linear", "aux_loss_weight": "log",
              "ent_coef": "log10", "log_std": "linear", "clip_range": "log"}
#: The knobs of a supervised run; an RL run (one whose ``ent_coef`` or ``log_std`` is set) has ``RL_KNOBS`` instead.
SUPERVISED_KNOBS = ("lr", "weight_decay", "dropout", "aux_loss_weight")
RL_KNOBS = ("lr", "ent_coef", "log_std", "clip_range")


def is_rl(knobs) -> bool:
    """Whether ``knobs`` (``Hyperparams``, an ``EpochView`` or anything with the knob attributes) belong to a
    reinforcement-learning run: one whose ``ent_coef`` or ``log_std`` is set."""
    return getattr(knobs, "ent_coef", None) is not None or getattr(knobs, "log_std", None) is not None


def run_knobs(hp: "Hyperparams") -> tuple[str, ...]:
    """The knobs a run with ``hp`` has: ``RL_KNOBS`` for a reinforcement-learning run (PPO's entropy coefficient,
    the policy's action-noise log-std, the clip range), else ``SUPERVISED_KNOBS``. A knob whose value is ``None``
    (``aux_loss_weight`` of a single-loss run) has nothing to act on either."""
    names = RL_KNOBS if is_rl(hp) else SUPERVISED_KNOBS
    return tuple(k for k in names if getattr(hp, k) is not None)


@dataclass(frozen=True)
class Hyperparams:
    """The knobs a training manager may turn. ``aux_loss_weight`` is ``None`` for single-loss tasks; ``ent_coef``
    (PPO's entropy bonus), ``log_std`` (the mean log standard deviation of the policy's Gaussian action noise) and
    ``clip_range`` (PPO's ratio clip) are ``None`` for supervised tasks."""

    lr: float
    weight_decay: float = 0.0
    dropout: float = 0.0
    aux_loss_weight: float | None = None
    ent_coef: float | None = None
    log_std: float | None = None
    clip_range: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_(self, **changes: Any) -> "Hyperparams":
        """A copy with ``changes`` (``dataclasses.replace``). For a plain ``Hyperparams`` (no subclass) and known field
        names it is made directly, as ``replace`` makes it (the class's ``__init__`` only sets the fields), without
        ``replace``'s per-field calls: the validator and the simulator make one per menu action they try."""
        if type(self) is Hyperparams and _FIELD_SET.issuperset(changes):
            twin = object.__new__(Hyperparams)
            d = twin.__dict__
            d.update(self.__dict__)
            d.update(changes)
            return twin
        return replace(self, **changes)

    @classmethod
    def from_row(cls, row: Mapping[str, Any], prefix: str = "") -> "Hyperparams":
        """The hyperparameters recorded in a trace row (``epochs`` columns, or ``runs``' ``init_*`` with
        ``prefix="init_"``); absent knobs take their defaults."""
        defaults = {"weight_decay": 0.0, "dropout": 0.0}
        vals = {k: row.get(prefix + k, defaults.get(k)) for k in KNOBS}
        for k in ("weight_decay", "dropout"):
            if vals[k] is None:
                vals[k] = defaults[k]
        return cls(**vals)


_FIELD_SET = frozenset(f.name for f in fields(Hyperparams))
