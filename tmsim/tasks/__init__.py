"""Real training tasks behind one small interface (see ``tmsim.tasks.base``)."""
from __future__ import annotations

from .base import METRICS, Hyperparams, Scenario, TorchTask, TrainState
from .digits import DigitsMLP
from .multiloss import MultiLoss
from .textlm import TextLM

TASKS: dict[str, type[TorchTask]] = {t.name: t for t in (DigitsMLP, TextLM, MultiLoss)}


def get_task(name: str) -> TorchTask:
    """The task called ``name`` (``digits-mlp``, ``text-lm``, ``multiloss``)."""
    try:
        return TASKS[name]()
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known: {sorted(TASKS)}") from None


__all__ = ["METRICS", "TASKS", "Hyperparams", "Scenario", "TorchTask", "TrainState", "get_task"]
