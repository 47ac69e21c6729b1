"""One decision, the same everywhere: the snapshot built at a decision epoch, the guarded policy call, and the audit
row. The simulator, ``tmsim policy check`` and the live hook all use these, so a policy is asked the same question,
under the same guard, and audited the same way offline and live.

Example
-------
>>> from tmsim.core import Bounds, Hyperparams, RunInfo, build_snapshot, call_policy
>>> run = RunInfo("demo", "digits-mlp", decide_every=5, max_epochs=20)
>>> hist = [{"epoch": e, "val_loss": 1.0 / (e + 1), "train_loss": 1.0 / (e + 1), "lr": 0.1} for e in range(6)]
>>> snap = build_snapshot(run, hist, {}, 5, Bounds())
>>> snap.epoch, snap.offered[:2]
(5, ('continue', 'lr_down'))
>>> call_policy(lambda s: 1 / 0, snap, timeout=1.0)[0]
<policy_exception: ZeroDivisionError: division by zero>
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Sequence

from .actions import Bounds, PolicyFailure, Proposal, ValidatedAction, offered_actions, parse_proposal
from .hparams import Hyperparams
from .snapshot import PastDecision, Snapshot

#: Longest raw output kept in an audit row (characters).
RAW_OUTPUT_LIMIT = 2000


@dataclass(frozen=True)
class RunInfo:
    """What a snapshot needs to know about the run it comes from (not its scenario: a policy must read signals)."""

    run_id: str
    task: str
    decide_every: int
    max_epochs: int
    losses: int = 1


def build_snapshot(run: RunInfo, hist: Sequence[Mapping[str, Any]], chain: Mapping[int, str], d: int,
                   bounds: Bounds) -> Snapshot:
    """The snapshot at decision epoch ``d``: ``hist`` holds the epoch rows up to ``d`` (trace columns; the last one
    is epoch ``d``), ``chain`` the actions taken at earlier decision epochs ({epoch: action}, absent = continue)."""
    last = hist[-1]
    if last["epoch"] != d:
        raise ValueError(f"{run.run_id}: the history ends at epoch {last['epoch']}, not at the decision epoch {d}")
    hp = Hyperparams.from_row(last)
    every = run.decide_every
    val = {h["epoch"]: h["val_loss"] for h in hist}
    past = []
    for e in range(every, d, every):
        nxt = min(e + every, d)
        change = val[nxt] / val[e] - 1 if val.get(e) and val.get(nxt) is not None else None
        past.append(PastDecision(e, chain.get(e, "continue"), change))
    used = sum(1 for p in past if p.action != "continue")
    left = None if bounds.max_interventions is None else max(bounds.max_interventions - used, 0)
    snap = Snapshot.build(run.run_id, run.task, hist, hp, run.max_epochs, every, past, left, run.losses)
    return replace(snap, offered=offered_actions(snap, bounds))


def call_policy(decide: Callable[[Snapshot], Any], snap: Snapshot, timeout: float | None) -> tuple[Any, float]:
    """(output or ``PolicyFailure``, latency in ms) of ``decide(snap)``. With a ``timeout`` the call runs in a daemon
    thread and a hung call is abandoned; without one it runs in the caller's thread. Never raises."""
    if timeout is None:
        t0 = time.perf_counter()
        try:
            out = decide(snap)
        except Exception as exc:  # the policy's failure is data, not our crash
            out = PolicyFailure("policy_exception", f"{type(exc).__name__}: {exc}"[:500])
        return out, (time.perf_counter() - t0) * 1000
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["out"] = decide(snap)
        except BaseException as exc:  # the policy's failure is data, not our crash
            box["out"] = PolicyFailure("policy_exception", f"{type(exc).__name__}: {exc}"[:500])

    t0 = time.perf_counter()
    th = threading.Thread(target=target, daemon=True, name="tmsim-policy-call")
    th.start()
    th.join(timeout)
    ms = (time.perf_counter() - t0) * 1000
    if th.is_alive():
        return PolicyFailure("timeout", f"no answer within {timeout} s"), ms
    return box.get("out"), ms


def call_policy_batch(policy, snaps: list[Snapshot], timeout: float | None) -> tuple[list[Any], list[float]]:
    """Outputs and per-decision latencies for ``snaps``. Without a timeout the policy's optional ``decide_batch`` is
    tried first (its latency is shared equally); a batch that fails or returns the wrong count is retried one call at
    a time, so one failing call never sinks the batch."""
    if timeout is None:
        fn = getattr(policy, "decide_batch", None)
        if fn is not None:
            t0 = time.perf_counter()
            try:
                raws = list(fn(snaps))
                if len(raws) == len(snaps):
                    ms = (time.perf_counter() - t0) * 1000 / max(len(snaps), 1)
                    return raws, [ms] * len(snaps)
            except Exception:
                pass  # isolate the failure below, one call at a time
    pairs = [call_policy(policy.decide, s, timeout) for s in snaps]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def raw_text(raw: Any) -> str:
    """A policy's raw output as audit text (at most ``RAW_OUTPUT_LIMIT`` characters; never raises)."""
    if isinstance(raw, Proposal):
        try:
            return raw.model_dump_json()[:RAW_OUTPUT_LIMIT]
        except Exception:
            pass
    try:
        text = raw if isinstance(raw, str) else repr(raw)
    except Exception as exc:  # a policy may return an object whose repr raises
        text = f"<unprintable {type(raw).__name__}: {type(exc).__name__}>"
    return text[:RAW_OUTPUT_LIMIT]


def decision_row(policy, snap: Snapshot, raw: Any, ms: float, act: ValidatedAction | None, violations: list[str],
                 action: str | None = None, source: str | None = None, staleness_steps: int | None = None) -> dict:
    """One ``decisions`` row (audit trail): the raw output, the parsed proposal, what was applied and why.
    ``action``/``source`` override the validated action's when the answer was not applied (a stale one)."""
    proposal, _ = parse_proposal(raw) if not isinstance(raw, PolicyFailure) else (None, None)
    return dict(
        run_id=snap.run_id, task=snap.task, epoch=snap.epoch, policy_id=getattr(policy, "policy_id", "policy"),
        policy_version=str(getattr(policy, "version", "")), snapshot_hash=snap.hash, raw_output=raw_text(raw),
        proposal_json=proposal.model_dump_json() if proposal else None, action=action or act.action,
        action_json=act.to_json() if act else None, violations=list(violations), source=source or act.source,
        latency_ms=ms, staleness_steps=staleness_steps)
