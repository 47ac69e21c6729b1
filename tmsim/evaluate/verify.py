"""``tmsim verify``: is this library's truth reproducible on this machine? A statistical check, not equal bytes.

Training near the edge of stability is chaotic: the same seed on another CPU gives another draw of the same run.
So reproducibility is checked the way the library defines its truth, as a distribution. For a sample of roots
(spread over the tasks), the first decision of the tree is re-recorded on this machine with *fresh* replicates
(other post-fork noise than the library's), and each single action's effect is compared with the library's:

- the effect of action ``a`` in a replicate is ``log(final(a) / final(do nothing))`` (the two share their noise, so
  the difference is the action's), a diverged run scoring the divergence penalty;
- for each (root, action) pair the statistic is ``z = (mean(new) - mean(library)) / (pooled std + 0.01)``, and the
  library passes when ``T = sum z**2`` over the pairs is not extreme under the permutation distribution that swaps
  replicates between the library and the re-recording within each pair (the null: replicates are exchangeable,
  i.e. the library's effects are draws from what this machine records).
- The false-alarm rate is the chosen ``alpha`` (default 1%) by construction: under the null the permutation p-value
  is uniform. Also reported: the share of pairs whose re-recorded mean effect lies inside the library's replicate
  range (descriptive).

The check needs a library recorded with replicates (two or more per tree).
"""
from __future__ import annotations

import math
import random
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..traces.format import load_library
from ..traces.index import TreeIndex


def _effects(index: TreeIndex, roots: list[str]) -> dict[str, list[float]]:
    """{action: [effect per replicate]} at the first decision of ``roots`` (replicates of one tree)."""
    out: dict[str, list[float]] = defaultdict(list)
    for root in roots:
        kids = index.children.get(root, {})
        if not kids:
            continue
        first = min(e for e, _ in kids)
        base = index.final_val_loss(root)
        for (e, action), child in kids.items():
            if e == first and action != "stop":
                out[action].append(math.log(index.final_val_loss(child) / base))
    return out


def _groups(index: TreeIndex) -> dict[tuple, list[str]]:
    groups: dict[tuple, list[str]] = defaultdict(list)
    for r in index.roots:
        groups[index.meta[r]["group"]].append(r)
    return groups


def choose_roots(index: TreeIndex, sample: int, seed: int = 0, tasks: list[str] | None = None) -> list[tuple]:
    """``sample`` roots (task, scenario, seed), spread over the tasks in turn, drawn with a seeded generator."""
    by_task: dict[str, list[tuple]] = defaultdict(list)
    for g in sorted(_groups(index)):
        if tasks is None or g[0] in tasks:
            by_task[g[0]].append(g)
    rng = random.Random(seed)
    for v in by_task.values():
        rng.shuffle(v)
    chosen, order = [], sorted(by_task)
    while len(chosen) < sample and any(by_task.values()):
        for t in order:
            if by_task[t] and len(chosen) < sample:
                chosen.append(by_task[t].pop())
    return chosen


def permutation_test(pairs: list[tuple[np.ndarray, np.ndarray]], n_perm: int = 4000, seed: int = 0) -> tuple[float, float]:
    """(T, p-value) of ``T = sum z**2`` (see the module docs) under within-pair permutations of the replicates."""
    rng = np.random.default_rng(seed)

    def stat(lib_new: list[tuple[np.ndarray, np.ndarray]]) -> float:
        t = 0.0
        for a, b in lib_new:
            pooled = np.concatenate([a, b])
            z = (b.mean() - a.mean()) / (pooled.std() + 0.01)
            t += z * z
        return t

    t_obs = stat(pairs)
    hits = 0
    for _ in range(n_perm):
        perm = []
        for a, b in pairs:
            pooled = rng.permutation(np.concatenate([a, b]))
            perm.append((pooled[: len(a)], pooled[len(a):]))
        hits += stat(perm) >= t_obs - 1e-12
    return float(t_obs), (hits + 1) / (n_perm + 1)


def verify(traces: str | Path, sample: int = 6, seed: int = 0, alpha: float = 0.01, workers: int = 2,
           tasks: list[str] | None = None, progress=None) -> dict:
    """Re-record ``sample`` roots' first decision with fresh replicates and test them against the library (see the
    module docs). Returns the report; ``report["passed"]`` is the verdict."""
    from ..record import TreeSpec, record

    t0 = time.perf_counter()
    index = TreeIndex(load_library(traces))
    groups = _groups(index)
    reps = {g: len(v) for g, v in groups.items()}
    if not groups or max(reps.values()) < 2:
        raise ValueError(f"{traces}: tmsim verify needs a library recorded with replicates (--replicates 2 or more); "
                         "this one has one replicate per tree")
    chosen = choose_roots(index, sample, seed, tasks)
    if not chosen:
        raise ValueError(f"{traces}: no root to verify" + (f" for tasks {tasks}" if tasks else ""))
    specs = []
    for g in chosen:
        m = index.meta[groups[g][0]]
        specs.append(TreeSpec(g[0], g[1], g[2], depth=1, decide_every=m["decide_every"], replicates=reps[g],
                              first_replicate=reps[g]))
    with tempfile.TemporaryDirectory(prefix="tmsim-verify-") as tmp:
        if progress:
            progress(f"re-recording the first decision of {len(specs)} root(s) with fresh replicates")
        record(specs, tmp, workers=workers, show_progress=False)
        fresh = TreeIndex(load_library(tmp))
        fresh_groups = _groups(fresh)
        pairs, rows = [], []
        for g in chosen:
            lib_eff = _effects(index, groups[g])
            new_eff = _effects(fresh, fresh_groups.get(g, []))
            for action in sorted(set(lib_eff) & set(new_eff)):
                a, b = np.array(lib_eff[action]), np.array(new_eff[action])
                if len(a) >= 2 and len(b) >= 2:
                    pairs.append((a, b))
                    rows.append({"task": g[0], "scenario": g[1], "seed": g[2], "action": action,
                                 "library_mean": float(a.mean()), "library_min": float(a.min()),
                                 "library_max": float(a.max()), "new_mean": float(b.mean()),
                                 "inside": bool(a.min() <= b.mean() <= a.max())})
    if not pairs:
        raise ValueError(f"{traces}: the sampled roots hold no single-action branches to compare")
    t_obs, p = permutation_test(pairs, seed=seed)
    return {"roots": [list(g) for g in chosen], "pairs": len(pairs), "statistic": t_obs, "p_value": p, "alpha": alpha,
            "passed": bool(p >= alpha), "inside_share": float(np.mean([r["inside"] for r in rows])), "effects": rows,
            "test": "permutation test of sum z^2 over (root, action) pairs, replicates exchangeable under the null",
            "seconds": round(time.perf_counter() - t0, 1)}


def format_report(r: dict) -> str:
    lines = [f"{'task':<14}{'scenario':<11}{'seed':>5}  {'action':<18}{'library effect (range)':>30}{'re-recorded':>13}",
             "-" * 91]
    for e in r["effects"]:
        lib = f"{e['library_mean']:+.3f} [{e['library_min']:+.3f}, {e['library_max']:+.3f}]"
        lines.append(f"{e['task']:<14}{e['scenario']:<11}{e['seed']:>5}  {e['action']:<18}{lib:>30}"
                     f"{e['new_mean']:>+13.3f}{'' if e['inside'] else '  outside'}")
    verdict = "PASSED" if r["passed"] else "FAILED"
    lines += ["", f"{r['pairs']} (root, action) pairs; effect = log(final / do-nothing final) at the first decision, "
              f"mean over replicates; {r['inside_share']:.0%} of re-recorded means inside the library's range",
              f"{r['test']}: T = {r['statistic']:.2f}, p = {r['p_value']:.3f} (false-alarm rate {r['alpha']:.0%} by "
              f"construction) -> {verdict} ({r['seconds']} s)"]
    return "\n".join(lines)
