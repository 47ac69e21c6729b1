"""Decision points of a trace library, guarded policy calls, and the audit trail (``decisions`` rows).

``decision_points(library, bounds)`` builds the snapshot a policy would see at every recorded node: every run
that is still training at a decision epoch after its own branch epoch. ``run_policy`` asks a policy at each of
them, through a per-decision timeout and the validator, and returns one audit row per decision plus a report.
``tmsim policy check`` is a thin wrapper over these two.
"""
from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import replace
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from .actions import KNOBS, Bounds, PolicyFailure, Proposal, ValidatedAction, offered_actions, parse_proposal, validate
from .query import TraceDB
from .snapshot import EpochView, PastDecision, Snapshot
from .tasks.base import Hyperparams
from .trace import DECISIONS, Library

_VIEW = [f for f in EpochView.__dataclass_fields__]


def decision_points(library: Library, bounds: Bounds | None = None, tasks: list[str] | None = None) -> list[Snapshot]:
    """One snapshot per (recorded run, decision epoch) where the run is alive, in a stable order."""
    bounds = bounds or Bounds()
    with TraceDB(library) as db:
        runs = db.sql("""select run_id, parent_run_id, task, scenario, branch_epoch, branch_action, status,
                                end_epoch, max_epochs, decide_every, init_aux_loss_weight
                         from runs order by run_id""").to_pylist()
        cols = ", ".join(["lineage_run_id"] + _VIEW)
        lin = db.sql(f"select {cols} from lineage order by lineage_run_id, epoch")
    by_id = {r["run_id"]: r for r in runs}
    ids = lin["lineage_run_id"].to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]]) if len(ids) else np.array([], dtype=int)
    bounds_idx = dict(zip(ids[starts], zip(starts, np.r_[starts[1:], len(ids)])))
    rows = lin.drop_columns(["lineage_run_id"]).to_pylist()
    out: list[Snapshot] = []
    for r in runs:
        if r["branch_action"] == "stop" or (tasks and r["task"] not in tasks) or r["run_id"] not in bounds_idx:
            continue
        lo, hi = bounds_idx[r["run_id"]]
        hist = rows[lo:hi]
        chain = _branch_chain(r["run_id"], by_id)
        start = r["branch_epoch"] or 0
        alive_until = r["end_epoch"] - (1 if r["status"] == "diverged" else 0)
        every = r["decide_every"]
        for d in range(every, r["max_epochs"], every):
            if d <= start or d > alive_until:
                continue
            out.append(_snapshot(r, hist[: d + 1], chain, d, bounds))
    return out


def _branch_chain(run_id: str, by_id: dict) -> dict[int, str]:
    """{branch epoch: action} along the run's ancestry."""
    chain = {}
    r = by_id[run_id]
    while r["parent_run_id"] is not None:
        chain[r["branch_epoch"]] = r["branch_action"]
        r = by_id[r["parent_run_id"]]
    return chain


def _snapshot(run: dict, hist: list[dict], chain: dict[int, str], d: int, bounds: Bounds) -> Snapshot:
    assert hist[-1]["epoch"] == d, (run["run_id"], d)
    last = hist[-1]
    hp = Hyperparams(lr=last["lr"], weight_decay=last["weight_decay"], dropout=last["dropout"], aux_loss_weight=last["aux_loss_weight"])
    every = run["decide_every"]
    val = {h["epoch"]: h["val_loss"] for h in hist}
    past = []
    for e in range(every, d, every):
        nxt = min(e + every, d)
        change = val[nxt] / val[e] - 1 if val.get(e) and val.get(nxt) is not None else None
        past.append(PastDecision(e, chain.get(e, "continue"), change))
    used = sum(1 for p in past if p.action != "continue")
    left = None if bounds.max_interventions is None else max(bounds.max_interventions - used, 0)
    losses = 2 if run["init_aux_loss_weight"] is not None else 1
    snap = Snapshot.build(run["run_id"], run["task"], hist, hp, run["max_epochs"], every, past, left, losses)
    return replace(snap, offered=offered_actions(snap, bounds))


def call_with_timeout(fn: Callable[[], Any], timeout: float | None) -> tuple[Any, float]:
    """(output or PolicyFailure, latency in ms). The call runs in a daemon thread; a hung call is abandoned."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["out"] = fn()
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


def _raw_text(raw: Any) -> str:
    if isinstance(raw, Proposal):
        return raw.model_dump_json()
    try:
        text = raw if isinstance(raw, str) else repr(raw)
    except Exception as exc:  # a policy may return an object whose repr raises
        text = f"<unprintable {type(raw).__name__}: {type(exc).__name__}>"
    return text[:2000]


def decision_row(policy, snap: Snapshot, raw: Any, ms: float, act: ValidatedAction | None, violations: list[str],
                 action: str | None = None, source: str | None = None, staleness_steps: int | None = None) -> dict:
    """One ``decisions`` row (audit trail): the raw output, the parsed proposal, what was applied and why.
    ``action``/``source`` override the validated action's when the answer was not applied (a stale one)."""
    proposal, _ = parse_proposal(raw) if not isinstance(raw, PolicyFailure) else (None, None)
    return dict(
        run_id=snap.run_id, task=snap.task, epoch=snap.epoch, policy_id=getattr(policy, "policy_id", "policy"),
        policy_version=str(getattr(policy, "version", "")), snapshot_hash=snap.hash, raw_output=_raw_text(raw),
        proposal_json=proposal.model_dump_json() if proposal else None, action=action or act.action,
        action_json=act.to_json() if act else None, violations=list(violations), source=source or act.source,
        latency_ms=ms, staleness_steps=staleness_steps)


def run_policy(policy, snapshots: list[Snapshot], bounds: Bounds | None = None, timeout: float | None = 5.0,
               max_consecutive_timeouts: int = 5, on_decision: Callable[[], None] | None = None) -> tuple[pa.Table, dict]:
    """Ask ``policy`` at every snapshot; returns (audit table in the ``decisions`` schema, report dict).

    After ``max_consecutive_timeouts`` timeouts in a row the policy is considered hung: it is not called again and
    each remaining decision is the fallback with a ``timeout`` violation (as a live run would see it).
    """
    bounds = bounds or Bounds()
    cols: dict[str, list] = {f.name: [] for f in DECISIONS}
    actions, viol = Counter(), Counter()
    latencies, fallbacks, streak, unvalidated = [], 0, 0, 0
    hung = False
    for snap in snapshots:
        if hung:
            raw, ms = PolicyFailure("timeout", "policy stopped answering"), 0.0
        else:
            raw, ms = call_with_timeout(lambda s=snap: policy.decide(s), timeout)
            latencies.append(ms)
        streak = streak + 1 if isinstance(raw, PolicyFailure) and raw.kind == "timeout" else 0
        hung = hung or streak >= max_consecutive_timeouts
        act, violations = validate(raw, snap, bounds)
        unvalidated += not _within(act, snap, bounds)
        actions[act.action] += 1
        viol.update(violations)
        fallbacks += act.source == "fallback"
        for k, v in decision_row(policy, snap, raw, ms, act, violations).items():
            cols[k].append(v)
        if on_decision:
            on_decision()
    n = len(snapshots)
    lat = np.array(latencies) if latencies else np.array([0.0])
    report = {
        "policy": policy.policy_id,
        "version": str(policy.version),
        "upper_bound": bool(getattr(policy, "is_upper_bound", False)),
        "decisions": n,
        "actions": dict(sorted(actions.items())),
        "violations": dict(sorted(viol.items())),
        "fallback_rate": fallbacks / n if n else 0.0,
        "interventions": sum(v for a, v in actions.items() if a != "continue"),
        "latency_ms_p50": float(np.percentile(lat, 50)),
        "latency_ms_p95": float(np.percentile(lat, 95)),
        "hung": hung,
        "unvalidated_updates": unvalidated,
    }
    return pa.Table.from_pydict(cols, schema=DECISIONS), report


def _within(act: ValidatedAction, snap: Snapshot, bounds: Bounds) -> bool:
    """An independent re-check that an applied action is inside the bounds (counted, never expected to fail)."""
    for k in KNOBS:
        new, old = getattr(act.hparams, k), getattr(snap.hparams, k)
        if new != old:
            lo, hi = bounds.range(k)
            if new is None or not (lo <= new <= hi):
                return False
    return True


def format_report(report: dict) -> str:
    """The terminal form of a ``run_policy`` report."""
    n = report["decisions"]
    lines = [f"policy {report['policy']} (version {report['version']})"
             + ("  [UPPER BOUND: reads the recorded answers]" if report["upper_bound"] else ""),
             f"decisions: {n}   interventions: {report['interventions']}   fallback rate: {report['fallback_rate']:.1%}   "
             f"latency p50 {report['latency_ms_p50']:.3f} ms, p95 {report['latency_ms_p95']:.3f} ms",
             "actions:"]
    for a, c in report["actions"].items():
        lines.append(f"  {a:<20} {c:>7}  {c / n:6.1%}" if n else f"  {a}")
    lines.append("violations:" + ("" if report["violations"] else " none"))
    for k, c in report["violations"].items():
        lines.append(f"  {k:<20} {c:>7}")
    if report["hung"]:
        lines.append("the policy stopped answering (consecutive timeouts); later decisions fell back to continue")
    return "\n".join(lines)


