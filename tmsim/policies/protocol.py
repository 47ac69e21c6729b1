"""The ``Policy`` protocol: an id, a version and ``decide``. Everything else a policy may offer is optional and
declared here, with the default the harness assumes when it is absent:

- ``decide_batch(snapshots) -> list``: many decisions in one call (the simulator uses it when there is no
  per-call timeout); default: one ``decide`` per snapshot.
- ``is_upper_bound: bool``: the policy reads recorded answers (the oracle) and is reported as a bound, never
  promoted; default ``False``.
- ``stats: dict``: counters a model policy keeps (``decisions``, ``fallbacks``); default none.
- ``failed: str | None`` and ``close()``: a policy that runs in its own process says why it could not be asked any
  more, and is stopped when the harness is done with it; default: never failed, nothing to close.
- ``trained_on: dict``: what the policy was trained or tuned on (``{"seeds": "even"}``), so a leaderboard can say on
  how many of its roots the policy is scored on its own training data; default none (set from a spec's
  ``trained_on``).

Factories (the callables a policy kind names) may declare two class attributes: ``needs_library = True`` to be
given the trace library's ``TreeIndex`` as ``library=``, and ``path_settings = ("model", ...)``: settings that are
paths, resolved relative to the spec file.

The proposal may be a ``Proposal``, a dict, JSON text or a bare action name: the validator judges it either way.
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from ..core.snapshot import Snapshot


@runtime_checkable
class Policy(Protocol):
    """The whole contract: an id, a version, and ``decide``."""

    policy_id: str
    version: str

    def decide(self, snapshot: Snapshot) -> Any: ...


@runtime_checkable
class BatchPolicy(Policy, Protocol):
    """A policy with the optional batched form."""

    def decide_batch(self, snapshots: list[Snapshot]) -> list[Any]: ...


def decide_batch(policy: Policy, snapshots: list[Snapshot]) -> list[Any]:
    """The policy's batched form if it has one, else one ``decide`` per snapshot."""
    fn = getattr(policy, "decide_batch", None)
    return list(fn(snapshots)) if fn is not None else [policy.decide(s) for s in snapshots]


def is_upper_bound(policy: Any) -> bool:
    """Whether the policy reads recorded answers (reported as an upper bound, never promoted)."""
    return bool(getattr(policy, "is_upper_bound", False))


def trained_on(policy: Any) -> dict | None:
    """What the policy was trained on (``{"seeds": "even" | "odd"}``), or None."""
    t = getattr(policy, "trained_on", None)
    return t if isinstance(t, dict) else None


def failure_reason(policy: Any) -> str | None:
    """Why the policy could not be scored (its process exited or stopped answering), or None."""
    failed = getattr(policy, "failed", None)
    return failed if isinstance(failed, str) else None


def close_policy(policy: Any) -> None:
    """Stop what the policy holds (its process), if it declares ``close``."""
    if callable(getattr(type(policy), "close", None)):
        policy.close()


def model_stats(policy: Any) -> dict | None:
    """The counters a model policy keeps (``decisions``, ``fallbacks``), or None."""
    stats = getattr(policy, "stats", None)
    return stats if isinstance(stats, dict) else None
