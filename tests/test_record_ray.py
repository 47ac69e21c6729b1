"""Recording on Ray: a local Ray instance started by the recorder writes the same trace content as the local pool,
and a Ray worker killed mid-tree neither loses nor duplicates a branch."""
import os
import signal
import subprocess
import sys
import time

import pytest

from tmsim.traces import load_library
from tmsim.traces.format import TIMING_COLUMNS

ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

ARGS = ["--task", "digits-mlp", "--scenario", "overfit", "--seeds", "0-1", "--depth", "1", "--quiet"]


def _record(out, *extra, wait=True):
    cmd = [sys.executable, "-m", "tmsim.cli", "record", *ARGS, "--out", str(out), *extra]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    if wait:
        out_, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
    return proc


def _content(lib_dir):
    lib = load_library(lib_dir, strict=True)  # strict: every run and (run_id, epoch) exactly once
    out = {}
    for kind, keys in (("runs", ["run_id"]), ("epochs", ["run_id", "epoch"])):
        t = getattr(lib, kind)
        cols = [c for c in t.column_names if c not in TIMING_COLUMNS]
        out[kind] = t.select(cols).sort_by([(k, "ascending") for k in keys])
    return out


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    _record(out, "--workers", "2")
    return _content(out)


def test_ray_records_the_same_trace_content_as_the_local_pool(local, tmp_path):
    _record(tmp_path / "ray", "--executor", "ray")
    got = _content(tmp_path / "ray")
    assert got["runs"].num_rows == local["runs"].num_rows == 12
    assert got["runs"].equals(local["runs"]) and got["epochs"].equals(local["epochs"])


def _tree_workers():
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if cmd.startswith("ray::tmsim-tree") or cmd.startswith("ray::_tree_task"):
            found.append(p)
    return found


def test_a_killed_ray_worker_loses_and_duplicates_no_branch(local, tmp_path):
    proc = _record(tmp_path / "ray", "--executor", "ray", wait=False)
    killed = None
    deadline = time.time() + 120
    try:
        while killed is None and time.time() < deadline and proc.poll() is None:
            workers = _tree_workers()
            if workers:
                time.sleep(0.5)  # well inside a tree
                workers = _tree_workers()
                if workers:
                    killed = workers[0].pid
                    os.kill(killed, signal.SIGKILL)
            time.sleep(0.05)
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert killed is not None, "no Ray worker was caught recording a tree"
    assert proc.returncode == 0, err
    got = _content(tmp_path / "ray")
    assert got["runs"].equals(local["runs"]) and got["epochs"].equals(local["epochs"])


def test_an_unknown_executor_is_refused():
    from tmsim.cli import main

    with pytest.raises(SystemExit):
        main(["record", *ARGS, "--out", "/nonexistent", "--executor", "dask"])


def test_trees_of_a_users_trainer_on_ray_match_the_local_recording(tmp_path):
    from tmsim.cli import REPO

    args = ["--trainer", f"{REPO / 'examples' / 'hf_trainer_tree.py'}:make_trainer", "--seeds", "0", "--depth", "1",
            "--quiet"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    for name, extra in (("local", []), ("ray", ["--executor", "ray"])):
        r = subprocess.run([sys.executable, "-m", "tmsim.cli", "record", *args, "--out", str(tmp_path / name), *extra],
                           capture_output=True, text=True, env=env, timeout=600)
        assert r.returncode == 0, r.stderr
    a, b = _content(tmp_path / "local"), _content(tmp_path / "ray")
    assert a["runs"].num_rows == 6 and a["runs"].equals(b["runs"]) and a["epochs"].equals(b["epochs"])
