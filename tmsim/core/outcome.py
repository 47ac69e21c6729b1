"""Outcome rules every stage shares: when a run has diverged, what a diverged run scores, and its final
validation loss. The recorder, the simulator, the oracle, fidelity and the live hook all judge runs with these.

Example
-------
>>> is_diverged(val_loss=3.5, initial_val_loss=1.0)
True
>>> is_diverged(val_loss=0.8, initial_val_loss=1.0, train_loss=float("nan"))
True
>>> final_val_loss([{"val_loss": 2.0}, {"val_loss": 0.5}], diverged=False)
0.5
>>> final_val_loss([{"val_loss": 2.0}, {"val_loss": None}], diverged=True)
6.0
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

#: A run diverges when a loss is not finite or its validation loss exceeds this multiple of the initial one.
DIVERGE_FACTOR = 3.0


def is_diverged(val_loss: float | None, initial_val_loss: float | None, train_loss: float | None = 0.0,
                grad_norm: float | None = 0.0) -> bool:
    """The divergence rule: a non-finite loss (or gradient norm), or a validation loss above ``DIVERGE_FACTOR``
    times the initial one. ``None`` for any of them means "not measured" (nothing to judge)."""
    for x in (train_loss, val_loss, grad_norm):
        if x is not None and not math.isfinite(x):
            return True
    return val_loss is not None and initial_val_loss is not None and val_loss > DIVERGE_FACTOR * initial_val_loss


def divergence_penalty(initial_val_loss: float) -> float:
    """The final validation loss a diverged run scores: the threshold it crossed."""
    return DIVERGE_FACTOR * initial_val_loss


def final_val_loss(rows: Sequence[Mapping[str, Any]], diverged: bool) -> float:
    """The final validation loss of a run whose epoch rows (epoch 0, the evaluation before training, first) are
    ``rows``; a diverged run scores ``divergence_penalty`` of its initial validation loss."""
    if diverged:
        return divergence_penalty(rows[0]["val_loss"])
    return rows[-1]["val_loss"]
