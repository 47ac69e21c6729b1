"""Untrusted policies run in their own process.

A policy under test is code the harness does not trust: it may mutate what it is given, call ``sys.exit`` or
``os._exit``, hang, start threads that never end, or allocate without bound. Policies of a kind that tmsim does not
ship (``kind = "python"`` and plugin kinds) therefore run in a separate process (``IsolatedPolicy``), started with
``spawn`` and a memory limit. The harness sends it snapshots and gets back plain answers (a validated ``Proposal``
or a ``PolicyFailure``, and capped audit text, made inside that process); validation, caches and scores stay in the
harness's process, where the policy's code never runs.

- An exception of any kind inside ``decide`` (``SystemExit`` included) is a ``policy_exception`` for that decision.
- A decision not answered in time is a ``timeout`` (the late answer is dropped when it comes). After
  ``MAX_TIMEOUTS`` unanswered batches in a row the process is stopped and the policy is *failed*: every later
  decision falls back, and the command that scores it exits non-zero after writing its output.
- A process that exits or dies (``os._exit``, a crash) fails the policy the same way. An allocation beyond the
  memory limit raises ``MemoryError`` inside the policy: a ``policy_exception`` for that decision.

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

from ..core.decision import DEFAULT_TIMEOUT, Answer, failure, guarded, register_guarding, run_key
from ..core.names import safe_name
from ..core.snapshot import Snapshot

#: Address-space limit of a policy process (MiB); override with TMSIM_POLICY_MEMORY_MB.
MEMORY_MB = 4096
#: Seconds a policy process may take to start (import its module, build the policy).
START_TIMEOUT = 120.0
#: Batches in a row without an answer after which the policy is failed (its process is stopped).
MAX_TIMEOUTS = 5


def opaque(snap: Snapshot) -> Snapshot:
    """The copy of ``snap`` a policy in its own process is sent: its ``run_id`` (which names the task, the scenario
    family and the seed, and so would tell a policy which failure to expect) replaced by an opaque salted key of it.
    The hash is computed first, so the policy's copy hashes as the decision the harness records."""
    _ = snap.hash
    twin = snap.private_copy()
    object.__setattr__(twin, "run_id", "run-" + run_key("opaque-run-id", snap.run_id))
    return twin


def _serve(conn, spec_json: str, library_root: str | None, memory_mb: int, kind_refs: dict[str, str],
           policy_blob: bytes | None = None) -> None:
    """The policy process: build the policy, then answer batches of snapshots until told to stop. Each batch is
    answered in its own thread (tagged with its request id), so one slow call does not hold up the next."""
    import threading

    try:
        import resource

        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError):
        pass
    try:
        from ..traces.format import load_library
        from .kinds import KINDS, make_policy
        from .spec import PolicySpec

        for name, ref in kind_refs.items():  # kinds the harness registered in code
            KINDS.register(name, ref, overwrite=True)

        if policy_blob is not None:  # an object the harness's caller handed over (pickled by that caller)
            import pickle

            policy = pickle.loads(policy_blob)
        else:
            spec = PolicySpec.model_validate_json(spec_json)
            library = load_library(library_root) if library_root else None
            policy = make_policy(spec, library, isolate=False)
    except BaseException as exc:  # noqa: BLE001 -- reported to the harness, which refuses the policy
        conn.send(("error", f"{type(exc).__name__}: {exc}"[:500]))
        return
    send_lock = threading.Lock()

    def answer_batch(req: int, snaps: list) -> None:
        out = []
        for snap in snaps:
            t0 = time.perf_counter()
            ans = guarded(policy.decide, snap)
            out.append((ans, (time.perf_counter() - t0) * 1000))
        try:
            with send_lock:
                conn.send(("answers", req, out))
        except (OSError, ValueError):
            pass

    conn.send(("ready", None))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        threading.Thread(target=answer_batch, args=msg, daemon=True, name="tmsim-policy-batch").start()


@register_guarding
class IsolatedPolicy:
    """A policy built from ``spec`` in its own process (see the module docs); ``failed`` says why it stopped."""

    def __init__(self, spec, library_root: str | os.PathLike | None = None, memory_mb: int | None = None,
                 _blob: bytes | None = None):
        self.policy_id, self.version = spec.name, spec.version
        self._spec_json = spec.model_dump_json()
        self._blob = _blob
        self._library_root = str(library_root) if library_root is not None else None
        self._memory_mb = memory_mb or int(os.environ.get("TMSIM_POLICY_MEMORY_MB", MEMORY_MB))
        self._proc = self._conn = None
        self._failed: str | None = None
        self._asked = self._answered = 0
        self._req = 0
        self._timeouts = 0  # consecutive unanswered batches
        self._where = str(spec.path or spec.name)
        if not self._start():  # built at once, so a spec whose policy cannot be built is a clear error up front
            raise ValueError(f"{self._where}: {self._failed}")

    @classmethod
    def from_object(cls, policy, memory_mb: int | None = None) -> "IsolatedPolicy":
        """Run a policy *object* in its own process (the live hook's ``policy_process=True`` for an object): it is
        pickled here and unpickled in the child, so its class must be importable there. Raises ``ValueError`` for an
        object that cannot be pickled."""
        import pickle

        from ..core.decision import policy_identity
        from .spec import PolicySpec

        try:
            blob = pickle.dumps(policy)
        except Exception as exc:  # noqa: BLE001 -- lambdas, open handles, locally defined classes
            raise ValueError(f"policy_process=True: the policy object ({type(policy).__name__}) cannot be sent to "
                             f"another process ({type(exc).__name__}: {exc}); build it from a spec instead") from None
        pid, ver = policy_identity(policy)
        try:
            name = safe_name(pid)
        except ValueError:  # the spec's name must be a safe file name; this one only labels the process
            name = "policy"
        return cls(PolicySpec(name=name, kind="constant", version=ver or "1"), memory_mb=memory_mb, _blob=blob)

    def _start(self) -> bool:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        from .kinds import KINDS

        self._proc = ctx.Process(target=_serve, args=(child, self._spec_json, self._library_root, self._memory_mb,
                                                      KINDS.refs(), self._blob),
                                 daemon=True, name=f"tmsim-policy-{self.policy_id}")
        self._proc.start()
        child.close()
        reply = self._recv(START_TIMEOUT)
        if reply is None or reply[0] != "ready":
            why = reply[1] if reply else self._failed or f"no answer within {START_TIMEOUT:.3g} s"
            self._fail(f"the policy could not be built in its process: {why}")
            return False
        return True

    def _recv(self, timeout: float, req: int | None = None) -> Any:
        """The next reply (for request ``req``: earlier, late replies are dropped), or None after ``timeout``."""
        deadline = time.perf_counter() + timeout
        try:
            while True:
                left = deadline - time.perf_counter()
                if left <= 0 or not self._conn.poll(left):
                    return None
                reply = self._conn.recv()
                if req is None or (isinstance(reply, tuple) and len(reply) == 3 and reply[1] == req):
                    return reply
        except (EOFError, OSError, ConnectionError):
            code = None
            if self._proc is not None:
                self._proc.join(1)
                code = self._proc.exitcode
            self._fail(f"the policy process exited (exit code {code})")
        except BaseException as exc:  # noqa: BLE001 -- an answer that cannot be unpickled
            self._fail(f"unreadable answer from the policy process ({type(exc).__name__})")
        return None

    def _fail(self, why: str) -> None:
        self._failed = self._failed or why
        self.close()

    def call_batch(self, snaps: list[Snapshot], timeout: float = DEFAULT_TIMEOUT) -> tuple[list[Answer], list[float]]:
        """Answers for ``snaps`` (``timeout`` seconds per decision). A batch not answered in time is a timeout
        for each of its decisions; after ``MAX_TIMEOUTS`` such batches in a row, or when the process is gone, the
        policy is failed and answers with failures from then on."""
        t0 = time.perf_counter()
        limit = timeout * max(len(snaps), 1)
        kind, detail = "policy_exception", None
        if self._failed is None and self._proc is None:
            self._failed = "the policy process was stopped"
        if self._failed is None:
            self._req += 1
            try:
                self._conn.send((self._req, [opaque(s) for s in snaps]))
                reply = self._recv(limit, self._req)
            except (OSError, ValueError, ConnectionError):
                self._fail(f"the policy process exited (exit code {self._proc.exitcode if self._proc else None})")
                reply = None
            self._asked += 1
            if reply is not None and reply[0] == "answers" and len(reply[2]) == len(snaps) \
                    and all(isinstance(a, Answer) for a, _ in reply[2]):
                self._timeouts = 0
                self._answered += 1
                return [a for a, _ in reply[2]], [float(m) for _, m in reply[2]]
            if reply is not None:
                self._fail("malformed answer from the policy process")
            elif self._failed is None:
                self._timeouts += 1
                kind, detail = "timeout", f"no answer within {timeout:.3g} s per decision"
                if self._timeouts >= MAX_TIMEOUTS:
                    self._fail(f"no answer within {timeout:.3g} s per decision, {MAX_TIMEOUTS} times in a row")
        ms = (time.perf_counter() - t0) * 1000 / max(len(snaps), 1)
        return [failure(kind, detail=detail or self._failed or "failed") for _ in snaps], [ms] * len(snaps)

    @property
    def failed(self) -> str | None:
        """Why the policy could not be scored: its process exited or stopped answering, or it never answered in
        time; None while it answers."""
        if self._failed is None and self._asked and not self._answered:
            return "no decision was answered in time"
        return self._failed

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

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 -- interpreter shutdown
            pass
