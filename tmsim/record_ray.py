"""Recording on a Ray cluster: ``tmsim record --executor ray [--ray-address ADDR]``.

Recording is embarrassingly parallel, one tree per task: each tree is a Ray task that trains it (``record_tree``,
the same function the local pool runs, with one torch thread and the recorder's CPU kernels: see below) and returns
its two tables as Arrow IPC bytes. The recorder (the driver) writes each tree's files itself, atomically and once,
when its result arrives, so:

- the library holds exactly the trees the local pool would write (same spec, same machine kind: same content; only
  the timing columns differ), under the same lock, skipping trees already recorded with the same recipe;
- a worker that dies mid-tree loses nothing and duplicates nothing: Ray re-runs the task (``max_retries`` =
  ``retries``) from its spec, and only a result that arrives is written; a tree whose task raised, or whose workers
  died more than ``retries + 1`` times, is reported at the end (``TreesNotRecorded``) without stopping the others;
- a task whose ``gpus`` attribute is set gets that many GPUs per tree (``num_gpus``); the others one CPU each.

Trees of a user's Trainer (``tmsim record --trainer ... --executor ray [--gpus-per-tree N]``) go the same way: one
task per seed, the factory loaded in the worker (its file must be reachable there: the same path on a local or
shared-filesystem cluster, or a Ray ``runtime_env``), checkpoints in the worker's temporary directory.

The cluster is the one at ``address`` (else ``RAY_ADDRESS``); without either a fresh local Ray instance is started
for the recording and stopped after it (``address="local"``: never a cluster some other ``ray start`` left running,
whose workers would not share the recorder's environment). Ray is an optional extra: ``pip install 'tmsim[ray]'``.

**What makes a Ray tree the local pool's tree.** Floating-point results depend on the CPU kernels and the thread
count, and a Ray worker is not started the way a local worker is: Ray sets ``OMP_NUM_THREADS`` from the task's CPUs,
and a cluster's workers inherit the cluster's environment, not the recorder's. So each tree task is pinned to what
the local recording uses (``pinned_env``, passed as the task's ``runtime_env``, so it holds before torch is
imported): the recorder's own ATen kernel set (``ATEN_CPU_CAPABILITY``: e.g. ``avx2``, or ``default`` where the
recorder runs under ``ATEN_CPU_CAPABILITY=default``) and one OpenMP/MKL thread; and the recording functions pin one
torch thread in every executor, local or Ray (``record_tree``, ``record_trainer_tree``). On workers of the
recorder's machine kind (a CPU that offers those kernels) a tree's content is then the local one's exactly; on a CPU
without them, or on a GPU, only in distribution.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pyarrow as pa

from .tasks import TASKS, get_task


#: ``torch.backends.cpu.get_cpu_capability()`` -> the ``ATEN_CPU_CAPABILITY`` value that selects those kernels.
_CAPABILITY_ENV = {"DEFAULT": "default", "NO AVX": "default", "AVX2": "avx2", "AVX512": "avx512", "VSX": "vsx",
                   "Z VECTOR": "zvector", "SVE256": "sve256"}


def pinned_env() -> dict[str, str]:
    """The environment of every tree task: the recorder's own ATen CPU kernels and one OpenMP/MKL thread (module
    docs).

    >>> env = pinned_env()
    >>> env["OMP_NUM_THREADS"], env["MKL_NUM_THREADS"], env.get("ATEN_CPU_CAPABILITY") in _CAPABILITY_ENV.values()
    ('1', '1', True)
    """
    import torch

    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cap = _CAPABILITY_ENV.get(torch.backends.cpu.get_cpu_capability())
    if cap is not None:
        env["ATEN_CPU_CAPABILITY"] = cap
    return env


def _to_ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


def _from_ipc(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()


def _tree_task(spec, task_refs: dict[str, str]) -> tuple[bytes, bytes]:
    """Runs in a Ray worker: register the driver's tasks, record one tree, return its tables."""
    from .record import _worker_init, record_tree

    _worker_init(task_refs)
    runs, epochs = record_tree(spec)
    return _to_ipc(runs), _to_ipc(epochs)


def _growth_task(spec, inp, task_refs: dict[str, str]) -> tuple[bytes, bytes, dict]:
    """Runs in a Ray worker: grow one on-demand tree from the saved states the driver sent (``inp``, a
    ``GrowthInput``); return the new rows and the states saved on the way (the driver writes them)."""
    from .record import _worker_init, train_growth

    _worker_init(task_refs)
    runs, epochs, keep = train_growth(spec, inp)
    return _to_ipc(runs), _to_ipc(epochs), keep


def record_in_ray(todo: list, out: Path, retries: int, on_progress: Callable[[str, int], None],
                  on_done: Callable, address: str | None = None) -> list[tuple[object, str]]:
    """Record ``todo`` (``TreeSpec``s, and ``Growth``s of on-demand trees: ``tmsim evaluate``) as Ray tasks and write
    each finished tree into ``out``; return the jobs that could not be done, with why (module docs). A growth's
    saved states travel with its task (read here before, written here after), so its workers need not see ``out``."""
    from .record import Growth, commit_growth, growth_input, write_tree

    refs = TASKS.refs()
    jobs = []
    for job in todo:
        spec = job.spec if isinstance(job, Growth) else job
        gpus = float(getattr(get_task(spec.task), "gpus", 0) or 0)
        if isinstance(job, Growth):
            inp = growth_input(out, spec, job.branches)
            if not inp.todo:
                on_done(job, 0, 0)
                continue
            jobs.append((job, f"tmsim-grow-{spec.task}-{spec.stem}", gpus, ("grow", spec, inp, refs)))
        else:
            jobs.append((job, f"tmsim-tree-{spec.task}-{spec.stem}", gpus, ("tree", spec, refs)))

    def write(job, runs, epochs, keep=None) -> None:
        if isinstance(job, Growth):
            n_runs, n_epochs = commit_growth(out, job.spec, runs, epochs, keep or {})
        else:
            write_tree(out, job, runs, epochs)
            n_runs, n_epochs = runs.num_rows, epochs.num_rows
        on_progress("runs", n_runs)
        on_progress("epochs", n_epochs)
        on_done(job, n_runs, n_epochs)

    return run_trees(_job_task, jobs, write, retries, address) if jobs else []


def _job_task(kind: str, *args):
    """Runs in a Ray worker: a tree to record (``_tree_task``) or a tree to grow (``_growth_task``)."""
    return _tree_task(*args) if kind == "tree" else _growth_task(*args)


def run_trees(fn, jobs: list, write: Callable, retries: int, address: str | None = None) -> list[tuple[object, str]]:
    """Run ``fn(*args)`` as one Ray task per job ``(key, name, gpus, args)``; ``fn`` returns (runs, epochs) as IPC
    bytes, and anything after them is passed on (a growth's saved states): ``write(key, runs, epochs, *rest)``
    stores them as each arrives. Returns [(key, why)] for the jobs that
    failed. Starts (and stops) a local Ray instance unless one is running or ``address``/``RAY_ADDRESS`` names a
    cluster."""
    try:
        import ray
        from ray.exceptions import RayError, RayTaskError
    except ImportError:
        raise ValueError("--executor ray needs Ray: pip install 'tmsim[ray]'") from None
    from .record import _one_line

    address = address or os.environ.get("RAY_ADDRESS") or None
    started = not ray.is_initialized()
    if started:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:  # "local": a fresh instance, never one a `ray start` left running (its workers' environment is not ours)
            ray.init(address="local", include_dashboard=False, log_to_driver=False,
                     object_store_memory=256 * 1024 * 1024, num_cpus=os.cpu_count() or 1)
    failed: list[tuple[object, str]] = []
    try:
        remote = ray.remote(max_retries=retries, retry_exceptions=False)(fn)
        runtime_env = {"env_vars": pinned_env()}
        pending = {}
        for key, name, gpus, args in jobs:
            ref = remote.options(num_cpus=0 if gpus else 1, num_gpus=gpus, name=name,
                                 runtime_env=runtime_env).remote(*args)
            pending[ref] = key
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in done:
                spec = pending.pop(ref)
                try:
                    runs_b, epochs_b, *rest = ray.get(ref)
                except RayTaskError as exc:  # the task raised: final (it would raise again)
                    failed.append((spec, _one_line(exc.cause if exc.cause is not None else exc)))
                    continue
                except RayError as exc:  # its worker died more often than Ray retries
                    failed.append((spec, f"its Ray worker was lost {retries + 1} times ({type(exc).__name__})"))
                    continue
                write(spec, _from_ipc(runs_b), _from_ipc(epochs_b), *rest)
    finally:
        if started:
            ray.shutdown()
    return failed
