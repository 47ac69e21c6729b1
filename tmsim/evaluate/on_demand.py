"""``tmsim evaluate``: exact verdicts on one run, recording on demand only the branches the candidate policies take.

A leaderboard of ``k`` policies needs only the paths those ``k`` policies take through a run's tree, not the
``(menu + 1) ** depth`` runs of a full tree. So, for each tree (task, scenario, seed) of the run source, on every
replicate:

1. **Record the do-nothing run** with the training state saved at every decision epoch (``tmsim.record.grow_tree``:
   the recorder's own engine, so a branch recorded here is what a full tree's recording would have trained: the
   same run id, the same fork state, the same post-fork noise; on the same machine, the same numbers), and with
   ``oracle_depth`` K the full menu to depth K as well, so the board's oracle is an upper bound where it says so.
2. **Roll every policy out** through what is recorded (the simulator, exact replay only). A rollout whose validated
   action the tree does not hold leaves it at that decision: the branch it needs is that node's path plus the action,
   with the exact value applied (a menu action by name; a ``set_*`` value or a clamped step as ``ACTION=VALUE``,
   ``tmsim.simulate.simulator.exact_action``).
3. **Train those branches for real**, forked from the saved state at that decision, on every replicate (the truth of
   a path is the distribution over its replicates, as in every library), and go back to 2.
4. When no rollout leaves the tree, **score** with the leaderboard's machinery (``run_leaderboard``): every row is
   100% replayed.

**Why it ends.** A policy's decision depends only on what it has seen (its snapshots: recorded numbers) and its own
per-rollout state, so a rollout that stays on the recorded tree decides the same way in every round, and each round
extends every rollout that left the tree by at least one recorded decision. After at most one round per decision
epoch every path is recorded. (This needs policies that are deterministic given what they see: seeded, or
stateless. A policy whose answer differs between two calls on the same snapshot, or one that times out on some
calls only, can keep asking for new branches; the loop stops when a round adds none, and a rollout that still
leaves the tree is scored with the surrogate and marked as the leaderboard marks it.)

**What the policies are built on.** A policy that learns from a trace library (``needs_library``: ``gbm``,
``lookup``, the Optuna pruners) is built once, on ``policy_library`` (``tmsim evaluate``'s default: the bundled
library), never on the library being grown: a policy fitted on the tree it is judged on would change as the tree grows, and its verdict
would be fitted to the answers. Its ``trained_on`` split is kept only where the policy library holds the evaluated
roots themselves. The oracle is the board's own, on the evaluated trees: the best *recorded* path, an upper bound on
the menu only to ``oracle_depth``.

**Cost.** Before any training the plan is printed: the do-nothing runs, an upper bound for the policies' branches
(``k`` policies x the decision epochs, per tree and replicate) and what a full tree of the same depth would cost,
in runs and epochs, priced at a measured epoch time (a probe epoch, or the recorded times when the library has
some); ``dry_run`` stops there. At the end ``runs_trained`` and ``epochs_trained`` (what the library holds for these
trees) stand beside ``runs_full_tree`` and ``epochs_full_tree`` (a full tree of the same depth, every replicate,
before divergence prunes any). A run counts when it trains: the do-nothing run and every branch but ``stop``.
``budget`` caps the runs per tree and replicate (the root included): branches beyond it are not trained, and a row
whose rollouts then leave the tree is scored with the surrogate (``surrogate``, else one fitted on the library) and
marked ``~`` as the leaderboard marks it.

**Faults.** The recorder's lock on ``out`` is held throughout (a second recorder or evaluation is refused); SIGINT,
SIGTERM and SIGHUP stop it with :class:`tmsim.record.RecordingInterrupted`; every branch is committed with its tree's
files (epochs first, runs last) and its saved states before, so a re-run after an interruption (a SIGKILL
included) finds every finished branch and trains only the rest: nothing is lost beyond the branches in flight, and
nothing is recorded twice. A policy that crashes its process is a failed row (the leaderboard's ``failed``), not a
crashed evaluation; one that cannot be built is skipped with its reason.

Example
-------
>>> from tmsim.evaluate.on_demand import evaluate, tree_specs
>>> from tmsim.policies import PolicySpec
>>> specs = tree_specs(["digits-mlp"], ["overfit"], [0, 1], replicates=2)           # doctest: +SKIP
>>> res = evaluate(specs, [PolicySpec(name="rules", kind="rules")], "traces-mine")   # doctest: +SKIP
>>> [s.replayed_share for s in res.board.scores]                                     # doctest: +SKIP
[1.0, 1.0, 1.0]
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..core.actions import Bounds
from ..simulate.simulator import Simulator, exact_action


@dataclass
class EvaluateResult:
    """What ``evaluate`` did: the board (``None`` on a dry run), the cost figures and the plan it printed."""

    board: object | None
    specs: list
    costs: dict = field(default_factory=dict)
    estimate: dict = field(default_factory=dict)
    rounds: int = 0
    off_tree: dict[str, list[str]] = field(default_factory=dict)  # policy -> why rollouts were left off the tree
    this_run: dict = field(default_factory=dict)  # runs and epochs trained by this call, seconds

    def to_json(self) -> dict:
        from .leaderboard import json_rows, n_roots

        out = {"library": str(self.costs.get("library")), "trees": [_tree_name(s) for s in self.specs],
               "replicates": self.specs[0].replicates if self.specs else 0, "rounds": self.rounds,
               **{k: v for k, v in self.costs.items() if k != "library"}, "estimate": self.estimate,
               "this_run": self.this_run, "off_tree": self.off_tree}
        if self.board is not None:
            b = self.board
            out.update(suite=b.suite.name, roots=n_roots(b), rollouts=len(b.roots), failed=b.failed,
                       skipped_policies=b.skipped, oracle_upper_bound_roots=b.oracle_upper_bound_roots,
                       rows=json_rows(b))
        return out


def _tree_name(spec) -> str:
    return f"{spec.task}/{spec.scenario}/{spec.seed}"


def tree_specs(tasks: list[str], scenarios: list[str] | None, seeds: list[int], replicates: int = 1,
               decide_every: int | None = None) -> list:
    """One on-demand ``TreeSpec`` per (task, scenario, seed), branched at every decision epoch of its scenario. A
    task may be a registered name or ``"package.module:Class"``."""
    from ..record import TreeSpec, decision_epochs
    from ..tasks import get_task

    out = []
    for t in tasks:
        task = get_task(t)
        for name in scenarios or list(task.scenarios()):
            sc = task.scenario(name)
            points = decision_epochs(sc.epochs, decide_every or sc.decide_every, sc.epochs)
            out.extend(TreeSpec(task.name, name, s, depth=len(points), decide_every=decide_every, replicates=replicates,
                                expansion="on-demand") for s in seeds)
    return out


class TaskSource:
    """Trees of a ``Task`` (bundled, plugin, RL): the recorder's engine grows them (``tmsim.record.grow_tree``),
    through its executors (this process, worker processes, Ray)."""

    def shape(self, spec) -> tuple[int, int, list[int]]:
        """(max epochs, the first decision epoch, the decision epochs) of a tree."""
        from ..record import decision_epochs
        from ..tasks import get_task

        r = spec.resolved()
        sc = get_task(r.task).scenario(r.scenario, r.seed)
        points = decision_epochs(sc.epochs, r.decide_every, r.depth)
        return sc.epochs, (points[0] if points else sc.epochs), points

    def full_plan(self, spec, depth: int) -> list:
        """The branches of a full tree (every menu action at the first ``depth`` decision epochs)."""
        from dataclasses import replace

        from ..record import plan_tree

        return plan_tree(replace(spec, depth=depth, expansion="plan", budget=None))

    def paths(self, out: Path, spec) -> dict[str, Path]:
        from ..record import tree_paths

        return tree_paths(out, spec)

    def check(self, out: Path, spec) -> bool:
        """Repair a torn growth; whether the tree is there (a tree of another recipe raises ``TraceError``)."""
        from ..record import is_recorded, repair_tree

        repair_tree(out, spec)
        return is_recorded(out, spec)

    def missing(self, out: Path, spec, branches) -> int:
        from ..record import growth_input

        return growth_input(out, spec, branches, load=False).runs

    def run(self, out: Path, jobs: list, workers: int, retries: int, executor: str, ray_address, on_progress) -> list:
        from ..record import Growth, run_jobs

        return run_jobs([Growth(s, b) for s, b in jobs], out, workers, retries, executor, ray_address, on_progress,
                        lambda job, nr, ne: None)

    def epoch_seconds(self, specs: list) -> float | None:
        """One probe epoch of the first tree's task trained here (after one to warm up), with one torch thread."""
        import torch

        from ..tasks import get_task

        r = specs[0].resolved()
        task = get_task(r.task)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            state = task.build(r.scenario, r.seed)
            task.train_epoch(state)
            task.evaluate(state)
            t0 = time.perf_counter()
            task.train_epoch(state)
            task.evaluate(state)
            return time.perf_counter() - t0
        finally:
            torch.set_num_threads(threads)


class TrainerSource(TaskSource):
    """Trees of a user's Hugging Face ``Trainer`` (``tmsim.record_trainer``): decision points are its evaluations,
    forks its own checkpoints (kept between rounds), grown in this process. ``plan`` is the probe's plan (the
    evaluation schedule, the menu and the measured step time), shared by every seed."""

    def __init__(self, plan, factory):
        self.plan, self.factory = plan, factory

    def shape(self, spec) -> tuple[int, int, list[int]]:
        points = self.plan.points
        return len(self.plan.eval_steps), points[0], points

    def full_plan(self, spec, depth: int) -> list:
        from ..record_trainer import plan_branches

        return plan_branches(self.plan.points, self.plan.menu, depth, None, _tree_name(spec))

    def paths(self, out: Path, spec) -> dict[str, Path]:
        return spec.paths(out)

    def check(self, out: Path, spec) -> bool:
        from ..record import repair_tree
        from ..record_trainer import is_recorded

        repair_tree(out, spec, spec.paths(out))
        return is_recorded(spec, out)

    def missing(self, out: Path, spec, branches) -> int:
        from ..record import prefix_closed
        from ..traces.format import read_table

        p = spec.paths(out)["runs"]
        have = set(read_table(p, "runs")["run_id"].to_pylist()) if p.exists() else set()
        return sum(spec.run_id(b) not in have for b in prefix_closed(branches))

    def run(self, out: Path, jobs: list, workers: int, retries: int, executor: str, ray_address, on_progress) -> list:
        from ..record_trainer import grow_trainer_tree

        for spec, branches in jobs:
            runs0, epochs0 = library_cost(self, out, spec)
            grow_trainer_tree(out, spec, branches, self.plan, self.factory)
            runs1, epochs1 = library_cost(self, out, spec)
            on_progress("runs", runs1 - runs0)
            on_progress("epochs", epochs1 - epochs0)
        return []

    def epoch_seconds(self, specs: list) -> float | None:
        """The probe's step time times the optimizer steps between two evaluations (the tree's "epoch")."""
        p = self.plan
        if not p.step_seconds or not p.eval_steps:
            return None
        return p.step_seconds * p.max_steps / len(p.eval_steps)


def trainer_source(trainer: str, task: str | None, scenario: str, seeds: list[int], out: Path,
                   say: Callable[[str], None] = print):
    """(the ``TrainerSource``, one on-demand ``TrainerTreeSpec`` per seed) for a factory ``FILE.py:FUNCTION``: the
    probe (as ``tmsim record --trainer``: a trainer from the factory, its evaluation schedule, three timed steps)
    gives the decision points, the menu and the step time. The caller holds the recorder's lock."""
    import shutil

    from ..core.names import safe_name
    from ..record_trainer import TrainerTreeSpec, load_factory, plan_trainer_tree

    factory = load_factory(trainer)
    name = task or safe_name(Path(trainer.rsplit(":", 1)[0]).stem.replace("_", "-"), "task")
    probe = TrainerTreeSpec(trainer, name, scenario, seeds[0], depth=1)
    work = Path(out) / ".tmsim-trainer-work" / "plan"
    try:
        plan = plan_trainer_tree(probe, work, factory, probe=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        try:
            work.parent.rmdir()
        except OSError:
            pass
    specs = [TrainerTreeSpec(trainer, name, scenario, s, depth=len(plan.points), expansion="on-demand") for s in seeds]
    return TrainerSource(plan, factory), specs


class _PathFinder(Simulator):
    """The simulator, exact replay only, noting where each rollout leaves the recorded tree: ``left_at`` = (the run
    it was on, the decision epoch, the validated action, the hyperparameters the action was applied to)."""

    def __init__(self, index, bounds: Bounds):
        super().__init__(index, None, bounds, on_off_tree="truncate")

    def _apply(self, o, act, d, seen=None) -> None:
        node = o.node
        super()._apply(o, act, d, seen)
        if node is not None and o.node is None:
            o.left_at = (node, d, act, seen)


def needed_branch(index, node: str, d: int, act, seen) -> tuple[tuple | None, str | None]:
    """(the branch, replicate-free, that records ``act`` applied at epoch ``d`` of run ``node``; None and why when no
    branch can record it). A menu action applied as the menu defines it is recorded under its name (as a full tree
    holds it); any other value (a ``set_*`` value, a clamped step) as ``ACTION=VALUE``."""
    from ..core.menu import ACTION_TABLE
    from ..record import branch_hparams

    chain = index.chain(node)
    path = tuple(sorted(chain.items()))
    entry = ACTION_TABLE.get(act.action)
    if entry is None or entry.knob is None:
        return None, f"{act.action!r} is not an action a branch can record"
    if seen is not None and entry.effect is not None:
        try:
            if branch_hparams(seen, act.action) == act.hparams:
                return path + ((d, act.action),), None
        except ValueError:
            pass
    name = exact_action(act)
    if name is None:
        return None, f"{act.action} sets no value"
    if seen is None or branch_hparams(seen, name) != act.hparams:
        return None, f"{act.action} at epoch {d} changes more than its own knob ({name})"
    return path + ((d, name),), None


def _needs_library(spec) -> bool:
    from .._registry import import_target
    from ..policies.kinds import BUILTIN_KINDS, KINDS

    if spec.kind not in BUILTIN_KINDS:
        return False  # built in its own process, which reads the library root it is given
    try:
        factory = import_target(spec.target, "target") if spec.kind == "python" else KINDS.resolve(spec.kind)
    except Exception:  # noqa: BLE001 -- reported when the policy is built
        return False
    return bool(getattr(factory, "needs_library", False))


def build_policies(policy_specs: list, policy_library=None, say: Callable[[str], None] = print,
                   groups: set[tuple] | None = None):
    """(policies, skipped {name: why}, the policy library's index or None). The oracle spec is left out (the board
    has its own, on the evaluated trees); a policy that cannot be built is skipped with its reason. With ``groups``
    (the evaluated roots' (task, scenario, seed)), a policy's ``trained_on`` is kept only where its library holds
    some of them in its training split (module docs)."""
    from ..policies import make_policy
    from ..traces import TreeIndex, load_library

    from types import SimpleNamespace

    from ..policies.kinds import BUILTIN_KINDS

    root = Path(policy_library) if policy_library is not None else None
    index = None
    policies, skipped = [], {}
    for spec in policy_specs:
        if spec.kind == "oracle":
            say(f"note: {spec.path or spec.name}: the board's own oracle reads the evaluated trees; this spec is left out")
            continue
        lib = None
        if spec.kind not in BUILTIN_KINDS:  # built in its own process, which reads the library at this root itself
            lib = SimpleNamespace(root=root) if root is not None else None
        elif _needs_library(spec):
            if root is None:
                skipped[spec.name] = "it learns from a trace library and none was given (--policy-traces)"
                say(f"warning: {spec.path or spec.name}: {skipped[spec.name]}; skipped")
                continue
            try:
                index = index or TreeIndex(load_library(root))
            except Exception as exc:  # noqa: BLE001 -- no policy library: this policy cannot be built
                skipped[spec.name] = f"its policy library {root} cannot be read ({exc})"
                say(f"warning: {spec.path or spec.name}: {skipped[spec.name]}; skipped")
                continue
            lib = index
        try:
            policies.append(make_policy(spec, lib))
        except Exception as exc:  # noqa: BLE001 -- the spec's own failure: skipped, said why
            why = " ".join(f"{type(exc).__name__}: {exc}".split())
            skipped[spec.name] = why
            say(f"warning: {spec.path or spec.name}: cannot be built ({why}); skipped")
    if groups is not None:
        _own_training_split(policies, index, groups)
    return policies, skipped, index


def _own_training_split(policies: list, policy_index, groups: set[tuple]) -> None:
    """A policy trained on another library has not seen the evaluated roots: its ``trained_on`` is dropped unless
    the policy library holds some of them in its training split (then the board leaves those out, as always)."""
    from ..policies.protocol import trained_on
    from .leaderboard import training_groups

    for pol in policies:
        t = trained_on(pol)
        if t is None:
            continue
        seen = training_groups(t, policy_index, policy_index.roots) if policy_index is not None else set()
        if not (seen & groups):
            try:
                pol.trained_on = None
            except AttributeError:
                pass


def _runs_and_epochs(plan, spec, max_epochs: int, fork: int) -> tuple[int, int]:
    """Runs that train (``stop`` trains nothing) and their epochs, per replicate, of a plan of branches, and the
    epochs before the first decision (trained once per tree, not per replicate) apart."""
    runs = epochs = 0
    for b in plan:
        if b and b[-1][1] == "stop":
            continue
        runs += 1
        epochs += max_epochs - (b[-1][0] if b else fork)
    return runs, epochs


def full_tree_cost(src: TaskSource, spec) -> tuple[int, int]:
    """(runs, epochs) a full tree of the spec's depth costs, every replicate, before divergence prunes any."""
    max_e, fork, points = src.shape(spec)
    runs, epochs = _runs_and_epochs(src.full_plan(spec, len(points)), spec, max_e, fork)
    return runs * spec.replicates, epochs * spec.replicates + fork


def library_cost(src: TaskSource, out: Path, spec) -> tuple[int, int]:
    """(runs, epochs) the library holds for the tree: runs that trained (``stop`` branches trained nothing) and
    their own epochs, the epochs before the first decision once (every replicate shares them)."""
    from ..traces.format import read_table

    paths = src.paths(out, spec)
    if not paths["runs"].exists():
        return 0, 0
    runs = read_table(paths["runs"], "runs").select(["run_id", "branch_action", "parent_run_id"]).to_pylist()
    trained = {r["run_id"] for r in runs if r["branch_action"] != "stop"}
    roots = {r["run_id"] for r in runs if r["parent_run_id"] is None}
    ep = read_table(paths["epochs"], "epochs").select(["run_id", "epoch"]).to_pylist()
    _, fork, _ = src.shape(spec)
    n = sum(1 for e in ep if e["run_id"] in trained and e["epoch"] > 0)
    return len(trained), n - fork * max(len(roots) - 1, 0)


def epoch_seconds_of(src: TaskSource, out: Path, specs: list, probe: bool = True) -> float | None:
    """The seconds one epoch takes: the mean recorded epoch time of these trees where the library has some, else
    the source's probe (``TaskSource.epoch_seconds``)."""
    from ..traces.format import read_table

    vals = []
    for s in specs:
        p = src.paths(out, s)["epochs"]
        if p.exists():
            vals += [w for w, e in zip(*read_table(p, "epochs").select(["wall_time_s", "epoch"]).to_pydict().values())
                     if w is not None and e > 0 and math.isfinite(w)]
    if vals:
        return sum(vals) / len(vals)
    return src.epoch_seconds(specs) if probe and specs else None


def first_plan(src: TaskSource, spec, oracle_depth: int, budget: int | None) -> list:
    """What the first round records for a tree: the do-nothing run, and with ``oracle_depth`` the full menu to that
    depth (budgeted like a recorded tree when ``budget`` is given)."""
    from ..record import budgeted

    if not oracle_depth:
        return [()]
    _, _, points = src.shape(spec)
    plan = src.full_plan(spec, min(oracle_depth, len(points)))
    return budgeted(plan, budget, _tree_name(spec)) if budget else plan


def plan_estimate(src: TaskSource, out: Path, specs: list, n_policies: int, oracle_depth: int, budget: int | None,
                  seconds: float | None, recorded: set | None = None) -> dict:
    """The cost printed before any training (module docs); ``recorded``: the trees already in the library."""
    first_runs = first_epochs = bound_runs = bound_epochs = full_runs = full_epochs = 0
    for s in specs:
        max_e, fork, points = src.shape(s)
        plan = first_plan(src, s, oracle_depth, budget)
        if recorded is None or _tree_name(s) not in recorded:
            r, e = _runs_and_epochs(plan, s, max_e, fork)
            first_runs += r * s.replicates
            first_epochs += e * s.replicates + fork
        per = n_policies * len(points)
        if budget:
            per = min(per, max(budget - 1, 0))
        bound_runs += per * s.replicates
        bound_epochs += per * s.replicates * max(max_e - (points[0] if points else max_e), 0)
        fr, fe = full_tree_cost(src, s)
        full_runs += fr
        full_epochs += fe
    est = {"first_runs": first_runs, "first_epochs": first_epochs, "policy_runs_at_most": bound_runs,
           "policy_epochs_at_most": bound_epochs, "full_tree_runs": full_runs, "full_tree_epochs": full_epochs,
           "epoch_seconds": seconds}
    if seconds:
        est.update(first_seconds=round(first_epochs * seconds, 1), policy_seconds_at_most=round(bound_epochs * seconds, 1),
                   full_tree_seconds=round(full_epochs * seconds, 1))
    return est


def format_estimate(src: TaskSource, est: dict, specs: list, n_policies: int) -> list[str]:
    s = specs[0]
    _, _, points = src.shape(s)
    sec = est.get("epoch_seconds")
    price = (lambda k: f", about {_dur(est[k])}") if sec else (lambda k: "")
    lines = [f"evaluate: {len(specs)} tree(s) x {s.replicates} replicate(s), {n_policies} policies, decisions at "
             f"epoch(s) {', '.join(map(str, points))} (depth {len(points)})",
             f"  first: {est['first_runs']} run(s), {est['first_epochs']} epochs (the do-nothing runs"
             f"{', and the full menu to the oracle depth' if est['first_runs'] > len(specs) * s.replicates else ''}, "
             f"trees already recorded left out){price('first_seconds')}",
             f"  then: at most {est['policy_runs_at_most']} branch(es), {est['policy_epochs_at_most']} epochs (each "
             f"policy's own path, on every replicate; shared paths and 'continue' make it far fewer)"
             f"{price('policy_seconds_at_most')}",
             f"  a full tree of the same depth: {est['full_tree_runs']} runs, {est['full_tree_epochs']} epochs"
             f"{price('full_tree_seconds')}",
             f"  epoch time: {sec:.4f} s measured" if sec else "  epoch time: not measured"]
    return lines


def _dur(s: float) -> str:
    return f"{s:.1f} s" if s < 10 else f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


def _root_groups(specs: list) -> set[tuple]:
    return {(s.task, s.scenario, s.seed) for s in specs}


def _paths_of(index, roots: list[str]) -> dict[tuple, set[tuple]]:
    """{tree group: the branches (replicate-free paths) recorded on any of its replicates}."""
    out: dict[tuple, set[tuple]] = {}
    for r in roots:
        g = index.meta[r]["group"]
        acc = out.setdefault(g, set())
        for rid in index.descendants(r):
            acc.add(tuple(sorted(index.chain(rid).items())))
    return out


def explore(index, policies: list, roots: list[str], bounds: Bounds, timeout: float | None = None,
            asked: set | None = None):
    """Roll every policy out through what is recorded; returns ({tree group: branches needed}, {policy: [why a
    rollout left the tree where no branch can follow it]}, rollouts that left the tree). A branch in ``asked`` (asked
    for in an earlier round) that is needed again could not be recorded: it is reported, not asked for again."""
    sim = _PathFinder(index, bounds)
    need: dict[tuple, set[tuple]] = {}
    why: dict[str, list[str]] = {}
    left = 0
    for pol in policies:
        for o in sim.rollout(pol, roots, timeout=timeout):
            at = getattr(o, "left_at", None)
            if not o.truncated or at is None:
                continue
            left += 1
            node, d, act, seen = at
            branch, problem = needed_branch(index, node, d, act, seen)
            g = index.meta[o.root]["group"]
            if branch is not None and index.children.get(node, {}).get(branch[-1]) is not None:
                problem = f"{branch[-1][1]} at epoch {d} of {node} is recorded but does not replay the action"
                branch = None
            if branch is not None and asked is not None and (g, branch) in asked:
                problem = f"{branch[-1][1]} at epoch {d} of {node} was asked for but could not be recorded"
                branch = None
            if branch is None:
                why.setdefault(pol.policy_id, []).append(f"{o.root}: {problem}")
                continue
            need.setdefault(g, set()).add(branch)
    return need, why, left


def _cap(need: dict[tuple, set[tuple]], have: dict[tuple, set[tuple]], budget: int | None) -> tuple[dict, int]:
    """``need`` cut to ``budget`` paths per tree (the root included; shallower branches first); (kept, left out)."""
    if budget is None:
        return need, 0
    kept, dropped = {}, 0
    for g, branches in need.items():
        paths = set(have.get(g, set())) | {()}
        take = set()
        for b in sorted(branches, key=lambda b: (len(b), b)):
            extra = {b[:i] for i in range(1, len(b) + 1)} - paths
            if len(paths) + len(extra) <= budget:
                paths |= extra
                take.add(b)
            else:
                dropped += 1
        if take:
            kept[g] = take
    return kept, dropped


def evaluate(specs: list | None, policy_specs: list, out, *, bounds: Bounds | None = None, gate=None,
             oracle_depth: int = 0, budget: int | None = None, workers: int = 1, executor: str = "local",
             ray_address: str | None = None, policy_library=None, surrogate=None, dry_run: bool = False,
             show_progress: bool = True, timeout: float | None = None, retries: int = 2,
             say: Callable[[str], None] = print, suite_name: str | None = None,
             trainer: tuple | None = None, surrogate_cache=None) -> EvaluateResult:
    """Evaluate ``policy_specs`` on the trees of ``specs`` (``tree_specs``), recording into ``out`` only what their
    rollouts need (module docs). ``trainer``: ``(FILE.py:FUNCTION, task name or None, scenario, seeds)`` instead of
    ``specs``, a user's Hugging Face ``Trainer`` (``trainer_source``). ``policy_library``: the trace library the
    policies that learn from one are built on (none given: those are skipped, with why). ``surrogate``: a surrogate
    file for rollouts a budget leaves off the tree (default: one fitted on ``out``, cached in ``surrogate_cache``,
    default ``OUT/.tmsim-surrogates``). Returns an ``EvaluateResult``; ``result.board`` is the
    leaderboard's result.

    Raises :class:`tmsim.record.RecorderBusy`, :class:`tmsim.record.RecordingInterrupted` (finished branches stay
    on disk; a re-run resumes), :class:`tmsim.record.TreesNotRecorded` (a tree that could not be grown),
    ``TraceError`` (a tree at ``out`` recorded with another recipe or machine), and ``ValueError`` for a bad
    argument, naming its option.
    """
    from tqdm import tqdm

    from ..record import TreesNotRecorded, _check_whole, _library_lock, _remove_stale_temp_files, _stop_on_signals

    _check_whole("--oracle-depth", oracle_depth, 0)
    _check_whole("--workers", workers, 1)
    if budget is not None:
        _check_whole("--budget", budget, 1)
    if executor not in ("local", "ray"):
        raise ValueError(f"--executor must be 'local' or 'ray', got {executor!r}")
    if trainer is not None and executor == "ray":
        raise ValueError("--executor ray does not take --trainer in tmsim evaluate yet: a Trainer's fork checkpoints "
                         "stay on this machine between rounds")
    if not specs and trainer is None:
        raise ValueError("tmsim evaluate needs at least one tree (--task with --scenario and --seeds)")
    if not policy_specs:
        raise ValueError("tmsim evaluate needs at least one policy (--policies or --suite)")
    out = Path(out)
    bounds = bounds or Bounds()
    t0 = time.perf_counter()
    this_run = {"runs": 0, "epochs": 0}
    with _stop_on_signals(), _library_lock(out):
        _remove_stale_temp_files(out)
        if trainer is not None:
            src, specs = trainer_source(*trainer, out, say)
        else:
            src = TaskSource()
        recorded = {_tree_name(s) for s in specs if src.check(out, s)}  # another recipe: refused before training
        seconds = epoch_seconds_of(src, out, specs)
        est = plan_estimate(src, out, specs, len(policy_specs), oracle_depth, budget, seconds, recorded)
        for line in format_estimate(src, est, specs, len(policy_specs)):
            say(line)
        result = EvaluateResult(None, specs, estimate=est)
        if dry_run:
            result.costs = _costs(src, out, specs)
            return result
        policies, skipped, _ = build_policies(policy_specs, policy_library, say, _root_groups(specs))
        by_group = {(s.task, s.scenario, s.seed): s for s in specs}
        try:
            from .leaderboard import check_policy_names

            check_policy_names(policies, policy_specs)  # a duplicate or reserved name: refused before anything trains
            def grow(jobs: list, label: str) -> None:
                todo = [(s, b) for s, b in jobs if src.missing(out, s, b)]
                if not todo:
                    return
                bar = tqdm(total=sum(src.missing(out, s, b) for s, b in todo), unit="run", desc=label,
                           disable=not show_progress, dynamic_ncols=True, leave=False)

                def on_progress(kind: str, n: int) -> None:
                    if kind == "epochs":
                        this_run["epochs"] += n
                    elif n:
                        if kind == "runs":
                            this_run["runs"] += n
                        bar.update(n)

                try:
                    failed = src.run(out, todo, workers, retries, executor, ray_address, on_progress)
                finally:
                    bar.close()
                    _remove_stale_temp_files(out)
                    for s, _ in todo:
                        src.check(out, s)
                if failed:
                    raise TreesNotRecorded(failed, dict(this_run))

            grow([(s, tuple(first_plan(src, s, oracle_depth, budget))) for s in specs],
                 "do-nothing runs" + (f" + oracle depth {oracle_depth}" if oracle_depth else ""))
            left_out: dict[str, list[str]] = {}
            dropped = 0
            asked: set = set()
            while True:
                index, roots = _index(out, specs)
                need, why, _ = explore(index, policies, roots, bounds, timeout, asked)
                for pid, lines in why.items():
                    left_out.setdefault(pid, [])
                    left_out[pid] += [ln for ln in lines if ln not in left_out[pid]]
                need, dropped = _cap(need, _paths_of(index, roots), budget)
                asked |= {(g, b) for g, bs in need.items() for b in bs}
                if not need:
                    break
                result.rounds += 1
                say(f"round {result.rounds}: {sum(len(b) for b in need.values())} branch(es) the policies take are not "
                    "recorded; training them on every replicate")
                grow([(by_group[g], tuple(sorted(bs))) for g, bs in sorted(need.items())], f"round {result.rounds}")
            if dropped:
                left_out.setdefault("(budget)", []).append(f"{dropped} branch(es) beyond --budget {budget} not recorded")
            result.off_tree = left_out
            index, roots = _index(out, specs)
            sur, sid = _surrogate_if_needed(index, policies, roots, bounds, timeout, surrogate, say,
                                            Path(surrogate_cache) if surrogate_cache else out / ".tmsim-surrogates")
            from .leaderboard import Suite, run_leaderboard

            suite = Suite(name=suite_name or f"evaluate:{out.name}", tasks=sorted({s.task for s in specs}),
                          scenarios=sorted({s.scenario for s in specs}), seeds=sorted({s.seed for s in specs}),
                          bounds=bounds, **({"gate": gate} if gate is not None else {}))
            bar = tqdm(total=len({p.policy_id for p in policies} | {"constant", "oracle"}), desc="scoring",
                       unit="policy", disable=not show_progress, leave=False)
            try:
                result.board = run_leaderboard(index, policies, suite, sur, sid, progress=lambda _: bar.update(1),
                                               timeout=timeout, workers=1, specs=None, skipped=skipped, reads_run=False)
            finally:
                bar.close()
            policies = []  # closed by the board
        finally:
            from ..policies.protocol import close_policy

            for pol in policies:
                close_policy(pol)
        result.costs = _costs(src, out, specs)
        result.this_run = {**this_run, "seconds": round(time.perf_counter() - t0, 2)}
    return result


def _index(out: Path, specs: list):
    """The library's index and the roots of the evaluated trees."""
    from ..traces import TreeIndex, load_library

    index = TreeIndex(load_library(out))
    groups = _root_groups(specs)
    roots = [r for r in index.roots if index.meta[r]["group"] in groups]
    return index, roots


def _surrogate_if_needed(index, policies, roots, bounds, timeout, surrogate, say, cache: Path):
    """(surrogate, id) when some rollout still leaves the recorded tree (a budget, an action no branch records),
    else (None, "none: every rollout replayed")."""
    need, why, left = explore(index, policies, roots, bounds, timeout)
    if not left:
        return None, "none: every rollout replayed"
    from ..simulate.surrogate import Surrogate, surrogate_for

    if surrogate is not None:
        sur = Surrogate.load(surrogate)
        return sur, sur.digest(Path(surrogate))
    say(f"{left} rollout(s) leave the recorded tree: they are scored with a surrogate fitted on the library")
    sur, sid, _ = surrogate_for(index, index.library.digest(), cache, log=say)
    return sur, sid


def _costs(src: TaskSource, out: Path, specs: list) -> dict:
    runs = epochs = full_runs = full_epochs = 0
    for s in specs:
        r, e = library_cost(src, out, s)
        fr, fe = full_tree_cost(src, s)
        runs, epochs, full_runs, full_epochs = runs + r, epochs + e, full_runs + fr, full_epochs + fe
    return {"library": str(out), "runs_trained": runs, "runs_full_tree": full_runs, "epochs_trained": epochs,
            "epochs_full_tree": full_epochs,
            "runs_share": round(runs / full_runs, 4) if full_runs else None,
            "epochs_share": round(epochs / full_epochs, 4) if full_epochs else None}


def format_costs(res: EvaluateResult) -> str:
    c = res.costs
    share = f" ({c['runs_share']:.0%})" if c.get("runs_share") is not None else ""
    eshare = f" ({c['epochs_share']:.0%})" if c.get("epochs_share") is not None else ""
    t = res.this_run
    return (f"recorded for these trees: {c['runs_trained']} runs{share} and {c['epochs_trained']} epochs{eshare} of a "
            f"full tree's {c['runs_full_tree']} runs and {c['epochs_full_tree']} epochs; this run trained "
            f"{t.get('runs', 0)} runs, {t.get('epochs', 0)} epochs in {res.rounds} round(s), {t.get('seconds', 0)} s")


def dumps(res: EvaluateResult) -> str:
    return json.dumps(res.to_json(), indent=2, default=str)
