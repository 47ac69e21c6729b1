"""The Hugging Face ``Trainer`` side of the live hook: ``TMSimCallback``, a real ``transformers.TrainerCallback``.

It attaches the trainer's optimizer, scheduler and model at train begin, calls ``LiveManager.on_step_end`` after
each optimizer step (so gradient accumulation is respected), feeds each evaluation's metrics to
``on_epoch_end``, and stops training through ``control.should_training_stop``. Importing this module imports
transformers; ``tmsim.live`` itself does not.
"""
from __future__ import annotations

from transformers import TrainerCallback

from .manager import LiveManager


class TMSimCallback(TrainerCallback):
    """Drives a ``LiveManager`` from a ``Trainer``: ``trainer.add_callback(TMSimCallback(manager))``."""

    def __init__(self, manager: LiveManager):
        self.mgr = manager
        self._train_loss = None

    def on_train_begin(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kw):
        self.mgr.model = self.mgr.model or model
        self.mgr.optimizer = self.mgr.optimizer or optimizer
        self.mgr.scheduler = self.mgr.scheduler or lr_scheduler

    def on_step_end(self, args, state, control, optimizer=None, lr_scheduler=None, **kw):
        if self.mgr.optimizer is None:
            self.mgr.optimizer, self.mgr.scheduler = optimizer, lr_scheduler
        self.mgr.on_step_end()
        if self.mgr.should_stop:
            control.should_training_stop = True
        return control

    def on_log(self, args, state, control, logs=None, **kw):
        if logs and "loss" in logs:
            self._train_loss = logs["loss"]

    def on_evaluate(self, args, state, control, metrics=None, **kw):
        m = metrics or {}
        self.mgr.on_epoch_end({"train_loss": self._train_loss, "val_loss": m.get("eval_loss"),
                               "val_acc": m.get("eval_accuracy")}, epoch=int(round(state.epoch or 0)))
        if self.mgr.should_stop:
            control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, **kw):
        self.mgr.close()
