"""Simulator benchmarks (pytest-benchmark): run with `pytest bench --benchmark-only`.

Simulated epochs per second for the rules policy over every root of the bundled library, and the ratio to what
recording the same epochs for real cost (the recorded wall time of each replayed epoch; a surrogate epoch is
charged its task's mean recorded epoch time). "cold" builds every snapshot; "warm" is a second policy on the same
simulator, which reuses the snapshots of recorded nodes (policy-independent), as a leaderboard does.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tmsim.policies import RulesPolicy
from tmsim.simulate import Simulator
from tmsim.traces import TreeIndex
from tmsim.simulate import Surrogate, segment_data
from tmsim.traces import load_library

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def setup():
    index = TreeIndex(load_library(REPO / "traces"))
    surrogate = Surrogate(n_estimators=40).fit(segment_data(index))
    return index, surrogate


def _live_seconds(index, rollouts) -> float:
    mean = {}
    for rid, rows in index.own.items():
        t = index.meta[rid]["task"]
        mean.setdefault(t, []).extend(r["wall_time_s"] for r in rows.values() if r["wall_time_s"])
    mean = {t: float(np.mean(v)) for t, v in mean.items()}
    total = 0.0
    for o in rollouts:
        for r in o.epochs:
            if r["epoch"] > 0:
                total += r.get("wall_time_s") or mean[o.task]
    return total


def _record(benchmark, index, rollouts):
    epochs = sum(len(o.epochs) - 1 for o in rollouts)
    sec = benchmark.stats.stats.mean
    live = _live_seconds(index, rollouts)
    benchmark.extra_info.update({
        "rollouts": len(rollouts), "epochs": epochs, "epochs_per_s": round(epochs / sec),
        "replayed_share": round(sum(o.replayed_share * (len(o.epochs) - 1) for o in rollouts) / epochs, 3),
        "live_seconds": round(live, 1), "speedup_vs_live": round(live / sec),
    })


def test_simulate_rules_cold(benchmark, setup):
    index, surrogate = setup
    from tmsim.core.actions import clear_offered_cache

    rollouts = benchmark.pedantic(lambda: Simulator(index, surrogate).rollout(RulesPolicy()), setup=clear_offered_cache,
                                  rounds=5, iterations=1)
    _record(benchmark, index, rollouts)


def test_simulate_rules_warm(benchmark, setup):
    index, surrogate = setup
    sim = Simulator(index, surrogate)
    sim.rollout(RulesPolicy(gap_threshold=0.3))  # another policy first: the recorded nodes' snapshots are built
    rollouts = benchmark.pedantic(lambda: sim.rollout(RulesPolicy()), rounds=10, iterations=1)
    _record(benchmark, index, rollouts)
