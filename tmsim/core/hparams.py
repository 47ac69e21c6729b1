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
Hyperparams(lr=0.2, weight_decay=0.0, dropout=0.0, aux_loss_weight=None)
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Mapping

#: Every knob, in the order of trace columns and feature vectors.
KNOBS = ("lr", "weight_decay", "dropout", "aux_loss_weight")
#: How a change of each knob is measured (see the module docs).
KNOB_SCALE = {"lr": "log", "weight_decay": "log10", "dropout": "linear", "aux_loss_weight": "log"}


@dataclass(frozen=True)
class Hyperparams:
    """The knobs a training manager may turn. ``aux_loss_weight`` is ``None`` for single-loss tasks."""

    lr: float
    weight_decay: float = 0.0
    dropout: float = 0.0
    aux_loss_weight: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_(self, **changes: Any) -> "Hyperparams":
        return replace(self, **changes)

    @classmethod
    def from_row(cls, row: Mapping[str, Any], prefix: str = "") -> "Hyperparams":
        """The hyperparameters recorded in a trace row (``epochs`` columns, or ``runs``' ``init_*`` with
        ``prefix="init_"``); absent knobs take their defaults."""
        defaults = {"weight_decay": 0.0, "dropout": 0.0, "aux_loss_weight": None}
        vals = {k: row.get(prefix + k, defaults.get(k)) for k in KNOBS}
        for k in ("weight_decay", "dropout"):
            if vals[k] is None:
                vals[k] = defaults[k]
        return cls(**vals)
