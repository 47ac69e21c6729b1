"""Direct tests of fidelity (tmsim.evaluate.fidelity) and sim-vs-live fidelity (tmsim.live.fidelity)."""
import math

import pytest

from tmsim.core import RECORD_MENU_MULTILOSS
from tmsim.evaluate.fidelity import FidelityConfig, format_report, measure, policy_pool, ranking_agreement
from tmsim.live.fidelity import final_val_loss, measure_live, run_task_live
from tmsim.policies import ConstantPolicy, SequencePolicy
from tmsim.traces import TreeIndex, load_library


def test_ranking_agreement_on_known_rankings():
    true = {"constant": 0.0, "a": -0.3, "b": -0.1, "c": 0.2}
    same = ranking_agreement(dict(true), true)
    assert same["kendall_tau"] == pytest.approx(1.0) and same["regret_at_1"] == 0.0 and same["sim_top"] == "a"
    flipped = ranking_agreement({k: -v for k, v in true.items()}, true)
    assert flipped["kendall_tau"] == pytest.approx(-1.0) and flipped["sim_top"] == "c"
    # the simulator's top policy is truly worse than doing nothing: regret beyond the whole gap
    assert flipped["regret_at_1"] == pytest.approx((0.2 + 0.3) / 0.3)


def test_policy_pool_is_replayable_and_named_uniquely():
    pool = policy_pool()
    ids = [p.policy_id for p in pool]
    assert len(pool) >= 20 and len(set(ids)) == len(ids) and "constant" in ids
    for p in pool:
        for a in getattr(p, "actions", None) or []:
            assert a == "continue" or a in RECORD_MENU_MULTILOSS


def test_measure_reports_every_figure_on_full_trees(deep_library):
    index = TreeIndex(load_library(deep_library))
    lines = []
    report = measure(index, FidelityConfig(n_estimators=10, branch_sequences=6), progress=lines.append)
    assert report["roots"] == 2 and report["roots_skipped"] == 0 and report["policies"] == len(policy_pool())
    assert set(report["true_scores"]) == {p.policy_id for p in policy_pool()}
    assert report["true_scores"]["constant"] == 0.0 and report["sim_scores_seed"]["constant"] == 0.0
    for key in ("kendall_tau_seed", "spearman_rho_seed"):
        assert -1 <= report[key] <= 1
    assert report["noise_ceiling_tau"] is None  # one replicate: no pair of replicates to compare
    assert report["kendall_tau_task"] is None  # one task: nothing to leave out
    assert 0 <= report["coverage_80"] <= 1 and report["branches"] > 0
    assert any("held-out seeds" in line for line in lines)
    assert "held-out seeds" in format_report(report)


def test_a_live_run_follows_the_policy_and_scores_by_the_shared_rule():
    mgr = run_task_live("digits-mlp", "healthy", 0, SequencePolicy(["lr_down", "continue", "lr_down"]),
                        mode="sync", allow_unpromoted=True)
    assert [h["epoch"] for h in mgr.history] == list(range(21))
    lrs = {h["epoch"]: h["lr"] for h in mgr.history}
    lr0 = lrs[0]  # the seed's draw from the scenario family
    assert lrs[5] == lr0 and lrs[6] == lr0 / 2 and lrs[16] == lr0 / 4
    assert [(r["epoch"], r["action"]) for r in mgr.decision_rows] == [(5, "lr_down"), (10, "continue"), (15, "lr_down")]
    assert final_val_loss(mgr) == mgr.history[-1]["val_loss"] and math.isfinite(final_val_loss(mgr))


def test_sync_live_reruns_match_the_replay_on_the_recording_machine(small_library):
    # The library was recorded by this process on this machine: the same seed gives the same run, so a policy that
    # stays on recorded branches, applied at the fork epoch (sync), reproduces the replay exactly.
    index = TreeIndex(load_library(small_library))
    roots = [r for r in index.roots if index.meta[r]["seed"] == 0]
    policies = [ConstantPolicy(), SequencePolicy(["lr_down"], policy_id="halve")]
    out = measure_live(index, None, policies, roots, mode="sync")
    assert out["pairs"] == len(roots) * 2 and out["exact_matches"] == out["pairs"]
    assert out["sim_scores"] == pytest.approx(out["live_scores"]) and out["live_scores"]["constant"] == 0.0
