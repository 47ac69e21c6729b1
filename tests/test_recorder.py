"""The recorder: tree plans, budgets, divergence, interruption and resume, the process pool."""
import os
import signal
import subprocess
import sys
import time

import pytest
from pathlib import Path

from tmsim.record import TreeSpec, parse_seeds, plan_tree, record, record_tree, tree_paths
from tmsim.traces import content_hash, load_library, read_table

PLUGINS = Path(__file__).parent / "plugins"


def test_full_plan_counts_every_action_sequence():
    # digits: 4 training actions + stop at each of 3 decision points; a run may branch at any later point
    plan = plan_tree(TreeSpec("digits-mlp", "healthy", 0, depth=3))
    assert plan[0] == ()
    assert len([b for b in plan if len(b) == 1]) == 3 * 5
    assert all(b[:-1] in set(plan) for b in plan if b)
    assert not any(b[i][1] == "stop" for b in plan for i in range(len(b) - 1))  # nothing after stop


def test_budget_keeps_root_and_single_actions_and_is_deterministic():
    spec = TreeSpec("multiloss", "imbalance", 2, depth=3, budget=30)
    a, b = plan_tree(spec), plan_tree(spec)
    assert a == b and len(a) == 30 and a[0] == ()
    singles = [x for x in plan_tree(TreeSpec("multiloss", "imbalance", 2, depth=3)) if len(x) == 1]
    assert set(singles) <= set(a)
    assert all(x[:-1] in set(a) for x in a if x)
    assert plan_tree(TreeSpec("multiloss", "imbalance", 3, depth=3, budget=30)) != a


def test_diverged_run_stops_and_is_marked(monkeypatch):
    # A scenario far beyond stability diverges on any machine (no single chaotic draw is asserted).
    monkeypatch.syspath_prepend(str(PLUGINS))
    runs, epochs = record_tree(TreeSpec("blowup_tasks:BlowupTask", "blowup", 0, depth=2))
    assert runs["run_id"].to_pylist() == ["blowup:blowup:s0"]  # filed under the task's name; no branch trained
    assert runs["status"].to_pylist() == ["diverged"]
    rows = epochs.to_pylist()
    assert rows[-1]["diverged"] and not any(r["diverged"] for r in rows[:-1])
    assert rows[-1]["epoch"] == runs["end_epoch"][0].as_py() < 6


def test_status_and_diverged_flags_agree_in_every_recorded_run():
    runs, epochs = record_tree(TreeSpec("digits-mlp", "overfit", 0, depth=1))
    by_run: dict[str, list] = {}
    for r in epochs.to_pylist():
        by_run.setdefault(r["run_id"], []).append(r)
    for rid, status, end in zip(runs["run_id"].to_pylist(), runs["status"].to_pylist(), runs["end_epoch"].to_pylist()):
        own = by_run.get(rid, [])
        flags = [r["diverged"] for r in own]
        if status == "diverged":
            assert flags[-1] and not any(flags[:-1]) and end < 20
        elif rid.endswith(":stop"):
            assert not own and end == 5
        else:
            assert not any(flags) and end == 20


def test_parse_seeds():
    assert parse_seeds("0-4") == [0, 1, 2, 3, 4] and parse_seeds("1,5") == [1, 5] and parse_seeds("7") == [7]
    with pytest.raises(ValueError, match="--seeds"):
        parse_seeds("a-b")


def test_interrupted_recording_keeps_finished_trees_and_resumes(tmp_path):
    out = tmp_path / "lib"
    cmd = [sys.executable, "-m", "tmsim.cli", "record", "--task", "digits-mlp", "--scenario", "healthy",
           "--seeds", "0-3", "--depth", "1", "--workers", "1", "--quiet", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = tree_paths(out, TreeSpec("digits-mlp", "healthy", 0, depth=1))["runs"]
    deadline = time.time() + 120
    while not first.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # the harshest interruption: no clean-up code runs
    proc.wait()
    assert first.exists(), proc.stderr.read().decode()
    # what is there is complete and readable; nothing half-written looks like a trace file
    lib = load_library(out, strict=True)
    assert lib.runs.num_rows % 6 == 0 and lib.runs.num_rows < 24
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")}
    stats = record([TreeSpec("digits-mlp", "healthy", s, depth=1) for s in range(4)], out, workers=1, show_progress=False)
    assert stats["skipped"] == lib.runs.num_rows // 6 and stats["trees"] == 4 - stats["skipped"]
    for p, m in before.items():
        if p.name.endswith(".parquet") and p.parent.parent.name == "runs":
            assert p.stat().st_mtime_ns == m  # finished trees are left alone
    assert not list(out.rglob(".*.tmp-*"))
    full = load_library(out, strict=True)
    assert full.runs.num_rows == 24
    fresh = record_tree(TreeSpec("digits-mlp", "healthy", 3, depth=1))
    p = tree_paths(out, TreeSpec("digits-mlp", "healthy", 3, depth=1))
    assert content_hash(read_table(p["epochs"], "epochs")) == content_hash(fresh[1])


def test_process_pool_matches_one_process_and_refuses_a_changed_recipe(tmp_path):
    specs = [TreeSpec("digits-mlp", "plateau", s, depth=1) for s in (0, 1)]
    record(specs, tmp_path / "pool", workers=2, show_progress=False)
    record(specs, tmp_path / "one", workers=1, show_progress=False)
    for s in specs:
        a, b = tree_paths(tmp_path / "pool", s), tree_paths(tmp_path / "one", s)
        assert a["runs"].read_bytes() == b["runs"].read_bytes()
        assert content_hash(read_table(a["epochs"], "epochs")) == content_hash(read_table(b["epochs"], "epochs"))
    from tmsim.traces import TraceError

    with pytest.raises(TraceError, match="tmsim.recipe"):
        record([TreeSpec("digits-mlp", "plateau", 0, depth=2)], tmp_path / "one", workers=1, show_progress=False)
    assert os.path.exists(tree_paths(tmp_path / "one", specs[0])["runs"])
