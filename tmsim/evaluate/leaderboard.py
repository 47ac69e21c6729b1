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
- compute: ``epochs_share`` (epochs trained, summed over roots of each root's expected count, relative to doing
  nothing; a policy that stops early uses less), ``epochs_per_run``, ``train_seconds_per_run`` and ``compute_share``
  (the recorded wall-clock seconds of the epochs trained, a surrogate epoch counted at its task's mean recorded epoch
  time), and ``pareto`` (no other policy's row has both a lower-or-equal loss change and a lower-or-equal
  ``epochs_share``, one of them strictly);
- honesty marks: ``beats_oracle_roots`` (roots where the policy's expected final is below the oracle's) and
  ``beats_oracle_off_tree_roots`` (of those, where it left the recorded tree); on the oracle's row
  ``upper_bound_roots``, the roots whose trees are full, where it is an upper bound on the recorded menu
  (``tmsim.policies.oracle.upper_bound_roots``); ``train_overlap`` (the share of the suite's roots in the policy's
  training split, from its spec's ``trained_on``), ``trained_roots_excluded`` and ``model``;
- the same effectiveness, safety and compute figures per scenario.

**Which loss, which ranking.** A run's score is its *final* validation loss (the model at the last epoch trained; at
the stop epoch for a stopped run), and rows are ranked by its median change (``rank_by = "final"``, the default, and
what the promotion gate always uses). ``rank_by = "best"`` ranks by ``best_val_loss_change_pct`` instead: the best
validation loss a run reached, as if the best checkpoint were restored at the end (for the constant reference too).
It is chosen on the validation set itself, so it is optimistic for every policy alike. ``pareto = True`` ranks by
Pareto layers of (that loss change, ``epochs_share``): first every row no other row dominates, then the next layer,
each by loss: a stop policy that saves compute at a small loss then sits beside the policies that lose nothing.

**Training roots.** A policy whose spec declares ``trained_on`` (``seeds = "even" | "odd" | [..]``, ``tasks``,
``scenarios``; a root is in the split when it matches every key given) is scored only on the suite's other roots,
and its row says how many were left out; ``include_train = True`` scores it on every root and marks the row.

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
from ..core.hparams import is_rl
from ..policies.protocol import close_policy, failure_reason, is_upper_bound, model_stats, trained_on
from ..simulate.simulator import Rollout, Simulator, summarize_rollouts
from ..traces.index import TreeIndex
from .promote import GateSettings
from .readsrun import SwappedTelemetry, changed_share, donors, reads_run_test

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
    #: policy spec files or directories the suite is scored with when a command names none (relative to the
    #: directory the command runs in, else to the repository the suite file lies in)
    policies: list[str] = Field(default_factory=list)
    #: the trace library the suite's roots come from, when not the bundled one (resolved as ``policies``; a command's
    #: ``--traces`` overrides it)
    traces: str | None = None
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
    trained_roots: int = 0  # roots it was scored on that are in its training split (``include_train`` only)
    trained_roots_excluded: int = 0  # roots of the suite left out of its scores: in its training split
    train_overlap: float = 0.0  # share of the suite's roots in its training split (0 when none)
    model: str | None = None  # the model a model policy runs (its ``model`` setting or ``model_name``)
    epochs_per_run: float = 0.0
    epochs_share: float = 1.0  # epochs trained relative to doing nothing (sum over roots of expected counts)
    train_seconds_per_run: float = 0.0
    compute_share: float = 1.0  # the same in recorded seconds
    stops_only: bool = False  # every intervention it made was a stop (a stop policy), and it made some
    pareto: bool = False  # on the loss-compute front of this board
    beats_oracle_roots: int = 0  # roots where its expected final val loss is below the oracle's
    beats_oracle_off_tree_roots: int = 0  # of those, roots where it left the recorded tree
    beats_oracle_at: list[str] = field(default_factory=list)  # those roots, "task/scenario/seed"
    upper_bound_roots: int | None = None  # the oracle's row: roots whose trees are full (where it is a bound)
    # does it read the run (tmsim.evaluate.readsrun): its score on another root's telemetry minus its score, the
    # sign-flip p-value, the share of rollouts whose decisions changed; None when not measured
    reads_run_delta_pct: float | None = None
    reads_run_p: float | None = None
    reads_run_changed_share: float | None = None

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
                 gate: Gate, upper_bound: bool = False, epoch_seconds: dict[str, float] | None = None) -> PolicyScore:
    """Score one policy on expectations: every figure is first averaged over a root's replicates, then summarised
    over roots (median, with a two-level bootstrap interval). ``epoch_seconds`` ({task: mean recorded epoch time})
    prices the surrogate's epochs, which have no recorded time."""
    roots = [o.root for o in rollouts]
    groups = _by_root(rollouts)
    secs = epoch_seconds or {}
    ep = np.array([o.trained_epochs for o in rollouts], float)
    ep_c = np.array([constant[r].trained_epochs for r in roots], float)
    sec = np.array([o.train_seconds(secs.get(o.task)) for o in rollouts])
    sec_c = np.array([constant[r].train_seconds(secs.get(constant[r].task)) for r in roots])
    fin = np.array([o.final_val_loss for o in rollouts])
    base = np.array([constant[r].final_val_loss for r in roots])
    best = np.array([o.best_val_loss for o in rollouts])
    base_best = np.array([constant[r].best_val_loss for r in roots])
    change = 100 * (fin / base - 1)
    change_best = 100 * (best / base_best - 1)
    expected = _group_mean(change, groups)
    expected_best = _group_mean(change_best, groups)
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
    beats, beats_off = [], 0
    if oracle and not upper_bound:
        fin_o = np.array([oracle[r].final_val_loss for r in roots])
        for g in groups:
            p_, o_ = fin[g].mean(), fin_o[g].mean()
            if p_ < o_ * (1 - 1e-9):
                first = rollouts[g[0]]
                beats.append(f"{first.task}/{first.scenario}/{first.seed}")
                beats_off += any(rollouts[i].surrogate_segments or rollouts[i].node is None for i in g)
    kinds = {d["action"] for o in rollouts for d in o.decisions if d["action"] != "continue"}
    s = summarize_rollouts(rollouts)
    n_dec = max(s["decisions"], 1)
    lo, hi = hier_boot_median([change[g] for g in groups])
    blo, bhi = hier_boot_median([change_best[g] for g in groups])
    per = {}
    for sc in sorted({o.scenario for o in rollouts}):
        sel = [i for i, g in enumerate(groups) if rollouts[g[0]].scenario == sc]
        clo, chi = hier_boot_median([change[groups[i]] for i in sel])
        idx = np.concatenate([groups[i] for i in sel])
        per[sc] = {"roots": len(sel), "val_loss_change_pct": float(np.median(expected[sel])), "ci_low": clo,
                   "ci_high": chi, "unsafe_rate": _nanmean(unsafe_g[sel]), "acted_share": float(acted[sel].mean()),
                   "best_val_loss_change_pct": float(np.median(expected_best[sel])),
                   "epochs_share": _share(ep, ep_c, [groups[i] for i in sel]),
                   "epochs_saved_per_run": float(np.mean([rollouts[i].epochs_saved for i in idx]))}
    return PolicyScore(
        policy=policy_id, upper_bound=upper_bound, roots=len(groups), rollouts=len(rollouts),
        val_loss_change_pct=float(np.median(expected)), ci_low=lo, ci_high=hi,
        val_loss_change_mean_pct=float(np.mean(expected)),
        best_val_loss_change_pct=float(np.median(expected_best)), best_ci_low=blo, best_ci_high=bhi,
        regret=regret, regret_ratio_of_sums=regret_sums, unsafe_rate=_nanmean(unsafe_g),
        diverged_rate=_nanmean(diverged_g), acted_share=float(acted.mean()),
        acted_change_pct=float(np.median(expected[acted])) if acted.any() else None,
        violations_per_100=100 * sum(s["violations"].values()) / n_dec, violations_by_kind=s["violations"],
        fatal_violations=sum(v for k, v in s["violations"].items() if k in gate.fatal_violations),
        fallback_rate=s["fallback_rate"], interventions_per_run=float(np.mean([o.interventions for o in rollouts])),
        epochs_saved_per_run=float(np.mean([o.epochs_saved for o in rollouts])), latency_ms_p50=s["latency_ms_p50"],
        latency_ms_p95=s["latency_ms_p95"], replayed_share=s["replayed_share"], per_scenario=per,
        epochs_per_run=float(ep.mean()), epochs_share=_share(ep, ep_c, groups),
        train_seconds_per_run=float(sec.mean()), compute_share=_share(sec, sec_c, groups),
        stops_only=kinds == {"stop"}, beats_oracle_roots=len(beats), beats_oracle_off_tree_roots=int(beats_off),
        beats_oracle_at=beats,
    )


def _changes(rollouts: list[Rollout], constant: dict[str, Rollout]) -> list[np.ndarray]:
    """Per root group (sorted as ``_by_root``), the final val-loss changes (%) of its replicates vs doing nothing."""
    fin = np.array([o.final_val_loss for o in rollouts])
    base = np.array([constant[o.root].final_val_loss for o in rollouts])
    change = 100 * (fin / base - 1)
    return [change[g] for g in _by_root(rollouts)]


def _share(x: np.ndarray, base: np.ndarray, groups: list[np.ndarray]) -> float:
    """Sum over roots of each root's expected ``x`` over the same sum of ``base`` (1 when the base is 0)."""
    num = sum(float(x[g].mean()) for g in groups)
    den = sum(float(base[g].mean()) for g in groups)
    return num / den if den > 0 else 1.0


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
    rank_by: str = "final"  # "final" (the default and the gate's measure) or "best" (restore the best checkpoint)
    pareto: bool = False  # rank by loss-compute Pareto layers first
    include_train: bool = False  # policies scored on the roots they were trained on too
    skipped: dict[str, str] = field(default_factory=dict)  # policies that could not be built or had no root to score
    oracle_upper_bound_roots: int = 0  # roots whose trees are full: where the oracle is an upper bound
    oracle_beaten_at: list[str] = field(default_factory=list)  # roots where some policy beat the oracle
    fidelity: dict | None = None  # fidelity measured on this library (``fidelity_summary``), None when not measured
    rl_tasks: list[str] = field(default_factory=list)  # tasks of these roots that are RL runs (loss = return shortfall)

    @property
    def failed(self) -> dict[str, str]:
        """{policy: why} for every policy that could not be scored."""
        return {s.policy: s.failed for s in self.scores if s.failed}

    @property
    def rank_measure(self) -> str:
        return "best_val_loss" if self.rank_by == "best" else "final_val_loss"

    def loss(self, s: PolicyScore) -> float:
        """The row's ranking loss figure: the median change of final (default) or best val loss."""
        return s.best_val_loss_change_pct if self.rank_by == "best" else s.val_loss_change_pct

    def layers(self) -> dict[str, int]:
        """Pareto layer of each row on (ranking loss change, ``epochs_share``), lower is better in both: 1 for the
        rows no other row dominates, 2 for those only layer 1 dominates, and so on. Upper bounds and failed rows are
        left out (layer 0 and last)."""
        pts = {s.policy: (self.loss(s), s.epochs_share) for s in self.scores if not s.upper_bound and not s.failed}
        out: dict[str, int] = {}
        layer = 1
        while pts:
            front = [p for p, (a, b) in pts.items()
                     if not any((a2 <= a and b2 <= b and (a2 < a or b2 < b)) for q, (a2, b2) in pts.items() if q != p)]
            for p in front:
                out[p] = layer
                del pts[p]
            layer += 1
        for s in self.scores:
            out.setdefault(s.policy, 0 if s.upper_bound else layer)
        return out

    def ranked(self) -> list[PolicyScore]:
        """Best first: the oracle (an upper bound) on top, then (with ``pareto``) by Pareto layer, then by the median
        change of the ranking loss (``rank_by``), the mean change of final val loss (so a policy that rarely acts is
        not ranked by a tie at zero alone), then the unsafe rate."""
        layer = self.layers() if self.pareto else {}
        return sorted(self.scores, key=lambda s: (not s.upper_bound, layer.get(s.policy, 0), self.loss(s),
                                                  s.val_loss_change_mean_pct, s.unsafe_rate))

    def to_json(self) -> list[dict]:
        return [s.to_dict() for s in self.ranked()]


_WORKER: dict = {}


def _worker_init(traces: str, surrogate_path: str | None, bounds_json: str, replay: bool = True) -> None:
    from ..simulate.surrogate import Surrogate
    from ..traces.format import load_library

    index = TreeIndex(load_library(traces))
    sur = Surrogate.load(surrogate_path) if surrogate_path else None
    _WORKER.update(index=index, sim=Simulator(index, sur, Bounds.model_validate_json(bounds_json), replay=replay))


def _worker_rollout(spec_path: str, roots: list[str], timeout: float | None, donor_of: dict | None = None):
    from ..policies import load_spec, make_policy

    spec = load_spec(spec_path)
    pol = make_policy(spec, _WORKER["index"])
    sim = _WORKER["sim"]
    try:
        outs = sim.rollout(pol, roots, timeout=timeout)
        swapped = sim.rollout(SwappedTelemetry(pol, sim.index, donor_of, sim.bounds), roots, timeout=timeout) \
            if donor_of is not None else None
        return spec.name, outs, swapped, failure_reason(pol)
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


def training_groups(trained: dict | None, index: TreeIndex, roots: list[str]) -> set[tuple]:
    """The root groups (task, scenario, seed) among ``roots`` in a policy's training split (its ``trained_on``:
    ``seeds`` = ``"even"``, ``"odd"`` or a list, ``tasks``, ``scenarios``; a root is in it when it matches every key
    given; no key given: none)."""
    if not trained:
        return set()
    seeds, tasks, scen = trained.get("seeds"), trained.get("tasks"), trained.get("scenarios")
    if seeds is None and tasks is None and scen is None:
        return set()

    def has(g: tuple) -> bool:
        task, sc, seed = g
        if seeds == "even" and seed % 2 != 0 or seeds == "odd" and seed % 2 != 1:
            return False
        if isinstance(seeds, (list, tuple)) and seed not in seeds:
            return False
        if isinstance(tasks, (list, tuple)) and task not in tasks:
            return False
        return not (isinstance(scen, (list, tuple)) and sc not in scen)

    return {index.meta[r]["group"] for r in roots if has(index.meta[r]["group"])}


def epoch_seconds(index: TreeIndex) -> dict[str, float]:
    """{task: mean recorded ``wall_time_s`` of a trained epoch}: the price of a surrogate epoch."""
    tot: dict[str, list[float]] = {}
    for rid, rows in index.own.items():
        task = index.meta[rid]["task"] if rid in index.meta else None
        acc = tot.setdefault(task, [0.0, 0.0])
        for e, r in rows.items():
            w = r.get("wall_time_s")
            if e > 0 and w is not None and math.isfinite(w):
                acc[0] += w
                acc[1] += 1
    return {t: a / n for t, (a, n) in tot.items() if t is not None and n}


def model_of(policy, spec=None) -> str | None:
    """The model a policy runs: its spec's ``model`` setting as written, else its ``model_name`` attribute."""
    m = (spec.settings.get("model") if spec is not None else None) or getattr(policy, "model_name", None)
    return m if isinstance(m, str) else None


def run_leaderboard(library, policies: list, suite: Suite, surrogate, surrogate_id: str = "",
                    progress=None, timeout: float | None = None, workers: int = 1, specs: list | None = None,
                    surrogate_path: str | None = None, replay: bool = True, rank_by: str = "final",
                    pareto: bool = False, include_train: bool = False,
                    skipped: dict[str, str] | None = None, reads_run: bool = True) -> LeaderboardResult:
    """Roll every policy out on the suite's roots and score it against ``constant`` and ``oracle``.

    ``library`` is a ``TreeIndex`` (built once by the caller and shared with the policies and the surrogate) or a
    ``Library``. With ``workers > 1`` and ``specs`` (the policies' spec files), the rollouts of the spec'd policies run in a
    process pool; each worker reads the library and loads the surrogate from ``surrogate_path`` once.
    ``rank_by`` (``"final"`` or ``"best"``) and ``pareto`` choose the ranking; ``include_train`` scores a policy on
    the roots of its training split too (default: they are left out of its scores); ``skipped`` ({name: why}) lists
    policies the caller could not build, reported with the result. ``reads_run`` rolls every policy out a second
    time on swapped telemetry (``tmsim.evaluate.readsrun``) for its "reads the run" figures.
    """
    from ..policies import ConstantPolicy, OraclePolicy
    from ..policies.oracle import upper_bound_roots

    if rank_by not in ("final", "best"):
        raise ValueError(f"rank_by must be 'final' or 'best', not {rank_by!r}")
    skipped = dict(skipped or {})

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
    n_groups = len({index.meta[r]["group"] for r in roots})
    split = {pid: training_groups(trained_on(pol), index, roots) for pid, pol in by_id.items()}
    mine = {pid: roots if include_train or not split[pid] else [r for r in roots if index.meta[r]["group"] not in split[pid]]
            for pid in by_id}
    for pid in [p for p, rs in mine.items() if not rs]:
        skipped[pid] = "every root of the suite is in its training split (--include-train scores it there)"
        close_policy(by_id.pop(pid))
    rollouts: dict[str, list[Rollout]] = {}
    swapped: dict[str, list[Rollout] | None] = {}
    donor_of = donors(index, roots) if reads_run else None

    def swap_rollout(pol, rs):
        return sim.rollout(SwappedTelemetry(pol, index, donor_of, sim.bounds), rs, timeout=timeout) if reads_run else None

    failed: dict[str, str | None] = {}
    pooled = {s.name: s for s in (specs or []) if s.path is not None and s.name in by_id} if workers > 1 else {}
    if pooled:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        ctx = mp.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init,
                                 initargs=(str(library.root), surrogate_path, suite.bounds.model_dump_json(),
                                           replay)) as pool:
            futs = [pool.submit(_worker_rollout, str(s.path), mine[s.name], timeout, donor_of) for s in pooled.values()]
            for pid, pol in by_id.items():
                if pid not in pooled:
                    rollouts[pid] = sim.rollout(pol, mine[pid], timeout=timeout)
                    swapped[pid] = swap_rollout(pol, mine[pid])
                    if progress:
                        progress(pid)
            for f in as_completed(futs):
                pid, outs, swapped[pid], failed[pid] = f.result()
                rollouts[pid] = outs
                if progress:
                    progress(pid)
        rollouts = {pid: rollouts[pid] for pid in by_id}
    else:
        for pid, pol in by_id.items():
            rollouts[pid] = sim.rollout(pol, mine[pid], timeout=timeout)
            swapped[pid] = swap_rollout(pol, mine[pid])
            if progress:
                progress(pid)
    for pid, pol in by_id.items():
        if pid not in failed:
            failed[pid] = failure_reason(pol)
        close_policy(pol)
    constant = {o.root: o for o in rollouts["constant"]}
    oracle = {o.root: o for o in rollouts["oracle"]}
    secs = epoch_seconds(index)
    scores = [score_policy(pid, outs, constant, oracle, suite.gate, is_upper_bound(by_id[pid]), epoch_seconds=secs)
              for pid, outs in rollouts.items()]
    spec_of = {sp.name: sp for sp in specs or []}
    covered = upper_bound_roots(index, roots)
    for s in scores:
        s.failed = failed.get(s.policy)
        if swapped.get(s.policy) is not None:
            real, alt = rollouts[s.policy], swapped[s.policy]
            s.reads_run_delta_pct, s.reads_run_p = reads_run_test(_changes(real, constant), _changes(alt, constant))
            s.reads_run_changed_share = changed_share(real, alt)
        n_split = len(split[s.policy])
        s.train_overlap = n_split / n_groups if n_groups else 0.0
        s.trained_roots = n_split if include_train else 0
        s.trained_roots_excluded = 0 if include_train else n_split
        s.model = model_of(by_id[s.policy], spec_of.get(s.policy))
        if s.upper_bound:
            s.upper_bound_roots = len(covered)
        stats = model_stats(by_id[s.policy])
        if stats and stats.get("decisions"):
            s.model_fallback_rate = stats["fallbacks"] / stats["decisions"]
    unseen = surrogate.unseen_tasks({index.meta[r]["task"] for r in roots}) if surrogate is not None else []
    result = LeaderboardResult(suite, scores, rollouts, roots, library.digest(), surrogate_id, trees_hidden=not replay,
                               unseen_tasks=unseen, rank_by=rank_by, pareto=pareto, include_train=include_train,
                               skipped=skipped, oracle_upper_bound_roots=len(covered),
                               oracle_beaten_at=sorted({r for s in scores for r in s.beats_oracle_at}),
                               rl_tasks=sorted({index.meta[r]["task"] for r in roots if is_rl(index.meta[r]["hp_init"])}))
    front = result.layers()
    for s in scores:
        s.pareto = front.get(s.policy) == 1
    return result


def _ci(result: LeaderboardResult, s: PolicyScore) -> str:
    lo, hi = (s.best_ci_low, s.best_ci_high) if result.rank_by == "best" else (s.ci_low, s.ci_high)
    return f"{result.loss(s):+7.1f}% [{lo:+6.1f}, {hi:+6.1f}]"


def _other(result: LeaderboardResult, s: PolicyScore) -> float:
    """The loss figure the ranking does not use (best when ranked by final, and the other way round)."""
    return s.val_loss_change_pct if result.rank_by == "best" else s.best_val_loss_change_pct


def _marks(result: LeaderboardResult, s: PolicyScore) -> str:
    """The row's marks: (upper bound), (FAILED), * (scored on its training roots), † (beat the oracle somewhere),
    ◆ (on the loss-compute front)."""
    if s.upper_bound:
        return " (upper bound)"
    out = " (FAILED)" if s.failed else ""
    out += " *" if s.trained_roots else ""
    out += " †" if s.beats_oracle_roots else ""
    out += " ~" if surrogate_heavy(s) else ""
    return out


#: A row whose epochs come from the surrogate for more than this share is marked ``~``: its score rests on the
#: surrogate's fidelity, which the table quotes.
SURROGATE_SHARE_FLAG = 0.2


def surrogate_heavy(s: PolicyScore) -> bool:
    return not s.upper_bound and 1.0 - s.replayed_share > SURROGATE_SHARE_FLAG


#: The fidelity figures a leaderboard quotes, with the key each is read from.
FIDELITY_KEYS = ("kendall_tau_task", "kendall_tau_competitive_task", "regret_at_1_task", "coverage_80_task",
                 "kendall_tau_seed")


def fidelity_summary(paths, library_hash: str) -> dict | None:
    """The figures of the first ``tmsim fidelity --json`` report among ``paths`` that was measured on the library
    with ``library_hash`` (its ``library_sha256``); None when there is none. Unreadable files are passed over."""
    for p in paths:
        try:
            r = json.loads(Path(p).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(r, dict) and r.get("library_sha256") == library_hash:
            return {"file": Path(p).name, "split": r.get("split"), "model": r.get("model"),
                    **{k: r.get(k) for k in FIDELITY_KEYS},
                    "flagged": [f for f in r.get("flagged", []) if "/" not in f]}
    return None


def n_roots(result: LeaderboardResult) -> int:
    """Roots (task, scenario, seed) of the suite; each has one rollout per replicate."""
    return max([s.roots for s in result.scores if s.upper_bound or s.policy == "constant"] or [0])


def _describe(result: LeaderboardResult) -> str:
    what = ("best val loss reached (the best checkpoint restored at the end)" if result.rank_by == "best"
            else "final val loss")
    out = f"median over roots of the expected change of {what} vs doing nothing; negative is better"
    if result.pareto:
        out += "; ranked by loss-compute Pareto layer first"
    return out


def oracle_lines(result: LeaderboardResult) -> list[str]:
    """What the oracle's row is: where it is an upper bound, and which rows beat it anyway."""
    n = n_roots(result)
    out = [f"oracle: an upper bound on the recorded menu on {result.oracle_upper_bound_roots} of {n} roots (full "
           "trees); on the others (sampled trees) a path the library did not record may be better"]
    beat = [s for s in result.ranked() if s.beats_oracle_roots]
    for s in beat:
        out.append(f"† {s.policy} beat the oracle on {s.beats_oracle_roots} root(s), {s.beats_oracle_off_tree_roots} of "
                   f"them off the recorded tree (surrogate): {', '.join(s.beats_oracle_at[:6])}"
                   + (" ..." if len(s.beats_oracle_at) > 6 else ""))
    return out


def train_lines(result: LeaderboardResult) -> list[str]:
    out = []
    for s in result.ranked():
        if s.trained_roots:
            out.append(f"* {s.policy} is scored on {s.trained_roots} of {s.roots} roots it was trained on "
                       f"(--include-train; without it they are left out)")
        elif s.trained_roots_excluded:
            out.append(f"{s.policy}: scored on {s.roots} roots; {s.trained_roots_excluded} roots of its training split "
                       f"left out (train overlap {s.train_overlap:.0%}; --include-train scores them too)")
    for pid, why in result.skipped.items():
        out.append(f"SKIPPED {pid}: {why}")
    return out


def format_table(result: LeaderboardResult) -> str:
    """The terminal table, best first, with bootstrap intervals and compute."""
    rank, other = ("best (95% CI)", "final") if result.rank_by == "best" else ("final val loss (95% CI)", "best")
    head = (f"{'#':>2}  {'policy':<24}{rank:<30}{other:>7}{'compute':>8}{'saved':>6}{'acted (change)':>16}{'regret':>7}"
            f"{'unsafe':>7}{'reads run':>16}{'viol/100':>9}{'fallback':>9}{'interv':>7}{'replayed':>9}{'p50 ms':>8}")
    n = n_roots(result)
    lines = [f"leaderboard: suite {result.suite.name}, {n} roots x replicates = {len(result.roots)} rollouts "
             f"({_describe(result)}; compute: epochs trained vs doing nothing; saved: epochs saved per run)",
             head, "-" * len(head)]
    for i, s in enumerate(result.ranked(), 1):
        name = s.policy + _marks(result, s) + (" ◆" if s.pareto and result.pareto else "")
        reg = "   n/a" if s.regret is None else f"{s.regret:7.2f}"
        acted = f"{s.acted_share:4.0%}" + (f" ({s.acted_change_pct:+6.1f}%)" if s.acted_change_pct is not None else " " * 10)
        lines.append(f"{i:>2}  {name:<24}{_ci(result, s):<30}{_other(result, s):+6.1f}%{s.epochs_share:8.0%}"
                     f"{s.epochs_saved_per_run:6.1f}{acted:>16}{reg:>7}{s.unsafe_rate:7.1%}{reads_cell(s):>16}"
                     f"{s.violations_per_100:9.1f}"
                     f"{s.fallback_rate:9.1%}{s.interventions_per_run:7.2f}{s.replayed_share:9.1%}{s.latency_ms_p50:8.3f}")
    for pid, why in result.failed.items():
        lines.append(f"    FAILED {pid}: {why}; its decisions after that fell back to continue, so its row is not a score")
    lines += ["    " + ln for ln in oracle_lines(result)]
    lines += ["    " + ln for ln in reads_lines(result)]
    lines += ["    " + ln for ln in rl_lines(result)]
    lines += _trust_lines(result)
    lines += ["    " + ln for ln in train_lines(result)]
    scen = sorted({sc for s in result.scores for sc in s.per_scenario})
    lines += ["", "per scenario: median final val-loss change % (unsafe rate) | best val-loss change %, compute",
              f"{'policy':<22}" + "".join(f"{sc:>34}" for sc in scen)]
    for s in result.ranked():
        cells = []
        for sc in scen:
            p = s.per_scenario.get(sc)
            cells.append(f"{p['val_loss_change_pct']:+7.1f}% ({p['unsafe_rate']:4.0%}) | "
                         f"{p['best_val_loss_change_pct']:+6.1f}%, {p['epochs_share']:4.0%}" if p else "")
        lines.append(f"{s.policy:<22}" + "".join(f"{c:>34}" for c in cells))
    return "\n".join(lines)


def reads_cell(s: PolicyScore) -> str:
    """The "reads the run" cell: the score's change on another root's telemetry, in points, and its p-value (``no``
    when no decision changed)."""
    if s.reads_run_delta_pct is None:
        return "n/a"
    if s.reads_run_p is not None and s.reads_run_p >= 1.0 and s.reads_run_delta_pct == 0.0:
        return "no (0 changed)"
    return f"{s.reads_run_delta_pct:+.1f} p={s.reads_run_p:.3f}"


def reads_lines(result: LeaderboardResult) -> list[str]:
    """How the "reads run" column reads."""
    if not any(s.reads_run_delta_pct is not None for s in result.scores):
        return []
    return ["reads run: each policy rolled out again with every snapshot's telemetry swapped for another root's of the "
            "same task and recipe bucket (hyperparameters, epoch and past actions kept): the change of its score in "
            "points (positive: worse on someone else's curves, so it reads them) and a sign-flip permutation p over "
            "roots; 'no' = not one decision changed, its decisions do not depend on the telemetry"]


def rl_lines(result: LeaderboardResult) -> list[str]:
    """How an RL root's score reads (the sign): its val loss is the return shortfall."""
    if not result.rl_tasks:
        return []
    return [f"RL roots ({', '.join(result.rl_tasks)}): val loss is the shortfall of the evaluation return from the best "
            "possible return (here the negated return), so lower is better as everywhere: -20% = a fifth of the gap to a "
            "perfect return closed, a higher return; unsafe = stopped by the safety budget, a return collapse (shortfall "
            "above 3x the initial), or ending more than the gate's threshold worse than doing nothing"]


def _trust_lines(result: LeaderboardResult) -> list[str]:
    """What the scores rest on: the simulator's fidelity on this library, rows that lean on the surrogate, hidden
    trees, tasks the surrogate never saw."""
    out = []
    f = result.fidelity
    heavy = [s.policy for s in result.scores if surrogate_heavy(s)]
    if f:
        num = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
        out.append(f"    trust: the surrogate's fidelity on this library ({f['split']} split, {f['file']}): leave one task out "
                   f"tau {num(f['kendall_tau_task'])}, over competitive policies {num(f['kendall_tau_competitive_task'])}, "
                   f"regret@1 {num(f['regret_at_1_task'])}, 80% coverage {num(f['coverage_80_task'])}; held-out seeds "
                   f"tau {num(f['kendall_tau_seed'])}" + (f"; flagged tasks: {', '.join(f['flagged'])}" if f["flagged"] else ""))
    else:
        out.append("    trust: the surrogate's fidelity was not measured on this library (run `tmsim fidelity --json FILE`)")
    if heavy:
        out.append(f"    ~ more than {SURROGATE_SHARE_FLAG:.0%} of the epochs of {', '.join(heavy)} come from the surrogate, not "
                   "from recordings: those scores are only as good as the fidelity above")
    if result.trees_hidden:
        out.append("    TREES HIDDEN: every segment after the first is the surrogate's prediction, not a recording")
    if result.unseen_tasks:
        out.append(f"    WARNING: the surrogate was not fitted on task(s) {', '.join(result.unseen_tasks)}: rows with a "
                   "low replayed share there are zero-shot predictions (see tmsim fidelity --surrogate)")
    return out


def format_markdown(result: LeaderboardResult) -> str:
    n = n_roots(result)
    rank = "best val loss change (restored)" if result.rank_by == "best" else "val loss change"
    lines = [f"# Leaderboard: suite `{result.suite.name}`", "",
             f"{n} roots, {len(result.roots)} rollouts (roots x replicates); "
             f"library `{result.library_hash[:12]}`; surrogate `{result.surrogate_id[:12]}`. "
             f"Ranked by the {_describe(result)}. Final val loss is the model at the last epoch trained (the stop epoch "
             "for a stopped run); best val loss is the best the run reached, as if the best checkpoint were restored "
             "(the promotion gate always uses final val loss). Compute: epochs trained relative to doing nothing "
             "(seconds: the recorded epoch times). 95% interval from a two-level bootstrap (roots, then replicates). "
             "Regret: median over roots / ratio of sums. ◆: on the loss-compute front; †: beat the oracle on some "
             "root; *: scored on roots it was trained on; ~: more than 20% of its epochs come from the surrogate.",
             *[ln.strip() for ln in _trust_lines(result)], "",
             *[f"- {ln}" for ln in oracle_lines(result) + reads_lines(result) + rl_lines(result) + train_lines(result)], "",
             f"| # | policy | {rank} | 95% CI | {'val loss change' if result.rank_by == 'best' else 'best val loss change (restored)'} | "
             "compute (epochs) | epochs saved/run | train s/run | acted on (change there) | regret (median / sums) | "
             "unsafe | reads the run (change, p; changed) | violations/100 | fallback | interventions/run | latency p50 / p95 ms | "
             "replayed | train overlap | model |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for i, s in enumerate(result.ranked(), 1):
        reg = "n/a" if s.regret is None else f"{s.regret:.2f} / {s.regret_ratio_of_sums:.2f}"
        acted = f"{s.acted_share:.0%}" + (f" ({s.acted_change_pct:+.1f}%)" if s.acted_change_pct is not None else "")
        lo, hi = (s.best_ci_low, s.best_ci_high) if result.rank_by == "best" else (s.ci_low, s.ci_high)
        name = s.policy + _marks(result, s) + (" ◆" if s.pareto else "")
        if s.upper_bound and s.upper_bound_roots is not None:
            name += f", bound on {s.upper_bound_roots} of {n} roots"
        lines.append(f"| {i} | {name} | {result.loss(s):+.1f}% | [{lo:+.1f}, {hi:+.1f}] | {_other(result, s):+.1f}% | "
                     f"{s.epochs_share:.0%} | {s.epochs_saved_per_run:.2f} | {s.train_seconds_per_run:.2f} | {acted} | "
                     f"{reg} | {s.unsafe_rate:.1%} | {reads_cell(s)}{_changed(s)} | {s.violations_per_100:.1f} | {s.fallback_rate:.1%} | "
                     f"{s.interventions_per_run:.2f} | {s.latency_ms_p50:.3f} / {s.latency_ms_p95:.3f} | "
                     f"{s.replayed_share:.1%} | {s.train_overlap:.0%} | {s.model or ''} |")
    scen = sorted({sc for s in result.scores for sc in s.per_scenario})
    lines += ["", "## Per scenario", "",
              "Final val loss change [95% CI], unsafe rate; best val loss change (restored); compute (epochs).", "",
              "| policy | " + " | ".join(scen) + " |", "|---|" + "---|" * len(scen)]
    for s in result.ranked():
        cells = []
        for sc in scen:
            p = s.per_scenario.get(sc)
            cells.append(f"{p['val_loss_change_pct']:+.1f}% [{p['ci_low']:+.1f}, {p['ci_high']:+.1f}], unsafe "
                         f"{p['unsafe_rate']:.0%}; best {p['best_val_loss_change_pct']:+.1f}%; compute "
                         f"{p['epochs_share']:.0%}" if p else "")
        lines.append(f"| {s.policy} | " + " | ".join(cells) + " |")
    viol = sorted({k for s in result.scores for k in s.violations_by_kind})
    if viol:
        lines += ["", "## Violations by kind", "", "| policy | " + " | ".join(viol) + " |", "|---|" + "---|" * len(viol)]
        for s in result.ranked():
            lines.append(f"| {s.policy} | " + " | ".join(str(s.violations_by_kind.get(k, 0)) for k in viol) + " |")
    return "\n".join(lines) + "\n"


def _changed(s: PolicyScore) -> str:
    return "" if s.reads_run_changed_share is None or s.reads_run_changed_share == 0 else \
        f"; {s.reads_run_changed_share:.0%} of rollouts changed"


def json_rows(result: LeaderboardResult) -> list[dict]:
    """One object per policy; the keys named in the docs first."""
    out = []
    for s in result.ranked():
        d = s.to_dict()
        out.append({"policy": s.policy, "val_loss_change_pct": s.val_loss_change_pct, "ci_low": s.ci_low,
                    "ci_high": s.ci_high, "regret": s.regret, "unsafe_rate": s.unsafe_rate,
                    "violations_per_100": s.violations_per_100, "fallback_rate": s.fallback_rate,
                    "latency_ms_p50": s.latency_ms_p50, "replayed_share": s.replayed_share,
                    "surrogate_heavy": surrogate_heavy(s), "reads_run_delta_pct": s.reads_run_delta_pct,
                    "reads_run_p": s.reads_run_p,
                    **{k: v for k, v in d.items() if k not in ("policy",)}})
    return out


def dumps(result: LeaderboardResult) -> str:
    """The ``--json`` form: a list with one object per policy, best first."""
    meta = {"suite": result.suite.name, "roots_total": len(result.roots), "library_hash": result.library_hash,
            "surrogate_id": result.surrogate_id, "trees_hidden": result.trees_hidden,
            "unseen_tasks": result.unseen_tasks, "rank_by": result.rank_by, "rank_measure": result.rank_measure,
            "pareto_ranking": result.pareto, "include_train": result.include_train,
            "oracle_upper_bound_roots": result.oracle_upper_bound_roots, "suite_roots": n_roots(result),
            "oracle_beaten_at": result.oracle_beaten_at, "skipped_policies": result.skipped,
            "fidelity": result.fidelity, "rl_tasks": result.rl_tasks}
    return json.dumps([{**row, **meta} for row in json_rows(result)], indent=2)
