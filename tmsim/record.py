"""The trace-tree recorder: real training runs, forked at decision epochs, written as trace format v2.

A *tree* is one (task, scenario, seed). Its root is the do-nothing run, trained from epoch 0 to the end. At each of
the first ``depth`` decision epochs (every ``decide_every`` epochs) the recorder saves the full training state and,
for every offered menu action, restores that state, applies the action and trains the branch to the end, doing
nothing more unless it has branches of its own. So every ``runs`` row is a whole run (its ancestors' epochs up to
its branch epoch, then its own), and a rollout that follows any recorded action sequence can be replayed exactly.

A branch restores torch's global RNG and the data-order generator from the fork, so a branch and its parent see
the same minibatches and dropout masks until their hyperparameters make them differ (common random numbers: the
counterfactual difference is the action's effect, not sampling noise).

**Replicates.** Training near the edge of stability is chaotic, so one recorded branch is one draw. With
``replicates = R`` a tree is recorded R times from the same state at its first decision epoch: replicate 0 continues
with the run's own noise, replicate r > 0 reseeds the data order and torch's RNG there (``Task.reseed``, from the
tree's identity and r). Within a replicate every sibling shares that noise (common random numbers); across
replicates only the post-fork noise differs. Each replicate is a whole tree of its own (run ids carry ``:r<k>``;
the epochs before the fork are the same in all of them), and the truth at a node is the distribution over replicates.

**Scenario families.** Each seed draws its recipe from its scenario's family (``Scenario.draw``); the ``init_*``
columns, ``optimizer``, ``optimizer_json`` and ``settings_json`` record the draw.

``budget`` caps the runs recorded per tree: the root and all single-action branches come first, deeper branches
are sampled with a generator seeded by the tree's identity, so a budgeted tree is deterministic too.

One engine, three ways to choose branches
-----------------------------------------
Every tree is trained by one engine (``_train_branch``: restore a fork, apply the branch's action, train to the
end, save the state at each decision epoch that has children, recurse), whichever way its branches were chosen:
the full menu (``plan_tree``), a budget (``budgeted``), or exactly the paths some policies take
(``tmsim.evaluate.on_demand``, ``tmsim evaluate``). The last grows a tree in rounds, so its trees are
``expansion="on-demand"`` (a recipe of their own): ``grow_tree`` records the root (and any branches asked for)
with the state saved at *every* decision epoch of every run it trains (``OUT/.tmsim-forks/``), and later adds
branches to the tree by forking from those saved states, on every replicate, exactly as a full tree's recording
would have trained them (the same run ids, states and noise: on the same machine, the same numbers). A branch action
is a menu action (``lr_down``) or an exact value (``set_lr=0.0123``, ``tmsim.simulate.simulator.exact_action``:
what a policy's validated proposal set its knob to; ``branch_hparams`` reads it back). A tree grows by rewriting its
two files, epochs first and runs last, with the old rows kept as they were: a branch is recorded once its runs row
is there, and epoch rows of runs that are not (a recorder stopped between the two writes) are dropped when the tree
is next grown or repaired (``repair_tree``).

Recording safely
----------------
- One recorder per library: ``record()`` holds an exclusive lock (``flock`` on ``OUT/.tmsim-record.lock``, which
  holds the recorder's pid) for the whole recording, and a second recorder on the same ``out`` is refused with
  :class:`RecorderBusy`, naming the directory and the holder's pid. Only the lock holder removes leftover temporary
  files (``.NAME.tmp-PID``), and only those whose writer process no longer exists.
- Trees are recorded by worker processes (``workers`` of them, each with its own pipe to the recorder). SIGINT,
  SIGTERM and SIGHUP stop the recording: the workers are terminated, finished trees stay on disk, and
  :class:`RecordingInterrupted` (a ``KeyboardInterrupt``) is raised with the signal's number; ``tmsim record`` exits
  with 128 + that number (130 for SIGINT, 143 for SIGTERM). Workers ignore SIGINT (a Ctrl-C reaches the whole
  process group; the recorder decides) and exit on their own when the recorder dies, however it dies.
- A worker that dies while recording a tree (killed by the OOM killer, say) loses only that tree: it is recorded
  again in a fresh worker, at most ``retries`` more times. A tree that could not be recorded, or whose task raised
  an error, does not stop the others; :class:`TreesNotRecorded` lists them at the end, one line per tree.
- A tree that was stopped between its two writes (epochs first, runs last) has its epochs file removed before
  ``record()`` returns or raises, so the library holds whole trees only.
  (``concurrent.futures.ProcessPoolExecutor`` would not do here: one dead worker breaks the whole pool, failing every
  tree in flight without saying which one was lost, and it has no public way to terminate its workers.)
- With ``workers=1`` the trees are recorded in the calling process, and a task's error propagates as it is.
- Arguments are checked before anything runs: ``depth >= 0``, ``decide_every >= 1``, ``budget >= 1``, seeds
  ``>= 0``, ``workers >= 1``; a bad one raises ``ValueError`` naming the command-line option.

Example
-------
>>> from tmsim.record import TreeSpec, plan_tree
>>> len(plan_tree(TreeSpec("digits-mlp", "healthy", 0, depth=1)))  # the root + 5 actions at epoch 5
6
"""
from __future__ import annotations

import fcntl
import math
import operator
import os
import random
import re
import signal
import sys
import threading
import time
from collections import Counter, defaultdict, deque
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import pyarrow as pa

from . import __version__
from .core.hparams import KNOBS, Hyperparams
from .core.menu import ACTION_TABLE, apply_action, changing_actions
from .core.outcome import is_diverged
from .tasks import TASKS, get_task
from .tasks.base import TorchTask, TrainState
from .traces.format import EPOCHS, RL_COLUMNS, RUNS, TraceError, dumps, file_metadata, read_table, write_table

RECORDER_VERSION = f"tmsim-{__version__}/trace-v2"

Branch = tuple[tuple[int, str], ...]  # the (epoch, action) decisions that lead from the root to a run


@dataclass(frozen=True)
class TreeSpec:
    """What to record for one tree. ``decide_every``/``menu`` default to the scenario's and the task's own."""

    task: str
    scenario: str
    seed: int
    depth: int = 3
    decide_every: int | None = None
    budget: int | None = None
    menu: tuple[str, ...] | None = None
    replicates: int = 1
    first_replicate: int = 0  # record replicates first_replicate .. first_replicate + replicates - 1 (tmsim verify)
    #: "plan": the branches of ``plan_tree`` (full, or ``budget``); "on-demand": the branches some policies take,
    #: added in rounds (``grow_tree``, ``tmsim evaluate``), every decision epoch of ``depth`` with a saved state
    expansion: str = "plan"

    def __post_init__(self) -> None:
        if self.expansion not in ("plan", "on-demand"):
            raise ValueError(f"expansion must be 'plan' or 'on-demand', got {self.expansion!r}")
        _check_whole("--depth", self.depth, 0)
        _check_whole("--replicates", self.replicates, 1)
        _check_whole("first_replicate", self.first_replicate, 0)
        _check_whole("--seeds", self.seed, 0)
        if self.decide_every is not None:
            _check_whole("--decide-every", self.decide_every, 1)
        if self.budget is not None:
            _check_whole("--budget", self.budget, 1)
        if ":" in self.task:  # a task given by import path is filed under its registered name
            object.__setattr__(self, "task", get_task(self.task).name)

    def resolved(self) -> "TreeSpec":
        task = get_task(self.task)
        sc = task.scenario(self.scenario)
        menu = self.menu or task.record_menu()
        return TreeSpec(self.task, self.scenario, self.seed, self.depth, self.decide_every or sc.decide_every, self.budget,
                        tuple(menu), self.replicates, self.first_replicate, self.expansion)

    @property
    def stem(self) -> str:
        return f"{self.scenario}-s{self.seed}"

    def recipe(self) -> str:
        """The canonical description stored in each file's metadata (resume compares it)."""
        d = asdict(self.resolved())
        if not d["first_replicate"]:
            del d["first_replicate"]
        if d["expansion"] == "plan":  # the recipe of a planned tree is what it was before on-demand trees existed
            del d["expansion"]
        return dumps({**d, "recorder": RECORDER_VERSION})

    def noise_seed(self, replicate: int) -> int:
        """The post-fork noise seed of ``replicate`` (a function of the tree's identity only)."""
        import hashlib

        h = hashlib.sha256(f"{self.task}/{self.scenario}/{self.seed}/replicate-{replicate}".encode()).digest()
        return int.from_bytes(h[:7], "big")


def _check_whole(option: str, value, low: int) -> None:
    """Refuse anything but a whole number >= ``low``, naming the command-line option that sets it."""
    try:
        ok = not isinstance(value, bool) and operator.index(value) >= low
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(f"{option} must be a whole number >= {low}, got {value!r}")


def run_id(spec: TreeSpec, branch: Branch, replicate: int = 0) -> str:
    """``task:scenario:s<seed>[:r<replicate>]+e<epoch>:<action>...`` (the replicate only when there are several)."""
    rep = f":r{replicate}" if spec.replicates > 1 or spec.first_replicate else ""
    return f"{spec.task}:{spec.scenario}:s{spec.seed}{rep}" + "".join(f"+e{e}:{a}" for e, a in branch)


def decision_epochs(epochs: int, every: int, depth: int) -> list[int]:
    return list(range(every, epochs, every))[:depth]


def branch_hparams(hp: Hyperparams, action: str) -> Hyperparams:
    """The hyperparameters a branch trains with after ``action`` at its fork: a menu action's effect on ``hp``, or,
    for an exact value ``ACTION=VALUE`` (``tmsim.simulate.simulator.exact_action``), ``hp`` with the action's knob
    set to that value.

    >>> branch_hparams(Hyperparams(lr=0.2), "lr_down").lr, branch_hparams(Hyperparams(lr=0.2), "set_lr=0.0123").lr
    (0.1, 0.0123)
    """
    name, exact, value = action.partition("=")
    if not exact:
        return apply_action(hp, action)
    entry = ACTION_TABLE.get(name)
    if entry is None or entry.knob is None or getattr(hp, entry.knob) is None:
        raise ValueError(f"branch action {action!r}: {name!r} sets no knob of this run")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"branch action {action!r}: the value is not finite")
    return hp.with_(**{entry.knob: v})


def plan_tree(spec: TreeSpec) -> list[Branch]:
    """Every branch to record, parents before children (before divergence prunes any)."""
    spec = spec.resolved()
    task = get_task(spec.task)
    sc = task.scenario(spec.scenario, spec.seed)
    points = decision_epochs(sc.epochs, spec.decide_every, spec.depth)

    def hp_of(branch: Branch) -> Hyperparams:
        hp = sc.hparams
        for _, a in branch:
            hp = apply_action(hp, a)
        return hp

    def actions(branch: Branch) -> list[str]:
        return [a for a in changing_actions(hp_of(branch), len(task.losses), spec.menu) if a != "continue"]

    return budgeted(expand_tree(points, actions), spec.budget, f"{spec.task}/{spec.scenario}/{spec.seed}")


def expand_tree(points: list[int], actions: Callable[[Branch], list[str]]) -> list[Branch]:
    """Every branch of a full tree, parents first: at each decision point after a branch's own, each of
    ``actions(branch)``, recursively; ``stop`` ends a path."""
    full: list[Branch] = []

    def expand(branch: Branch) -> None:
        full.append(branch)
        if branch and branch[-1][1] == "stop":
            return
        last = branch[-1][0] if branch else 0
        for d in points:
            if d > last:
                for a in actions(branch):
                    expand(branch + ((d, a),))

    expand(())
    return full


def budgeted(full: list[Branch], budget: int | None, seed_key: str) -> list[Branch]:
    """At most ``budget`` of a tree's branches, parents first: the root and every single-action branch come first,
    deeper ones are sampled with a generator seeded by ``seed_key`` (the tree's identity), never without their
    parent. ``None`` keeps them all."""
    if budget is None or budget >= len(full):
        return sorted(full, key=lambda b: (len(b), b))
    rng = random.Random(seed_key)
    keyed = sorted(full, key=lambda b: (len(b), 0.0 if len(b) <= 1 else rng.random(), b))
    chosen: set[Branch] = set()
    for b in keyed:
        if len(chosen) >= budget:
            break
        if not b or b[:-1] in chosen:
            chosen.add(b)
    return sorted(chosen, key=lambda b: (len(b), b))


class _Columns:
    """Column-wise row buffer (one list per column) turned into an Arrow table at the end."""

    def __init__(self, schema: pa.Schema):
        self.schema = schema
        self.cols: dict[str, list] = {f.name: [] for f in schema}

    def add(self, **row) -> None:
        for k, v in self.cols.items():
            v.append(row.get(k))

    def table(self) -> pa.Table:
        return pa.Table.from_pydict(self.cols, schema=self.schema)


def _finite_or_none(x: float | None) -> float | None:
    return x if x is None or math.isfinite(x) else None


def record_tree(spec: TreeSpec, progress: Callable[[str, int], None] | None = None, plan: list[Branch] | None = None,
                keep: dict | None = None) -> tuple[pa.Table, pa.Table]:
    """Train one tree (all its replicates) for real and return its (runs, epochs) tables. Deterministic for a given
    spec on a given machine.

    ``plan``: the branches to train, the root included, parents before children (default ``plan_tree(spec)``).
    ``keep``: a dict that receives the state saved at every decision epoch of ``spec.depth`` that each run trained
    reaches, ``{(run_id, epoch): bytes}`` (what ``grow_branches`` forks later branches from)."""
    import torch

    spec = spec.resolved()
    task: TorchTask = get_task(spec.task)
    sc = task.scenario(spec.scenario, spec.seed)
    plan = plan_tree(spec) if plan is None else plan
    points = set(decision_epochs(sc.epochs, spec.decide_every, spec.depth)) if keep is not None else set()
    children: dict[Branch, dict[int, list[str]]] = defaultdict(lambda: defaultdict(list))
    for b in plan:
        if b:
            children[b[:-1]][b[-1][0]].append(b[-1][1])
    runs, epochs = _Columns(RUNS), _Columns(EPOCHS)
    progress = progress or (lambda kind, n: None)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: fewer sources of difference between machines, and 2 workers on 2 cores
    try:
        state = task.build(sc, spec.seed)
        initial = task.evaluate(state)
        fork = min(decision_epochs(sc.epochs, spec.decide_every, max(spec.depth, 1)), default=sc.epochs)
        # The epochs before the first decision are the same in every replicate: trained once, written per replicate.
        pre = _Columns(EPOCHS)
        _epoch_row(pre, spec, (), state, initial, None, 0.0, diverged=False)
        diverged = _train_epochs(task, spec, state, fork, initial["val_loss"], pre, progress)
        blob = None if diverged else task.save(state)
        for r in range(spec.first_replicate, spec.first_replicate + spec.replicates):
            for row in zip(*pre.cols.values()):
                epochs.add(**{**dict(zip(pre.cols, row)), "run_id": run_id(spec, (), r)})
            if blob is None:  # diverged before the fork: the root ends there, nothing is branched
                _run_row(runs, task, spec, (), state, r, "diverged")
                progress("runs", 1)
                progress("skipped", len(plan) - 1)
                continue
            st = task.restore(blob)
            if r > 0:
                task.reseed(st, spec.noise_seed(r))
            _train_branch(task, spec, (), st, initial["val_loss"], children, runs, epochs, progress, r, keep, points)
    finally:
        torch.set_num_threads(threads)
    return runs.table(), epochs.table()


def grow_branches(spec: TreeSpec, todo: dict[int, list[Branch]], forks: dict[tuple[str, int], bytes], initial_val: float,
                  progress: Callable[[str, int], None] | None = None, keep: dict | None = None) -> tuple[pa.Table, pa.Table]:
    """Train new branches of a tree that is recorded in part and return their (runs, epochs) tables.

    ``todo[r]``: the branches replicate ``r`` lacks, each one's parent either recorded there (its state at the
    branch's epoch in ``forks``, keyed ``(parent run id, epoch)``) or in ``todo[r]`` itself (trained first, by the
    engine's recursion). A branch whose parent has no saved state at its epoch (the parent diverged or stopped
    before it) is not trained, as in a full tree. ``initial_val`` is the root's validation loss before training
    (the divergence rule's reference); ``keep`` receives the new runs' states as ``record_tree``'s does. Each branch
    is trained exactly as ``record_tree`` trains it within a full tree, so on the same machine its rows are the same."""
    import torch

    spec = spec.resolved()
    task: TorchTask = get_task(spec.task)
    sc = task.scenario(spec.scenario, spec.seed)
    points = set(decision_epochs(sc.epochs, spec.decide_every, spec.depth)) if keep is not None else set()
    runs, epochs = _Columns(RUNS), _Columns(EPOCHS)
    progress = progress or (lambda kind, n: None)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for r in sorted(todo):
            new = set(todo[r])
            children: dict[Branch, dict[int, list[str]]] = defaultdict(lambda: defaultdict(list))
            for b in sorted(new, key=lambda b: (len(b), b)):
                if b and b[:-1] in new:
                    children[b[:-1]][b[-1][0]].append(b[-1][1])
            for b in sorted((b for b in new if b and b[:-1] not in new), key=lambda b: (len(b), b)):
                blob = forks.get((run_id(spec, b[:-1], r), b[-1][0]))
                if blob is None:  # its parent ended before this fork: nothing to train, as in a full tree
                    progress("skipped", 1 + sum(1 for x in new if len(x) > len(b) and x[:len(b)] == b))
                    continue
                state = task.restore(blob)
                task.apply(state, branch_hparams(state.hparams, b[-1][1]))
                _train_branch(task, spec, b, state, initial_val, children, runs, epochs, progress, r, keep, points)
    finally:
        torch.set_num_threads(threads)
    return runs.table(), epochs.table()


def _train_epochs(task, spec, state, until: int, initial_val: float, cols: "_Columns", progress, branch: Branch = (),
                  replicate: int = 0) -> bool:
    """Train ``state`` up to epoch ``until``, one row per epoch; True when the run diverged (it stops there)."""
    while state.epoch < until:
        t0 = time.perf_counter()
        tr = task.train_epoch(state)
        ev = task.evaluate(state)
        wall = time.perf_counter() - t0
        # an RL task's safety monitor stops a run whose exploration breaks its safety budget, as a divergence
        diverged = is_diverged(ev["val_loss"], initial_val, ev["train_loss"], tr["grad_norm"]) or task.breach(tr)
        _epoch_row(cols, spec, branch, state, ev, tr, wall, diverged, replicate)
        progress("epochs", 1)
        if diverged:
            return True
    return False


def _epoch_row(cols: _Columns, spec: TreeSpec, branch: Branch, state: TrainState, ev: dict, tr: dict | None, wall: float,
               diverged: bool, replicate: int = 0) -> None:
    hp = state.hparams
    tr = tr or {}
    cols.add(
        run_id=run_id(spec, branch, replicate), task=spec.task, epoch=state.epoch,
        **{k: getattr(hp, k) for k in KNOBS},
        **{k: _finite_or_none(tr.get(k)) for k in RL_COLUMNS if k not in ev},
        **{k: _finite_or_none(v) for k, v in ev.items()},
        grad_norm=_finite_or_none(tr.get("grad_norm")), update_ratio=_finite_or_none(tr.get("update_ratio")),
        samples_seen=state.samples_seen, step=state.steps, step_time_s=tr.get("step_time_s"), wall_time_s=wall,
        diverged=diverged, source="recorded",
    )


def _run_row(runs: _Columns, task, spec: TreeSpec, branch: Branch, state: TrainState, replicate: int, status: str) -> None:
    sc = state.scenario
    hp0 = sc.hparams
    family, opt_settings = task.optimizer_info(state)
    runs.add(
        run_id=run_id(spec, branch, replicate), parent_run_id=run_id(spec, branch[:-1], replicate) if branch else None,
        root_run_id=run_id(spec, (), replicate), depth=len(branch),
        branch_epoch=branch[-1][0] if branch else None, branch_action=branch[-1][1] if branch else None,
        task=spec.task, scenario=spec.scenario, seed=spec.seed, replicate=replicate,
        model=type(state.model).__name__, n_params=task.n_params(state), dataset=task.dataset_descriptor,
        **{f"init_{k}": getattr(hp0, k) for k in KNOBS}, optimizer=family, optimizer_json=dumps(opt_settings),
        settings_json=dumps(sc.settings), max_epochs=sc.epochs, decide_every=spec.decide_every,
        status=status, end_epoch=state.epoch, source="recorded", recorder_version=RECORDER_VERSION,
    )


def _train_branch(task, spec, branch, state, initial_val, children, runs, epochs, progress, replicate: int = 0,
                  keep: dict | None = None, points: set[int] = frozenset()) -> None:
    """The engine (module docs): train run ``branch`` from ``state`` to the end, then each of its planned children
    from the state saved at its epoch. ``keep`` also receives the state at each epoch of ``points`` after the
    run's own fork (``record_tree``)."""
    sc = state.scenario
    kids = children.get(branch, {})
    forks: dict[int, bytes] = {}
    status = "complete"
    own = branch[-1][0] if branch else -1
    if not (branch and branch[-1][1] == "stop"):
        while True:
            kept = keep is not None and state.epoch in points and state.epoch > own
            if state.epoch in kids or kept:  # the state every child of this run forks from (its noise included)
                blob = task.save(state)
                if state.epoch in kids:
                    forks[state.epoch] = blob
                if kept:
                    keep[(run_id(spec, branch, replicate), state.epoch)] = blob
            if state.epoch >= sc.epochs:
                break
            if _train_epochs(task, spec, state, state.epoch + 1, initial_val, epochs, progress, branch, replicate):
                status = "diverged"
                break
    _run_row(runs, task, spec, branch, state, replicate, status)
    progress("runs", 1)
    for d in sorted(forks):
        for action in kids[d]:
            child = task.restore(forks[d])
            task.apply(child, branch_hparams(child.hparams, action))
            _train_branch(task, spec, branch + ((d, action),), child, initial_val, children, runs, epochs, progress,
                          replicate, keep, points)
    # Branches planned after a divergence are never trained: report them as done so progress adds up.
    skipped = sum(len(v) for d, v in kids.items() if d not in forks)
    if skipped:
        progress("skipped", _count_descendants(branch, children, {d for d in kids if d not in forks}))


def _count_descendants(branch: Branch, children, epochs_: set[int]) -> int:
    n = 0
    stack = [branch + ((d, a),) for d in epochs_ for a in children[branch][d]]
    while stack:
        b = stack.pop()
        n += 1
        stack.extend(b + ((d, a),) for d, acts in children.get(b, {}).items() for a in acts)
    return n


# --- many trees: files, resume, process pool ----------------------------------------------------------------------

def tree_paths(out: Path, spec: TreeSpec) -> dict[str, Path]:
    return {k: out / k / f"task={spec.task}" / f"{spec.stem}.parquet" for k in ("runs", "epochs")}


def is_recorded(out: Path, spec: TreeSpec) -> bool:
    """True when both files of the tree exist, are valid and were recorded with the same recipe."""
    paths = tree_paths(out, spec)
    if not all(p.exists() for p in paths.values()):
        return False
    recipe = spec.recipe()
    for kind, p in paths.items():
        try:
            read_table(p, kind)
        except TraceError:
            return False
        if file_metadata(p).get("tmsim.recipe") != recipe:
            raise TraceError(f"{p}: field 'tmsim.recipe' differs from the requested recording; use --overwrite or another --out")
    return True


def provenance() -> dict:
    """Where a recording was made: what decides its numbers besides the seed (training is chaotic, so another CPU
    or another BLAS gives another draw). Stored in every recorded file's metadata as ``tmsim.provenance``."""
    import platform

    import numpy as np
    import torch

    blas = None
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        blas = f"{blas.get('name')} {blas.get('version')}"
    except Exception:  # noqa: BLE001 -- older numpy: no machine-readable config
        pass
    cpu = None
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                   if ln.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or None
    return {"torch": torch.__version__, "torch_git": getattr(torch.version, "git_version", None),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
            "numpy": np.__version__, "blas": blas, "cpu": cpu, "machine": platform.machine(),
            "python": platform.python_version(), "tmsim": __version__}


def write_tree(out: Path, spec: TreeSpec, runs: pa.Table, epochs: pa.Table) -> None:
    """Epochs first, runs last: a tree counts as recorded only once its runs file is in place."""
    paths = tree_paths(out, spec)
    # trees are always trained with one thread (record_tree), whatever the writing process uses
    md = {"recipe": spec.recipe(), "provenance": dumps({**provenance(), "threads": 1})}
    write_table(epochs, paths["epochs"], "epochs", md)
    write_table(runs, paths["runs"], "runs", md)


# --- growing a tree on demand: saved states, the growth of one tree, repair ----------------------------------------

FORKS_DIR = ".tmsim-forks"
#: Provenance fields that decide a recording's numbers: a tree is grown only where they are the same.
_SAME_MACHINE = ("torch", "torch_git", "cpu_capability", "numpy", "blas", "cpu", "machine")


def fork_path(out: Path, spec: TreeSpec, rid: str, epoch: int) -> Path:
    """Where the state of run ``rid`` at decision epoch ``epoch`` is saved (``OUT/.tmsim-forks/task=T/``)."""
    import hashlib

    key = hashlib.sha256(rid.encode()).hexdigest()[:24]
    return Path(out) / FORKS_DIR / f"task={spec.task}" / f"{spec.stem}~{key}~e{epoch}.pt"


def save_forks(out: Path, spec: TreeSpec, keep: dict[tuple[str, int], bytes]) -> None:
    """Write each saved state atomically (a temporary file renamed into place; one a writer left behind is removed
    by the lock holder like any other, ``_remove_stale_temp_files``)."""
    for (rid, epoch), blob in keep.items():
        path = fork_path(out, spec, rid, epoch)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as fh:
                fh.write(blob)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


@dataclass
class GrowthInput:
    """What growing one tree needs from the library (``growth_input``): the branches each replicate lacks, the saved
    states they fork from, and the root's validation loss before training. ``fresh``: the tree is not there yet."""

    fresh: bool
    todo: dict[int, list[Branch]]
    forks: dict[tuple[str, int], bytes]
    initial_val: float | None = None

    @property
    def runs(self) -> int:
        return sum(len(v) for v in self.todo.values())


def prefix_closed(branches) -> list[Branch]:
    """``branches`` with every prefix (the root included), parents first."""
    out = {()}
    for b in branches:
        for i in range(1, len(b) + 1):
            out.add(tuple(b[:i]))
    return sorted(out, key=lambda b: (len(b), b))


def _replicates(spec: TreeSpec) -> range:
    return range(spec.first_replicate, spec.first_replicate + spec.replicates)


def growth_input(out: Path, spec: TreeSpec, branches, load: bool = True) -> GrowthInput:
    """Which of ``branches`` (paths: every replicate) and their prefixes the on-demand tree at ``out`` lacks, and
    the saved states they fork from (read only with ``load``). Raises ``TraceError`` when a state they need is missing (the tree cannot be
    grown) or the tree was recorded with another build or CPU (growing it would mix draws)."""
    import pyarrow.compute as pc

    spec = spec.resolved()
    want = prefix_closed(branches)
    paths = tree_paths(out, spec)
    if not is_recorded(out, spec):
        return GrowthInput(True, {r: want for r in _replicates(spec)}, {})
    _check_same_machine(paths["runs"])
    runs = {r["run_id"]: r for r in read_table(paths["runs"], "runs").select(["run_id", "status", "end_epoch"]).to_pylist()}
    ep = read_table(paths["epochs"], "epochs")
    root = run_id(spec, (), spec.first_replicate)
    first = ep.filter(pc.and_(pc.equal(ep["run_id"], root), pc.equal(ep["epoch"], 0)))["val_loss"].to_pylist()
    todo: dict[int, list[Branch]] = {}
    forks: dict[tuple[str, int], bytes] = {}
    for r in _replicates(spec):
        new = [b for b in want if run_id(spec, b, r) not in runs]
        if new:
            todo[r] = new
        news = set(new)
        for b in new:
            if not b or b[:-1] in news:
                continue
            parent, d = run_id(spec, b[:-1], r), b[-1][0]
            path = fork_path(out, spec, parent, d)
            if path.exists():
                if load:
                    forks[(parent, d)] = path.read_bytes()
                continue
            row = runs[parent]
            ended = (b[:-1] and b[:-1][-1][1] == "stop") or (row["status"] == "diverged" and row["end_epoch"] <= d)
            if not ended:
                raise TraceError(f"{path}: the saved state of {parent} at epoch {d} is missing, so {run_id(spec, b, r)} "
                                 "cannot be forked from it; record this tree again into another --out")
    return GrowthInput(False, todo, forks, first[0] if first else None)


def _check_same_machine(path: Path) -> None:
    import json

    try:
        was = json.loads(file_metadata(path).get("tmsim.provenance") or "{}")
    except ValueError:
        was = {}
    now = provenance()
    diff = [k for k in _SAME_MACHINE if k in was and was[k] != now.get(k)]
    if diff:
        raise TraceError(f"{path}: field 'tmsim.provenance' says this tree was recorded with another "
                         f"{', '.join(diff)} ({', '.join(f'{was[k]} vs {now.get(k)} here' for k in diff)}): a branch "
                         "trained here would be a draw of another machine; grow it where it was recorded, or use "
                         "another --out")


def train_growth(spec: TreeSpec, inp: GrowthInput, progress=None) -> tuple[pa.Table, pa.Table, dict]:
    """Train what ``inp`` asks for: (new runs, new epochs, the states saved on the way). No file is touched (a Ray
    task runs this where the library is not)."""
    keep: dict[tuple[str, int], bytes] = {}
    if inp.fresh:
        plan = next(iter(inp.todo.values()), [()])
        runs, epochs = record_tree(spec, progress, plan=plan, keep=keep)
    else:
        runs, epochs = grow_branches(spec, inp.todo, inp.forks, inp.initial_val, progress, keep)
    return runs, epochs, keep


def commit_growth(out: Path, spec: TreeSpec, runs: pa.Table, epochs: pa.Table, keep: dict) -> tuple[int, int]:
    """Save the new states, then write the tree with the new rows added to the old (epochs first, runs last, each
    atomically; a run already there is never written twice). Returns (runs, epochs) added."""
    save_forks(out, spec, keep)
    runs, epochs, added = merge_rows(tree_paths(out, spec), runs, epochs)
    write_tree(out, spec, runs, epochs)
    return added


def merge_rows(paths: dict[str, Path], runs: pa.Table, epochs: pa.Table) -> tuple[pa.Table, pa.Table, tuple[int, int]]:
    """The tree at ``paths`` with the new ``runs`` and ``epochs`` added: old rows kept as they were, a new run that
    is already there left out, epoch rows of runs the runs file does not hold dropped (a torn growth). Returns
    (runs, epochs, (runs, epochs) added)."""
    from .traces.format import conform

    runs, epochs = conform(runs, "runs").replace_schema_metadata(None), conform(epochs, "epochs").replace_schema_metadata(None)
    if not paths["runs"].exists():
        return runs, epochs, (runs.num_rows, epochs.num_rows)
    old_runs = conform(read_table(paths["runs"], "runs"), "runs").replace_schema_metadata(None)
    known = set(old_runs["run_id"].to_pylist())
    old_ep = conform(read_table(paths["epochs"], "epochs"), "epochs").replace_schema_metadata(None)
    runs, epochs = _rows_of(runs, known, False), _rows_of(epochs, known, False)
    return (pa.concat_tables([old_runs, runs]), pa.concat_tables([_rows_of(old_ep, known, True), epochs]),
            (runs.num_rows, epochs.num_rows))


def _rows_of(table: pa.Table, run_ids: set[str], inside: bool) -> pa.Table:
    """The rows of ``table`` whose run is (``inside``) or is not among ``run_ids``."""
    import pyarrow.compute as pc

    mask = pc.is_in(table["run_id"], value_set=pa.array(sorted(run_ids), pa.string()))
    return table.filter(mask if inside else pc.invert(mask))


def grow_tree(out: Path, spec: TreeSpec, branches, progress=None) -> tuple[int, int]:
    """Add ``branches`` (and their prefixes, the root included) to the on-demand tree ``spec`` at ``out`` on every
    replicate, recording the tree first when it is not there; returns (runs, epochs) added."""
    out = Path(out)
    inp = growth_input(out, spec, branches)
    if not inp.todo:
        return 0, 0
    return commit_growth(out, spec, *train_growth(spec, inp, progress))


def repair_tree(out: Path, spec: TreeSpec, paths: dict[str, Path] | None = None) -> bool:
    """Drop the epoch rows of runs the tree's runs file does not hold (a recorder stopped between its two writes),
    and an epochs file without its runs file. True when something was removed. ``paths``: the tree's files when
    they are not ``tree_paths(out, spec)`` (a Trainer's tree)."""
    paths = paths or tree_paths(out, spec)
    if not paths["runs"].exists():
        if paths["epochs"].exists():
            paths["epochs"].unlink()
            return True
        return False
    if not paths["epochs"].exists():
        return False
    runs = read_table(paths["runs"], "runs")
    epochs = read_table(paths["epochs"], "epochs")
    keep = _rows_of(epochs, set(runs["run_id"].to_pylist()), True)
    if keep.num_rows == epochs.num_rows:
        return False
    md = {k[len("tmsim."):]: v for k, v in file_metadata(paths["epochs"]).items()
          if k not in ("tmsim.schema_version", "tmsim.table")}
    write_table(keep, paths["epochs"], "epochs", md)
    return True


@dataclass(frozen=True)
class Growth:
    """A job for the recorder's executors: grow the on-demand tree ``spec`` by ``branches`` (``grow_tree``)."""

    spec: TreeSpec
    branches: tuple[Branch, ...]


def job_spec(job) -> TreeSpec:
    """The tree a job (a ``TreeSpec`` to record, or a ``Growth``) records."""
    return job.spec if isinstance(job, Growth) else job


def _run_job(out: Path, job, progress) -> tuple[int, int]:
    """Do one job in this process and write its result; (runs, epochs) written."""
    if isinstance(job, Growth):
        return grow_tree(out, job.spec, job.branches, progress)
    runs, epochs = record_tree(job, progress)
    write_tree(out, job, runs, epochs)
    return runs.num_rows, epochs.num_rows


# --- recording safely: the library lock, signals, worker processes ------------------------------------------------

LOCK_NAME = ".tmsim-record.lock"
_STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))


class RecorderBusy(RuntimeError):
    """Another recorder holds the lock on the library directory."""


class RecordingInterrupted(KeyboardInterrupt):
    """The recording was stopped by a signal: ``signum`` is its number, ``stats`` counts what was finished."""

    def __init__(self, signum: int):
        self.signum = signum
        self.stats: dict = {}
        super().__init__(f"recording stopped by {signal.Signals(signum).name}")


class TreesNotRecorded(RuntimeError):
    """Some trees could not be recorded: ``failed`` holds ``(spec, reason)`` pairs, ``stats`` counts the rest."""

    def __init__(self, failed: list[tuple[TreeSpec, str]], stats: dict):
        self.failed = failed
        self.stats = stats
        super().__init__(f"{len(failed)} tree(s) could not be recorded: "
                         + "; ".join(f"{run_id(job_spec(s), ())} ({why})" for s, why in failed))


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _lock_holder(fd: int) -> str:
    """The pid written in the lock file (the holder writes it just after taking the lock, so wait a moment)."""
    for _ in range(20):
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        if text.isdigit():
            return text
        time.sleep(0.01)
    return "unknown"


@contextmanager
def _library_lock(out: Path) -> Iterator[None]:
    """Hold the exclusive recorder lock on ``out`` (created if missing), or raise :class:`RecorderBusy`.

    The lock file exists only while it is held: the holder removes it before releasing the lock, so a recorder
    that opened the old file in between finds its lock void (the path names another file, or none) and tries again.
    """
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"--out {out}: cannot create the library directory ({exc.strerror or exc})") from None
    path = out / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(fd)
            os.close(fd)
            raise RecorderBusy(f"{out}: another tmsim recorder (pid {holder}) is recording into this directory; "
                               "wait for it to end or use another --out") from None
        except BaseException:
            os.close(fd)
            raise
        try:
            held = os.fstat(fd)
            now = os.stat(path)
            if (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino):
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        try:
            os.unlink(path)
        finally:
            os.close(fd)


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (a zombie, which has ended, does not count)."""
    if pid <= 0:
        return True  # not a process id: never treat its file as abandoned
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def _remove_stale_temp_files(out: Path) -> None:
    """Delete the temporary files (``.NAME.tmp-PID``) of writers that have ended. Only the lock holder calls this;
    a file whose writer still runs (another tool writing into the library, say) is left alone."""
    for tmp in out.glob("*/task=*/.*.tmp-*"):
        pid = tmp.name.rsplit(".tmp-", 1)[1]
        if pid.isdigit() and not _pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _remove_unfinished(out: Path, specs: list[TreeSpec]) -> None:
    """Delete the epochs file of each tree in ``specs`` that has no runs file: a tree stopped between its two writes
    (by a signal, a killed worker, an error) leaves nothing that a reader would report as orphan rows."""
    for spec in specs:
        paths = tree_paths(out, spec)
        if not paths["runs"].exists():
            paths["epochs"].unlink(missing_ok=True)


@contextmanager
def _stop_on_signals() -> Iterator[None]:
    """Turn SIGINT, SIGTERM and SIGHUP into :class:`RecordingInterrupted` while recording. Only the first one raises,
    so a second signal cannot cut the clean-up short. A signal that the process was started with ignored (``nohup``)
    stays ignored. Python delivers signals to the main thread only, so elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired: list[int] = []

    def handler(signum, frame):
        if not fired:
            fired.append(signum)
            raise RecordingInterrupted(signum)

    previous = {}
    for sig in _STOP_SIGNALS:
        if signal.getsignal(sig) is not signal.SIG_IGN:
            previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)


def _worker_init(task_refs: dict[str, str]) -> None:
    """A worker process: one thread, and the parent's task registry (tasks given by import path or registered in
    code are found by name here too)."""
    import torch

    torch.set_num_threads(1)
    for name, ref in task_refs.items():
        TASKS.register(name, ref, overwrite=True)


def _exit_with_parent(parent_pid: int) -> None:
    """End this process when the recorder ends, however it ends (SIGKILL included): the kernel's parent-death signal
    where Linux offers it (immediate), and everywhere a daemon thread that notices the parent is gone (within 0.5 s;
    it also covers a parent that died before the signal was asked for)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="tmsim-parent-watch", daemon=True).start()


def _worker_main(conn, task_refs: dict[str, str], parent_pid: int) -> None:
    """A worker process: do each job the recorder sends over ``conn`` (``(out, job)``: a ``TreeSpec`` to record or
    a ``Growth``) until it sends None.

    It reports ``("progress", kind, n)`` while training, then ``("done", runs, epochs)`` or ``("error", text)``. It
    ignores SIGINT: a Ctrl-C reaches the whole process group, and the recorder decides what happens.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)  # blocked by the recorder while it started us
    _exit_with_parent(parent_pid)
    try:
        _worker_init(task_refs)
        init_error = None
    except Exception as exc:  # reported for each tree: no tree can be recorded here
        init_error = _one_line(exc)
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        if job is None:
            return
        out, spec = job
        if init_error is not None:
            conn.send(("error", init_error))
            continue
        try:
            n_runs, n_epochs = _run_job(Path(out), spec, lambda kind, n: conn.send(("progress", kind, n)))
        except Exception as exc:
            conn.send(("error", _one_line(exc)))
        else:
            conn.send(("done", n_runs, n_epochs))


class _Worker:
    """One worker process, the recorder's end of its pipe, the tree it is recording and the progress reported for
    that tree so far (taken back from the progress bar if the tree is lost)."""

    def __init__(self, proc, conn):
        self.proc, self.conn = proc, conn
        self.spec: TreeSpec | None = None
        self.done_runs = self.done_epochs = 0


def _start_worker(ctx, task_refs: dict[str, str], pool: list[_Worker]) -> None:
    """Start a worker and add it to ``pool``. The stop signals are blocked meanwhile, so a signal can neither leave
    a started worker outside ``pool`` (where nothing would stop it) nor reach the worker before it ignores SIGINT
    (the child inherits the blocked mask and unblocks it itself)."""
    conn, child = ctx.Pipe()
    proc = ctx.Process(target=_worker_main, args=(child, task_refs, os.getpid()), name="tmsim-record-worker",
                       daemon=True)
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        try:
            proc.start()
        finally:
            child.close()
        pool.append(_Worker(proc, conn))
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _join_all(pool: list[_Worker], seconds: float) -> None:
    """Wait for every worker to end, ``seconds`` in all."""
    deadline = time.monotonic() + seconds
    for w in pool:
        w.proc.join(max(0.0, deadline - time.monotonic()))


def _stop_workers(pool: list[_Worker], graceful: bool) -> None:
    """End every worker in ``pool``: ask them to finish (``graceful``), then SIGTERM, then SIGKILL."""
    if graceful:
        for w in pool:
            try:
                w.conn.send(None)
            except OSError:
                pass
        _join_all(pool, 10)
    for w in pool:
        if w.proc.is_alive():
            w.proc.terminate()
    _join_all(pool, 5)
    for w in pool:
        if w.proc.is_alive():
            w.proc.kill()
            w.proc.join()
        w.conn.close()
    pool.clear()


def _exit_reason(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _record_in_workers(todo: list[TreeSpec], out: Path, workers: int, retries: int, on_progress, on_done) -> list[tuple[TreeSpec, str]]:
    """Record ``todo`` in up to ``workers`` spawned processes; return the trees that could not be recorded.

    A worker that dies while recording a tree loses only that tree, which goes back to the front of the queue (a
    fresh worker takes it) until it has been lost ``retries + 1`` times. A task's error is final (it would recur).
    """
    import multiprocessing as mp
    from multiprocessing.connection import wait as wait_any

    ctx = mp.get_context("spawn")
    refs = TASKS.refs()
    queue = deque(todo)
    lost: Counter[TreeSpec] = Counter()
    failed: list[tuple[TreeSpec, str]] = []
    pool: list[_Worker] = []
    try:
        while queue or any(w.spec is not None for w in pool):
            busy = sum(w.spec is not None for w in pool)
            while len(pool) < min(workers, busy + len(queue)):
                _start_worker(ctx, refs, pool)
            for w in pool:
                if w.spec is None and queue:
                    w.spec, w.done_runs, w.done_epochs = queue.popleft(), 0, 0
                    try:
                        w.conn.send((str(out), w.spec))
                    except OSError:
                        pass  # the worker is gone: found below, and its tree is queued again
            wait_any([w.conn for w in pool] + [w.proc.sentinel for w in pool], timeout=1.0)
            for w in list(pool):
                try:
                    while w.conn.poll():
                        msg = w.conn.recv()
                        if msg[0] == "progress":
                            if msg[1] == "epochs":
                                w.done_epochs += msg[2]
                            else:
                                w.done_runs += msg[2]
                            on_progress(msg[1], msg[2])
                        elif msg[0] == "done":
                            on_done(w.spec, msg[1], msg[2])
                            w.spec = None
                        else:
                            failed.append((w.spec, msg[1]))
                            w.spec = None
                    if w.proc.is_alive():
                        continue
                except (EOFError, OSError):
                    pass
                # The worker is gone (killed, say, by the OOM killer): replace it, and retry its tree.
                pool.remove(w)
                _stop_workers([w], graceful=False)
                if w.spec is not None:
                    on_progress("runs", -w.done_runs)
                    on_progress("epochs", -w.done_epochs)
                    lost[w.spec] += 1
                    if lost[w.spec] > retries:
                        failed.append((w.spec, f"its worker {_exit_reason(w.proc.exitcode)}; tried {lost[w.spec]} times"))
                    else:
                        queue.appendleft(w.spec)
        _stop_workers(pool, graceful=True)
    finally:
        _stop_workers(pool, graceful=False)  # on an error or a signal: nothing is left running
    return failed


_MAX_SEEDS = 100_000


def parse_seeds(text: str) -> list[int]:
    """``"0-4"`` -> [0, 1, 2, 3, 4]; ``"0,3,7"`` -> [0, 3, 7]; ``"2"`` -> [2].

    Seeds are whole numbers >= 0, a range is written low-high, and a seed named twice counts once.
    """
    seeds: list[int] = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*([0-9]+)\s*(?:-\s*([0-9]+)\s*)?", part)
        if m is None:
            if re.fullmatch(r"\s*-\s*[0-9][0-9\s-]*", part):
                raise ValueError(f"--seeds: seeds are whole numbers >= 0, got {part.strip()!r}")
            raise ValueError(f"--seeds: cannot parse {text!r}; use e.g. 0-4 or 0,2,5")
        lo = int(m[1])
        hi = lo if m[2] is None else int(m[2])
        if hi < lo:
            raise ValueError(f"--seeds: the range {lo}-{hi} is empty; write the lower seed first ({hi}-{lo})")
        if hi - lo + len(seeds) >= _MAX_SEEDS:
            raise ValueError(f"--seeds: {text!r} names more than {_MAX_SEEDS} seeds")
        seeds.extend(range(lo, hi + 1))
    return list(dict.fromkeys(seeds))


def record(specs: list[TreeSpec], out: str | os.PathLike, workers: int = 2, overwrite: bool = False,
           show_progress: bool = True, retries: int = 2, executor: str = "local", ray_address: str | None = None) -> dict:
    """Record ``specs`` into the library at ``out``, skipping trees already recorded with the same recipe.

    Parameters
    ----------
    specs : the trees to record (one named twice is recorded once).
    out : the library directory (created if missing). One recorder at a time may write to it.
    workers : processes that record trees (>= 1); with 1, trees are recorded in this process.
    overwrite : re-record trees that are already there.
    show_progress : a progress bar on stderr.
    retries : how many more times a tree is tried after its worker process died while recording it.
    executor : ``"local"`` (worker processes on this machine) or ``"ray"`` (one Ray task per tree on the cluster at
        ``ray_address``, else ``RAY_ADDRESS``, else a local Ray instance; ``tmsim.record_ray``). Both write the same
        trace content.

    Returns counts: ``trees`` recorded, ``skipped`` (already there), ``runs`` and ``epochs`` written, ``seconds``.

    Raises :class:`RecorderBusy` when another recorder holds ``out``, :class:`RecordingInterrupted` on SIGINT,
    SIGTERM or SIGHUP (finished trees stay on disk), :class:`TreesNotRecorded` after the others are recorded when
    some trees could not be, ``ValueError`` for a bad argument, ``TraceError`` when ``out`` holds a tree recorded
    with another recipe.
    """
    from tqdm import tqdm

    _check_whole("--workers", workers, 1)
    if executor not in ("local", "ray"):
        raise ValueError(f"--executor must be 'local' or 'ray', got {executor!r}")
    _check_whole("retries", retries, 0)
    out = Path(out)
    specs = list(dict.fromkeys(specs))
    stats = {"trees": 0, "skipped": 0, "runs": 0, "epochs": 0}
    failed: list[tuple[TreeSpec, str]] = []
    t0 = time.perf_counter()

    todo: list[TreeSpec] = []
    finished: set[TreeSpec] = set()

    def on_done(spec: TreeSpec, nr: int, ne: int) -> None:
        finished.add(spec)
        stats["trees"] += 1
        stats["runs"] += nr
        stats["epochs"] += ne

    try:
        with _stop_on_signals(), _library_lock(out):
            _remove_stale_temp_files(out)  # leftovers of an interrupted write; never read as complete
            todo = [s for s in specs if overwrite or not is_recorded(out, s)]
            stats["skipped"] = len(specs) - len(todo)
            total_runs = sum(len(plan_tree(s)) * s.replicates for s in todo)
            bar = tqdm(total=total_runs, unit="run", desc="recording", disable=not show_progress or not todo,
                       dynamic_ncols=True)
            epochs_done = 0

            def on_progress(kind: str, n: int) -> None:
                nonlocal epochs_done
                if kind == "epochs":
                    epochs_done += n
                    bar.set_postfix_str(f"{epochs_done} epochs trained", refresh=False)
                elif n:
                    bar.update(n)

            try:
                failed = run_jobs(todo, out, workers, retries, executor, ray_address, on_progress, on_done)
            finally:
                bar.close()
                _remove_stale_temp_files(out)  # those of workers that were stopped mid-write
                _remove_unfinished(out, [s for s in todo if s not in finished])
    except RecordingInterrupted as exc:
        exc.stats = {**stats, "seconds": round(time.perf_counter() - t0, 2)}
        raise
    stats["seconds"] = round(time.perf_counter() - t0, 2)
    if failed:
        raise TreesNotRecorded(failed, stats)
    return stats


def run_jobs(jobs: list, out: Path, workers: int, retries: int, executor: str, ray_address: str | None, on_progress,
             on_done) -> list[tuple[object, str]]:
    """Do ``jobs`` (``TreeSpec``s to record, ``Growth``s of on-demand trees) with the chosen executor, the caller
    holding the library lock: in this process (``workers=1``), in worker processes, or one Ray task each. Calls
    ``on_progress(kind, n)`` while training and ``on_done(job, runs, epochs)`` when a job's tree is written;
    returns ``[(job, why)]`` for the jobs that failed (``workers=1``: a task's error propagates)."""
    if not jobs:
        return []
    if executor == "ray":
        from .record_ray import record_in_ray

        return record_in_ray(jobs, out, retries, on_progress, on_done, ray_address)
    if workers == 1:
        for job in jobs:
            n_runs, n_epochs = _run_job(out, job, on_progress)
            on_done(job, n_runs, n_epochs)
        return []
    return _record_in_workers(jobs, out, workers, retries, on_progress, on_done)


def specs_from_args(tasks: list[str], scenarios: list[str] | None, seeds: list[int], depth: int, decide_every: int | None,
                    budget: int | None, replicates: int = 1) -> list[TreeSpec]:
    """One ``TreeSpec`` per (task, scenario, seed). A task may be a registered name or ``"package.module:Class"``;
    the specs carry the task's registered name (the name its traces are filed under)."""
    specs = []
    for t in tasks:
        task = get_task(t)
        for sc in scenarios or list(task.scenarios()):
            task.scenario(sc)  # validates the name
            specs.extend(TreeSpec(task.name, sc, s, depth, decide_every, budget, replicates=replicates) for s in seeds)
    return specs


