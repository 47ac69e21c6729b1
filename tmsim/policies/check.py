"""``tmsim policy check``: a policy asked at every recorded decision point of a library, through the validator.

``decision_points(library, bounds)`` builds the snapshot a policy would see at every recorded node: every run
that is still training at a decision epoch after its own branch epoch. ``run_policy`` asks a policy at each of
them, through a per-decision timeout and the validator, and returns one audit row per decision plus a report.
"""
from __future__ import annotations

from collections import Counter
from typing import Callable

import numpy as np
import pyarrow as pa

from ..core.actions import KNOBS, Bounds, PolicyFailure, ValidatedAction, validate
from ..core.decision import RunInfo, build_snapshot, call_policy_batch, decision_row, failure
from ..core.snapshot import Snapshot
from ..traces.format import DECISIONS
from ..traces.index import TreeIndex
from .protocol import failure_reason, is_upper_bound


def decision_points(library, bounds: Bounds | None = None, tasks: list[str] | None = None) -> list[Snapshot]:
    """One snapshot per (recorded run, decision epoch) where the run is alive, in a stable order (by run id).
    ``library`` is a ``TreeIndex`` or a ``Library``."""
    bounds = bounds or Bounds()
    index = library if isinstance(library, TreeIndex) else TreeIndex(library)
    out: list[Snapshot] = []
    for rid in sorted(index.meta):
        r = index.meta[rid]
        rows = index[rid]
        if r["branch_action"] == "stop" or (tasks and r["task"] not in tasks) or not rows:
            continue
        hist = [rows[e] for e in sorted(rows)]
        run = RunInfo(rid, r["task"], r["decide_every"], r["max_epochs"], r["n_losses"])
        chain = index.chain(rid)
        start = r["branch_epoch"] or 0
        alive_until = r["end_epoch"] - (1 if r["status"] == "diverged" else 0)
        every = r["decide_every"]
        for d in range(every, r["max_epochs"], every):
            if d <= start or d > alive_until:
                continue
            out.append(build_snapshot(run, hist[: d + 1], chain, d, bounds))
    return out


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
            raw, ms = failure("timeout", detail="policy stopped answering"), 0.0
        else:
            (raw,), (ms,) = call_policy_batch(policy, [snap], timeout)
            latencies.append(ms)
        streak = streak + 1 if isinstance(raw.value, PolicyFailure) and raw.value.kind == "timeout" else 0
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
        "upper_bound": is_upper_bound(policy),
        "decisions": n,
        "actions": dict(sorted(actions.items())),
        "violations": dict(sorted(viol.items())),
        "fallback_rate": fallbacks / n if n else 0.0,
        "interventions": sum(v for a, v in actions.items() if a != "continue"),
        "latency_ms_p50": float(np.percentile(lat, 50)),
        "latency_ms_p95": float(np.percentile(lat, 95)),
        "hung": hung,
        "failed": failure_reason(policy),
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
    if report.get("failed"):
        lines.append(f"FAILED: {report['failed']}; later decisions fell back to continue")
    return "\n".join(lines)




def oracle_agreement(policy, index, seeds: str | None = "odd", bounds: Bounds | None = None) -> dict:
    """How often ``policy`` picks the oracle's action (best expected outcome over replicates) at the recorded nodes
    of the ``seeds`` roots (``"odd"``, ``"even"`` or None for all) where the oracle has alternatives to choose from.
    Returns ``{"nodes", "agreement", "majority_baseline"}`` (the share a constant answer of the commonest oracle
    action would get)."""
    from collections import Counter

    from .oracle import OraclePolicy

    index = index if isinstance(index, TreeIndex) else TreeIndex(index)
    oracle = OraclePolicy(index)
    want, got = [], []
    for snap in decision_points(index, bounds):
        seed = index.meta[snap.run_id]["seed"]
        if seeds is not None and seed % 2 != (1 if seeds == "odd" else 0):
            continue
        vals = {a: v for a, v in oracle.values(snap.run_id, snap.epoch).items() if a in snap.offered}
        if len(vals) < 2:
            continue
        want.append(min(vals, key=lambda a: (vals[a], a != "continue")))
        (ans,), _ = call_policy_batch(policy, [snap])
        act, _ = validate(ans, snap, bounds or Bounds())
        got.append(act.action)
    n = len(want)
    common = Counter(want).most_common(1)[0][1] if n else 0
    return {"nodes": n, "agreement": sum(a == b for a, b in zip(want, got)) / n if n else 0.0,
            "majority_baseline": common / n if n else 0.0}
