"""Real training tasks behind one small interface (see ``tmsim.tasks.base``) and their registry."""
from __future__ import annotations

from ..core.hparams import Hyperparams
from .base import METRICS, Scenario, TorchTask, TrainState
from .registry import TASKS, get_task, register, task_names

__all__ = ["METRICS", "TASKS", "Hyperparams", "Scenario", "TorchTask", "TrainState", "get_task", "register",
           "task_names"]
