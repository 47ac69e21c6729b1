"""The offline leaderboard: every candidate policy scored on the trace library through the simulator.

A *root* is one recorded tree (task, scenario, seed); a library recorded with replicates holds each root several
times, differing only in post-fork noise, and the simulator rolls a policy out on every replicate. Scores are on
expectations: a root's figure is the mean over its replicates, then summarised over roots. Per policy:

- ``val_loss_change_pct``: median over roots of the expected ``100 * (final / final_constant - 1)`` (the constant
  policy on the same replicate as reference; negative = better than doing nothing), with a 95% interval from a
  two-level bootstrap (roots, then each root's replicates), so recording noise is inside it;
  ``val_loss_change_mean_pct`` the mean (a tie-break); ``best_val_loss_change_pct`` the same for the best validation
  loss along the run;
- ``regret`` and ``regret_ratio_of_sums``: with each root's expected finals relative to the constant's
  (``p = policy / constant``, ``o = oracle / constant``), the median over roots of ``(p - o) / (1 - o)`` and the ratio
  ``sum(p - o) / sum(1 - o)`` (0 = as good as the oracle's best recorded path, 1 = no better than doing nothing),
  roots where the oracle gains nothing left out; never a mean of ratios, which one root can dominate;
- ``unsafe_rate``: the expected share of a root's replicates that diverge or end more than ``unsafe_threshold``
  worse than doing nothing, averaged over roots; runs that diverged before the policy's first decision are left out
  (the policy had no say); ``diverged_rate`` the same for divergence alone;
- ``acted_share``: the share of roots where the policy changed something (in any replicate), and
  ``acted_change_pct`` its median expected change on those roots (a policy that rarely acts reads 0 overall);
- violations per 100 decisions (by kind), fallback rate, interventions per run, epochs saved by stopping, decision
  latency p50/p95, and the share of epochs replayed (the rest came from the surrogate);
- the same effectiveness and safety figures per scenario.

Suites (``eval/suites/*.toml``) choose tasks, scenarios, seeds, the bounds and the promotion gate.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..core.actions import Bounds
from ..core.config import load_toml_model
from ..policies.protocol import close_policy, failure_reason, is_upper_bound, model_stats, trained_on
from ..simulate.simulator import Rollout, Simulator, summarize_rollouts
from ..traces.index import TreeIndex
from .promote import GateSettings

N_BOOT = 2000


#: A suite's ``[gate]`` table; defined with the promotion records, which check it without the simulator.
Gate = GateSettings


class Suite(BaseModel):
    """A suite: which roots, which bounds, which gate."""

    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    tasks: list[str] = Field(default_factory=list)
    scenarios: list[str] = Field(default_factory=list)
    seeds: list[int] = Field(default_factory=list)
    bounds: Bounds = Field(default_factory=Bounds)
    gate: Gate = Field(default_factory=Gate)
    path: Path | None = None


def load_suite(path: str | Path) -> Suite:
    return load_toml_model(path, Suite, "suite")


def boot_median(x: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the median of ``x`` (vectorised resampling)."""
    return hier_boot_median([np.atleast_1d(v) for v in np.asarray(x, float)], seed)


def hier_boot_median(groups: list[np.ndarray], seed: int = 0) -> tuple[float, float]:
    """95% interval of the median over groups of each group's mean, by a two-level bootstrap: resample the groups
    (roots), then each drawn group's values (its replicates), so recording noise is inside the interval."""
    groups = [np.asarray(g, float) for g in groups if len(g)]
    if not groups:
        return math.nan, math.nan
    if len(groups) == 1 and len(groups[0]) == 1:
        return float(groups[0][0]), float(groups[0][0])
    n = np.array([len(g) for g in groups])
    m = np.full((len(groups), n.max()), np.nan)
    for i, g in enumerate(groups):
        m[i, : len(g)] = g
    rng = np.random.default_rng(seed)
    gi = rng.integers(0, len(groups), size=(N_BOOT, len(groups)))          # roots
    size = n[gi]                                                            # each drawn root's replicate count
    cols = np.arange(n.max())
    ri = (rng.random((N_BOOT, len(groups), n.max())) * size[..., None]).astype(int)  # its replicates, resampled
    vals = np.where(cols < size[..., None], m[gi[..., None], ri], np.nan)
    meds = np.median(np.nanmean(vals, axis=2), axis=1)
    lo, hi = np.percentile(meds, [2.5, 97.5])
    return float(lo), float(hi)


@dataclass
class PolicyScore:
    """One policy's scores on a suite (see the module docs for every figure)."""

    policy: str
    upper_bound: bool
    roots: int
    val_loss_change_pct: float
    ci_low: float
    ci_high: float
    best_val_loss_change_pct: float
    best_ci_low: float
    best_ci_high: float
    regret: float | None
    unsafe_rate: float
    diverged_rate: float
    violations_per_100: float
    violations_by_kind: dict[str, int]
    fatal_violations: int
    fallback_rate: float
    interventions_per_run: float
    epochs_saved_per_run: float
    latency_ms_p50: float
    latency_ms_p95: float
    replayed_share: float
    per_scenario: dict[str, dict[str, float]] = field(default_factory=dict)
    model_fallback_rate: float | None = None  # decisions a model policy answered with its rules fallback
    failed: str | None = None  # why the policy could not be scored (its process died or hung); None when scored
    rollouts: int = 0  # roots x replicates
    val_loss_change_mean_pct: float = 0.0
    regret_ratio_of_sums: float | None = None
    acted_share: float = 0.0
    acted_change_pct: float | None = None
    trained_roots: int = 0  # roots of this suite the policy was trained or tuned on (its spec's ``trained_on``)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _by_root(rollouts: list[Rollout]) -> list[np.ndarray]:
    """Indices of ``rollouts`` grouped by recorded root (task, scenario, seed): one group holds its replicates."""
    groups: dict[tuple, list[int]] = {}
    for i, o in enumerate(rollouts):
        groups.setdefault((o.task, o.scenario, o.seed), []).append(i)
    return [np.array(v) for _, v in sorted(groups.items())]


def _group_mean(x: np.ndarray, groups: list[np.ndarray]) -> np.ndarray:
    """Per group, the mean of ``x`` over the group's finite values (NaN when none)."""
    out = np.full(len(groups), np.nan)
    for i, g in enumerate(groups):
        v = x[g][np.isfinite(x[g])]
        if len(v):
            out[i] = v.mean()
    return out


def score_policy(policy_id: str, rollouts: list[Rollout], constant: dict[str, Rollout], oracle: dict[str, Rollout] | None,
                 gate: Gate, upper_bound: bool = False) -> PolicyScore:
    """Score one policy on expectations: every figure is first averaged over a root's replicates, then summarised
    over roots (median, with a two-level bootstrap interval)."""
    roots = [o.root for o in rollouts]
    groups = _by_root(rollouts)
    fin = np.array([o.final_val_loss for o in rollouts])
    base = np.array([constant[r].final_val_loss for r in roots])
    best = np.array([o.best_val_loss for o in rollouts])
    base_best = np.array([constant[r].best_val_loss for r in roots])
    change = 100 * (fin / base - 1)
    change_best = 100 * (best / base_best - 1)
    expected = _group_mean(change, groups)
    # A run that diverged before the policy's first decision is not the policy's doing: left out of safety figures.
    decided = np.array([bool(o.decisions) for o in rollouts])
    unsafe = np.where(decided, [o.diverged or c > 100 * gate.unsafe_threshold for o, c in zip(rollouts, change)], np.nan)
    diverged = np.where(decided, [o.diverged for o in rollouts], np.nan)
    unsafe_g, diverged_g = _group_mean(unsafe, groups), _group_mean(diverged, groups)
    regret = regret_sums = None
    if oracle:
        orc = np.array([oracle[r].final_val_loss for r in roots])
        e_p, e_c, e_o = (_group_mean(v, groups) for v in (fin, base, orc))
        gap = 1 - e_o / e_c  # the share of the constant's loss the oracle removes
        ok = gap > 1e-9
        if ok.any():
            lost = e_p[ok] / e_c[ok] - e_o[ok] / e_c[ok]
            regret = float(np.median(lost / gap[ok]))
            regret_sums = float(lost.sum() / gap[ok].sum())
    acted = np.array([any(rollouts[i].interventions for i in g) for g in groups])
    s = summarize_rollouts(rollouts)
    n_dec = max(s["decisions"], 1)
    lo, hi = hier_boot_median([change[g] for g in groups])
    blo, bhi = hier_boot_median([change_best[g] for g in groups])
    per = {}
    for sc in sorted({o.scenario for o in rollouts}):
        sel = [i for i, g in enumerate(groups) if rollouts[g[0]].scenario == sc]
        clo, chi = hier_boot_median([change[groups[i]] for i in sel])
        per[sc] = {"roots": len(sel), "val_loss_change_pct": float(np.median(expected[sel])), "ci_low": clo,
                   "ci_high": chi, "unsafe_rate": _nanmean(unsafe_g[sel]), "acted_share": float(acted[sel].mean())}
    return PolicyScore(
        policy=policy_id, upper_bound=upper_bound, roots=len(groups), rollouts=len(rollouts),
        val_loss_change_pct=float(np.median(expected)), ci_low=lo, ci_high=hi,
        val_loss_change_mean_pct=float(np.mean(expected)),
        best_val_loss_change_pct=float(np.median(_group_mean(change_best, groups))), best_ci_low=blo, best_ci_high=bhi,
        regret=regret, regret_ratio_of_sums=regret_sums, unsafe_rate=_nanmean(unsafe_g),
        diverged_rate=_nanmean(diverged_g), acted_share=float(acted.mean()),
        acted_change_pct=float(np.median(expected[acted])) if acted.any() else None,
        violations_per_100=100 * sum(s["violations"].values()) / n_dec, violations_by_kind=s["violations"],
        fatal_violations=sum(v for k, v in s["violations"].items() if k in gate.fatal_violations),
        fallback_rate=s["fallback_rate"], interventions_per_run=float(np.mean([o.interventions for o in rollouts])),
        epochs_saved_per_run=float(np.mean([o.epochs_saved for o in rollouts])), latency_ms_p50=s["latency_ms_p50"],
        latency_ms_p95=s["latency_ms_p95"], replayed_share=s["replayed_share"], per_scenario=per,
    )


def _nanmean(x: np.ndarray) -> float:
    x = np.asarray(x, float)
    return float(np.nanmean(x)) if np.isfinite(x).any() else 0.0


@dataclass
class LeaderboardResult:
    suite: Suite
    scores: list[PolicyScore]
    rollouts: dict[str, list[Rollout]]
    roots: list[str]
    library_hash: str
    surrogate_id: str
    trees_hidden: bool = False  # --hide-trees: what the surrogate alone says
    unseen_tasks: list[str] = field(default_factory=list)  # tasks of these roots the surrogate was not fitted on

    @property
    def failed(self) -> dict[str, str]:
        """{policy: why} for every policy that could not be scored."""
        return {s.policy: s.failed for s in self.scores if s.failed}

    def ranked(self) -> list[PolicyScore]:
        """Best first: the oracle (an upper bound) on top, then by median val-loss change, the mean change (so a
        policy that rarely acts is not ranked by a tie at zero alone), then the unsafe rate."""
        return sorted(self.scores, key=lambda s: (not s.upper_bound, s.val_loss_change_pct, s.val_loss_change_mean_pct,
                                                  s.unsafe_rate))

    def to_json(self) -> list[dict]:
        return [s.to_dict() for s in self.ranked()]


_WORKER: dict = {}


def _worker_init(traces: str, surrogate_path: str | None, bounds_json: str, replay: bool = True) -> None:
    from ..simulate.surrogate import Surrogate
    from ..traces.format import load_library

    index = TreeIndex(load_library(traces))
    sur = Surrogate.load(surrogate_path) if surrogate_path else None
    _WORKER.update(index=index, sim=Simulator(index, sur, Bounds.model_validate_json(bounds_json), replay=replay))


def _worker_rollout(spec_path: str, roots: list[str], timeout: float | None):
    from ..policies import load_spec, make_policy

    spec = load_spec(spec_path)
    pol = make_policy(spec, _WORKER["index"])
    try:
        return spec.name, _WORKER["sim"].rollout(pol, roots, timeout=timeout), failure_reason(pol)
    finally:
        close_policy(pol)


#: Names the harness's own reference policies use; a spec may take one only for that very policy.
RESERVED = {"constant": "constant", "oracle": "oracle"}


def check_policy_names(policies: list, specs: list | None = None) -> None:
    """Refuse two policies with one name (naming both spec files) and a policy that would take the place of a
    reference (``constant``, every score's baseline; ``oracle``, the upper bound) without being it."""
    from ..policies import ConstantPolicy, OraclePolicy

    where = {s.name: [] for s in specs or []}
    for s in specs or []:
        where[s.name].append(str(s.path or s.name))
    seen: dict[str, int] = {}
    for p in policies:
        seen[p.policy_id] = seen.get(p.policy_id, 0) + 1
    dup = sorted(n for n, c in seen.items() if c > 1)
    if dup:
        files = where.get(dup[0]) or [dup[0]] * 2
        raise ValueError(f"policy name {dup[0]!r} is used twice ({' and '.join(files)}): names must be unique")
    kinds = {"constant": ConstantPolicy, "oracle": OraclePolicy}
    for p in policies:
        if p.policy_id in RESERVED and type(p) is not kinds[p.policy_id]:
            files = where.get(p.policy_id) or [p.policy_id]
            raise ValueError(f"{files[0]}: field 'name': {p.policy_id!r} is reserved for the built-in {RESERVED[p.policy_id]} "
                             "policy every score is measured against; choose another name")


def run_leaderboard(library, policies: list, suite: Suite, surrogate, surrogate_id: str = "",
                    progress=None, timeout: float | None = None, workers: int = 1, specs: list | None = None,
                    surrogate_path: str | None = None, replay: bool = True) -> LeaderboardResult:
    """Roll every policy out on the suite's roots and score it against ``constant`` and ``oracle``.

    ``library`` is a ``TreeIndex`` (built once by the caller and shared with the policies and the surrogate) or a
    ``Library``. With ``workers > 1`` and ``specs`` (the policies' spec files), the rollouts of the spec'd policies run in a
    process pool; each worker reads the library and loads the surrogate from ``surrogate_path`` once.
    """
    from ..policies import ConstantPolicy, OraclePolicy

    index = library if isinstance(library, TreeIndex) else TreeIndex(library)
    library = index.library
    sim = Simulator(index, surrogate, suite.bounds, replay=replay)
    roots = sim.roots(suite.tasks or None, suite.scenarios or None, suite.seeds or None)
    if not roots:
        raise ValueError(f"suite {suite.name!r} selects no root of the library {library.root}")
    check_policy_names(policies, specs)
    by_id = {p.policy_id: p for p in policies}
    if "constant" not in by_id:
        by_id = {"constant": ConstantPolicy(), **by_id}
    if "oracle" not in by_id:
        by_id["oracle"] = OraclePolicy(index)
    rollouts: dict[str, list[Rollout]] = {}
    failed: dict[str, str | None] = {}
    pooled = {s.name: s for s in (specs or []) if s.path is not None} if workers > 1 else {}
    if pooled:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        ctx = mp.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init,
                                 initargs=(str(library.root), surrogate_path, suite.bounds.model_dump_json(),
                                           replay)) as pool:
            futs = [pool.submit(_worker_rollout, str(s.path), roots, timeout) for s in pooled.values()]
            for pid, pol in by_id.items():
                if pid not in pooled:
                    rollouts[pid] = sim.rollout(pol, roots, timeout=timeout)
                    if progress:
                        progress(pid)
            for f in as_completed(futs):
                pid, outs, failed[pid] = f.result()
                rollouts[pid] = outs
                if progress:
                    progress(pid)
        rollouts = {pid: rollouts[pid] for pid in by_id}
    else:
        for pid, pol in by_id.items():
            rollouts[pid] = sim.rollout(pol, roots, timeout=timeout)
            if progress:
                progress(pid)
    for pid, pol in by_id.items():
        if pid not in failed:
            failed[pid] = failure_reason(pol)
        close_policy(pol)
    constant = {o.root: o for o in rollouts["constant"]}
    oracle = {o.root: o for o in rollouts["oracle"]}
    scores = [score_policy(pid, outs, constant, oracle, suite.gate, is_upper_bound(by_id[pid]))
              for pid, outs in rollouts.items()]
    for s in scores:
        s.failed = failed.get(s.policy)
        seeds = (trained_on(by_id[s.policy]) or {}).get("seeds")
        if seeds in ("even", "odd"):
            parity = 0 if seeds == "even" else 1
            s.trained_roots = len({(o.task, o.scenario, o.seed) for o in rollouts[s.policy] if o.seed % 2 == parity})
        stats = model_stats(by_id[s.policy])
        if stats and stats.get("decisions"):
            s.model_fallback_rate = stats["fallbacks"] / stats["decisions"]
    unseen = surrogate.unseen_tasks({index.meta[r]["task"] for r in roots}) if surrogate is not None else []
    return LeaderboardResult(suite, scores, rollouts, roots, library.digest(), surrogate_id, trees_hidden=not replay,
                             unseen_tasks=unseen)


def _ci(s: PolicyScore) -> str:
    return f"{s.val_loss_change_pct:+7.1f}% [{s.ci_low:+6.1f}, {s.ci_high:+6.1f}]"


def format_table(result: LeaderboardResult) -> str:
    """The terminal table, best first, with bootstrap intervals."""
    head = (f"{'#':>2}  {'policy':<22}{'val loss vs constant (95% CI)':<33}{'acted (change)':>16}{'regret':>7}"
            f"{'unsafe':>8}{'viol/100':>9}{'fallback':>9}{'interv':>7}{'replayed':>9}{'p50 ms':>8}")
    n_roots = result.scores[0].roots if result.scores else 0
    lines = [f"leaderboard: suite {result.suite.name}, {n_roots} roots x replicates = {len(result.roots)} rollouts "
             f"(median over roots of the expected change of final val loss vs doing nothing; negative is better)",
             head, "-" * len(head)]
    for i, s in enumerate(result.ranked(), 1):
        name = s.policy + (" (upper bound)" if s.upper_bound else " (FAILED)" if s.failed else
                           " *" if s.trained_roots else "")
        reg = "   n/a" if s.regret is None else f"{s.regret:7.2f}"
        acted = f"{s.acted_share:4.0%}" + (f" ({s.acted_change_pct:+6.1f}%)" if s.acted_change_pct is not None else " " * 10)
        lines.append(f"{i:>2}  {name:<22}{_ci(s):<33}{acted:>16}{reg:>7}{s.unsafe_rate:8.1%}{s.violations_per_100:9.1f}"
                     f"{s.fallback_rate:9.1%}{s.interventions_per_run:7.2f}{s.replayed_share:9.1%}{s.latency_ms_p50:8.3f}")
    for pid, why in result.failed.items():
        lines.append(f"    FAILED {pid}: {why}; its decisions after that fell back to continue, so its row is not a score")
    lines += _trust_lines(result)
    for s in result.ranked():
        if s.trained_roots:
            lines.append(f"    * {s.policy} is scored on {s.trained_roots} of {s.roots} roots it was trained on "
                         f"(score it on held-out seeds: --suite eval/suites/heldout.toml)")
    scen = sorted({sc for s in result.scores for sc in s.per_scenario})
    lines += ["", "per scenario: median val-loss change % (unsafe rate)",
              f"{'policy':<22}" + "".join(f"{sc:>20}" for sc in scen)]
    for s in result.ranked():
        cells = []
        for sc in scen:
            p = s.per_scenario.get(sc)
            cells.append(f"{p['val_loss_change_pct']:+8.1f}% ({p['unsafe_rate']:4.0%})" if p else "")
        lines.append(f"{s.policy:<22}" + "".join(f"{c:>20}" for c in cells))
    return "\n".join(lines)


def _trust_lines(result: LeaderboardResult) -> list[str]:
    """Warnings on what the scores rest on: hidden trees, tasks the surrogate never saw."""
    out = []
    if result.trees_hidden:
        out.append("    TREES HIDDEN: every segment after the first is the surrogate's prediction, not a recording")
    if result.unseen_tasks:
        out.append(f"    WARNING: the surrogate was not fitted on task(s) {', '.join(result.unseen_tasks)}: rows with a "
                   "low replayed share there are zero-shot predictions (see tmsim fidelity --surrogate)")
    return out


def format_markdown(result: LeaderboardResult) -> str:
    lines = [f"# Leaderboard: suite `{result.suite.name}`", "",
             f"{result.scores[0].roots if result.scores else 0} roots, {len(result.roots)} rollouts (roots x replicates); "
             f"library `{result.library_hash[:12]}`; surrogate `{result.surrogate_id[:12]}`. "
             "Median over roots of the expected change of final validation loss vs the `constant` policy on the same "
             "replicate (negative is better); 95% interval from a two-level bootstrap (roots, then replicates). Regret: "
             "median over roots / ratio of sums. The oracle reads the recorded answers: an upper bound, not a policy.",
             *[ln.strip() for ln in _trust_lines(result)], "",
             "| # | policy | val loss change | 95% CI | acted on (change there) | best val loss change | regret (median / sums) | unsafe | violations/100 | fallback | interventions/run | epochs saved/run | latency p50 / p95 ms | replayed |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for i, s in enumerate(result.ranked(), 1):
        reg = "n/a" if s.regret is None else f"{s.regret:.2f} / {s.regret_ratio_of_sums:.2f}"
        acted = f"{s.acted_share:.0%}" + (f" ({s.acted_change_pct:+.1f}%)" if s.acted_change_pct is not None else "")
        lines.append(f"| {i} | {s.policy}{' (upper bound)' if s.upper_bound else ''} | {s.val_loss_change_pct:+.1f}% | "
                     f"[{s.ci_low:+.1f}, {s.ci_high:+.1f}] | {acted} | {s.best_val_loss_change_pct:+.1f}% | {reg} | {s.unsafe_rate:.1%} | "
                     f"{s.violations_per_100:.1f} | {s.fallback_rate:.1%} | {s.interventions_per_run:.2f} | "
                     f"{s.epochs_saved_per_run:.2f} | {s.latency_ms_p50:.3f} / {s.latency_ms_p95:.3f} | {s.replayed_share:.1%} |")
    scen = sorted({sc for s in result.scores for sc in s.per_scenario})
    lines += ["", "## Per scenario", "", "| policy | " + " | ".join(scen) + " |", "|---|" + "---|" * len(scen)]
    for s in result.ranked():
        cells = []
        for sc in scen:
            p = s.per_scenario.get(sc)
            cells.append(f"{p['val_loss_change_pct']:+.1f}% [{p['ci_low']:+.1f}, {p['ci_high']:+.1f}], unsafe {p['unsafe_rate']:.0%}" if p else "")
        lines.append(f"| {s.policy} | " + " | ".join(cells) + " |")
    viol = sorted({k for s in result.scores for k in s.violations_by_kind})
    if viol:
        lines += ["", "## Violations by kind", "", "| policy | " + " | ".join(viol) + " |", "|---|" + "---|" * len(viol)]
        for s in result.ranked():
            lines.append(f"| {s.policy} | " + " | ".join(str(s.violations_by_kind.get(k, 0)) for k in viol) + " |")
    return "\n".join(lines) + "\n"


def json_rows(result: LeaderboardResult) -> list[dict]:
    """One object per policy; the keys named in the docs first."""
    out = []
    for s in result.ranked():
        d = s.to_dict()
        out.append({"policy": s.policy, "val_loss_change_pct": s.val_loss_change_pct, "ci_low": s.ci_low,
                    "ci_high": s.ci_high, "regret": s.regret, "unsafe_rate": s.unsafe_rate,
                    "violations_per_100": s.violations_per_100, "fallback_rate": s.fallback_rate,
                    "latency_ms_p50": s.latency_ms_p50, "replayed_share": s.replayed_share,
                    **{k: v for k, v in d.items() if k not in ("policy",)}})
    return out


def dumps(result: LeaderboardResult) -> str:
    """The ``--json`` form: a list with one object per policy, best first."""
    meta = {"suite": result.suite.name, "roots_total": len(result.roots), "library_hash": result.library_hash,
            "surrogate_id": result.surrogate_id, "trees_hidden": result.trees_hidden,
            "unseen_tasks": result.unseen_tasks}
    return json.dumps([{**row, **meta} for row in json_rows(result)], indent=2)
