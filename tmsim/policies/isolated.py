"""Untrusted policies run in their own process.

A policy under test is code the harness does not trust: it may mutate what it is given, call ``sys.exit`` or
``os._exit``, hang, start threads that never end, or allocate without bound. Policies of a kind that tmsim does not
ship (``kind = "python"`` and plugin kinds) therefore run in a separate process (``IsolatedPolicy``), started with
``spawn`` and a memory limit. The harness sends it snapshots and gets back plain answers (a validated ``Proposal``
or a ``PolicyFailure``, and capped audit text, made inside that process); validation, caches and scores stay in the
harness's process, where the policy's code never runs.

- An exception of any kind inside ``decide`` (``SystemExit`` included) is a ``policy_exception`` for that decision.
- A decision not answered in time is a ``timeout``; the process is then killed and the policy is *failed*: every
  later decision falls back, and the command that scores it exits non-zero.
- A process that dies (``os._exit``, a crash, the memory limit) fails the policy the same way.

Example
-------
>>> from tmsim.policies import PolicySpec
>>> from tmsim.policies.isolated import IsolatedPolicy
>>> pol = IsolatedPolicy(PolicySpec(name="r", kind="rules"))           # doctest: +SKIP
>>> pol.close()                                                         # doctest: +SKIP
"""
from __future__ import annotations

import os
import time
from typing import Any

from ..core.decision import DEFAULT_TIMEOUT, Answer, failure, guarded
from ..core.snapshot import Snapshot

#: Address-space limit of a policy process (MiB); override with TMSIM_POLICY_MEMORY_MB.
MEMORY_MB = 4096
#: Seconds a policy process may take to start (import its module, build the policy).
START_TIMEOUT = 120.0


def _serve(conn, spec_json: str, library_root: str | None, memory_mb: int) -> None:
    """The policy process: build the policy, then answer batches of snapshots until told to stop."""
    try:
        import resource

        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError):
        pass
    try:
        from ..traces.format import load_library
        from .kinds import make_policy
        from .spec import PolicySpec

        spec = PolicySpec.model_validate_json(spec_json)
        library = load_library(library_root) if library_root else None
        policy = make_policy(spec, library, isolate=False)
    except BaseException as exc:  # noqa: BLE001 -- reported to the harness, which fails the policy
        conn.send(("error", f"{type(exc).__name__}: {exc}"[:500]))
        return
    conn.send(("ready", None))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        out = []
        for snap in msg:
            t0 = time.perf_counter()
            ans = guarded(policy.decide, snap)
            out.append((ans, (time.perf_counter() - t0) * 1000))
        conn.send(("answers", out))


class IsolatedPolicy:
    """A policy built from ``spec`` in its own process (see the module docs); ``failed`` says why it stopped."""

    def __init__(self, spec, library_root: str | os.PathLike | None = None, memory_mb: int | None = None):
        self.policy_id, self.version = spec.name, spec.version
        self._spec_json = spec.model_dump_json()
        self._library_root = str(library_root) if library_root is not None else None
        self._memory_mb = memory_mb or int(os.environ.get("TMSIM_POLICY_MEMORY_MB", MEMORY_MB))
        self._proc = self._conn = None
        self.failed: str | None = None

    def _start(self) -> bool:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, self._spec_json, self._library_root, self._memory_mb),
                                 daemon=True, name=f"tmsim-policy-{self.policy_id}")
        self._proc.start()
        child.close()
        reply = self._recv(START_TIMEOUT)
        if reply is None or reply[0] != "ready":
            why = reply[1] if reply else self.failed or "did not start"
            self._fail(f"the policy could not be built in its process: {why}")
            return False
        return True

    def _recv(self, timeout: float) -> Any:
        try:
            if self._conn.poll(timeout):
                return self._conn.recv()
            self._fail(f"no answer within {timeout:.3g} s")
        except (EOFError, OSError, ConnectionError):
            self._proc.join(1)
            self._fail(f"the policy process exited (exit code {self._proc.exitcode})")
        except BaseException as exc:  # noqa: BLE001 -- an answer that cannot be unpickled
            self._fail(f"unreadable answer from the policy process ({type(exc).__name__})")
        return None

    def _fail(self, why: str) -> None:
        self.failed = self.failed or why
        self.close()

    def call_batch(self, snaps: list[Snapshot], timeout: float = DEFAULT_TIMEOUT) -> tuple[list[Answer], list[float]]:
        """Answers for ``snaps`` (``timeout`` seconds per decision); a failed policy answers with failures."""
        t0 = time.perf_counter()
        if self.failed is None and (self._proc is not None or self._start()):
            try:
                self._conn.send(list(snaps))
                reply = self._recv(timeout * max(len(snaps), 1))
            except (OSError, ValueError, ConnectionError):
                self._fail(f"the policy process exited (exit code {self._proc.exitcode})")
                reply = None
            if reply is not None and reply[0] == "answers" and len(reply[1]) == len(snaps) \
                    and all(isinstance(a, Answer) for a, _ in reply[1]):
                return [a for a, _ in reply[1]], [float(m) for _, m in reply[1]]
            if reply is not None:
                self._fail("malformed answer from the policy process")
        kind = "timeout" if self.failed and self.failed.startswith("no answer") else "policy_exception"
        ms = (time.perf_counter() - t0) * 1000 / max(len(snaps), 1)
        return [failure(kind, detail=self.failed or "failed") for _ in snaps], [ms] * len(snaps)

    def decide(self, snapshot: Snapshot) -> Any:
        """One decision (an ``Answer``); the harness normally calls ``call_batch``."""
        return self.call_batch([snapshot])[0][0]

    def close(self) -> None:
        """Stop the policy process (it is killed if it does not stop at once)."""
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if conn is not None:
            try:
                conn.send(None)
            except (OSError, ValueError):
                pass
            conn.close()
        if proc is not None:
            proc.join(0.5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        if self.failed is None and proc is not None:
            self._proc = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 -- interpreter shutdown
            pass
