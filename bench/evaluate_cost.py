"""What ``tmsim evaluate`` records against a full tree: runs and epochs trained for k = 1, 3, 6, 12 policies.

    python bench/evaluate_cost.py                     # digits-mlp, overfit, seeds 0-4, 2 replicates (depth 3)
    python bench/evaluate_cost.py --task blowup_tasks:BlowupTask --scenario calm --seeds 0-1   # seconds (tests/plugins on PYTHONPATH)

The policy sets are nested (each k adds policies to the one before), so one library grows through them: after the
k-policy evaluation it holds exactly the paths those k policies take (every branch it records is one some policy
needed, and a branch's rows do not depend on when it was recorded), which is what a fresh evaluation of those k
policies would record. ``runs_full_tree`` is a full tree of the same depth (every menu action at every decision
epoch), every replicate, before divergence prunes any. Prints a Markdown table; ``--json`` writes the rows.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
POL = REPO / "policies"

#: k -> the policies added at that k (a spec file in policies/, or "llm-scratch": the LLM on the scratch test model)
SETS = {1: ["rules"], 3: ["plateau", "random"], 6: ["constant", "gbm", "llm-scratch"],
        12: ["rules-cautious", "blind-lookup", "gbm-blind", "gbm-telemetry", "optuna-sha", "optuna-threshold"]}


def spec(name: str):
    from tmsim.policies import PolicySpec, load_spec

    if name == "llm-scratch":
        return PolicySpec(name="llm-scratch", kind="llm", settings={"model": str(REPO / "models" / "qwen3-tiny-scratch"),
                                                                    "method": "json", "max_new_tokens": 24})
    return load_spec(POL / f"{name}.toml")


def main(argv: list[str] | None = None) -> int:
    from tmsim.evaluate.on_demand import evaluate, tree_specs
    from tmsim.record import parse_seeds

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="digits-mlp")
    ap.add_argument("--scenario", default="overfit")
    ap.add_argument("--seeds", default="0-4")
    ap.add_argument("--replicates", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="the library to grow (default: a temporary directory)")
    ap.add_argument("--policy-traces", type=Path, default=REPO / "traces")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="tmsim-evaluate-bench-"))
    trees = tree_specs([args.task], [args.scenario], parse_seeds(args.seeds), args.replicates)
    names: list[str] = []
    rows = []
    for k, more in SETS.items():
        names += more
        t0 = time.perf_counter()
        res = evaluate(trees, [spec(n) for n in names], out, workers=args.workers, policy_library=args.policy_traces,
                       show_progress=False, say=lambda m: None)
        c = res.costs
        rows.append({"k": k, "policies": list(names), "runs_trained": c["runs_trained"],
                     "runs_full_tree": c["runs_full_tree"], "runs_share": c["runs_share"],
                     "epochs_trained": c["epochs_trained"], "epochs_full_tree": c["epochs_full_tree"],
                     "epochs_share": c["epochs_share"], "rounds": res.rounds, "seconds": round(time.perf_counter() - t0, 1),
                     "scored": len([s for s in res.board.scores if not s.upper_bound]),
                     "skipped": res.board.skipped, "failed": res.board.failed,
                     "min_replayed_share": min(s.replayed_share for s in res.board.scores)})
        print(f"k={k}: {c['runs_trained']} of {c['runs_full_tree']} runs, {res.rounds} rounds, "
              f"{rows[-1]['seconds']} s", flush=True)
    print(f"\n{args.task} {args.scenario}, seeds {args.seeds}, {args.replicates} replicates, decisions at every "
          f"decision epoch ({trees[0].depth}); library {out}\n")
    print("| policies k | runs trained | of a full tree's | share | epochs trained | of a full tree's | share | rounds "
          "| rows replayed | seconds (cumulative library) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['k']} | {r['runs_trained']} | {r['runs_full_tree']} | {r['runs_share']:.1%} | {r['epochs_trained']} "
              f"| {r['epochs_full_tree']} | {r['epochs_share']:.1%} | {r['rounds']} | {r['min_replayed_share']:.0%} "
              f"(min) | {r['seconds']} |")
    for r in rows:
        if r["skipped"] or r["failed"]:
            print(f"k={r['k']}: skipped {r['skipped']}, failed {r['failed']}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
