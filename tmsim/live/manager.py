"""The live hook: a promoted policy steering a real training loop, never blocking it, recorded as a trace.

Plain PyTorch::

    with LiveManager.from_spec("policies/rules.toml", optimizer=opt, scheduler=sched, model=model,
                               max_epochs=20, decide_every=5, task="digits-mlp", scenario="overfit",
                               record_dir="traces-live") as mgr:
        mgr.on_epoch_end(evaluate())         # epoch 0: the evaluation before training
        for epoch in range(20):
            for batch in loader:
                ...; opt.step(); sched.step()
                mgr.on_step_end()            # applies an arrived decision at this step boundary
                if mgr.should_stop: break
            mgr.on_epoch_end({"train_loss": ..., "val_loss": ..., "val_acc": ...})
            if mgr.should_stop: break

Hugging Face: ``trainer.add_callback(TMSimCallback(mgr))`` (``tmsim.live.hf``; see ``examples/``).
stable-baselines3: ``agent.learn(..., callback=TMSimSB3Callback(mgr, eval_env))`` (``tmsim.live.sb3``): decisions at
evaluations every few rollouts, exploration knobs turned on the running agent, the safety budget enforced.

- **It reads what it steers.** The LR (the scheduler's base, else the first group's), weight decay (the largest of
  the param groups') and dropout (the largest ``nn.Dropout.p`` or ``attention_dropout``) are read from the attached
  optimizer, scheduler and model, for every epoch row and before and after every change; ``hparams`` is only needed
  for what no attached object holds. How each knob is turned is in ``tmsim.tasks.actuators``: every scheduler of
  ``torch.optim.lr_scheduler`` keeps an LR change (an unknown one is refused at start), groups at zero weight decay
  stay at zero, and an action whose knob has nothing attached is neither offered nor applied (``no_target``).
- **Asynchronous by default.** At a decision epoch the snapshot goes to a background worker and training goes on.
  The validated action is applied at the first step boundary after it arrives. An answer that arrives more than
  ``stale_steps`` steps after its snapshot is dropped (``stale``). ``mode="sync"`` decides and applies at the epoch
  boundary itself. Policies that compute (``llm``, ``gbm``, ``lookup``, ``optuna`` and every kind tmsim does not
  ship) run in their own process (``policy_process``), so their work cannot hold the training thread's GIL.
- **Nothing a policy returns reaches the training thread raw.** The guarded call makes every output plain in the
  worker; validation, the no-target check, applying and the audit row run under one more guard, and the policy's
  name and version are read once, under a guard, at construction.
- **Safety.** The validator of the simulator judges every proposal. The recorder's divergence rule (a non-finite
  loss, or val loss above 3x the initial one), non-finite parameters and, for RL runs, a safety cost over its budget
  stop the run.
- **Promotion and scope.** The manager builds the policy from its spec itself after the spec's promotion record
  checks, runs it under the bounds of the suite it was promoted on, and refuses a run outside the record's scope
  (task, scenario family, decision cadence, run length) unless ``out_of_scope`` gives a reason, which the trace keeps.
- **Recording and resume.** ``close()`` (bounded: ``close_timeout``) records a decision still in flight as
  ``abandoned`` and writes ``runs``, ``epochs`` and ``decisions`` under ``record_dir`` (a trace or state written
  mid-run, at a checkpoint, holds the decision in flight as abandoned too). ``state_dict()`` /
  ``resume_state=`` carry the manager across a checkpoint; the resumed run is a branch of the original
  (``branch_action = "resume"``), so ``lineage`` stitches the whole run.
"""
from __future__ import annotations

import json
import logging
import math
import queue
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import pyarrow as pa

from ..core.actions import Bounds, PolicyFailure, ValidatedAction, validate
from ..core.decision import (RunInfo, build_snapshot, call_policy_batch, decision_row, failure, policy_identity,
                             run_key)
from ..core.hparams import KNOBS, Hyperparams
from ..core.menu import ACTION_TABLE
from ..core.names import safe_filename, safe_name
from ..core.outcome import is_diverged
from ..core.snapshot import Snapshot
from ..traces.format import DECISIONS, EPOCHS, RL_COLUMNS, RUNS, dumps, write_table
from ..tasks import actuators

log = logging.getLogger("tmsim.live")

#: Policy kinds that run in their own process by default (``policy_process=None``): kinds that compute per decision.
#: Kinds tmsim does not ship always do (``make_policy`` isolates them).
COMPUTE_KINDS = frozenset({"llm", "gbm", "lookup", "optuna"})
#: Format of ``LiveManager.state_dict()``.
STATE_FORMAT = "tmsim-live-state-1"


class NotPromotedError(PermissionError):
    """The policy has no promotion record that matches its files, or the run lies outside the record's scope."""


class LiveManager:
    """See the module documentation. ``spec`` (a path or ``PolicySpec``) is needed for the promotion check; with
    ``policy=None`` the manager builds the policy from ``spec`` (``from_spec`` says the same in one call).

    Parameters
    ----------
    max_epochs, decide_every : the run's length and cadence in evaluations ("epochs"); decisions at the multiples of
        ``decide_every`` strictly between 0 and ``max_epochs``.
    hparams : the knobs no attached object holds (``aux_loss_weight``), and the LR/weight decay before an optimizer
        is attached; read values win over given ones (a disagreement is logged).
    optimizer, scheduler, model : what is steered (``attach`` adds them later; the HF callback does).
    setters, getters : ``{knob: callable}`` for knobs a plain loop holds itself (an RL loop's ``ent_coef``,
        ``clip_range``, ``log_std``; a loss weight): a setter takes the new value, a getter returns the value in force
        (for a learned one such as ``log_std``, which an action then moves by its step from the value read). Give the
        starting values in ``hparams``. ``loss_weight_setter`` is ``setters={"aux_loss_weight": ...}``.
    promotions : the records directory (default ``tmsim.core.config.default_promotions()``).
    out_of_scope : a reason (str) to run a promoted policy outside its record's scope; recorded in the trace.
    policy_process : run the policy in its own process (None: for ``COMPUTE_KINDS`` and foreign kinds built from a
        spec; a policy object passed in runs in a thread unless this is True, then it is pickled into the process).
    close_timeout : seconds ``close()`` waits for a decision in flight before recording it as abandoned.
    resume_state : a ``state_dict()`` saved with a checkpoint: the run continues as a branch of the saved one.
    """

    def __init__(self, policy=None, *, max_epochs: int, hparams: Hyperparams | None = None, decide_every: int = 1,
                 optimizer=None, scheduler=None, model=None, loss_weight_setter: Callable[[float], None] | None = None,
                 setters: dict[str, Callable[[float], None]] | None = None,
                 getters: dict[str, Callable[[], float]] | None = None,
                 spec=None, promotions: str | Path | None = None, allow_unpromoted: bool = False,
                 out_of_scope: str | None = None, bounds: Bounds | None = None, mode: str = "async",
                 stale_steps: int = 100, timeout: float = 30.0, close_timeout: float = 5.0,
                 policy_process: bool | None = None, task: str = "custom", scenario: str = "live", seed: int = 0,
                 run_id: str | None = None, record_dir: str | Path | None = None, n_losses: int | None = None,
                 resume_state: dict | None = None):
        if mode not in ("async", "sync"):
            raise ValueError("mode must be 'async' or 'sync'")
        if int(max_epochs) < 1 or int(decide_every) < 1:
            raise ValueError("max_epochs and decide_every must be at least 1")
        safe_name(task, "task")  # the task names the trace's partition directory
        self.mode = mode
        self.hparams = hparams
        self.hp_init: Hyperparams | None = None
        self.max_epochs, self.decide_every = int(max_epochs), int(decide_every)
        self.optimizer = self.scheduler = self.model = self.agent = None
        self.loss_weight_setter = loss_weight_setter
        # knobs a plain loop holds itself (an RL loop's ent_coef, clip range, action-noise log-std): set through
        # ``setters``, read through ``getters`` where given (else the manager keeps the value it set)
        self.setters = dict(setters or {})
        if loss_weight_setter is not None:
            self.setters.setdefault("aux_loss_weight", loss_weight_setter)
        self.getters = dict(getters or {})
        unknown = sorted((set(self.setters) | set(self.getters)) - set(KNOBS))
        if unknown:
            raise ValueError(f"setters/getters name unknown knob(s) {unknown}; knobs: {', '.join(KNOBS)}")
        self.stale_steps, self.timeout, self.close_timeout = stale_steps, timeout, close_timeout
        self.task, self.scenario, self.seed = task, scenario, seed
        self.run_id = run_id or f"live:{task}:{uuid.uuid4().hex[:8]}"
        self.root_run_id, self.parent_run_id, self.branch_epoch, self.depth = self.run_id, None, None, 0
        self.record_dir = Path(record_dir) if record_dir else None
        self.n_losses = n_losses or (2 if hparams is not None and hparams.aux_loss_weight is not None else 1)
        self.policy, self.promotion, promoted_bounds, record = self._check_promotion(
            policy, spec, promotions, allow_unpromoted, policy_process)
        self.scope = self._check_scope(record, out_of_scope)
        self._owns_policy = policy is None
        from ..policies.isolated import IsolatedPolicy

        if policy is not None and policy_process and not isinstance(self.policy, IsolatedPolicy):
            self.policy, self._owns_policy = IsolatedPolicy.from_object(self.policy), True
        self.policy_process = isinstance(self.policy, IsolatedPolicy)
        pid, ver = policy_identity(self.policy)
        self._identity = SimpleNamespace(policy_id=pid, version=ver)
        # a promoted policy runs under the bounds of the suite it was judged on, unless the caller sets them
        self.bounds = bounds or promoted_bounds or Bounds()
        self.step = 0
        self.epoch = -1
        self.should_stop = False
        self.history: list[dict] = []
        self.decision_rows: list[dict] = []
        self._first_row = 0  # rows before it belong to the run this one resumed
        self._first_decision = 0
        self._chain: dict[int, str] = {}
        self._results: queue.Queue = queue.Queue()
        self._pending: dict | None = None  # the decision in flight (async)
        self._closed = False
        self._warned: set[str] = set()
        self.train_seconds: float | None = None
        if resume_state is not None:
            self.load_state_dict(resume_state)
        if optimizer is not None or scheduler is not None or model is not None:
            self.attach(optimizer=optimizer, scheduler=scheduler, model=model)

    @classmethod
    def from_spec(cls, spec, *, promotions: str | Path | None = None, **run_options) -> "LiveManager":
        """The manager for the policy ``spec`` describes, built by the manager itself after the spec's promotion
        record checks. ``spec`` is a path or a ``PolicySpec``; ``run_options`` are the constructor's other keyword
        arguments.

        >>> mgr = LiveManager.from_spec("policies/rules.toml", max_epochs=12, decide_every=3, optimizer=opt,
        ...                             task="digits-mlp", scenario="overfit")  # doctest: +SKIP
        >>> mgr.promotion  # doctest: +SKIP
        'promoted (rules)'
        """
        return cls(None, spec=spec, promotions=promotions, **run_options)

    # --- promotion and scope -------------------------------------------------------------------------------------
    def _check_promotion(self, policy, spec, promotions, allow_unpromoted: bool, policy_process: bool | None):
        """(policy, promotion string, bounds of the promoted suite or None, record or None); raises
        ``NotPromotedError``."""
        # only the record checker: the simulator, leaderboard, DuckDB and scikit-learn stay out of a training process
        from ..core.config import default_promotions
        from ..evaluate.promote import verify_record
        from ..policies.kinds import built_from, make_policy

        def build(spec):
            iso = policy_process if policy_process is not None else spec.kind in COMPUTE_KINDS
            return make_policy(spec, isolate=True if iso else None)

        problems: list[str] = []
        if spec is not None:
            from ..policies.spec import PolicySpec, load_spec

            spec = spec if isinstance(spec, PolicySpec) else load_spec(spec)
            res = verify_record(spec, Path(promotions) if promotions else default_promotions())
            for n in res.notes:
                log.warning("tmsim live: %s", n)
            problems = list(res.problems)
            if policy is not None and not built_from(policy, spec):
                problems.append(f"the policy object ({type(policy).__name__}) was not built from {spec.path or spec.name} "
                                "by make_policy; pass the spec alone (LiveManager.from_spec) to run what was promoted")
            if res.ok and not problems:
                # built only now, after its code and files were checked against the record
                return (policy if policy is not None else build(spec), f"promoted ({spec.name})",
                        Bounds(**res.record["bounds"]), res.record)
        else:
            if policy is None:
                raise ValueError("LiveManager needs a policy spec (spec=...), or a policy object with allow_unpromoted=True")
            problems = ["no policy spec given, so no promotion record can be checked"]
        if not allow_unpromoted:
            raise NotPromotedError("refusing an unpromoted policy: " + "; ".join(problems)
                                   + " (run `tmsim promote`, or pass allow_unpromoted=True to override, which is recorded)")
        log.warning("tmsim live: RUNNING AN UNPROMOTED POLICY (allow_unpromoted=True): %s", "; ".join(problems))
        if policy is None:
            policy = build(spec)
        return policy, "UNPROMOTED (allow_unpromoted=True): " + "; ".join(problems), None, None

    def _check_scope(self, record: dict | None, out_of_scope: str | None) -> str:
        """The scope note the trace records; raises ``NotPromotedError`` for a run outside a promoted scope."""
        if record is None:
            return "unpromoted"
        from ..evaluate.promote import outside_scope

        why = outside_scope(record["scope"], self.task, self.scenario, self.decide_every, self.max_epochs)
        if not why:
            return "within the promoted scope"
        if not out_of_scope:
            raise NotPromotedError(
                f"refusing to run {record['policy']} outside the scope it was promoted on (suite {record['suite']}): "
                + "; ".join(why) + ". Pass out_of_scope='<reason>' to run it anyway (recorded in the trace), or "
                "record and promote on this task")
        log.warning("tmsim live: running OUTSIDE the promoted scope (%s): %s", out_of_scope, "; ".join(why))
        return f"OUTSIDE the promoted scope (override: {str(out_of_scope)[:500]}): " + "; ".join(why)

    # --- what is steered -----------------------------------------------------------------------------------------
    def attach(self, *, optimizer=None, scheduler=None, model=None, agent=None) -> None:
        """Attach the objects the manager steers (those given), check the scheduler, and read the knobs they hold.
        ``agent`` is a stable-baselines3 on-policy algorithm (PPO, A2C): its LR, entropy coefficient, clip range and
        action-noise log-std are the knobs (``tmsim.tasks.rl.read_agent``/``apply_agent``; the SB3 callback in
        ``tmsim.live.sb3`` attaches it). Raises ``actuators.UnsupportedScheduler`` for a scheduler whose state an LR
        change cannot be kept in."""
        actuators.check_scheduler(scheduler)
        self.optimizer = optimizer if optimizer is not None else self.optimizer
        self.scheduler = scheduler if scheduler is not None else self.scheduler
        self.model = model if model is not None else self.model
        self.agent = agent if agent is not None else self.agent
        if self.optimizer is not None and self.scheduler is None and any("initial_lr" in g for g in self.optimizer.param_groups):
            self._warn_once("no-scheduler", "tmsim live: the optimizer's groups carry 'initial_lr', so an LR scheduler "
                            "drives it, but none was attached: it may undo LR changes; pass scheduler=")
        given = self.hparams
        self.hparams = self._read()
        if given is not None:
            for k in KNOBS:
                a, b = getattr(given, k), getattr(self.hparams, k)
                if a is not None and b is not None and not math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12):
                    self._warn_once(f"read-{k}", "tmsim live: hparams.%s = %g, but the attached objects hold %g: "
                                    "using what they hold", k, a, b)

    def _read(self) -> Hyperparams:
        """The knobs in force: read from the attached objects, the rest from ``hparams``."""
        base = self.hparams or Hyperparams(lr=float("nan"))
        if self.agent is not None:
            from ..tasks.rl import read_agent

            return base.with_(**read_agent(self.agent))
        read = actuators.read_knobs(self.optimizer, self.scheduler, self.model)
        read.update({k: float(g()) for k, g in self.getters.items()})
        return base.with_(**read)

    def targets(self) -> set[str]:
        """The knobs an action can turn now: an optimizer for ``lr`` (and ``weight_decay`` where a group decays or
        can), dropout modules for ``dropout``, a setter for ``aux_loss_weight``."""
        out = set()
        if self.agent is not None:
            from ..tasks.rl import agent_targets

            return agent_targets(self.agent)
        if self.optimizer is not None:
            out.add("lr")
            if actuators.decay_targets(self.optimizer):
                out.add("weight_decay")
        if actuators.dropout_sites(self.model):
            out.add("dropout")
        out |= {k for k in self.setters if self.hparams is not None and getattr(self.hparams, k) is not None}
        return out

    # --- the hooks ----------------------------------------------------------------------------------------------
    def on_step_end(self) -> None:
        """Call after every optimizer step: applies a decision that has arrived, drops stale ones."""
        self.step += 1
        if self.mode == "async" and self._pending is not None:
            self._collect()

    def on_epoch_end(self, metrics: dict[str, Any], epoch: int | None = None, step: int | None = None) -> None:
        """Call after each evaluation with at least ``val_loss`` (and ``train_loss``; accuracies, ``grad_norm``,
        ``update_ratio`` where known). ``epoch`` (the evaluation's index) defaults to one more than the last: the
        first call is epoch 0, an evaluation before training, as in recorded traces; a repeated or earlier index is
        refused. ``step`` (the optimizer step) defaults to the steps counted by ``on_step_end``."""
        e = self.epoch + 1 if epoch is None else int(epoch)
        if e <= self.epoch:
            raise ValueError(f"evaluation index {e} after {self.epoch}: each evaluation needs a new, larger index")
        self.epoch = e
        if step is not None:
            self.step = int(step)
        if self.hparams is None or (self.optimizer is None and self.agent is None and math.isnan(self.hparams.lr)):
            raise ValueError("the live hook knows no LR: attach an optimizer or pass hparams")
        self.hparams = self._read()
        row = {k: _num(metrics.get(k)) for k in ("train_loss", "val_loss", "train_acc", "val_acc", "grad_norm", "update_ratio",
                                                 *RL_COLUMNS)}
        row.update(epoch=self.epoch, step=self.step, **self.hparams.to_dict(), wall=time.time())
        if self.hp_init is None:
            self.hp_init = self.hparams
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
        cost, budget = _num(metrics.get("safety_cost")), _num(metrics.get("safety_budget"))
        if cost is not None and budget is not None and cost > budget:
            log.error("tmsim live: safety cost %.3g over its budget %.3g: the safety monitor stops the run", cost, budget)
            return True
        model = self.model if self.model is not None else getattr(self.agent, "policy", None)
        if model is not None:
            import torch

            # One reduction per tensor, one check in all: a NaN or inf anywhere makes its tensor's sum non-finite.
            with torch.no_grad():
                sums = torch.stack([p.detach().float().sum() for p in model.parameters()])
                return not bool(torch.isfinite(sums).all())
        return False

    # --- async machinery ----------------------------------------------------------------------------------------
    def _submit(self, snap: Snapshot) -> None:
        ticket = {"snap": snap, "step": self.step, "t0": time.perf_counter()}
        self._pending = ticket

        def work():
            try:
                (out,), (ms,) = call_policy_batch(self.policy, [snap], self.timeout)
            except BaseException as exc:  # noqa: BLE001 -- the answer must arrive, whatever happened
                out, ms = failure("policy_exception", exc), (time.perf_counter() - ticket["t0"]) * 1000
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
        """Validate, apply and audit one answer. Runs on the training thread, so nothing in it may raise: the
        answer is already plain (``Answer``), and any harness error on the way is a logged fallback row."""
        stale = self.step - submitted
        try:
            act, violations = validate(out, snap, self.bounds)
            if self.mode == "async" and stale > self.stale_steps:
                log.warning("tmsim live: decision for epoch %d arrived %d steps late (> %d): dropped", snap.epoch, stale,
                            self.stale_steps)
                self._log(snap, out, ms, "continue", None, violations + ["stale"], "fallback", stale, step=submitted)
                return
            if isinstance(getattr(out, "value", None), PolicyFailure):
                log.warning("tmsim live: policy failed at epoch %d (%s): training unchanged", snap.epoch, out.value)
            missing = [k for k in act.changed if k not in self.targets()]
            if missing:
                log.warning("tmsim live: %s at epoch %d changes %s, which nothing attached holds: refused",
                            act.action, snap.epoch, ", ".join(missing))
                self._log(snap, out, ms, "continue", None, violations + ["no_target"], "fallback", stale, step=submitted)
                return
            applied = self._apply(act, snap.hparams)
            self._log(snap, out, ms, act.action, act, violations, act.source, stale, applied, step=submitted)
            self._chain[snap.epoch] = act.action if act.intervenes else "continue"
        except Exception as exc:  # noqa: BLE001 -- never raise on the training thread
            log.error("tmsim live: decision at epoch %d could not be applied (%s: %s): training unchanged",
                      snap.epoch, type(exc).__name__, exc)
            self._log(snap, out, ms, "continue", None, ["apply_failed"], "fallback", stale, step=submitted)

    def wait(self, timeout: float | None = None) -> None:
        """Block until the decision in flight has been collected (tests and the end of training)."""
        t_end = time.perf_counter() + (timeout if timeout is not None else self.timeout)
        while self._pending is not None and time.perf_counter() < t_end:
            time.sleep(0.005)
            self._collect()

    # --- applying an action -------------------------------------------------------------------------------------
    def _apply(self, act: ValidatedAction, seen: Hyperparams) -> dict:
        """Apply a validated action to the attached objects; returns {knob: {"before", "after"}} as read from them.
        ``seen`` holds the values the decision was made on; an LR change is applied as the factor the policy chose
        (in async mode a scheduler such as ReduceLROnPlateau may have moved the LR since)."""
        if act.stop:
            self.should_stop = True
            return {}
        before, new = self._read(), act.hparams
        if "log_std" in act.changed and None not in (before.log_std, seen.log_std):
            # learned, so it may have moved since the policy saw it: it moves by the step the policy chose
            new = new.with_(log_std=before.log_std + new.log_std - seen.log_std)
        if self.agent is not None:
            from ..tasks.rl import apply_agent

            apply_agent(self.agent, before, new.with_(lr=before.lr * new.lr / seen.lr))  # the LR by the chosen factor
        else:
            actuators.apply_knobs(self.optimizer, self.scheduler, self.model, seen, new)
            for k in act.changed:
                if k in self.setters:
                    self.setters[k](getattr(new, k))
                    self.hparams = self.hparams.with_(**{k: getattr(new, k)})
        self.hparams = after = self._read()
        return {k: {"before": getattr(before, k), "after": getattr(after, k)} for k in act.changed}

    def _warn_once(self, key: str, msg: str, *args) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(msg, *args)

    # --- snapshots and the trace --------------------------------------------------------------------------------
    def _snapshot(self) -> Snapshot:
        """The same snapshot the simulator builds at a recorded node (one function serves both), its menu cut to
        the actions that have something attached to act on."""
        # a resumed run keeps the key of the run it continues (within one process: keys are salted per process)
        run = RunInfo(self.run_id, self.task, self.decide_every, self.max_epochs, self.n_losses,
                      run_key=run_key(self.root_run_id))
        snap = build_snapshot(run, self.history, self._chain, self.epoch, self.bounds)
        targets = self.targets()
        offered = tuple(a for a in snap.offered if ACTION_TABLE[a].knob is None or ACTION_TABLE[a].knob in targets)
        object.__setattr__(snap, "offered", offered)  # made here, seen by nothing yet
        return snap

    def _log(self, snap, out, ms, action, act, violations, source, stale, applied: dict | None = None,
             step: int | None = None) -> None:
        """One decisions row; ``step`` is the optimizer step of the decision point (the snapshot's)."""
        row = decision_row(self._identity, snap, out, ms, act, violations, action, source, stale,
                           step=self.step if step is None else step)
        if applied:
            body = json.loads(row["action_json"])
            body["applied"] = applied
            row["action_json"] = json.dumps(body, sort_keys=True, separators=(",", ":"))
        self.decision_rows.append(row)

    def close(self) -> Path | None:
        """Collect an answer still in flight (waiting at most ``close_timeout`` seconds; one still missing is
        recorded as ``abandoned``), stop the policy's process if the manager built it, then write the trace (if
        ``record_dir``). Safe to call twice."""
        if self._closed:
            return None
        self._closed = True
        try:
            if self._pending is not None:
                self.wait(self.close_timeout)
            if self._pending is not None:
                ticket = self._pending
                log.warning("tmsim live: the decision for epoch %d was still running at close: abandoned",
                            ticket["snap"].epoch)
                self.decision_rows.append(self._abandoned_row("still running at close"))
                self._pending = None
        finally:
            if self._owns_policy:
                _close_quietly(self.policy)
        if self.record_dir is None or not self.history:
            return None
        return self.write_trace(self.record_dir)

    def _abandoned_row(self, why: str) -> dict:
        """The decisions row of the decision in flight, as abandoned now (latency so far, steps since it was asked)."""
        ticket = self._pending
        ms = (time.perf_counter() - ticket["t0"]) * 1000
        return decision_row(self._identity, ticket["snap"], PolicyFailure("abandoned", why), ms, None, ["abandoned"],
                            "continue", "fallback", self.step - ticket["step"], step=ticket["step"])

    # --- resume --------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """What a resumed run needs (JSON-able): the run's identity, the history its snapshots are built from, the
        decisions so far and the step. Save it with the checkpoint (the HF callback does)."""
        # a decision still in flight is not in the checkpoint's optimizer: a run resumed from here never had it
        decisions = self.decision_rows + ([self._abandoned_row("still running at the checkpoint")]
                                          if self._pending is not None else [])
        return {"format": STATE_FORMAT, "run_id": self.run_id, "root_run_id": self.root_run_id, "depth": self.depth,
                "task": self.task, "scenario": self.scenario, "seed": self.seed, "max_epochs": self.max_epochs,
                "decide_every": self.decide_every, "epoch": self.epoch, "step": self.step,
                "should_stop": self.should_stop, "history": self.history, "chain": {str(k): v for k, v in self._chain.items()},
                "decisions": decisions, "hp_init": self.hp_init.to_dict() if self.hp_init else None}

    def load_state_dict(self, state: dict) -> None:
        """Continue the run ``state`` was saved from: a new run id, linked as a branch (``branch_action =
        "resume"``) of the saved run at its last epoch; the history and decisions before it are kept for snapshots
        and written by the saved run, not again."""
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError(f"resume_state: not a LiveManager state ({STATE_FORMAT})")
        for k in ("task", "max_epochs", "decide_every"):
            if state[k] != getattr(self, k):
                raise ValueError(f"resume_state: field {k!r} is {state[k]!r}, but this run has {getattr(self, k)!r}")
        self.parent_run_id, self.root_run_id = state["run_id"], state["root_run_id"]
        self.depth = int(state["depth"]) + 1
        self.branch_epoch = int(state["epoch"])
        self.run_id = f"{state['run_id']}+resume@{int(state['step'])}"
        self.epoch, self.step, self.should_stop = int(state["epoch"]), int(state["step"]), bool(state["should_stop"])
        self.history = [dict(h) for h in state["history"]]
        self._chain = {int(k): v for k, v in state["chain"].items()}
        self.decision_rows = [dict(r) for r in state["decisions"]]
        self._first_row, self._first_decision = len(self.history), len(self.decision_rows)
        if state.get("hp_init"):
            self.hp_init = Hyperparams(**state["hp_init"])

    def write_trace(self, out: Path) -> Path:
        diverged = any(h["diverged"] for h in self.history)
        status = "diverged" if diverged else ("complete" if self.epoch >= self.max_epochs or self.should_stop else "incomplete")
        hp = self.hp_init or self.hparams
        runs = pa.Table.from_pylist([dict(
            run_id=self.run_id, parent_run_id=self.parent_run_id, root_run_id=self.root_run_id, depth=self.depth,
            branch_epoch=self.branch_epoch, branch_action="resume" if self.parent_run_id else None, task=self.task,
            scenario=self.scenario, seed=self.seed,
            model=(type(self.agent.policy).__name__ if self.agent is not None
                   else type(self.model).__name__ if self.model is not None else None), n_params=None, dataset=None,
            **{f"init_{k}": getattr(hp, k) for k in KNOBS},
            settings_json=dumps({"mode": self.mode, "stale_steps": self.stale_steps, "promotion": self.promotion,
                                 "scope": self.scope, "policy_process": self.policy_process,
                                 "resumed_from": self.parent_run_id}),
            max_epochs=self.max_epochs, decide_every=self.decide_every, status=status, end_epoch=max(self.epoch, 0),
            source="live", recorder_version="tmsim-live")], schema=RUNS)
        rows = []
        prev = self.history[self._first_row - 1]["wall"] if self._first_row else None
        for h in self.history[self._first_row:]:
            rows.append(dict(run_id=self.run_id, task=self.task, epoch=h["epoch"], step=h.get("step"),
                             **{k: h.get(k) for k in KNOBS}, **{c: _finite(h.get(c)) for c in RL_COLUMNS},
                             train_loss=_finite(h["train_loss"]), val_loss=_finite(h["val_loss"]),
                             train_acc=_finite(h["train_acc"]), val_acc=_finite(h["val_acc"]),
                             grad_norm=_finite(h["grad_norm"]), update_ratio=_finite(h["update_ratio"]),
                             wall_time_s=(h["wall"] - prev) if prev else None, diverged=h["diverged"], source="live"))
            prev = h["wall"]
        decisions = self.decision_rows[self._first_decision:]  # this run's own (earlier ones: the resumed run's)
        if self._pending is not None:  # written mid-run (a checkpoint): the decision in flight, as it stands now
            decisions.append(self._abandoned_row("still running when the trace was written"))
        stem = safe_filename(self.run_id)
        write_table(pa.Table.from_pylist(rows, schema=EPOCHS), out / "epochs" / f"task={self.task}" / f"{stem}.parquet", "epochs")
        write_table(pa.Table.from_pylist(decisions, schema=DECISIONS),
                    out / "decisions" / f"task={self.task}" / f"{stem}.parquet", "decisions")
        return write_table(runs, out / "runs" / f"task={self.task}" / f"{stem}.parquet", "runs")

    def __enter__(self) -> "LiveManager":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _close_quietly(policy) -> None:
    """Stop what a policy the manager built holds (its process), bounded, never raising."""
    from ..policies.protocol import close_policy

    try:
        th = threading.Thread(target=close_policy, args=(policy,), daemon=True, name="tmsim-live-close")
        th.start()
        th.join(10.0)
    except Exception:  # noqa: BLE001
        pass


def _num(v) -> float | None:
    if v is None:
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _finite(v):
    return v if v is None or math.isfinite(v) else None
