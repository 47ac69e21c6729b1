"""The task registry: built-in tasks, ``register()``, the ``tmsim.tasks`` entry-point group, and
``"package.module:Class"`` wherever a task name is accepted (the CLI, the recorder's worker processes).

Example
-------
>>> from tmsim.tasks import get_task, task_names
>>> {"digits-mlp", "multiloss", "text-lm"} <= set(task_names())
True
>>> get_task("tmsim.tasks.digits:DigitsMLP").name
'digits-mlp'
"""
from __future__ import annotations

from .._registry import Registry
from .base import TorchTask

TASKS = Registry("task", "tmsim.tasks")
for _name, _ref in (("digits-mlp", "tmsim.tasks.digits:DigitsMLP"), ("multiloss", "tmsim.tasks.multiloss:MultiLoss"),
                    ("text-lm", "tmsim.tasks.textlm:TextLM"), ("diabetes-mlp", "tmsim.tasks.diabetes:DiabetesMLP"),
                    ("friedman-mlp", "tmsim.tasks.friedman:FriedmanMLP"), ("digits-cnn", "tmsim.tasks.digits_cnn:DigitsCNN"),
                    ("cancer-mlp", "tmsim.tasks.cancer:CancerMLP"), ("friedman2-adam", "tmsim.tasks.friedman2:Friedman2Adam"),
                    ("swissroll-adam", "tmsim.tasks.swissroll:SwissRollAdam"), ("sparse-adam", "tmsim.tasks.sparse:SparseAdam"),
                    ("pendulum-ppo", "tmsim.tasks.rl:PendulumPPO"), ("reacher-ppo", "tmsim.tasks.rl:ReacherPPO")):
    TASKS.register(_name, _ref)


def register(name: str, entry, *, overwrite: bool = False) -> None:
    """Register a task class (or a ``"package.module:Class"`` string) under ``name``; ``tmsim record --task name``
    then records it, worker processes included."""
    TASKS.register(name, entry, overwrite=overwrite)


def task_names() -> list[str]:
    """Every registered task name (built-in, registered in code, and from installed plugins)."""
    return TASKS.names()


def get_task(name: str) -> TorchTask:
    """A fresh instance of the task ``name`` (a registered name or ``"package.module:Class"``). A class given by
    import path is registered under its own ``name`` attribute, so traces and worker processes use that name."""
    cls = TASKS.resolve(name)
    task = cls() if isinstance(cls, type) else cls
    if not callable(getattr(task, "train_epoch", None)) or not getattr(task, "name", ""):
        raise ValueError(f"task {name!r}: {type(task).__name__} is not a Task (needs a name and train_epoch; "
                         "subclass tmsim.tasks.TorchTask)")
    if task.name not in TASKS:
        TASKS.register(task.name, name if ":" in name else type(task))
    return task
