"""Fidelity: how far the simulator's verdicts can be trusted, measured on held-out recordings.

Three measurements, each on trees the surrogate never saw:

1. **Branch error.** For a sample of recorded action sequences, the surrogate rolls each held-out root forward
   with the trees hidden; its final validation loss is compared with the recorded one (MAE, relative error, and the
   share of recorded finals inside the predicted 80% band).
2. **Policy-ranking agreement** (the decisive figure). A pool of policies (the baselines with varied settings,
   seeded random policies on the recorded menu, fixed action sequences) is scored twice on the held-out roots:
   through the simulator with the trees hidden (surrogate only), and by exact replay of the recorded trees (the
   truth). A policy's score is the mean over roots of ``log(final val loss / do-nothing final val loss)``.
   Reported: Kendall tau and Spearman rho between the two rankings, and regret@1 (the true score of the simulator's
   top policy minus the true best, as a share of the gap between doing nothing and the true best).
   Held out two ways: by seed (2 folds: even and odd seeds) and by whole task (leave one task out).
3. **Noise ceiling.** The same tau between the true rankings on even seeds and on odd seeds (split-half
   reliability): how much agreement training noise alone allows at this sample size.

Only roots whose recorded tree holds every pool policy's path can give a truth; others are skipped and counted
(budgeted trees, such as the bundled ``text-lm`` ones, mostly are).
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass

import numpy as np

from ..core.menu import record_menu
from ..policies.baselines import ConstantPolicy, PlateauPolicy, RandomPolicy, RulesPolicy, SequencePolicy
from ..simulate.simulator import Simulator, final_band
from ..simulate.surrogate import Surrogate, segment_data
from ..traces.index import TreeIndex


def policy_pool() -> list:
    """At least 20 replayable policies: every action they can take is on the recorded menu."""
    menu = sorted(set(record_menu(1) + record_menu(2)) | {"continue"})

    def named(p, name):
        p.policy_id = name
        return p

    pool = [named(ConstantPolicy(), "constant"), named(RulesPolicy(), "rules")]
    pool += [named(RulesPolicy(gap_threshold=g), f"rules-gap{g}") for g in (0.2, 1.0)]
    pool += [named(RulesPolicy(slow_slope=s), f"rules-slow{s}") for s in (0.003, 0.03)]
    pool += [named(RulesPolicy(overfit_action=a), f"rules-{a}") for a in ("weight_decay_up", "dropout_up")]
    pool += [named(PlateauPolicy(patience=p), f"plateau-p{p}") for p in (0, 1, 2, 3)]
    pool += [named(RandomPolicy(seed=s, p_continue=0.5, actions=menu), f"random-s{s}") for s in range(4)]
    seqs = [["lr_down"], ["lr_down"] * 3, ["continue", "lr_down"], ["continue", "continue", "lr_down"], ["lr_up"],
            ["continue", "lr_up"], ["weight_decay_up"], ["dropout_up"], ["continue", "continue", "stop"],
            ["continue", "stop"], ["lr_down", "continue", "stop"], ["aux_weight_up"], ["lr_down", "weight_decay_up"]]
    pool += [named(SequencePolicy(s), "seq-" + "-".join(s)) for s in seqs]
    return pool


def _scores(sim: Simulator, pool: list, roots: list[str]) -> tuple[dict[str, dict[str, float]], set[str]]:
    """{policy: {root: log(final / constant final)}} and the roots where some policy left the recorded tree."""
    finals, off = {}, set()
    for p in pool:
        outs = sim.rollout(p, roots)
        finals[p.policy_id] = {o.root: o.final_val_loss for o in outs}
        off |= {o.root for o in outs if o.truncated}
    base = finals["constant"]
    scores = {pid: {r: math.log(v[r] / base[r]) for r in roots} for pid, v in finals.items()}
    return scores, off


def _mean_scores(scores: dict[str, dict[str, float]], roots: list[str]) -> dict[str, float]:
    return {pid: float(np.mean([s[r] for r in roots])) for pid, s in scores.items()}


def ranking_agreement(sim_scores: dict[str, float], true_scores: dict[str, float]) -> dict[str, float]:
    """Kendall tau, Spearman rho and regret@1 between a simulated and a true policy ranking (lower score = better)."""
    from scipy.stats import kendalltau, spearmanr

    ids = sorted(true_scores)
    a = np.array([sim_scores[i] for i in ids])
    b = np.array([true_scores[i] for i in ids])
    tau = kendalltau(a, b).statistic
    rho = spearmanr(a, b).statistic
    top = ids[int(np.argmin(a))]
    best = float(b.min())
    gap = max(-best, 1e-12)  # constant scores 0: the do-nothing-to-best gap
    regret = max(true_scores[top] - best, 0.0) / gap
    return {"kendall_tau": float(tau), "spearman_rho": float(rho), "regret_at_1": float(regret),
            "sim_top": top, "true_top": ids[int(np.argmin(b))]}


@dataclass
class FidelityConfig:
    n_estimators: int = 60
    branch_sequences: int = 24
    seed: int = 0


def _fit(index: TreeIndex, keep, cfg: FidelityConfig) -> Surrogate:
    return Surrogate(n_estimators=cfg.n_estimators, seed=cfg.seed).fit(segment_data(index, keep))


def _branch_errors(index: TreeIndex, sur: Surrogate, roots: list[str], cfg: FidelityConfig) -> list[tuple[float, float, tuple | None]]:
    """(predicted, recorded, band) final val loss for sampled recorded action sequences from held-out roots."""
    rng = random.Random(cfg.seed)
    seqs: set[tuple[str, ...]] = set()
    for r in roots:  # the sequences these trees actually hold
        for c in index.descendants(r):
            seqs.add(index.sequence(c))
    seqs = sorted(seqs)
    sample = rng.sample(seqs, min(cfg.branch_sequences, len(seqs)))
    hidden = Simulator(index, sur, replay=False)
    out = []
    for seq in sample:
        pol = SequencePolicy(list(seq))
        for o in hidden.rollout(pol, roots):
            rid = index.lookup(o.root, seq)
            if rid is None or o.diverged or index.meta[rid]["status"] == "diverged" or o.stopped_at is not None:
                continue
            out.append((o.final_val_loss, index.final_val_loss(rid), final_band(o)))
    return out


def measure(index: TreeIndex, cfg: FidelityConfig | None = None, progress=print) -> dict:
    """Run all fidelity measurements on the library behind ``index``; returns the report dict."""
    cfg = cfg or FidelityConfig()
    t0 = time.perf_counter()
    pool = policy_pool()
    truth_sim = Simulator(index, None, on_off_tree="truncate")
    all_roots = truth_sim.roots()
    true_scores, off = _scores(truth_sim, pool, all_roots)
    roots = [r for r in all_roots if r not in off]
    if not roots:
        raise ValueError(f"no root's recorded tree holds every path of the {len(pool)} pool policies "
                         f"({len(all_roots)} roots checked): fidelity needs full trees (`tmsim record` without --budget, "
                         "depth covering every decision epoch)")
    progress(f"truth: {len(pool)} policies replayed exactly on {len(roots)} of {len(all_roots)} roots "
             f"({len(off)} skipped: a pool policy leaves their recorded tree)")
    seeds_even = [r for r in roots if index.meta[r]["seed"] % 2 == 0]
    seeds_odd = [r for r in roots if index.meta[r]["seed"] % 2 == 1]
    report: dict = {"policies": len(pool), "roots": len(roots), "roots_skipped": len(off)}

    # 1 + 2: held out by seed
    sim_scores: dict[str, dict[str, float]] = {p.policy_id: {} for p in pool}
    branch = []
    for held, train in ((seeds_even, seeds_odd), (seeds_odd, seeds_even)):
        train_seeds = {(index.meta[r]["task"], index.meta[r]["scenario"], index.meta[r]["seed"]) for r in train}
        sur = _fit(index, lambda m, ts=train_seeds: (m["task"], m["scenario"], m["seed"]) in ts, cfg)
        s, _ = _scores(Simulator(index, sur, replay=False), pool, held)
        for pid in s:
            sim_scores[pid].update(s[pid])
        branch += _branch_errors(index, sur, held, cfg)
        progress(f"held-out seeds: fold done ({len(held)} roots, surrogate on {sur.info['rows']} rows)")
    agree_seed = ranking_agreement(_mean_scores(sim_scores, roots), _mean_scores(true_scores, roots))
    report.update({"kendall_tau_seed": agree_seed["kendall_tau"], "spearman_rho_seed": agree_seed["spearman_rho"],
                   "regret_at_1": agree_seed["regret_at_1"], "sim_top_seed": agree_seed["sim_top"],
                   "true_top": agree_seed["true_top"]})
    pred = np.array([b[0] for b in branch])
    true = np.array([b[1] for b in branch])
    banded = [b for b in branch if b[2] is not None]
    report.update({
        "branches": len(branch),
        "final_val_loss_mae": float(np.mean(np.abs(pred - true))) if len(branch) else None,
        "final_val_loss_rel_error": float(np.mean(np.abs(pred - true) / true)) if len(branch) else None,
        "coverage_80": float(np.mean([lo <= t <= hi for (_, t, (lo, hi)) in banded])) if banded else None,
    })

    # 2b: leave one task out
    tasks = sorted({index.meta[r]["task"] for r in roots})
    task_scores: dict[str, dict[str, float]] = {p.policy_id: {} for p in pool}
    per_task = {}
    loto_branch = []
    if len(tasks) >= 2:
        for t in tasks:
            held = [r for r in roots if index.meta[r]["task"] == t]
            sur = _fit(index, lambda m, t=t: m["task"] != t, cfg)
            s, _ = _scores(Simulator(index, sur, replay=False), pool, held)
            for pid in s:
                task_scores[pid].update(s[pid])
            per_task[t] = ranking_agreement(_mean_scores(s, held), _mean_scores(true_scores, held))
            loto_branch += _branch_errors(index, sur, held, cfg)
            progress(f"leave-one-task-out: {t} done (tau {per_task[t]['kendall_tau']:.2f})")
        agree_task = ranking_agreement(_mean_scores(task_scores, roots), _mean_scores(true_scores, roots))
        lp, lt = np.array([b[0] for b in loto_branch]), np.array([b[1] for b in loto_branch])
        report.update({"kendall_tau_task": agree_task["kendall_tau"], "spearman_rho_task": agree_task["spearman_rho"],
                       "regret_at_1_task": agree_task["regret_at_1"],
                       "kendall_tau_per_task": {t: v["kendall_tau"] for t, v in per_task.items()},
                       "final_val_loss_mae_task": float(np.mean(np.abs(lp - lt))) if len(lp) else None})
    else:
        report.update({"kendall_tau_task": None, "spearman_rho_task": None})

    # 3: noise ceiling
    ceiling = ranking_agreement(_mean_scores(true_scores, seeds_even), _mean_scores(true_scores, seeds_odd))
    report["noise_ceiling_tau"] = ceiling["kendall_tau"]
    report["seconds"] = round(time.perf_counter() - t0, 1)
    report["true_scores"] = _mean_scores(true_scores, roots)
    report["sim_scores_seed"] = _mean_scores(sim_scores, roots)
    return report


def measure_transfer(index: TreeIndex, surrogate, cfg: FidelityConfig | None = None, progress=print) -> dict:
    """Zero-shot fidelity: a surrogate fitted elsewhere (another library, other tasks) predicts every policy of the
    pool on this library with its trees hidden; the trees, replayed exactly, are the truth. Reports Kendall tau over
    all pool policies and over the *competitive* ones (those that truly beat ``constant``), regret@1, the 80% band
    coverage of final val loss on recorded branches, and the tasks the surrogate never saw."""
    from scipy.stats import kendalltau

    cfg = cfg or FidelityConfig()
    t0 = time.perf_counter()
    pool = policy_pool()
    true_scores, off = _scores(Simulator(index, None, on_off_tree="truncate"), pool, index.roots)
    roots = [r for r in index.roots if r not in off]
    if not roots:
        raise ValueError("no root's recorded tree holds every path of the pool policies: the truth needs full trees")
    progress(f"truth: {len(pool)} policies replayed exactly on {len(roots)} of {len(index.roots)} roots")
    sim_scores, _ = _scores(Simulator(index, surrogate, replay=False), pool, roots)
    true_m, sim_m = _mean_scores(true_scores, roots), _mean_scores(sim_scores, roots)
    agree = ranking_agreement(sim_m, true_m)
    comp = sorted(p for p, v in true_m.items() if v < 0)
    tau_comp = float(kendalltau([sim_m[p] for p in comp], [true_m[p] for p in comp]).statistic) if len(comp) >= 3 else None
    branch = _branch_errors(index, surrogate, roots, cfg)
    banded = [b for b in branch if b[2] is not None]
    tasks = sorted({index.meta[r]["task"] for r in roots})
    return {"policies": len(pool), "roots": len(roots), "roots_skipped": len(off), "tasks": tasks,
            "unseen_tasks": surrogate.unseen_tasks(tasks), "kendall_tau": agree["kendall_tau"],
            "spearman_rho": agree["spearman_rho"], "kendall_tau_competitive": tau_comp,
            "competitive_policies": len(comp), "regret_at_1": agree["regret_at_1"], "sim_top": agree["sim_top"],
            "true_top": agree["true_top"], "branches": len(branch),
            "coverage_80": float(np.mean([lo <= t <= hi for (_, t, (lo, hi)) in banded])) if banded else None,
            "true_scores": true_m, "sim_scores": sim_m, "seconds": round(time.perf_counter() - t0, 1)}


def format_transfer(r: dict) -> str:
    """The terminal form of a ``measure_transfer`` report."""
    f = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [f"zero-shot fidelity on {r['roots']} roots ({r['roots_skipped']} skipped) of tasks {', '.join(r['tasks'])}, "
             f"{r['policies']} policies, surrogate fitted elsewhere, trees hidden",
             f"{'Kendall tau, all policies':<44}{f(r['kendall_tau']):>8}",
             f"{'Kendall tau, ' + str(r['competitive_policies']) + ' competitive policies':<44}{f(r['kendall_tau_competitive']):>8}",
             f"{'regret@1':<44}{f(r['regret_at_1']):>8}",
             f"{'80% band coverage':<44}{f(r['coverage_80']):>8}",
             f"simulator's top policy: {r['sim_top']}; truly best: {r['true_top']}   ({r['seconds']} s)"]
    if r["unseen_tasks"]:
        lines.append(f"WARNING: the surrogate never saw task(s) {', '.join(r['unseen_tasks'])}: these figures are zero-shot")
    return "\n".join(lines)


TARGETS = {"kendall_tau_seed": (">=", 0.8), "kendall_tau_task": (">=", 0.6), "regret_at_1": ("<=", 0.05),
           "coverage_80": ("in", (0.7, 0.9))}


def format_report(r: dict) -> str:
    def ok(key):
        v = r.get(key)
        if v is None:
            return "n/a"
        op, t = TARGETS[key]
        good = v >= t if op == ">=" else v <= t if op == "<=" else t[0] <= v <= t[1]
        return "meets target" if good else "MISSES target"

    def f(v):
        return "n/a" if v is None else f"{v:.3f}"

    lines = [
        f"fidelity on {r['roots']} held-out roots ({r['roots_skipped']} skipped), {r['policies']} policies, {r['branches']} branch predictions",
        "",
        f"{'measure':<38}{'value':>9}   {'target':<12}{'':<14}noise ceiling",
        f"{'Kendall tau, held-out seeds':<38}{f(r['kendall_tau_seed']):>9}   {'>= 0.8':<12}{ok('kendall_tau_seed'):<14}{f(r['noise_ceiling_tau'])}",
        f"{'Spearman rho, held-out seeds':<38}{f(r['spearman_rho_seed']):>9}",
        f"{'Kendall tau, leave one task out':<38}{f(r.get('kendall_tau_task')):>9}   {'>= 0.6':<12}{ok('kendall_tau_task'):<14}{f(r['noise_ceiling_tau'])}",
        f"{'regret@1 (share of do-nothing->best)':<38}{f(r['regret_at_1']):>9}   {'<= 0.05':<12}{ok('regret_at_1')}",
        f"{'final val loss MAE (held-out seeds)':<38}{f(r['final_val_loss_mae']):>9}",
        f"{'final val loss relative error':<38}{f(r['final_val_loss_rel_error']):>9}",
        f"{'80% band coverage':<38}{f(r['coverage_80']):>9}   {'0.7 - 0.9':<12}{ok('coverage_80')}",
    ]
    if r.get("kendall_tau_per_task"):
        lines.append("leave-one-task-out tau per task: " + ", ".join(f"{t} {v:.2f}" for t, v in r["kendall_tau_per_task"].items()))
    lines.append(f"simulator's top policy: {r['sim_top_seed']}; truly best: {r['true_top']}   ({r['seconds']} s)")
    return "\n".join(lines)
