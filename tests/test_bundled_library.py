"""The bundled library in traces/ holds what the project promises: real, valid, varied, replicated recordings.

These tests read the recorded files; they never re-train anything, so they hold on any machine."""
import json

import pytest

import pyarrow.compute as pc

from tmsim.traces import load_library
from tmsim.traces.format import READABLE_VERSIONS, file_metadata
from tmsim.traces.query import connect
from tmsim.traces.summary import summary_table

ZOO_SQL = """select task, count(distinct scenario) sc, count(distinct seed) seeds, max(replicate) + 1 reps,
                    count(distinct init_lr) lrs, any_value(optimizer) opt from runs group by task"""


def test_bundled_library_is_valid_and_complete(bundled):
    lib = load_library(bundled, strict=True)
    assert not lib.problems
    assert set(pc.unique(lib.runs["source"]).to_pylist()) == {"recorded"}
    runs_file = lib.files["runs"][0]
    md = file_metadata(runs_file)
    assert md["tmsim.schema_version"] in READABLE_VERSIONS
    prov = json.loads(md["tmsim.provenance"])
    assert {"torch", "cpu_capability", "threads", "numpy", "blas"} <= set(prov) and prov["threads"] == 1


def test_the_task_zoo_has_families_replicates_and_three_optimizers(bundled):
    with connect(bundled) as db:
        rows = db.sql(ZOO_SQL).to_pylist()
        scen = db.sql("select task, scenario, count(distinct init_lr) lrs from runs group by all").to_pylist()
    assert len(rows) >= 6
    for r in rows:
        assert r["sc"] >= 4 and r["seeds"] >= 4 and r["reps"] >= 3 and r["lrs"] > r["sc"], r
    assert {"sgd", "adam", "adamw"} <= {r["opt"] for r in rows}
    assert all(s["lrs"] >= 2 for s in scen)  # learning rates vary within every scenario family


def test_overfitting_is_fixable_and_some_branches_diverge(bundled):
    rows = summary_table(bundled).to_pylist()
    overfit = [r for r in rows if r["scenario"] == "overfit"]
    assert len(overfit) >= 6
    for r in overfit:  # the best recorded path, by its expected outcome over replicates, ends below doing nothing
        assert r["best_over_do_nothing"] < 1.0, r
    # and on most tasks by a wide margin (swissroll-adam's, on 50-80 rows of a non-linear target, gains only ~4%)
    assert sorted(r["best_over_do_nothing"] for r in overfit)[len(overfit) // 2] < 0.8
    assert any(r["diverged_share"] > 0 for r in rows)


def test_the_bundled_truth_reproduces_statistically_on_this_machine(bundled, tmp_path):
    """`tmsim verify` on a small sample of cheap roots: the re-recorded effects (fresh replicates, this machine) are
    draws from the library's distribution. A permutation test with a 1% false-alarm rate; no single draw asserted."""
    from tmsim.cli import main

    out = tmp_path / "verify.json"
    assert main(["verify", "--traces", str(bundled), "--sample", "2", "--task", "diabetes-mlp,friedman-mlp",
                 "--json", str(out), "--quiet"]) in (0, 1)
    report = json.loads(out.read_text())
    assert report["pairs"] >= 6 and report["passed"], report


def test_a_path_cut_short_by_a_divergence_scores_it_in_that_replicate(bundled):
    """A branch never recorded in one replicate because a run on the way diverged first is scored there as that
    divergence (what following the path in that replicate gives), by the index and by `tmsim summary` alike; a path
    is never scored on the replicates that survived it alone."""
    from tmsim.traces import TreeIndex
    from tmsim.traces.index import path_of

    index = TreeIndex(load_library(bundled))
    roots = [r for r in index.roots if index.meta[r]["task"] == "cancer-mlp" and index.meta[r]["scenario"] == "diverge"]
    found = None
    for root in roots:
        reps = {index.meta[r]["replicate"] for r in index.by_path[index.meta[root]["path"]]}
        for rid in index.descendants(root):
            path = index.meta[rid]["path"]
            held = {index.meta[r]["replicate"] for r in index.by_path[path]}
            if len(held) == len(reps) - 1:
                parent = next((r for r in index.by_path[path_of(index.meta[rid]["parent_run_id"])]
                               if index.meta[r]["replicate"] not in held), None)
                if parent is not None and index.meta[parent]["status"] == "diverged":
                    found = (path, parent)
                    break
        if found:
            break
    assert found, "the cancer-mlp diverge trees hold a branch cut short by its parent's divergence"
    path, parent = found
    survivors = [index.final_val_loss(r) for r in index.by_path[path]]
    assert index.expected_final_val_loss(path) == pytest.approx((sum(survivors) + index.final_val_loss(parent))
                                                                / (len(survivors) + 1))
    # the summary's best path per seed is the index's
    task, scenario, seed = index.meta[parent]["group"]
    rows = [r for r in summary_table(bundled).to_pylist() if r["task"] == task and r["scenario"] == scenario]
    assert rows
    seeds = sorted({index.meta[r]["seed"] for r in roots})
    best = sorted(min(index.expected_final_val_loss(index.meta[x]["path"]) for root in roots
                      if index.meta[root]["seed"] == s for x in index.descendants(root)) for s in seeds)
    assert rows[0]["best_val_loss"] == round(float(best[len(best) // 2]), 4)
