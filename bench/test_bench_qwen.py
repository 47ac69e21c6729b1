"""Decisions per second of the Qwen policy on the offline model (qwen3-tiny-scratch, NOT Qwen3-0.6B).

Run with `pytest bench --benchmark-only`. Compares candidate scoring one decision at a time (the prompt's KV cache
shared by the candidates) with scoring a batch of decisions, and both with constrained generation.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from tmsim.policies.check import decision_points
from tmsim.policies.llm.policy import QwenPolicy
from tmsim.traces import load_library

REPO = Path(__file__).resolve().parent.parent
N = 48


@pytest.fixture(scope="module")
def snaps():
    all_ = decision_points(load_library(REPO / "traces"))
    return all_[:: max(1, len(all_) // N)][:N]


@pytest.mark.parametrize("method, batched", [("score", False), ("score", True), ("generate", False), ("generate", True)])
def test_qwen_decisions_per_second(benchmark, snaps, method, batched):
    pol = QwenPolicy(str(REPO / "models" / "qwen3-tiny-scratch"), method=method, batch_size=16)
    run = (lambda: pol.decide_batch(snaps)) if batched else (lambda: [pol.decide(s) for s in snaps])
    out = benchmark.pedantic(run, rounds=3, iterations=1)
    assert len(out) == len(snaps)
    benchmark.extra_info["decisions_per_s"] = round(len(snaps) / benchmark.stats.stats.mean, 1)
    benchmark.extra_info["model"] = "qwen3-tiny-scratch (offline, random init; not Qwen3-0.6B)"
