"""The live hook: a promoted policy steering a real training loop, never blocking it, recorded as a trace.

Plain PyTorch::

    with LiveManager.from_spec("policies/rules.toml", optimizer=opt, scheduler=sched, model=model,
                               hparams=Hyperparams(lr=0.1), max_epochs=20, decide_every=5, record_dir="traces-live") as mgr:
        for epoch in range(20):
            for batch in loader:
                ...; opt.step(); sched.step()
                mgr.on_step_end()            # applies an arrived decision at this step boundary
                if mgr.should_stop: break
            mgr.on_epoch_end({"train_loss": ..., "val_loss": ..., "val_acc": ...})
            if mgr.should_stop: break

Hugging Face: ``trainer.add_callback(TMSimCallback(mgr))`` (``tmsim.live.hf``; see ``examples/``).

- **Asynchronous by default.** At a decision epoch the snapshot goes to a background worker and training goes on.
  The validated action is applied at the first step boundary after it arrives. An answer that arrives more than
  ``stale_steps`` steps after its snapshot is dropped and logged (``violations = ["stale"]``). ``mode="sync"``
  decides and applies at the epoch boundary itself (for tests and comparisons).
- **Safety.** The validator of the simulator judges every proposal. An exception or a timeout in the policy leaves
  training unchanged and is logged. The recorder's divergence rule (a non-finite loss, or val loss above 3x the
  initial one) and non-finite parameters stop the run (the guard does not rely on logged losses alone: the HF
  Trainer filters NaN/inf from its logs by default).
- **Promotion.** The manager builds the policy from its spec itself (``LiveManager.from_spec``, or ``policy=None``
  with ``spec=``) after the spec's promotion record checks (``tmsim.evaluate.promote.check_record``). A policy
  object passed together with a spec runs as promoted only if ``make_policy`` built that very object from that
  spec (``tmsim.policies.kinds.built_from``); any other object, or a policy without a record that checks, is
  refused unless ``allow_unpromoted=True``, which is written into the trace.
- **Knobs.** LR and weight decay on the optimizer's param groups. LR is scheduler-aware: ``LambdaLR`` and friends
  recompute each group's LR from ``base_lrs`` every step, so the hook scales ``base_lrs`` (and ``initial_lr``) by
  the same factor. Weight decay only touches decay groups (groups holding matrices; HF's bias/norm group stays at
  0). Dropout on every ``nn.Dropout`` and every module's ``attention_dropout``. Loss weights through a setter you
  register. Stop through ``should_stop`` (and ``control.should_training_stop`` in the callback).
- **Recording.** ``close()`` writes ``runs``, ``epochs`` and ``decisions`` (with latency and staleness) in trace
  format v1 under ``record_dir``, so ``tmsim query`` sees live runs beside recorded ones. A non-finite metric is
  written as null (the ``diverged`` column says what happened), so the trace stays readable.
"""
from __future__ import annotations

import logging
import math
import queue
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa

from ..core.actions import Bounds, PolicyFailure, ValidatedAction, validate
from ..core.names import safe_filename, safe_name
from ..core.decision import RunInfo, build_snapshot, call_policy_batch, decision_row
from ..core.hparams import Hyperparams
from ..core.outcome import is_diverged
from ..core.snapshot import Snapshot
from ..traces.format import DECISIONS, EPOCHS, RUNS, dumps, write_table

log = logging.getLogger("tmsim.live")


class NotPromotedError(PermissionError):
    """The policy has no promotion record that matches its files."""


class LiveManager:
    """See the module documentation. ``spec`` (a path or ``PolicySpec``) is needed for the promotion check; with
    ``policy=None`` the manager builds the policy from ``spec`` (``from_spec`` says the same in one call)."""

    def __init__(self, policy=None, *, hparams: Hyperparams, max_epochs: int, decide_every: int = 1,
                 optimizer=None, scheduler=None, model=None, loss_weight_setter: Callable[[float], None] | None = None,
                 spec=None, promotions: str | Path | None = None, allow_unpromoted: bool = False,
                 bounds: Bounds | None = None, mode: str = "async", stale_steps: int = 100, timeout: float = 30.0,
                 task: str = "custom", scenario: str = "live", seed: int = 0, run_id: str | None = None,
                 record_dir: str | Path | None = None, n_losses: int | None = None):
        if mode not in ("async", "sync"):
            raise ValueError("mode must be 'async' or 'sync'")
        safe_name(task, "task")  # the task names the trace's partition directory
        self.mode = mode
        self.hparams = self.hp_init = hparams
        self.max_epochs, self.decide_every = max_epochs, decide_every
        self.optimizer, self.scheduler, self.model = optimizer, scheduler, model
        self.loss_weight_setter = loss_weight_setter
        self.stale_steps, self.timeout = stale_steps, timeout
        self.task, self.scenario, self.seed = task, scenario, seed
        self.run_id = run_id or f"live:{task}:{uuid.uuid4().hex[:8]}"
        self.record_dir = Path(record_dir) if record_dir else None
        self.n_losses = n_losses or (2 if hparams.aux_loss_weight is not None else 1)
        self.policy, self.promotion, promoted_bounds = self._check_promotion(policy, spec, promotions, allow_unpromoted)
        # a promoted policy runs under the bounds of the suite it was judged on, unless the caller sets them
        self.bounds = bounds or promoted_bounds or Bounds()
        self.step = 0
        self.epoch = -1
        self.should_stop = False
        self.history: list[dict] = []
        self.decision_rows: list[dict] = []
        self._chain: dict[int, str] = {}
        self._results: queue.Queue = queue.Queue()
        self._pending: dict | None = None  # the decision in flight (async)
        self._closed = False

    @classmethod
    def from_spec(cls, spec, *, promotions: str | Path | None = None, **run_options) -> "LiveManager":
        """The manager for the policy ``spec`` describes, built by the manager itself after the spec's promotion
        record checks. ``spec`` is a path or a ``PolicySpec``; ``run_options`` are the constructor's other keyword
        arguments.

        >>> from tmsim.core import Hyperparams
        >>> mgr = LiveManager.from_spec("policies/rules.toml", hparams=Hyperparams(lr=0.1), max_epochs=4)  # doctest: +SKIP
        >>> mgr.promotion  # doctest: +SKIP
        'promoted (rules)'
        """
        return cls(None, spec=spec, promotions=promotions, **run_options)

    # --- promotion ----------------------------------------------------------------------------------------------
    def _check_promotion(self, policy, spec, promotions, allow_unpromoted: bool):
        """(policy, promotion string, bounds of the promoted suite or None); raises ``NotPromotedError``."""
        # only the record checker: the simulator, leaderboard, DuckDB and scikit-learn stay out of a training process
        from ..evaluate.promote import verify_record
        from ..policies.kinds import built_from, make_policy

        problems: list[str] = []
        if spec is not None:
            from ..policies.spec import PolicySpec, load_spec

            spec = spec if isinstance(spec, PolicySpec) else load_spec(spec)
            prom = Path(promotions) if promotions else Path(__file__).resolve().parents[2] / "eval" / "promotions"
            res = verify_record(spec, prom)
            for n in res.notes:
                log.warning("tmsim live: %s", n)
            problems = list(res.problems)
            if policy is not None and not built_from(policy, spec):
                problems.append(f"the policy object ({type(policy).__name__}) was not built from {spec.path or spec.name} "
                                "by make_policy; pass the spec alone (LiveManager.from_spec) to run what was promoted")
            if res.ok and not problems:
                # built only now, after its code and files were checked against the record
                return (policy if policy is not None else make_policy(spec), f"promoted ({spec.name})",
                        Bounds(**res.record["bounds"]))
        else:
            if policy is None:
                raise ValueError("LiveManager needs a policy spec (spec=...), or a policy object with allow_unpromoted=True")
            problems = ["no policy spec given, so no promotion record can be checked"]
        if not allow_unpromoted:
            raise NotPromotedError("refusing an unpromoted policy: " + "; ".join(problems)
                                   + " (run `tmsim promote`, or pass allow_unpromoted=True to override, which is recorded)")
        log.warning("tmsim live: RUNNING AN UNPROMOTED POLICY (allow_unpromoted=True): %s", "; ".join(problems))
        if policy is None:
            policy = make_policy(spec)
        return policy, "UNPROMOTED (allow_unpromoted=True): " + "; ".join(problems), None

    # --- the hooks ----------------------------------------------------------------------------------------------
    def on_step_end(self) -> None:
        """Call after every optimizer step: applies a decision that has arrived, drops stale ones."""
        self.step += 1
        if self.mode == "async":
            self._collect()

    def on_epoch_end(self, metrics: dict[str, Any], epoch: int | None = None) -> None:
        """Call after each epoch's evaluation with at least ``val_loss`` (and ``train_loss``; accuracies,
        ``grad_norm``, ``update_ratio`` where known). ``epoch`` defaults to one more than the last (the first call
        is epoch 0: an evaluation before training, as in recorded traces)."""
        self.epoch = self.epoch + 1 if epoch is None else int(epoch)
        row = {k: _num(metrics.get(k)) for k in ("train_loss", "val_loss", "train_acc", "val_acc", "grad_norm", "update_ratio")}
        row.update(epoch=self.epoch, **self._knobs(), wall=time.time())
        guard = self._nan_guard(metrics)
        row["diverged"] = guard
        self.history.append(row)
        if guard:
            log.error("tmsim live: non-finite loss or parameters at epoch %d: stopping the run", self.epoch)
            self.should_stop = True
            return
        if 0 < self.epoch < self.max_epochs and self.epoch % self.decide_every == 0 and not self.should_stop:
            snap = self._snapshot()
            if self.mode == "sync":
                (out,), (ms,) = call_policy_batch(self.policy, [snap], self.timeout)
                self._finish(snap, out, ms, submitted=self.step)
            elif self._pending is not None:
                self._log(snap, PolicyFailure("timeout", "previous decision still running"), 0.0, "continue", None,
                          ["timeout"], "fallback", None)
            else:
                self._submit(snap)

    def _nan_guard(self, metrics: dict) -> bool:
        """The recorder's divergence rule (``tmsim.core.outcome.is_diverged``: a non-finite loss, or val loss above
        3x the initial one), plus non-finite parameters (the HF Trainer filters NaN/inf from its logged losses)."""
        vals = {k: _num(metrics.get(k)) for k in ("train_loss", "val_loss", "loss", "eval_loss", "grad_norm")}
        val = vals["val_loss"] if vals["val_loss"] is not None else vals["eval_loss"]
        initial = next((h["val_loss"] for h in self.history if h["val_loss"] is not None), None)
        if any(v is not None and not math.isfinite(v) for v in vals.values()):
            return True
        if initial is not None and is_diverged(val, initial):
            return True
        if self.model is not None:
            import torch

            # One reduction per tensor, one check in all: a NaN or inf anywhere makes its tensor's sum non-finite.
            with torch.no_grad():
                sums = torch.stack([p.detach().float().sum() for p in self.model.parameters()])
                return not bool(torch.isfinite(sums).all())
        return False

    # --- async machinery ----------------------------------------------------------------------------------------
    def _submit(self, snap: Snapshot) -> None:
        ticket = {"snap": snap, "step": self.step, "t0": time.perf_counter()}
        self._pending = ticket

        def work():
            (out,), (ms,) = call_policy_batch(self.policy, [snap], self.timeout)
            self._results.put((ticket, out, ms))

        threading.Thread(target=work, daemon=True, name="tmsim-live-policy").start()

    def _collect(self) -> None:
        try:
            ticket, out, ms = self._results.get_nowait()
        except queue.Empty:
            return
        if ticket is not self._pending:
            return
        self._pending = None
        self._finish(ticket["snap"], out, ms, submitted=ticket["step"])

    def _finish(self, snap: Snapshot, out, ms: float, submitted: int) -> None:
        act, violations = validate(out, snap, self.bounds)
        stale = self.step - submitted
        if self.mode == "async" and stale > self.stale_steps:
            log.warning("tmsim live: decision for epoch %d arrived %d steps late (> %d): dropped", snap.epoch, stale, self.stale_steps)
            self._log(snap, out, ms, "continue", None, violations + ["stale"], "fallback", stale)
            return
        if isinstance(getattr(out, "value", out), PolicyFailure):
            log.warning("tmsim live: policy failed at epoch %d (%s): training unchanged", snap.epoch, out)
        self._apply(act)
        self._log(snap, out, ms, act.action, act, violations, act.source, stale)
        self._chain[snap.epoch] = act.action if act.intervenes else "continue"

    def wait(self, timeout: float | None = None) -> None:
        """Block until the decision in flight has been collected (tests and the end of training)."""
        t_end = time.perf_counter() + (timeout if timeout is not None else self.timeout)
        while self._pending is not None and time.perf_counter() < t_end:
            time.sleep(0.005)
            self._collect()

    # --- applying an action -------------------------------------------------------------------------------------
    def _apply(self, act: ValidatedAction) -> None:
        if act.stop:
            self.should_stop = True
            return
        old, new = self.hparams, act.hparams
        # A knob with nothing attached to turn it is not changed, and the trace must not say it was.
        if self.optimizer is None and (new.lr != old.lr or new.weight_decay != old.weight_decay):
            log.warning("tmsim live: an LR/weight-decay change was validated but no optimizer is attached: not applied")
            new = new.with_(lr=old.lr, weight_decay=old.weight_decay)
        if self.model is None and new.dropout != old.dropout:
            log.warning("tmsim live: a dropout change was validated but no model is attached: not applied")
            new = new.with_(dropout=old.dropout)
        if self.optimizer is not None:
            if new.lr != old.lr:
                f = new.lr / old.lr
                for g in self.optimizer.param_groups:
                    g["lr"] *= f
                    if "initial_lr" in g:
                        g["initial_lr"] *= f
                if self.scheduler is not None and hasattr(self.scheduler, "base_lrs"):
                    self.scheduler.base_lrs = [b * f for b in self.scheduler.base_lrs]
            if new.weight_decay != old.weight_decay:
                for g in self.optimizer.param_groups:
                    if _is_decay_group(g):
                        g["weight_decay"] = new.weight_decay
        if new.dropout != old.dropout and self.model is not None:
            from torch import nn

            for m in self.model.modules():
                if isinstance(m, nn.Dropout):
                    m.p = new.dropout
                if hasattr(m, "attention_dropout") and isinstance(getattr(m, "attention_dropout"), float):
                    m.attention_dropout = new.dropout
        if new.aux_loss_weight != old.aux_loss_weight:
            if self.loss_weight_setter is None:
                log.warning("tmsim live: a loss-weight change was validated but no setter is registered: not applied")
                new = new.with_(aux_loss_weight=old.aux_loss_weight)
            else:
                self.loss_weight_setter(new.aux_loss_weight)
        self.hparams = new

    def _knobs(self) -> dict:
        hp = self.hparams
        return {"lr": hp.lr, "weight_decay": hp.weight_decay, "dropout": hp.dropout, "aux_loss_weight": hp.aux_loss_weight}

    # --- snapshots and the trace --------------------------------------------------------------------------------
    def _snapshot(self) -> Snapshot:
        """The same snapshot the simulator builds at a recorded node (one function serves both)."""
        run = RunInfo(self.run_id, self.task, self.decide_every, self.max_epochs, self.n_losses)
        return build_snapshot(run, self.history, self._chain, self.epoch, self.bounds)

    def _log(self, snap, out, ms, action, act, violations, source, stale) -> None:
        self.decision_rows.append(decision_row(self.policy, snap, out, ms, act, violations, action, source, stale,
                                               step=self.step))

    def close(self) -> Path | None:
        """Collect an answer still in flight, then write the trace (if ``record_dir``). Safe to call twice."""
        if self._closed:
            return None
        self._closed = True
        if self._pending is not None:
            self.wait(min(self.timeout, 5.0))
        if self.record_dir is None:
            return None
        return self.write_trace(self.record_dir)

    def write_trace(self, out: Path) -> Path:
        diverged = any(h["diverged"] for h in self.history)
        status = "diverged" if diverged else ("complete" if self.epoch >= self.max_epochs or self.should_stop else "incomplete")
        hp = self.hp_init
        runs = pa.Table.from_pylist([dict(
            run_id=self.run_id, parent_run_id=None, root_run_id=self.run_id, depth=0, branch_epoch=None,
            branch_action=None, task=self.task, scenario=self.scenario, seed=self.seed,
            model=type(self.model).__name__ if self.model is not None else None, n_params=None, dataset=None,
            init_lr=hp.lr, init_weight_decay=hp.weight_decay, init_dropout=hp.dropout, init_aux_loss_weight=hp.aux_loss_weight,
            settings_json=dumps({"mode": self.mode, "stale_steps": self.stale_steps, "promotion": self.promotion}),
            max_epochs=self.max_epochs, decide_every=self.decide_every, status=status, end_epoch=max(self.epoch, 0),
            source="live", recorder_version="tmsim-live")], schema=RUNS)
        rows = []
        prev = None
        for h in self.history:
            rows.append(dict(run_id=self.run_id, task=self.task, epoch=h["epoch"], lr=h["lr"], weight_decay=h["weight_decay"],
                             dropout=h["dropout"], aux_loss_weight=h["aux_loss_weight"], train_loss=_finite(h["train_loss"]),
                             val_loss=_finite(h["val_loss"]), train_acc=_finite(h["train_acc"]), val_acc=_finite(h["val_acc"]),
                             grad_norm=_finite(h["grad_norm"]), update_ratio=_finite(h["update_ratio"]),
                             wall_time_s=(h["wall"] - prev) if prev else None, diverged=h["diverged"], source="live"))
            prev = h["wall"]
        stem = safe_filename(self.run_id)
        write_table(pa.Table.from_pylist(rows, schema=EPOCHS), out / "epochs" / f"task={self.task}" / f"{stem}.parquet", "epochs")
        write_table(pa.Table.from_pylist(self.decision_rows, schema=DECISIONS),
                    out / "decisions" / f"task={self.task}" / f"{stem}.parquet", "decisions")
        return write_table(runs, out / "runs" / f"task={self.task}" / f"{stem}.parquet", "runs")

    def __enter__(self) -> "LiveManager":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _is_decay_group(group: dict) -> bool:
    """A group weight decay applies to: it holds at least one matrix (HF keeps biases and norms apart at 0.0)."""
    return any(getattr(p, "ndim", 2) >= 2 for p in group["params"])


def _num(v) -> float | None:
    if v is None:
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _finite(v):
    return v if v is None or math.isfinite(v) else None
