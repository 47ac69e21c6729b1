"""Recording on Ray: a local Ray instance started by the recorder writes the same trace content as the local pool,
and a Ray worker killed mid-tree neither loses nor duplicates a branch.

The comparisons are exact because the recorder pins what makes them identical (``tmsim.record_ray``'s module docs):
every tree trains with one torch thread in either executor (``record_tree``, ``record_trainer_tree``), each Ray task
runs with the recorder's own ATen CPU kernels and one OpenMP/MKL thread (``pinned_env``, its ``runtime_env``), and
the Ray instance is a fresh local one (never a cluster left running by a ``ray start``), so both recordings run the
same kernels with the same thread count on the same CPU, under ``ATEN_CPU_CAPABILITY=default`` too.
``test_ray_tasks_run_with_the_recorders_kernels_and_one_thread`` checks those pins in a Ray task itself."""
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


def test_ray_tasks_run_with_the_recorders_kernels_and_one_thread(monkeypatch):
    """What the exact comparisons below rest on: a tree task gets the recorder's ATen kernel set (under
    ``ATEN_CPU_CAPABILITY=default`` too) and one OpenMP/MKL thread, so one torch thread, the count the recording
    functions also pin in every executor (``record_tree``, ``record_trainer_tree``)."""
    import torch

    from tmsim.record_ray import run_trees

    def settings():  # defined here: Ray ships it by value (the worker cannot import this test module)
        import os

        import pyarrow as pa
        import torch

        from tmsim.record_ray import _to_ipc

        t = pa.table({"capability": [torch.backends.cpu.get_cpu_capability()], "threads": [torch.get_num_threads()],
                      "omp": [os.environ.get("OMP_NUM_THREADS")], "mkl": [os.environ.get("MKL_NUM_THREADS")]})
        return _to_ipc(t), _to_ipc(t)

    mine = torch.backends.cpu.get_cpu_capability()  # fixed for this process once read
    # the environment the workers would inherit names other kernels: only the pin gives them this process's
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2" if mine == "DEFAULT" else "default")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    got = {}
    failed = run_trees(settings, [("k", "tmsim-settings", 0.0, ())],
                       lambda key, a, b: got.update(a.to_pylist()[0]), retries=0)
    assert failed == [] and ray.is_initialized() is False
    assert got["capability"] == mine
    assert (got["omp"], got["mkl"], got["threads"]) == ("1", "1", 1)


def test_ray_records_the_same_trace_content_as_the_local_pool(local, tmp_path):
    """Identical content, timing columns aside: pinned as the module docs say."""
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
    """The retried tree is the local pool's exactly (pinned as the module docs say)."""
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
    """Identical content, timing columns aside: the local recording trains in the recorder's process and the Ray one
    in a worker, both with one torch thread (``record_trainer_tree``), the worker with the recorder's kernels; the
    example factory runs on the CPU and seeds its model and its Trainer (``seed``)."""
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
