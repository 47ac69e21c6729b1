"""Fidelity: how far the simulator's verdicts can be trusted, measured on recordings the surrogate never saw.

The protocol (docs/simulator.md, "Fidelity"):

- **Truth.** A pool of policies that are close to each other as well as far apart (the baselines with varied
  settings, seeded random policies, fixed action sequences) is replayed exactly on every root whose recorded tree
  holds all their paths. A policy's score on a root is ``log(final val loss / do-nothing final val loss)``; its
  score is the mean over roots (replicates included: the expectation).
- **Splits.** Roots are split by seed: ``seed % 5`` in ``VALIDATION_SEEDS`` (0, 1, 2) is the *validation* split,
  the rest the *test* split. Every choice made while looking at fidelity (features, model class, band rule,
  hyperparameters) is made on the validation split; the test split is read once per release and reported as it is.
- **Leave one task out** (the headline). For each task, surrogates fitted on every tree of the other tasks (one
  per surrogate seed) predict the task's split roots with the trees hidden. Rankings are pooled over all split
  roots: Kendall tau over all policies, over the *competitive* ones (those that truly beat ``constant``) and over the
  true top 5; regret@1 and @3. Per task and per scenario: Spearman rho, flagged below 0.7. Mean and spread over
  surrogate seeds.
- **Held-out seeds.** Validation: leave one validation seed out; test: fitted on the validation seeds, predicting
  the test seeds. All tasks, the first surrogate seed.
- **Branches.** Recorded action sequences rolled out with the trees hidden: relative error of the final val loss
  and the 80% band's coverage, where a divergence that the surrogate missed (or invented) counts as not covered.
- **Noise ceiling.** Kendall tau between the true rankings on different replicates of the same roots (mean over
  replicate pairs): how much agreement training noise alone allows.
"""
from __future__ import annotations

import math
import random
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from ..core.menu import record_menu
from ..policies.baselines import ConstantPolicy, PlateauPolicy, RandomPolicy, RulesPolicy, SequencePolicy
from ..simulate.simulator import Simulator, final_band
from ..simulate.surrogate import Surrogate, segment_data
from ..traces.index import TreeIndex

#: Roots whose ``seed % 5`` is here form the validation split; the others the test split.
VALIDATION_SEEDS = (0, 1, 2)
SPLITS = ("validation", "test", "all")
#: Regret is a share of the gain of the truly best policy; below this gain (0.5% in val loss) it is not reported.
MIN_GAIN = 0.005
#: Per-task and per-scenario rank agreement below this Spearman rho is flagged.
RHO_FLAG = 0.7
#: ... and so is Kendall tau below this, whatever rho says.
TAU_FLAG = 0.4


def flag(agreement: dict) -> bool:
    """Whether a task's or scenario's rank agreement is too weak to lean on (rho below 0.7 or tau below 0.4)."""
    rho, tau = agreement.get("spearman_rho"), agreement.get("kendall_tau")
    return rho is None or tau is None or rho < RHO_FLAG or tau < TAU_FLAG


def split_of(seed: int) -> str:
    return "validation" if seed % 5 in VALIDATION_SEEDS else "test"


class OnMenu:
    """A policy whose ``set_lr`` proposals are taken as one menu step (``lr_down`` below the current LR,
    ``lr_up`` above), so that every path it takes is recorded in a full tree. The pool's plateau policies are
    torch's ``ReduceLROnPlateau`` seen through it: a cut is one ``lr_down`` at the next decision epoch."""

    def __init__(self, policy, policy_id: str):
        self.policy, self.policy_id, self.version = policy, policy_id, getattr(policy, "version", "1")

    def decide(self, snapshot):
        from ..core.actions import Proposal

        p = self.policy.decide(snapshot)
        if getattr(p, "action", None) == "set_lr" and p.value is not None:
            return Proposal(action="lr_down" if p.value < snapshot.hparams.lr else "lr_up", reason=p.reason)
        return p


def policy_pool() -> list:
    """Replayable policies (every action they take is on the recorded menu), far apart and close together:
    rule and plateau variants one setting apart, sequences that differ in one step or one epoch."""
    menu = sorted(set(record_menu(1) + record_menu(2)) | {"continue"})

    def named(p, name):
        p.policy_id = name
        return p

    pool = [named(ConstantPolicy(), "constant"), named(RulesPolicy(), "rules")]
    pool += [named(RulesPolicy(gap_threshold=g), f"rules-gap{g}") for g in (0.2, 0.35, 0.7, 1.0)]
    pool += [named(RulesPolicy(slow_slope=s), f"rules-slow{s}") for s in (0.003, 0.02, 0.03)]
    pool += [named(RulesPolicy(overfit_action=a), f"rules-{a}") for a in ("weight_decay_up", "dropout_up")]
    pool += [OnMenu(PlateauPolicy(patience=p), f"plateau-p{p}") for p in (0, 1, 2, 3)]
    pool += [named(RandomPolicy(seed=s, p_continue=0.5, actions=menu), f"random-s{s}") for s in range(4)]
    seqs = [["lr_down"], ["lr_down"] * 2, ["lr_down"] * 3, ["continue", "lr_down"], ["continue", "lr_down", "lr_down"],
            ["lr_down", "continue", "lr_down"], ["continue", "continue", "lr_down"], ["lr_up"], ["lr_up", "lr_down"],
            ["continue", "lr_up"], ["weight_decay_up"], ["weight_decay_up"] * 2, ["continue", "weight_decay_up"],
            ["dropout_up"], ["continue", "dropout_up"], ["continue", "continue", "stop"], ["continue", "stop"],
            ["lr_down", "continue", "stop"], ["aux_weight_up"], ["lr_down", "weight_decay_up"],
            ["weight_decay_up", "lr_down"], ["lr_down", "dropout_up"]]
    pool += [named(SequencePolicy(s), "seq-" + "-".join(s)) for s in seqs]
    return pool


def _scores(sim: Simulator, pool: list, roots: list[str]):
    """{policy: {root: log(final / constant final)}}, the roots where some policy left the recorded tree, and
    {policy: {root: rollout}}."""
    finals, off, outs_by = {}, set(), {}
    for p in pool:
        outs = sim.rollout(p, roots)
        finals[p.policy_id] = {o.root: o.final_val_loss for o in outs}
        outs_by[p.policy_id] = {o.root: o for o in outs}
        off |= {o.root for o in outs if o.truncated}
    base = finals["constant"]
    scores = {pid: {r: math.log(v[r] / base[r]) for r in roots} for pid, v in finals.items()}
    return scores, off, outs_by


def _mean_scores(scores: dict[str, dict[str, float]], roots: list[str]) -> dict[str, float]:
    return {pid: float(np.mean([s[r] for r in roots])) for pid, s in scores.items()}


def _tau(sim: dict[str, float], true: dict[str, float], ids: list[str]) -> float | None:
    from scipy.stats import kendalltau

    if len(ids) < 3:
        return None
    t = kendalltau([sim[i] for i in ids], [true[i] for i in ids]).statistic
    return None if t is None or not math.isfinite(t) else float(t)


def ranking_agreement(sim_scores: dict[str, float], true_scores: dict[str, float]) -> dict:
    """How a simulated policy ranking agrees with the true one (lower score = better): Kendall tau over all
    policies, over the competitive ones (true score < 0, i.e. better than ``constant``) and over the true top 5;
    Spearman rho; regret@1 and @3 (the true score of the best of the simulator's top 1 / 3, minus the true best, as a
    share of the do-nothing-to-best gap)."""
    from scipy.stats import spearmanr

    ids = sorted(true_scores)
    a = np.array([sim_scores[i] for i in ids])
    b = np.array([true_scores[i] for i in ids])
    rho = spearmanr(a, b).statistic
    order = [ids[i] for i in np.argsort(a, kind="stable")]
    best = float(b.min())
    gap = -best  # constant scores 0: the do-nothing-to-best gap

    def regret(n):
        if gap < MIN_GAIN:  # nothing truly beats doing nothing by a visible margin: no regret to measure
            return None
        return max(min(true_scores[i] for i in order[:n]) - best, 0.0) / gap

    comp = [i for i in ids if true_scores[i] < 0]
    top5 = sorted(ids, key=lambda i: true_scores[i])[:5]
    return {"kendall_tau": _tau(sim_scores, true_scores, ids), "kendall_tau_competitive": _tau(sim_scores, true_scores, comp),
            "kendall_tau_top5": _tau(sim_scores, true_scores, top5),
            "spearman_rho": None if not math.isfinite(rho) else float(rho),
            "regret_at_1": regret(1), "regret_at_3": regret(3),
            "competitive_policies": len(comp), "sim_top": order[0], "true_top": ids[int(np.argmin(b))]}


@dataclass
class FidelityConfig:
    n_estimators: int = 60
    branch_sequences: int = 24
    seed: int = 0
    split: str = "validation"
    surrogate_seeds: tuple[int, ...] = (0, 1, 2)
    model: str = "forest"
    band_groups: str = "task"
    protocols: tuple[str, ...] = ("task", "seed")  # leave one task out; held-out seeds
    extra: dict = field(default_factory=dict)  # further Surrogate settings (experiments)

    def surrogate(self, seed: int) -> Surrogate:
        return Surrogate(n_estimators=self.n_estimators, seed=seed, model=self.model, band_groups=self.band_groups,
                         **self.extra)


def _fit(index: TreeIndex, keep, cfg: FidelityConfig, seed: int | None = None) -> Surrogate:
    return cfg.surrogate(cfg.surrogate_seeds[0] if seed is None else seed).fit(segment_data(index, keep))


def _branch_errors(index: TreeIndex, sur, roots: list[str], cfg: FidelityConfig) -> list[dict]:
    """For sampled recorded action sequences from ``roots``: the predicted and recorded final val loss, the band,
    whether each side diverged, and the predicted divergence probability."""
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
            if rid is None or o.stopped_at is not None:
                continue
            out.append({"pred": o.final_val_loss, "true": index.final_val_loss(rid), "band": final_band(o),
                        "pred_div": bool(o.diverged), "true_div": index.meta[rid]["status"] == "diverged",
                        "p_div": float(o.p_diverged)})
    return out


def branch_summary(branch: list[dict]) -> dict:
    """Errors and coverage of branch predictions. ``coverage_80`` counts a divergence the surrogate missed or
    invented as not covered (both diverged: covered); ``coverage_80_finite`` is over branches neither side
    diverged."""
    if not branch:
        return {"branches": 0, "final_val_loss_rel_error": None, "coverage_80": None, "coverage_80_finite": None,
                "missed_divergences": 0, "false_divergences": 0, "divergence_brier": None}
    finite = [b for b in branch if not b["pred_div"] and not b["true_div"]]
    covered = []
    for b in branch:
        if b["pred_div"] or b["true_div"]:
            covered.append(b["pred_div"] and b["true_div"])
        elif b["band"] is not None:
            covered.append(b["band"][0] <= b["true"] <= b["band"][1])
    fin_cov = [b["band"][0] <= b["true"] <= b["band"][1] for b in finite if b["band"] is not None]
    return {"branches": len(branch),
            "final_val_loss_rel_error": float(np.mean([abs(b["pred"] - b["true"]) / b["true"] for b in finite])) if finite else None,
            "final_val_loss_mae": float(np.mean([abs(b["pred"] - b["true"]) for b in finite])) if finite else None,
            "coverage_80": float(np.mean(covered)) if covered else None,
            "coverage_80_finite": float(np.mean(fin_cov)) if fin_cov else None,
            "missed_divergences": sum(b["true_div"] and not b["pred_div"] for b in branch),
            "false_divergences": sum(b["pred_div"] and not b["true_div"] for b in branch),
            "recorded_divergences": sum(b["true_div"] for b in branch),
            "divergence_brier": float(np.mean([(b["p_div"] - b["true_div"]) ** 2 for b in branch]))}


def _mean_sd(vals: list) -> tuple[float | None, float | None]:
    v = [x for x in vals if x is not None]
    if not v:
        return None, None
    return float(np.mean(v)), float(np.std(v))


def _truth(index: TreeIndex, pool: list, progress):
    truth_sim = Simulator(index, None, on_off_tree="truncate")
    all_roots = truth_sim.roots()
    true_scores, off, _ = _scores(truth_sim, pool, all_roots)
    roots = [r for r in all_roots if r not in off]
    if not roots:
        raise ValueError(f"no root's recorded tree holds every path of the {len(pool)} pool policies "
                         f"({len(all_roots)} roots checked): fidelity needs full trees (`tmsim record` without --budget, "
                         "depth covering every decision epoch)")
    progress(f"truth: {len(pool)} policies replayed exactly on {len(roots)} of {len(all_roots)} roots "
             f"({len(off)} skipped: a pool policy leaves their recorded tree)")
    return true_scores, roots, off


def noise_ceiling(index: TreeIndex, true_scores: dict, roots: list[str]) -> float | None:
    """Mean Kendall tau between the true rankings of different replicates of the same trees."""
    by_rep: dict[int, dict[tuple, str]] = {}
    for r in roots:
        m = index.meta[r]
        by_rep.setdefault(m["replicate"] or 0, {})[m["group"]] = r
    reps = sorted(by_rep)
    taus = []
    for i in range(len(reps)):
        for j in range(i + 1, len(reps)):
            common = sorted(set(by_rep[reps[i]]) & set(by_rep[reps[j]]))
            if len(common) < 2:
                continue
            a = _mean_scores(true_scores, [by_rep[reps[i]][g] for g in common])
            b = _mean_scores(true_scores, [by_rep[reps[j]][g] for g in common])
            taus.append(_tau(a, b, sorted(a)))
    taus = [t for t in taus if t is not None]
    return float(np.mean(taus)) if taus else None


def _groups(index: TreeIndex, roots: list[str], key) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for r in roots:
        out.setdefault(key(index.meta[r]), []).append(r)
    return out


def _by_task_and_scenario(index: TreeIndex, roots: list[str]) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """The roots of each task, and of each ``task/scenario``."""
    return (_groups(index, roots, lambda m: m["task"]),
            _groups(index, roots, lambda m: f"{m['task']}/{m['scenario']}"))


def _per_group(index: TreeIndex, sims: list[dict[str, dict[str, float]]], true_scores: dict,
               groups: dict[str, list[str]]) -> dict:
    """Each group's rank agreement within its own roots, as the mean over ``sims`` (one simulated
    ``{policy: {root: score}}`` per surrogate seed), with its root count, flag, and the group's own noise ceiling
    (a task whose policies barely differ ranks near chance even between replicates of its own trees)."""
    out = {}
    for name, rs in groups.items():
        true_m = _mean_scores(true_scores, rs)
        agreements = [ranking_agreement(_mean_scores(sim, rs), true_m) for sim in sims]
        v = {key: _mean_sd([a[key] for a in agreements])[0]
             for key in ("kendall_tau", "kendall_tau_competitive", "spearman_rho", "regret_at_1")}
        out[name] = {**v, "roots": len(rs), "flag": flag(v), "noise_ceiling_tau": noise_ceiling(index, true_scores, rs)}
    return out


def _flagged(per_task: dict, per_scenario: dict) -> list[str]:
    return sorted(k for k, v in {**per_task, **per_scenario}.items() if v["flag"])


def measure(index: TreeIndex, cfg: FidelityConfig | None = None, progress=print) -> dict:
    """The fidelity protocol on the library behind ``index``, on ``cfg.split``; returns the report dict
    (keys in docs/simulator.md)."""
    cfg = cfg or FidelityConfig()
    if cfg.split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {cfg.split!r}")
    t0 = time.perf_counter()
    pool = policy_pool()
    true_scores, usable, off = _truth(index, pool, progress)
    roots = [r for r in usable if cfg.split == "all" or split_of(index.meta[r]["seed"]) == cfg.split]
    if not roots:
        raise ValueError(f"no usable root in the {cfg.split} split")
    true_m = _mean_scores(true_scores, roots)
    report: dict = {"split": cfg.split, "validation_seeds": list(VALIDATION_SEEDS), "model": cfg.model,
                    "band_groups": cfg.band_groups, "surrogate_seeds": list(cfg.surrogate_seeds),
                    "policies": len(pool), "roots": len(roots), "roots_usable": len(usable), "roots_skipped": len(off),
                    "noise_ceiling_tau": noise_ceiling(index, true_scores, roots)}

    # leave one task out: the headline
    by_task, by_scen = _by_task_and_scenario(index, roots)
    tasks = sorted(by_task)
    if "task" in cfg.protocols and len(set(index.meta[r]["task"] for r in index.roots)) >= 2:
        sims, branch_by_task = [], {}
        for sseed in cfg.surrogate_seeds:
            sim: dict[str, dict[str, float]] = {p.policy_id: {} for p in pool}
            for t in tasks:
                sur = _fit(index, lambda m, t=t: m["task"] != t, cfg, sseed)
                s, _, _ = _scores(Simulator(index, sur, replay=False), pool, by_task[t])
                for pid in s:
                    sim[pid].update(s[pid])
                if sseed == cfg.surrogate_seeds[0]:
                    branch_by_task[t] = _branch_errors(index, sur, by_task[t], cfg)
                progress(f"leave-one-task-out: {t} (surrogate seed {sseed}) done")
            sims.append(sim)
        per_seed = [ranking_agreement(_mean_scores(sim, roots), true_m) for sim in sims]
        for key in ("kendall_tau", "kendall_tau_competitive", "kendall_tau_top5", "spearman_rho", "regret_at_1", "regret_at_3"):
            mean, sd = _mean_sd([a[key] for a in per_seed])
            report[f"{key}_task"], report[f"{key}_task_sd"] = mean, sd
        report["kendall_tau_task_seeds"] = [a["kendall_tau"] for a in per_seed]
        report["competitive_policies"] = per_seed[0]["competitive_policies"]
        bs = branch_summary([b for bt in branch_by_task.values() for b in bt])
        report.update({f"{k}_task" if k != "branches" else "branches_task": v for k, v in bs.items()})
        report["per_task"] = _per_group(index, sims, true_scores, by_task)
        for t, b in branch_by_task.items():  # the held-out task's own share of the branch figures
            bt = branch_summary(b)
            report["per_task"][t].update({k: bt[k] for k in ("branches", "coverage_80", "coverage_80_finite",
                                                             "missed_divergences", "recorded_divergences")})
        report["per_scenario"] = _per_group(index, sims, true_scores, by_scen)
        report["kendall_tau_per_task"] = {t: v["kendall_tau"] for t, v in report["per_task"].items()}
        report["flagged"] = _flagged(report["per_task"], report["per_scenario"])
        report["sim_top_task"], report["true_top"] = per_seed[0]["sim_top"], per_seed[0]["true_top"]
        report["sim_scores_task"] = _mean_scores(sims[0], roots)
    else:
        report["kendall_tau_task"] = None
    if "seed" in cfg.protocols:
        report.update(_held_out_seeds(index, cfg, pool, roots, true_m, progress))
    report["seconds"] = round(time.perf_counter() - t0, 1)
    report["true_scores"] = true_m
    return report


def _held_out_seeds(index: TreeIndex, cfg: FidelityConfig, pool: list, roots: list[str], true_m: dict, progress) -> dict:
    """The held-out-seeds protocol's figures (see ``measure``)."""
    seed_of = {r: index.meta[r]["seed"] for r in roots}
    if cfg.split == "test":
        folds = [(roots, lambda m: split_of(m["seed"]) == "validation")]
    else:
        pool_seeds = sorted({s for s in seed_of.values()})
        folds = [([r for r in roots if seed_of[r] == s], lambda m, s=s: m["seed"] != s and
                  (cfg.split == "all" or split_of(m["seed"]) == cfg.split)) for s in pool_seeds]
    sim_seed: dict[str, dict[str, float]] = {p.policy_id: {} for p in pool}
    branch = []
    for held, keep in folds:
        if not held:
            continue
        sur = _fit(index, keep, cfg)
        s, _, _ = _scores(Simulator(index, sur, replay=False), pool, held)
        for pid in s:
            sim_seed[pid].update(s[pid])
        branch += _branch_errors(index, sur, held, cfg)
        progress(f"held-out seeds: fold done ({len(held)} roots, surrogate on {sur.info['rows']} rows)")
    agree = ranking_agreement(_mean_scores(sim_seed, roots), true_m)
    return {**{f"{k}_seed": v for k, v in agree.items() if k not in ("competitive_policies", "true_top", "sim_top")},
            "sim_top_seed": agree["sim_top"], **branch_summary(branch), "sim_scores_seed": _mean_scores(sim_seed, roots)}


def measure_branches(index: TreeIndex, cfg: FidelityConfig | None = None, progress=print) -> dict:
    """Branch-level fidelity on held-out seeds, for libraries whose trees are sampled (budgeted), where the policy
    pool's paths are not all recorded: each seed is held out in turn, the surrogate is fitted on the others, and with
    the held-out trees hidden it predicts (a) every recorded action sequence of those trees (errors, 80% band
    coverage counting missed divergences) and (b) the choice at the first decision: over the actions recorded there
    and doing nothing, Kendall tau between predicted and recorded final losses (mean over roots) and regret@1, the
    share of the best recorded action's gain over doing nothing lost by taking the predicted best (mean over roots
    where some action gains 0.5%)."""
    from scipy.stats import kendalltau

    cfg = cfg or FidelityConfig()
    t0 = time.perf_counter()
    roots = list(index.roots)
    seeds = sorted({index.meta[r]["seed"] for r in roots})
    if len(seeds) < 2:
        raise ValueError("branch fidelity holds seeds out: the library needs at least two seeds")
    branch, taus, regrets = [], [], []
    for s in seeds:
        held = [r for r in roots if index.meta[r]["seed"] == s]
        sur = _fit(index, lambda m, s=s: m["seed"] != s, cfg)
        hidden = Simulator(index, sur, replay=False)
        branch += _branch_errors(index, sur, held, cfg)
        first = sorted({index.sequence(c) for r in held for c in index.descendants(r) if len(index.sequence(c)) == 1})
        pred: dict[str, dict[tuple, float]] = defaultdict(dict)
        true: dict[str, dict[tuple, float]] = defaultdict(dict)
        for seq in [()] + first:
            for o in hidden.rollout(SequencePolicy(list(seq) or ["continue"]), held):
                rid = index.lookup(o.root, seq) if seq else o.root
                if rid is None:
                    continue
                pred[o.root][seq] = o.final_val_loss
                true[o.root][seq] = index.final_val_loss(rid)
        for r in held:
            keys = [k for k in true[r] if k in pred[r]]
            if len(keys) < 3 or () not in true[r]:
                continue
            t = kendalltau([pred[r][k] for k in keys], [true[r][k] for k in keys]).statistic
            if t is not None and math.isfinite(t):
                taus.append(float(t))
            best = min(keys, key=lambda k: true[r][k])
            gain = true[r][()] - true[r][best]
            if gain > 0.005 * true[r][()]:
                pick = min(keys, key=lambda k: pred[r][k])
                regrets.append((true[r][pick] - true[r][best]) / gain)
        progress(f"branch fidelity: seed {s} held out ({len(held)} roots)")
    return {"protocol": "held-out seeds, branches", "seeds": seeds, "roots": len(roots),
            "tasks": sorted({index.meta[r]["task"] for r in roots}), **branch_summary(branch),
            "first_decision_tau": float(np.mean(taus)) if taus else None, "first_decision_roots": len(taus),
            "first_decision_regret_at_1": float(np.mean(regrets)) if regrets else None,
            "first_decision_regret_roots": len(regrets), "seconds": round(time.perf_counter() - t0, 1)}


def format_branches(r: dict) -> str:
    return (f"branch fidelity on held-out seeds ({r['roots']} roots of {', '.join(r['tasks'])}; seeds {r['seeds']}, "
            f"each held out in turn):\n"
            f"  recorded action sequences predicted: {r['branches']}, relative error of final val loss "
            f"{_f(r['final_val_loss_rel_error'])}, 80% band coverage {_f(r['coverage_80'])} (missed divergences "
            f"{r['missed_divergences']} of {r.get('recorded_divergences', 0)}, invented {r['false_divergences']})\n"
            f"  the first decision: Kendall tau between predicted and recorded finals over its actions "
            f"{_f(r['first_decision_tau'])} (mean over {r['first_decision_roots']} roots), regret@1 "
            f"{_f(r['first_decision_regret_at_1'])} (over {r['first_decision_regret_roots']} roots where an action gains)")


def measure_transfer(index: TreeIndex, surrogate, cfg: FidelityConfig | None = None, progress=print) -> dict:
    """Zero-shot fidelity: a surrogate fitted elsewhere (another library, other tasks) predicts every policy of the
    pool on this library with its trees hidden; the trees, replayed exactly, are the truth (all roots: no split, the
    surrogate was fitted elsewhere). Reports the ranking agreement (tau over all, competitive and top-5 policies,
    regret@1 and @3), per task and scenario, the branch errors and band coverage, and the tasks the surrogate never
    saw."""
    cfg = cfg or FidelityConfig()
    t0 = time.perf_counter()
    pool = policy_pool()
    true_scores, roots, off = _truth(index, pool, progress)
    sim_scores, _, _ = _scores(Simulator(index, surrogate, replay=False), pool, roots)
    true_m, sim_m = _mean_scores(true_scores, roots), _mean_scores(sim_scores, roots)
    agree = ranking_agreement(sim_m, true_m)
    branch = _branch_errors(index, surrogate, roots, cfg)
    by_task, by_scen = _by_task_and_scenario(index, roots)
    tasks = sorted(by_task)
    per_task = _per_group(index, [sim_scores], true_scores, by_task)
    per_scenario = _per_group(index, [sim_scores], true_scores, by_scen)
    out = {"policies": len(pool), "roots": len(roots), "roots_skipped": len(off), "tasks": tasks,
           "unseen_tasks": surrogate.unseen_tasks(tasks), "surrogate_tasks": surrogate.info.get("tasks"),
           **{k: v for k, v in agree.items()}, **branch_summary(branch),
           "per_task": per_task, "per_scenario": per_scenario, "flagged": _flagged(per_task, per_scenario),
           "noise_ceiling_tau": noise_ceiling(index, true_scores, roots),
           "true_scores": true_m, "sim_scores": sim_m, "seconds": round(time.perf_counter() - t0, 1)}
    return out


def _f(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


#: The targets of the leave-one-task-out protocol (docs/simulator.md).
TARGETS = {"kendall_tau_task": (">=", 0.7), "kendall_tau_competitive_task": (">=", 0.5),
           "regret_at_1_task": ("<=", 0.10), "coverage_80_task": ("in", (0.75, 0.85)),
           "kendall_tau_seed": (">=", 0.8), "regret_at_1_seed": ("<=", 0.05)}


def meets(key: str, v) -> bool | None:
    """Whether figure ``key`` meets its target (None: no target, or no figure)."""
    if v is None or key not in TARGETS:
        return None
    op, t = TARGETS[key]
    return v >= t if op == ">=" else v <= t if op == "<=" else t[0] <= v <= t[1]


def _target_text(key: str) -> str:
    if key not in TARGETS:
        return ""
    op, t = TARGETS[key]
    return f"{t[0]} - {t[1]}" if op == "in" else f"{op} {t}"


def _per_lines(r: dict) -> list[str]:
    lines = []
    for title, key in (("per task", "per_task"), ("per scenario", "per_scenario")):
        if r.get(key):
            lines.append(f"{title} (FLAG: Spearman rho below {RHO_FLAG} or Kendall tau below {TAU_FLAG}):")
            for name, v in r[key].items():
                flag = "  FLAG" if v["flag"] else ""
                cov = f"  coverage {_f(v['coverage_80']):>7}" if "coverage_80" in v else ""
                lines.append(f"  {name:<28} rho {_f(v['spearman_rho']):>7}  tau {_f(v['kendall_tau']):>7}  "
                             f"regret@1 {_f(v['regret_at_1']):>7}  noise ceiling {_f(v.get('noise_ceiling_tau')):>7}"
                             f"{cov}  ({v['roots']} roots){flag}")
    return lines


def format_transfer(r: dict) -> str:
    """The terminal form of a ``measure_transfer`` report."""
    rows = [("Kendall tau, all policies", "kendall_tau"),
            (f"Kendall tau, {r['competitive_policies']} competitive policies", "kendall_tau_competitive"),
            ("Kendall tau, true top 5", "kendall_tau_top5"), ("regret@1", "regret_at_1"), ("regret@3", "regret_at_3"),
            ("80% band coverage (missed divergences count)", "coverage_80"),
            ("final val loss relative error", "final_val_loss_rel_error")]
    lines = [f"zero-shot fidelity on {r['roots']} roots ({r['roots_skipped']} skipped) of tasks {', '.join(r['tasks'])}, "
             f"{r['policies']} policies, surrogate fitted elsewhere, trees hidden"]
    lines += [f"{label:<48}{_f(r.get(key)):>8}" for label, key in rows]
    lines.append(f"{'noise ceiling (tau between replicates)':<48}{_f(r.get('noise_ceiling_tau')):>8}")
    lines.append(f"divergences: {r.get('recorded_divergences', 0)} recorded, {r.get('missed_divergences', 0)} missed, "
                 f"{r.get('false_divergences', 0)} predicted but not recorded")
    lines += _per_lines(r)
    lines.append(f"simulator's top policy: {r['sim_top']}; truly best: {r['true_top']}   ({r['seconds']} s)")
    if r["unseen_tasks"]:
        lines.append(f"WARNING: the surrogate never saw task(s) {', '.join(r['unseen_tasks'])}: these figures are zero-shot")
    return "\n".join(lines)


def format_report(r: dict) -> str:
    """The terminal form of a ``measure`` report."""
    def row(label, key, sd_key=None):
        v = r.get(key)
        ok = meets(key, v)
        verdict = "" if ok is None else ("meets target" if ok else "MISSES target")
        sd = f" +- {r[sd_key]:.3f}" if sd_key and r.get(sd_key) is not None else ""
        return f"{label:<44}{_f(v):>8}{sd:<10} {_target_text(key):<12}{verdict}"

    n_seeds = len(r.get("surrogate_seeds", []))
    lines = [f"fidelity, {r['split']} split (seeds % 5 in {tuple(r['validation_seeds'])} are validation): "
             f"{r['roots']} roots ({r['roots_skipped']} of the library skipped), {r['policies']} policies, "
             f"surrogate model {r['model']}", ""]
    if r.get("kendall_tau_task") is not None:
        lines += [f"leave one task out (mean +- sd over {n_seeds} surrogate seeds):",
                  row("  Kendall tau, all policies", "kendall_tau_task", "kendall_tau_task_sd"),
                  row(f"  Kendall tau, {r.get('competitive_policies')} competitive policies", "kendall_tau_competitive_task",
                      "kendall_tau_competitive_task_sd"),
                  row("  Kendall tau, true top 5", "kendall_tau_top5_task", "kendall_tau_top5_task_sd"),
                  row("  Spearman rho", "spearman_rho_task", "spearman_rho_task_sd"),
                  row("  regret@1", "regret_at_1_task", "regret_at_1_task_sd"),
                  row("  regret@3", "regret_at_3_task", "regret_at_3_task_sd"),
                  row("  80% band coverage", "coverage_80_task"),
                  row("  final val loss relative error", "final_val_loss_rel_error_task"),
                  f"  divergences: {r.get('recorded_divergences_task', 0)} recorded, {r.get('missed_divergences_task', 0)} "
                  f"missed, {r.get('false_divergences_task', 0)} predicted but not recorded"]
    if r.get("kendall_tau_seed") is not None:
        lines += ["held-out seeds:",
                  row("  Kendall tau, all policies", "kendall_tau_seed"),
                  row("  Kendall tau, competitive policies", "kendall_tau_competitive_seed"),
                  row("  regret@1", "regret_at_1_seed"),
                  row("  80% band coverage", "coverage_80"),
                  row("  final val loss relative error", "final_val_loss_rel_error")]
    lines.append(f"{'noise ceiling (tau between replicates)':<44}{_f(r.get('noise_ceiling_tau')):>8}")
    lines += _per_lines(r)
    if r.get("sim_top_task"):
        lines.append(f"simulator's top policy (leave one task out): {r['sim_top_task']}; truly best: {r['true_top']}")
    lines.append(f"({r['seconds']} s)")
    return "\n".join(lines)


def format_comparison(reports: dict[str, dict]) -> str:
    """A table of model classes measured by the same protocol (``tmsim fidelity --model a,b,...``)."""
    cols = [("tau", "kendall_tau_task"), ("tau comp.", "kendall_tau_competitive_task"), ("tau top5", "kendall_tau_top5_task"),
            ("regret@1", "regret_at_1_task"), ("regret@3", "regret_at_3_task"), ("cover 80%", "coverage_80_task"),
            ("rel.err", "final_val_loss_rel_error_task"), ("tau seeds", "kendall_tau_seed")]
    any_r = next(iter(reports.values()))
    lines = [f"surrogate model classes, {any_r['split']} split, leave one task out over "
             f"{len(any_r['surrogate_seeds'])} surrogate seed(s) ({any_r['roots']} roots, {any_r['policies']} policies)",
             f"{'model':<10}" + "".join(f"{c:>11}" for c, _ in cols) + f"{'seconds':>9}"]
    for m, r in reports.items():
        lines.append(f"{m:<10}" + "".join(f"{_f(r.get(k)):>11}" for _, k in cols) + f"{r['seconds']:>9.0f}")
    return "\n".join(lines)
