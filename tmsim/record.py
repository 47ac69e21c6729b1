"""The trace-tree recorder: real training runs, forked at decision epochs, written as trace format v1.

A *tree* is one (task, scenario, seed). Its root is the do-nothing run, trained from epoch 0 to the end. At each of
the first ``depth`` decision epochs (every ``decide_every`` epochs) the recorder saves the full training state and,
for every offered menu action, restores that state, applies the action and trains the branch to the end, doing
nothing more unless it has branches of its own. So every ``runs`` row is a whole run (its ancestors' epochs up to
its branch epoch, then its own), and a rollout that follows any recorded action sequence can be replayed exactly.

A branch restores torch's global RNG and the data-order generator from the fork, so a branch and its parent see
the same minibatches and dropout masks until their hyperparameters make them differ (common random numbers: the
counterfactual difference is the action's effect, not sampling noise).

``budget`` caps the runs recorded per tree: the root and all single-action branches come first, deeper branches
are sampled with a generator seeded by the tree's identity, so a budgeted tree is deterministic too.

Example
-------
>>> from tmsim.record import TreeSpec, plan_tree
>>> len(plan_tree(TreeSpec("digits-mlp", "healthy", 0, depth=1)))  # the root + 5 actions at epoch 5
6
"""
from __future__ import annotations

import math
import os
import random
import time
from collections import defaultdict
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import pyarrow as pa

from . import __version__
from .core.hparams import Hyperparams
from .core.menu import apply_action, changing_actions, record_menu
from .core.outcome import is_diverged
from .tasks import TASKS, get_task
from .tasks.base import TorchTask, TrainState
from .traces.format import EPOCHS, RUNS, TraceError, dumps, file_metadata, read_table, write_table

RECORDER_VERSION = f"tmsim-{__version__}/trace-v1"

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

    def __post_init__(self) -> None:
        if ":" in self.task:  # a task given by import path is filed under its registered name
            object.__setattr__(self, "task", get_task(self.task).name)

    def resolved(self) -> "TreeSpec":
        task = get_task(self.task)
        sc = task.scenario(self.scenario)
        menu = self.menu or record_menu(len(task.losses))
        return TreeSpec(self.task, self.scenario, self.seed, self.depth, self.decide_every or sc.decide_every, self.budget, tuple(menu))

    @property
    def stem(self) -> str:
        return f"{self.scenario}-s{self.seed}"

    def recipe(self) -> str:
        """The canonical description stored in each file's metadata (resume compares it)."""
        return dumps({**asdict(self.resolved()), "recorder": RECORDER_VERSION})


def run_id(spec: TreeSpec, branch: Branch) -> str:
    return f"{spec.task}:{spec.scenario}:s{spec.seed}" + "".join(f"+e{e}:{a}" for e, a in branch)


def decision_epochs(epochs: int, every: int, depth: int) -> list[int]:
    return list(range(every, epochs, every))[:depth]


def plan_tree(spec: TreeSpec) -> list[Branch]:
    """Every branch to record, parents before children (before divergence prunes any)."""
    spec = spec.resolved()
    task = get_task(spec.task)
    sc = task.scenario(spec.scenario)
    points = decision_epochs(sc.epochs, spec.decide_every, spec.depth)

    def hp_of(branch: Branch) -> Hyperparams:
        hp = sc.hparams
        for _, a in branch:
            hp = apply_action(hp, a)
        return hp

    full: list[Branch] = []

    def expand(branch: Branch) -> None:
        full.append(branch)
        if branch and branch[-1][1] == "stop":
            return
        last = branch[-1][0] if branch else 0
        for d in points:
            if d > last:
                for a in changing_actions(hp_of(branch), len(task.losses), spec.menu):
                    if a != "continue":
                        expand(branch + ((d, a),))

    expand(())
    if spec.budget is None or spec.budget >= len(full):
        return sorted(full, key=lambda b: (len(b), b))
    rng = random.Random(f"{spec.task}/{spec.scenario}/{spec.seed}")
    keyed = sorted(full, key=lambda b: (len(b), 0.0 if len(b) <= 1 else rng.random(), b))
    chosen: set[Branch] = set()
    for b in keyed:
        if len(chosen) >= spec.budget:
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


def record_tree(spec: TreeSpec, progress: Callable[[str, int], None] | None = None) -> tuple[pa.Table, pa.Table]:
    """Train one tree for real and return its (runs, epochs) tables. Deterministic for a given spec."""
    import torch

    spec = spec.resolved()
    task: TorchTask = get_task(spec.task)
    sc = task.scenario(spec.scenario)
    plan = plan_tree(spec)
    children: dict[Branch, dict[int, list[str]]] = defaultdict(lambda: defaultdict(list))
    for b in plan:
        if b:
            children[b[:-1]][b[-1][0]].append(b[-1][1])
    runs, epochs = _Columns(RUNS), _Columns(EPOCHS)
    progress = progress or (lambda kind, n: None)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the same numbers on every machine with the same wheel, and 2 workers on 2 cores
    try:
        state = task.build(sc, spec.seed)
        initial = task.evaluate(state)
        _epoch_row(epochs, spec, (), state, initial, None, 0.0, diverged=False)
        _train_branch(task, spec, (), state, initial["val_loss"], children, runs, epochs, progress)
    finally:
        torch.set_num_threads(threads)
    return runs.table(), epochs.table()


def _epoch_row(cols: _Columns, spec: TreeSpec, branch: Branch, state: TrainState, ev: dict, tr: dict | None, wall: float, diverged: bool) -> None:
    hp = state.hparams
    tr = tr or {}
    cols.add(
        run_id=run_id(spec, branch), task=spec.task, epoch=state.epoch,
        lr=hp.lr, weight_decay=hp.weight_decay, dropout=hp.dropout, aux_loss_weight=hp.aux_loss_weight,
        **{k: _finite_or_none(v) for k, v in ev.items()},
        grad_norm=_finite_or_none(tr.get("grad_norm")), update_ratio=_finite_or_none(tr.get("update_ratio")),
        samples_seen=state.samples_seen, step_time_s=tr.get("step_time_s"), wall_time_s=wall,
        diverged=diverged, source="recorded",
    )


def _train_branch(task, spec, branch, state, initial_val, children, runs, epochs, progress) -> None:
    sc = state.scenario
    kids = children.get(branch, {})
    forks: dict[int, bytes] = {}
    status = "complete"
    start = state.epoch
    if not (branch and branch[-1][1] == "stop"):
        for _ in range(start, sc.epochs):
            t0 = time.perf_counter()
            tr = task.train_epoch(state)
            ev = task.evaluate(state)
            wall = time.perf_counter() - t0
            diverged = is_diverged(ev["val_loss"], initial_val, ev["train_loss"], tr["grad_norm"])
            _epoch_row(epochs, spec, branch, state, ev, tr, wall, diverged)
            progress("epochs", 1)
            if diverged:
                status = "diverged"
                break
            if state.epoch in kids:
                forks[state.epoch] = task.save(state)
    hp0 = sc.hparams
    parent = run_id(spec, branch[:-1]) if branch else None
    runs.add(
        run_id=run_id(spec, branch), parent_run_id=parent, root_run_id=run_id(spec, ()), depth=len(branch),
        branch_epoch=branch[-1][0] if branch else None, branch_action=branch[-1][1] if branch else None,
        task=spec.task, scenario=spec.scenario, seed=spec.seed,
        model=type(state.model).__name__, n_params=task.n_params(state), dataset=task.dataset_descriptor,
        init_lr=hp0.lr, init_weight_decay=hp0.weight_decay, init_dropout=hp0.dropout, init_aux_loss_weight=hp0.aux_loss_weight,
        settings_json=dumps(sc.settings), max_epochs=sc.epochs, decide_every=spec.decide_every,
        status=status, end_epoch=state.epoch, source="recorded", recorder_version=RECORDER_VERSION,
    )
    progress("runs", 1)
    for d in sorted(forks):
        for action in kids[d]:
            child = task.restore(forks[d])
            task.apply(child, apply_action(child.hparams, action))
            _train_branch(task, spec, branch + ((d, action),), child, initial_val, children, runs, epochs, progress)
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


def write_tree(out: Path, spec: TreeSpec, runs: pa.Table, epochs: pa.Table) -> None:
    """Epochs first, runs last: a tree counts as recorded only once its runs file is in place."""
    paths = tree_paths(out, spec)
    md = {"recipe": spec.recipe()}
    write_table(epochs, paths["epochs"], "epochs", md)
    write_table(runs, paths["runs"], "runs", md)


def _worker_init(task_refs: dict[str, str]) -> None:
    """A worker process: one thread, and the parent's task registry (tasks given by import path or registered in
    code are found by name here too)."""
    import torch

    torch.set_num_threads(1)
    for name, ref in task_refs.items():
        TASKS.register(name, ref, overwrite=True)


def _record_one(out: str, spec: TreeSpec, queue) -> tuple[TreeSpec, int, int]:
    runs, epochs = record_tree(spec, (lambda k, n: queue.put((k, n))) if queue is not None else None)
    write_tree(Path(out), spec, runs, epochs)
    return spec, runs.num_rows, epochs.num_rows


def parse_seeds(text: str) -> list[int]:
    """``"0-4"`` -> [0, 1, 2, 3, 4]; ``"0,3,7"`` -> [0, 3, 7]; ``"2"`` -> [2]."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            if "-" in part:
                a, b = part.split("-")
                seeds.extend(range(int(a), int(b) + 1))
            else:
                seeds.append(int(part))
    except ValueError:
        raise ValueError(f"--seeds: cannot parse {text!r}; use e.g. 0-4 or 0,2,5") from None
    return seeds


def record(specs: list[TreeSpec], out: str | os.PathLike, workers: int = 2, overwrite: bool = False, show_progress: bool = True) -> dict:
    """Record ``specs`` into the library at ``out``, skipping trees already recorded with the same recipe.

    Returns counts: ``trees``, ``skipped`` (already there), ``runs`` and ``epochs`` written, ``seconds``.
    """
    from tqdm import tqdm

    out = Path(out)
    for stale in out.glob("*/task=*/.*.tmp-*"):  # leftovers of an interrupted write; never read as complete
        stale.unlink()
    todo = []
    for s in specs:
        if not overwrite and is_recorded(out, s):
            continue
        todo.append(s)
    total_runs = sum(len(plan_tree(s)) for s in todo)
    stats = {"trees": len(todo), "skipped": len(specs) - len(todo), "runs": 0, "epochs": 0}
    t0 = time.perf_counter()
    bar = tqdm(total=total_runs, unit="run", desc="recording", disable=not show_progress or not todo, dynamic_ncols=True)
    epochs_done = 0

    def on_progress(kind: str, n: int) -> None:
        nonlocal epochs_done
        if kind == "epochs":
            epochs_done += n
            bar.set_postfix_str(f"{epochs_done} epochs trained", refresh=False)
        else:
            bar.update(n)

    try:
        if workers <= 1:
            for s in todo:
                runs, epochs = record_tree(s, on_progress)
                write_tree(out, s, runs, epochs)
                stats["runs"] += runs.num_rows
                stats["epochs"] += epochs.num_rows
        elif todo:
            import multiprocessing as mp

            ctx = mp.get_context("spawn")
            with ctx.Manager() as manager, ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init,
                                                              initargs=(TASKS.refs(),)) as pool:
                queue = manager.Queue()
                pending = {pool.submit(_record_one, str(out), s, queue) for s in todo}
                while pending:
                    done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                    while not queue.empty():
                        on_progress(*queue.get())
                    for fut in done:
                        _, nr, ne = fut.result()
                        stats["runs"] += nr
                        stats["epochs"] += ne
                while not queue.empty():
                    on_progress(*queue.get())
    finally:
        bar.close()
    stats["seconds"] = round(time.perf_counter() - t0, 2)
    return stats


def specs_from_args(tasks: list[str], scenarios: list[str] | None, seeds: list[int], depth: int, decide_every: int | None, budget: int | None) -> list[TreeSpec]:
    """One ``TreeSpec`` per (task, scenario, seed). A task may be a registered name or ``"package.module:Class"``;
    the specs carry the task's registered name (the name its traces are filed under)."""
    specs = []
    for t in tasks:
        task = get_task(t)
        for sc in scenarios or list(task.scenarios()):
            task.scenario(sc)  # validates the name
            specs.extend(TreeSpec(task.name, sc, s, depth, decide_every, budget) for s in seeds)
    return specs


