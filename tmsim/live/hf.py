"""The Hugging Face ``Trainer`` side of the live hook: ``TMSimCallback``, a real ``transformers.TrainerCallback``.

- **What it steers.** Before training (an evaluation before ``train()``), the manager knows the LR and weight decay
  from ``TrainingArguments`` and the dropout from the model; at train begin it attaches the Trainer's own optimizer,
  scheduler and model and reads them from then on (HF's no-decay group stays at zero).
- **Cadence.** One decision point per evaluation: the manager's ``epoch`` is the evaluation's index (0 for an
  evaluation before training, then 1, 2, ... whatever ``eval_strategy`` is) and ``step`` the Trainer's
  ``global_step``, so decisions are never duplicated when evaluations fall inside an epoch. With
  ``eval_strategy="no"`` the policy is never asked: the callback says so at train begin. The training loss of a row
  is the mean of the losses the Trainer logged since the previous evaluation (None, with a warning, when it logged
  none: set ``logging_steps`` at most the evaluation interval). With several eval datasets the first evaluation at a
  step is the decision point (its ``eval_NAME_loss``); the others at that step are ignored, with a warning.
- **Steps.** ``on_step_end`` fires after each optimizer step, so gradient accumulation is respected; a stop sets
  ``control.should_training_stop``.
- **Checkpoints.** ``on_save`` writes ``tmsim_live.json`` (``LiveManager.state_dict()``) into the checkpoint and the
  trace so far (if recording); when training resumes from a checkpoint (``global_step > 0`` at train begin) the
  callback restores it from ``resume_from`` or ``OUTPUT_DIR/checkpoint-STEP``, and the resumed run is recorded as a
  branch of the original.

Importing this module imports transformers; ``tmsim.live`` itself does not.
"""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

from transformers import TrainerCallback

from ..core.hparams import Hyperparams
from .manager import LiveManager

log = logging.getLogger("tmsim.live")

#: File a checkpoint holds the manager's state in.
STATE_FILE = "tmsim_live.json"


class TMSimCallback(TrainerCallback):
    """Drives a ``LiveManager`` from a ``Trainer``: ``trainer.add_callback(TMSimCallback(manager))``.
    ``resume_from``: the checkpoint directory a resumed ``train()`` starts from, when it is not
    ``OUTPUT_DIR/checkpoint-STEP``."""

    def __init__(self, manager: LiveManager, resume_from: str | os.PathLike | None = None):
        self.mgr = manager
        self.resume_from = resume_from
        self._losses: list[float] = []

    def _prepare(self, args, model) -> None:
        """Before the optimizer exists: the LR and weight decay the Trainer will build it with (the arguments win over
        given ``hparams``, with a warning), the model's dropout."""
        if self.mgr.optimizer is None:
            lr, wd = float(args.learning_rate), float(args.weight_decay)
            given = self.mgr.hparams
            if given is not None and not math.isnan(given.lr) and (not math.isclose(given.lr, lr)
                                                                  or not math.isclose(given.weight_decay, wd)):
                self.mgr._warn_once("hf-args", "tmsim live: hparams (lr %g, weight_decay %g) differ from the "
                                    "TrainingArguments (%g, %g): using the arguments", given.lr, given.weight_decay, lr, wd)
            base = given or Hyperparams(lr=lr)
            self.mgr.hparams = base.with_(lr=lr, weight_decay=wd)
        if model is not None and self.mgr.model is None:
            self.mgr.attach(model=model)

    def on_train_begin(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kw):
        self._prepare(args, model)
        if state.global_step > 0 and self.mgr.parent_run_id is None:
            self._resume(args, state)
        self.mgr.attach(optimizer=optimizer, scheduler=lr_scheduler, model=model)
        strategy = str(getattr(args.eval_strategy, "value", args.eval_strategy))
        if strategy == "no":
            log.warning("tmsim live: eval_strategy is 'no': the Trainer never evaluates, so the policy is never asked; "
                        "set eval_strategy='epoch' or 'steps'")
        elif strategy == "steps":
            every = args.eval_steps or args.logging_steps
            if args.logging_steps and every and args.logging_steps > every:
                log.warning("tmsim live: logging_steps (%s) > eval_steps (%s): most evaluations see no training loss",
                            args.logging_steps, every)

    def _resume(self, args, state) -> None:
        where = Path(self.resume_from) if self.resume_from else Path(args.output_dir) / f"checkpoint-{state.global_step}"
        f = where / STATE_FILE
        if not f.exists():
            log.warning("tmsim live: training resumed at step %d but %s has no tmsim state: the trace starts a new "
                        "run, unlinked (pass TMSimCallback(..., resume_from=CHECKPOINT))", state.global_step, where)
            return
        self.mgr.load_state_dict(json.loads(f.read_text(encoding="utf-8")))
        log.info("tmsim live: resumed %s from %s", self.mgr.parent_run_id, where)

    def on_step_end(self, args, state, control, optimizer=None, lr_scheduler=None, **kw):
        if self.mgr.optimizer is None and optimizer is not None:
            self.mgr.attach(optimizer=optimizer, scheduler=lr_scheduler)
        self.mgr.on_step_end()
        if self.mgr.should_stop:
            control.should_training_stop = True
        return control

    def on_log(self, args, state, control, logs=None, **kw):
        if logs and isinstance(logs.get("loss"), (int, float)):
            self._losses.append(float(logs["loss"]))

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kw):
        self._prepare(args, model)
        m = metrics or {}
        if "eval_loss" not in m:  # several eval datasets: the Trainer evaluates each, prefixing eval_NAME_
            named = sorted(k for k in m if k.startswith("eval_") and k.endswith("_loss"))
            if named:
                m = {**m, "eval_loss": m[named[0]]}
        if self.mgr.history and self.mgr.history[-1].get("step") == state.global_step:
            self.mgr._warn_once("hf-several-evals", "tmsim live: several evaluations at step %d (several eval "
                                "datasets?): the first one is the decision point", state.global_step)
            return control
        train_loss = sum(self._losses) / len(self._losses) if self._losses else None
        if train_loss is None and state.global_step > 0:
            self.mgr._warn_once("hf-train-loss", "tmsim live: no training loss was logged since the previous "
                                "evaluation (logging_steps %s): rows get none", args.logging_steps)
        self._losses = []
        val_acc = m.get("eval_accuracy")
        self.mgr.on_epoch_end({"train_loss": train_loss, "val_loss": m.get("eval_loss"),
                               "val_acc": val_acc if isinstance(val_acc, (int, float)) and math.isfinite(val_acc) else None},
                              step=state.global_step)
        if self.mgr.should_stop:
            control.should_training_stop = True
        return control

    def on_save(self, args, state, control, **kw):
        where = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if where.is_dir() and args.should_save:
            tmp = where / f".{STATE_FILE}.tmp"
            tmp.write_text(json.dumps(self.mgr.state_dict()), encoding="utf-8")
            tmp.replace(where / STATE_FILE)
            if self.mgr.record_dir is not None and self.mgr.history:
                self.mgr.write_trace(self.mgr.record_dir)  # a run that dies after this checkpoint keeps its trace
        return control

    def on_train_end(self, args, state, control, **kw):
        self.mgr.close()
