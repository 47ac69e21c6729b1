"""Trace trees of a user's own Hugging Face ``Trainer``: ``tmsim record --trainer FILE.py:make_trainer``.

The user writes a factory that returns a configured ``transformers.Trainer`` (model, data, ``TrainingArguments``
with an evaluation cadence: ``eval_strategy="steps"`` or ``"epoch"``). tmsim calls it as
``make_trainer(output_dir=..., seed=...)`` (each keyword only if the factory takes it) once per run of the tree:

1. **Plan.** A probe trainer gives the run's length in optimizer steps and its evaluation steps. Every evaluation
   during training is a *decision point* (its index is the trace's ``epoch``; 0 is an evaluation before training;
   its optimizer step is the ``step`` column). The first ``depth`` points are branched with every menu action that
   has something to act on (``lr_down``, ``lr_up``, ``weight_decay_up``, ``dropout_up`` where the model has
   dropout, ``stop``), recursively, as ``tmsim record`` does for bundled tasks; ``budget`` samples the deeper
   branches (the root and every single-action branch come first).
2. **Cost first.** Three probe steps measure the step time; the estimate (optimizer steps to train x measured step
   time) is printed before any run starts, and ``dry_run`` stops there.
3. **Fork through the Trainer's own machinery.** The root trains from step 0 with a callback that records each
   evaluation and, at each branched decision point, asks the Trainer to save a checkpoint (model, optimizer,
   scheduler, RNG states, trainer state) right after that evaluation. A branch is a fresh trainer from the factory,
   ``train(resume_from_checkpoint=FORK)``: the optimizer and scheduler come back from the checkpoint, the action
   is applied at train begin through the live hook's actuators (so an LR change survives the scheduler, decay
   groups only), and the branch trains to the end, saving its own forks where it has children. ``stop`` trains
   nothing. A run whose evaluation loss is not finite or above 3x the initial one is stopped and marked diverged.
4. **Writing** is the recorder's: one tree per seed, epochs first and runs last, atomically, under the recorder's
   lock on ``out``; a tree already on disk with the same recipe is skipped, so an interrupted recording resumes.
5. **One torch thread.** A tree trains (and the probe measures) with one torch thread, in the recorder's process
   and in a Ray task alike (``one_torch_thread``), as the bundled recorder does: the thread count changes
   floating-point results, and a Ray task holds one CPU. With the CPU kernels ``tmsim.record_ray`` pins in its
   tasks, ``--executor ray`` on the recorder's machine kind writes the local recording's content exactly (timing
   columns aside); a tree trained on a GPU matches only in distribution.

Checkpoints live in ``OUT/.tmsim-trainer-work/`` while the tree is recorded and are removed after it.

**On demand** (``tmsim evaluate --trainer``: ``expansion="on-demand"``, ``grow_trainer_tree``): the same recorder
grows a tree in rounds. Every run it trains saves a fork checkpoint at every decision point after its own
(``OUT/.tmsim-forks/task=T/SCENARIO-sSEED~RUN/eK``, kept), so a later round resumes the branch a policy asks for
from the parent's checkpoint; a branch action may be an exact value (``set_lr=0.0123``), applied at train begin by
the same actuators. The new rows are added to the tree's files (epochs first, runs last), the old ones kept.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import math
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa

from .core.hparams import Hyperparams
from .core.menu import RECORD_MENU, apply_action
from .core.names import safe_name
from .core.outcome import is_diverged
from .traces.format import EPOCHS, RUNS, dumps, file_metadata, read_table, TraceError, write_table

RECORDER_VERSION = "tmsim-trainer-1"
#: File in a fork checkpoint holding the knobs the checkpoint itself does not (the model's dropout).
FORK_KNOBS = "tmsim_fork.json"
Branch = tuple[tuple[int, str], ...]
#: Optimizer steps the probe trains to measure the step time.
PROBE_STEPS = 3


@contextmanager
def one_torch_thread():
    """One torch thread inside, the previous count restored after (module docs, point 5).

    >>> import torch
    >>> with one_torch_thread():
    ...     torch.get_num_threads()
    1
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def load_factory(ref: str) -> Callable[..., Any]:
    """``path/to/file.py:name`` or ``package.module:name`` -> the factory (a clear error naming ``--trainer``)."""
    if ":" not in ref:
        raise ValueError(f"--trainer {ref!r}: expected FILE.py:FUNCTION or package.module:FUNCTION")
    mod_ref, name = ref.rsplit(":", 1)
    try:
        if mod_ref.endswith(".py") or "/" in mod_ref:
            path = Path(mod_ref).resolve()
            if not path.exists():
                raise ValueError(f"--trainer {ref!r}: no file {path}")
            modname = f"tmsim_trainer_{safe_name(path.stem.replace('-', '_'), 'trainer file').replace('.', '_')}"
            spec = importlib.util.spec_from_file_location(modname, path)
            module = importlib.util.module_from_spec(spec)
            sys.path.insert(0, str(path.parent))  # the factory's own helpers beside it
            try:
                sys.modules[modname] = module
                spec.loader.exec_module(module)
            finally:
                sys.path.remove(str(path.parent))
        else:
            module = importlib.import_module(mod_ref)
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001 -- the user's module failed to import
        raise ValueError(f"--trainer {ref!r}: importing it failed ({type(exc).__name__}: {exc})") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ValueError(f"--trainer {ref!r}: {name!r} is not a function of {mod_ref}")
    return fn


def _call_factory(fn, output_dir: Path, seed: int):
    params = inspect.signature(fn).parameters
    kw = {k: v for k, v in (("output_dir", str(output_dir)), ("seed", seed)) if k in params
          or any(p.kind is p.VAR_KEYWORD for p in params.values())}
    try:
        trainer = fn(**kw)
    except Exception as exc:  # noqa: BLE001 -- the user's factory: one line naming it, as for other bad input
        raise ValueError(f"the trainer factory {getattr(fn, '__qualname__', fn)} raised {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    from transformers import Trainer

    if not isinstance(trainer, Trainer):
        raise ValueError(f"the trainer factory returned {type(trainer).__name__}, not a transformers.Trainer")
    return trainer


@dataclass
class TrainerPlan:
    """The shape of one tree: optimizer steps, the steps of the evaluations during training, the branches."""

    max_steps: int
    eval_steps: list[int]  # step of evaluation k (k = 1, 2, ...); index 0 is the evaluation before training
    menu: tuple[str, ...]
    branches: list[Branch]
    step_seconds: float | None = None

    def step_of(self, index: int) -> int:
        return 0 if index == 0 else self.eval_steps[index - 1]

    @property
    def points(self) -> list[int]:
        """The decision points: indices of the evaluations before the last step."""
        return [i for i, s in enumerate(self.eval_steps, 1) if s < self.max_steps]

    def for_tree(self, spec: "TrainerTreeSpec") -> "TrainerPlan":
        """This plan with the branches of ``spec`` (its depth, budget and sampling seed)."""
        branches = plan_branches(self.points, self.menu, spec.depth, spec.budget,
                                 f"{spec.task}/{spec.scenario}/{spec.seed}")
        return TrainerPlan(self.max_steps, self.eval_steps, self.menu, branches, self.step_seconds)

    def steps_to_train(self) -> int:
        """Optimizer steps the whole tree trains: the root from 0, each branch from its fork (``stop``: none)."""
        total = 0
        for b in self.branches:
            if b and b[-1][1] == "stop":
                continue
            total += self.max_steps - (self.step_of(b[-1][0]) if b else 0)
        return total

    def estimate(self) -> str:
        n = self.steps_to_train()
        secs = f"{n * self.step_seconds:.0f} s" if self.step_seconds else "unknown time"
        pts = ", ".join(f"{i} (step {self.step_of(i)})" for i in self.points)
        return (f"{len(self.branches)} runs ({len(self.branches) - 1} branches, menu {', '.join(self.menu)}), "
                f"{n} optimizer steps x {self.step_seconds or float('nan'):.3f} s/step measured = about {secs}; "
                f"decision points (evaluation index, step): {pts}")


def _setting(value: Any) -> str:
    """A ``TrainingArguments`` setting as text: the enum's value (``IntervalStrategy.STEPS`` -> ``"steps"``), or the
    string itself where the argument was set after construction."""
    return str(getattr(value, "value", value))


def _eval_schedule(trainer) -> tuple[int, list[int]]:
    """(optimizer steps of the run, steps at which the Trainer evaluates during it)."""
    args = trainer.args
    per_epoch = max(math.ceil(len(trainer.get_train_dataloader()) / args.gradient_accumulation_steps), 1)
    max_steps = args.max_steps if args.max_steps and args.max_steps > 0 else int(math.ceil(args.num_train_epochs * per_epoch))
    strategy = _setting(args.eval_strategy)
    if isinstance(trainer.eval_dataset, dict):
        raise ValueError(f"the trainer has several eval datasets ({', '.join(map(str, trainer.eval_dataset))}): each "
                         "decision point reads one evaluation loss; give the factory's Trainer one eval_dataset")
    delay = args.eval_delay or 0
    if strategy == "steps":
        # the Trainer's own rule (DefaultFlowCallback): every eval_steps once eval_delay is reached, and at the end
        every = args.eval_steps or args.logging_steps
        every = int(every) if every >= 1 else max(int(math.ceil(every * max_steps)), 1)
        steps = [s for s in range(every, max_steps + 1, every) if s >= delay]
        if max_steps % every and max_steps >= delay:
            steps.append(max_steps)
    elif strategy == "epoch":
        epochs = int(math.ceil(max_steps / per_epoch))
        steps = [min(per_epoch * k, max_steps) for k in range(1, epochs + 1) if k >= delay]
    else:
        raise ValueError("the trainer evaluates never (eval_strategy='no'): tmsim decides at evaluations; set "
                         "eval_strategy='steps' (with eval_steps) or 'epoch' in its TrainingArguments")
    if not steps:
        raise ValueError(f"the trainer never evaluates during its {max_steps} steps (eval_delay {delay}): nothing to "
                         "decide at")
    log_strategy = _setting(args.logging_strategy)
    gap = min(b - a for a, b in zip([0] + steps, steps))
    if log_strategy != "steps" or not args.logging_steps or args.logging_steps > gap:
        raise ValueError(f"the trainer logs its training loss less often than it evaluates (logging_strategy "
                         f"{log_strategy!r}, logging_steps {args.logging_steps}, evaluations {gap} steps apart): every "
                         "recorded evaluation needs a training loss; set logging_strategy='steps' and logging_steps "
                         "at most the evaluation interval in its TrainingArguments")
    return max_steps, steps


def plan_branches(points: list[int], menu: tuple[str, ...], depth: int, budget: int | None, seed_key: str) -> list[Branch]:
    """Every branch, parents first: the first ``depth`` decision points, each action, recursively (``stop`` ends a
    path); with ``budget``, the root and the single-action branches first, deeper ones sampled reproducibly."""
    from .record import budgeted, expand_tree

    return budgeted(expand_tree(points[:depth], lambda branch: list(menu)), budget, seed_key)


@dataclass
class TrainerTreeSpec:
    """One tree of a user's trainer: the factory reference, names for the trace, the seed, depth and budget."""

    trainer: str
    task: str
    scenario: str = "default"
    seed: int = 0
    depth: int = 1
    budget: int | None = None
    expansion: str = "plan"  # "on-demand": grown in rounds by ``grow_trainer_tree`` (module docs)

    def __post_init__(self) -> None:
        if self.expansion not in ("plan", "on-demand"):
            raise ValueError(f"expansion must be 'plan' or 'on-demand', got {self.expansion!r}")
        safe_name(self.task, "task")
        safe_name(self.scenario, "scenario")
        if self.depth < 0 or self.seed < 0 or (self.budget is not None and self.budget < 1):
            raise ValueError("--depth and --seeds must be >= 0 and --budget >= 1")

    def run_id(self, branch: Branch) -> str:
        return f"{self.task}:{self.scenario}:s{self.seed}" + "".join(f"+e{e}:{a}" for e, a in branch)

    @property
    def replicates(self) -> int:
        return 1  # a Trainer's tree is one draw: its post-fork noise is the Trainer's own

    def recipe(self) -> str:
        extra = {} if self.expansion == "plan" else {"expansion": self.expansion}
        return dumps({"trainer": self.trainer, "task": self.task, "scenario": self.scenario, "seed": self.seed,
                      "depth": self.depth, "budget": self.budget, "recorder": RECORDER_VERSION, **extra})

    def paths(self, out: Path) -> dict[str, Path]:
        return {k: out / k / f"task={self.task}" / f"{self.scenario}-s{self.seed}.parquet" for k in ("runs", "epochs")}


def _menu_for(trainer) -> tuple[str, ...]:
    """The record menu, less the actions with nothing to act on (dropout on a model without any)."""
    from .tasks import actuators

    has_dropout = bool(actuators.dropout_sites(trainer.model))
    return tuple(a for a in RECORD_MENU if a != "dropout_up" or has_dropout)


def plan_trainer_tree(spec: TrainerTreeSpec, work: Path, factory=None, probe: bool = True) -> TrainerPlan:
    """The tree's plan and, with ``probe``, the measured step time (``PROBE_STEPS`` steps of a fresh trainer)."""
    from transformers import TrainerCallback

    factory = factory or load_factory(spec.trainer)
    trainer = _call_factory(factory, work / "probe", spec.seed)
    max_steps, steps = _eval_schedule(trainer)
    plan = TrainerPlan(max_steps, steps, _menu_for(trainer), [])
    if not plan.points:
        raise ValueError(f"--trainer {spec.trainer}: no evaluation before the last step ({max_steps}): nothing to decide")
    plan = plan.for_tree(spec)
    if probe:
        times: list[float] = []

        class Clock(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                times.append(time.perf_counter())
                if len(times) >= PROBE_STEPS:
                    control.should_training_stop = True
                return control

        trainer.args.eval_strategy = "no"
        trainer.args.save_strategy = "no"
        trainer.add_callback(Clock())
        with one_torch_thread():  # the step time the trees will train at
            trainer.train()
        if len(times) >= 2:
            plan.step_seconds = (times[-1] - times[0]) / (len(times) - 1)
    return plan


class _Recorder:
    """The callback of one run: an epoch row per evaluation, forks saved where the plan branches, divergence."""

    def __init__(self, spec: TrainerTreeSpec, branch: Branch, plan: TrainerPlan, forks_at: set[int], fork_dir: Path,
                 first_index: int, initial_val: float | None):
        from transformers import TrainerCallback

        outer = self

        class CB(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kw):
                if logs and isinstance(logs.get("loss"), (int, float)):
                    outer.losses.append(float(logs["loss"]))
                if logs and isinstance(logs.get("grad_norm"), (int, float)):
                    outer.grad_norm = float(logs["grad_norm"])

            def on_evaluate(self, args, state, control, metrics=None, model=None, optimizer=None, lr_scheduler=None, **kw):
                outer.evaluated(args, state, control, metrics or {}, model, optimizer, lr_scheduler)
                return control

            def on_save(self, args, state, control, **kw):
                outer.saved(args, state)
                return control

        self.callback = CB()
        self.spec, self.branch, self.plan = spec, branch, plan
        self.forks_at, self.fork_dir = forks_at, fork_dir
        self.index = first_index - 1
        self.initial_val = initial_val
        self.rows: list[dict] = []
        self.losses: list[float] = []
        self.grad_norm: float | None = None
        self.diverged = False
        self.forks: dict[int, Path] = {}
        self._pending_fork: int | None = None
        self.train_loss_0: float | None = None
        self.dropout: float | None = None
        self._t = time.perf_counter()

    def evaluated(self, args, state, control, m: dict, model, optimizer, scheduler) -> None:
        from .tasks import actuators

        self.index += 1
        knobs = actuators.read_knobs(optimizer, scheduler, model)
        knobs.setdefault("lr", float(args.learning_rate))
        knobs.setdefault("weight_decay", float(args.weight_decay))
        knobs.setdefault("dropout", 0.0)
        val = m.get("eval_loss")
        val = float(val) if isinstance(val, (int, float)) else None
        if self.initial_val is None and val is not None:
            self.initial_val = val
        diverged = val is None or not math.isfinite(val) or (self.initial_val is not None
                                                              and is_diverged(val, self.initial_val))
        acc = m.get("eval_accuracy")
        now = time.perf_counter()
        self.rows.append(dict(
            run_id=self.spec.run_id(self.branch), task=self.spec.task, epoch=self.index, step=state.global_step,
            lr=knobs["lr"], weight_decay=knobs["weight_decay"], dropout=knobs["dropout"], aux_loss_weight=None,
            train_loss=(_finite(sum(self.losses) / len(self.losses)) if self.losses
                        else self.train_loss_0 if self.index == 0 else None),
            val_loss=_finite(val), val_acc=_finite(acc) if isinstance(acc, (int, float)) else None,
            grad_norm=_finite(self.grad_norm), step_time_s=None, wall_time_s=now - self._t,
            diverged=diverged, source="recorded"))
        self._t = now
        self.losses = []
        if diverged:
            self.diverged = True
            control.should_training_stop = True
        elif self.index in self.forks_at and 0 < state.global_step < self.plan.max_steps:
            self._pending_fork = self.index
            self.dropout = actuators.nominal_dropout(model)
            control.should_save = True  # the Trainer saves right after this evaluation

    def saved(self, args, state) -> None:
        if self._pending_fork is None:
            return
        src = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        dst = self.fork_dir / f"e{self._pending_fork}"
        if dst.exists():
            shutil.rmtree(dst)
        # what the checkpoint does not hold: the model's dropout (a module attribute, not a tensor); written before
        # the move, so a fork in place is whole
        (src / FORK_KNOBS).write_text(json.dumps({"dropout": self.dropout}), encoding="utf-8")
        shutil.move(str(src), str(dst))  # out of reach of the Trainer's checkpoint rotation
        self.forks[self._pending_fork] = dst
        self._pending_fork = None


def _train_loss_now(trainer) -> float | None:
    import torch

    data = trainer.train_dataset
    n = min(len(data), len(trainer.eval_dataset)) if hasattr(trainer.eval_dataset, "__len__") else min(len(data), 256)
    cbs = list(trainer.callback_handler.callbacks)
    for cb in cbs:  # this evaluation is not a decision point: no callback hears of it
        trainer.callback_handler.remove_callback(cb)
    try:
        m = trainer.evaluate(eval_dataset=torch.utils.data.Subset(data, range(n)), metric_key_prefix="tmsim_train")
    finally:
        for cb in cbs:
            trainer.callback_handler.add_callback(cb)
    v = m.get("tmsim_train_loss")
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def _finite(v):
    return float(v) if v is not None and math.isfinite(float(v)) else None


def _apply_at_begin(action: str, fork: Path):
    """A callback that, at train begin, restores what the fork's checkpoint does not hold (the model's dropout, from
    ``FORK_KNOBS``) and applies ``action`` to the resumed optimizer, scheduler and model."""
    from transformers import TrainerCallback

    from .record import branch_hparams
    from .tasks import actuators

    class Apply(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kw):
            actuators.check_scheduler(lr_scheduler)
            saved = json.loads((fork / FORK_KNOBS).read_text(encoding="utf-8"))
            if saved.get("dropout") is not None:
                actuators.shift_dropout(model, saved["dropout"])
            hp = Hyperparams(lr=float("nan")).with_(**actuators.read_knobs(optimizer, lr_scheduler, model))
            actuators.apply_knobs(optimizer, lr_scheduler, model, hp, branch_hparams(hp, action))
            return control

    return Apply()


@dataclass
class TrainerGrowth:
    """An on-demand tree being grown (``grow_trainer_tree``): the runs already recorded, the root's validation loss
    before training and its runs row's description of the run (copied into each new row), and where its fork
    checkpoints are kept."""

    recorded: set[str]
    initial_val: float | None
    meta: dict
    store: Path

    def fork_dir(self, rid: str) -> Path:
        import hashlib

        return self.store.parent / f"{self.store.name}~{hashlib.sha256(rid.encode()).hexdigest()[:24]}"

    def saved(self, rid: str) -> dict[int, Path]:
        """{decision point: fork checkpoint} kept for the recorded run ``rid``."""
        d = self.fork_dir(rid)
        return {int(p.name[1:]): p for p in d.glob("e*") if (p / FORK_KNOBS).exists()} if d.exists() else {}


def record_trainer_tree(spec: TrainerTreeSpec, out: Path, plan: TrainerPlan | None = None, factory=None,
                        progress: Callable[[str], None] | None = None,
                        grow: TrainerGrowth | None = None) -> tuple[pa.Table, pa.Table]:
    """Train the tree for real, with one torch thread, and return its (runs, epochs) tables (module docs). With
    ``grow``, only the runs of ``plan`` it has not recorded are trained, forked from its kept checkpoints."""
    with one_torch_thread():
        return _record_trainer_tree(spec, out, plan, factory, progress, grow)


def _record_trainer_tree(spec: TrainerTreeSpec, out: Path, plan: TrainerPlan | None, factory,
                         progress: Callable[[str], None] | None,
                         grow: TrainerGrowth | None = None) -> tuple[pa.Table, pa.Table]:
    say = progress or (lambda msg: None)
    factory = factory or load_factory(spec.trainer)
    work = out / ".tmsim-trainer-work" / f"{spec.task}-{spec.scenario}-s{spec.seed}"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    try:
        plan = plan or plan_trainer_tree(spec, work, factory, probe=False)
        children: dict[Branch, set[int]] = {}
        for b in plan.branches:
            if b:
                children.setdefault(b[:-1], set()).add(b[-1][0])
        runs: list[dict] = []
        epochs: list[dict] = []
        forks: dict[Branch, dict[int, Path]] = {}
        initial_val: float | None = grow.initial_val if grow else None
        meta: dict[str, Any] = dict(grow.meta) if grow else {}
        for b in plan.branches:
            rid = spec.run_id(b)
            if grow is not None and rid in grow.recorded:  # recorded in an earlier round: fork from what it kept
                forks[b] = grow.saved(rid)
                continue
            parent_forks = forks.get(b[:-1], {}) if b else {}
            if b and b[-1][0] not in parent_forks:  # the parent diverged (or stopped) before this fork
                continue
            first = 0 if not b else b[-1][0] + 1
            if grow is None:
                fork_dir, forks_at = work / f"forks{len(runs)}", children.get(b, set())
            else:  # every later decision point: a policy may branch there in a later round
                fork_dir = grow.fork_dir(rid)
                forks_at = {k for k in plan.points if k > (b[-1][0] if b else 0)}
                if fork_dir.exists():
                    shutil.rmtree(fork_dir)  # left by a run that was stopped before it was written
            rec = _Recorder(spec, b, plan, forks_at, fork_dir, first, initial_val)
            fork_dir.mkdir(parents=True)
            status = "complete"
            trainer = None
            if b and b[-1][1] == "stop":  # ends at its fork: nothing to train
                rec.index = b[-1][0]
            else:
                trainer = _call_factory(factory, work / f"run{len(runs)}", spec.seed)
                trainer.add_callback(rec.callback)
                if not b:
                    # the evaluation before training (epoch 0), its training loss measured on a slice of the training
                    # data as large as the evaluation set (the Trainer has logged none yet)
                    rec.train_loss_0 = _train_loss_now(trainer)
                    trainer.evaluate()
                    initial_val = rec.initial_val
                    meta = _run_meta(spec, trainer)
                    trainer.train()
                else:
                    fork = parent_forks[b[-1][0]]
                    trainer.add_callback(_apply_at_begin(b[-1][1], fork))
                    trainer.train(resume_from_checkpoint=str(fork))
            if rec.diverged:
                status = "diverged"
            forks[b] = rec.forks
            epochs.extend(rec.rows)
            runs.append(dict(
                run_id=rid, parent_run_id=spec.run_id(b[:-1]) if b else None, root_run_id=spec.run_id(()),
                depth=len(b), branch_epoch=b[-1][0] if b else None, branch_action=b[-1][1] if b else None,
                task=spec.task, scenario=spec.scenario, seed=spec.seed, replicate=0, **meta,
                max_epochs=len(plan.eval_steps), decide_every=1, status=status, end_epoch=rec.index,
                source="recorded", recorder_version=RECORDER_VERSION))
            say(f"{rid}: {status}, {len(rec.rows)} evaluations")
            del trainer
    finally:
        shutil.rmtree(work, ignore_errors=True)
        try:
            work.parent.rmdir()  # the work folder goes once no other tree uses it
        except OSError:
            pass
    return pa.Table.from_pylist(runs, schema=RUNS), pa.Table.from_pylist(epochs, schema=EPOCHS)


def _run_meta(spec: TrainerTreeSpec, trainer) -> dict:
    from .tasks import actuators

    args = trainer.args
    model = trainer.model
    d = actuators.nominal_dropout(model)
    opt_name = _setting(args.optim)
    return dict(model=type(model).__name__, n_params=sum(p.numel() for p in model.parameters()),
                dataset=type(trainer.train_dataset).__name__, init_lr=float(args.learning_rate),
                init_weight_decay=float(args.weight_decay), init_dropout=d if d is not None else 0.0,
                init_aux_loss_weight=None, optimizer=opt_name,
                optimizer_json=dumps({"optim": opt_name, "adam_beta1": args.adam_beta1, "adam_beta2": args.adam_beta2,
                                      "adam_epsilon": args.adam_epsilon}),
                settings_json=dumps({"trainer": spec.trainer, "eval_strategy": _setting(args.eval_strategy),
                                     "eval_steps": args.eval_steps, "max_steps": args.max_steps,
                                     "num_train_epochs": args.num_train_epochs,
                                     "lr_scheduler_type": _setting(args.lr_scheduler_type),
                                     "batch_size": args.per_device_train_batch_size,
                                     "gradient_accumulation_steps": args.gradient_accumulation_steps}))


def is_recorded(spec: TrainerTreeSpec, out: Path) -> bool:
    paths = spec.paths(out)
    if not all(p.exists() for p in paths.values()):
        return False
    for kind, p in paths.items():
        try:
            read_table(p, kind)
        except TraceError:
            return False
        if file_metadata(p).get("tmsim.recipe") != spec.recipe():
            raise TraceError(f"{p}: field 'tmsim.recipe' differs from the requested recording; use --overwrite or another --out")
    return True


#: The columns of a root's runs row that describe the run itself (``_run_meta``): a grown branch's row copies them.
_META = ("model", "n_params", "dataset", "init_lr", "init_weight_decay", "init_dropout", "init_aux_loss_weight",
         "optimizer", "optimizer_json", "settings_json")


def grow_trainer_tree(out: Path, spec: TrainerTreeSpec, branches, plan: TrainerPlan, factory=None,
                      say: Callable[[str], None] | None = None) -> tuple[int, int]:
    """Add ``branches`` (and their prefixes, the root included) to the on-demand tree ``spec`` at ``out``, recording
    the root first when the tree is not there; returns (runs, evaluations) added (module docs, "On demand"). The
    caller holds the recorder's lock."""
    import pyarrow.compute as pc

    from .record import FORKS_DIR, _check_same_machine, merge_rows, prefix_closed, provenance

    out = Path(out)
    paths = spec.paths(out)
    store = out / FORKS_DIR / f"task={spec.task}" / f"{spec.scenario}-s{spec.seed}"
    grow = TrainerGrowth(set(), None, {}, store)
    if is_recorded(spec, out):
        _check_same_machine(paths["runs"])
        rows = read_table(paths["runs"], "runs").to_pylist()
        grow.recorded = {r["run_id"] for r in rows}
        root = next(r for r in rows if r["parent_run_id"] is None)
        grow.meta = {k: root[k] for k in _META}
        ep = read_table(paths["epochs"], "epochs")
        first = ep.filter(pc.and_(pc.equal(ep["run_id"], root["run_id"]), pc.equal(ep["epoch"], 0)))["val_loss"]
        grow.initial_val = first[0].as_py() if len(first) else None
    want = prefix_closed(branches)
    if all(spec.run_id(b) in grow.recorded for b in want):
        return 0, 0
    plan = TrainerPlan(plan.max_steps, plan.eval_steps, plan.menu, want, plan.step_seconds)
    runs, epochs = record_trainer_tree(spec, out, plan, factory or load_factory(spec.trainer), say, grow)
    runs, epochs, added = merge_rows(paths, runs, epochs)
    md = {"recipe": spec.recipe(), "provenance": dumps(provenance())}
    write_table(epochs, paths["epochs"], "epochs", md)
    write_table(runs, paths["runs"], "runs", md)
    return added


def _absolute_ref(ref: str) -> str:
    """``FILE.py:fn`` with the file made absolute (a Ray worker need not share the working directory)."""
    mod, name = ref.rsplit(":", 1)
    return f"{Path(mod).resolve()}:{name}" if mod.endswith(".py") or "/" in mod else ref


def _ray_trainer_tree(spec: "TrainerTreeSpec", plan: "TrainerPlan", factory_ref: str) -> tuple[bytes, bytes]:
    """A Ray task: one tree of the user's trainer, recorded in the worker's temporary directory."""
    import tempfile

    from .record_ray import _to_ipc

    with tempfile.TemporaryDirectory(prefix="tmsim-trainer-") as tmp:
        runs, epochs = record_trainer_tree(spec, Path(tmp), plan, load_factory(factory_ref))
    return _to_ipc(runs), _to_ipc(epochs)


def record_trainer(specs: list[TrainerTreeSpec], out: str | Path, dry_run: bool = False, overwrite: bool = False,
                   say: Callable[[str], None] = print, executor: str = "local", ray_address: str | None = None,
                   gpus_per_tree: float = 0, retries: int = 2) -> dict:
    """Record every tree of ``specs`` into ``out`` (module docs); returns counts. ``dry_run``: plan, measure and
    print the estimate, record nothing. ``executor="ray"``: one Ray task per tree (``tmsim.record_ray``), each
    asking for ``gpus_per_tree`` GPUs; trees that failed there are listed in ``stats["failed"]``."""
    from .record import _library_lock

    out = Path(out)
    factory = load_factory(specs[0].trainer)
    stats = {"trees": 0, "skipped": 0, "runs": 0, "epochs": 0}
    t0 = time.perf_counter()
    with _library_lock(out):
        try:
            return _record_locked(specs, out, factory, stats, t0, dry_run, overwrite, say, executor, ray_address,
                                  gpus_per_tree, retries)
        finally:
            shutil.rmtree(out / ".tmsim-trainer-work", ignore_errors=True)


def _record_locked(specs, out, factory, stats, t0, dry_run, overwrite, say, executor, ray_address, gpus_per_tree,
                   retries) -> dict:
    """``record_trainer`` under the library lock: plan and probe, print the estimate, record each tree."""
    from .record import provenance

    work = out / ".tmsim-trainer-work" / "plan"
    try:
        plan = plan_trainer_tree(specs[0], work, factory, probe=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    todo = [s for s in specs if overwrite or not is_recorded(s, out)]
    stats["skipped"] = len(specs) - len(todo)
    say(f"plan per tree: {plan.estimate()}")
    singles = sum(1 for b in plan.branches if len(b) == 1)
    if specs[0].budget is not None and specs[0].budget < 1 + len(plan.menu) * min(specs[0].depth, len(plan.points)):
        say(f"note: --budget {specs[0].budget} is below the root and every single-action branch; "
            f"{singles} single-action branches are kept, in plan order")
    say(f"{len(todo)} tree(s) to record ({stats['skipped']} already there): about "
        f"{len(todo) * plan.steps_to_train() * (plan.step_seconds or 0):.0f} s in all")
    if dry_run:
        stats["plan"] = plan
        return stats

    def write(s: TrainerTreeSpec, runs: pa.Table, epochs: pa.Table) -> None:
        paths = s.paths(out)
        md = {"recipe": s.recipe(), "provenance": dumps(provenance())}
        write_table(epochs, paths["epochs"], "epochs", md)
        write_table(runs, paths["runs"], "runs", md)
        stats["trees"] += 1
        stats["runs"] += runs.num_rows
        stats["epochs"] += epochs.num_rows
        say(f"{s.run_id(())}: {runs.num_rows} runs, {epochs.num_rows} evaluations written")

    if executor == "ray":
        from .record_ray import run_trees

        jobs = [(s, f"tmsim-trainer-{s.task}-s{s.seed}", float(gpus_per_tree), (s, plan.for_tree(s), _absolute_ref(s.trainer)))
                for s in todo]
        stats["failed"] = run_trees(_ray_trainer_tree, jobs, write, retries, ray_address)
    else:
        for s in todo:
            runs, epochs = record_trainer_tree(s, out, plan.for_tree(s), factory, say)
            write(s, runs, epochs)
    stats["seconds"] = round(time.perf_counter() - t0, 1)
    return stats
