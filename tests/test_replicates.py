"""Replicated trees, expected scores, the blind lookup reference and `tmsim verify` (statistical reproducibility)."""
import json

import numpy as np
import pytest

from tmsim.cli import main
from tmsim.evaluate.leaderboard import hier_boot_median
from tmsim.evaluate.verify import permutation_test
from tmsim.policies import LookupPolicy, OraclePolicy
from tmsim.record import TreeSpec, record, specs_from_args
from tmsim.traces import TreeIndex, load_library
from tmsim.traces.index import path_of


@pytest.fixture(scope="module")
def replicated(tmp_path_factory):
    """digits-mlp healthy, seeds 0-3, depth 1, three replicates per tree (recorded here, on this machine)."""
    out = tmp_path_factory.mktemp("replicated")
    record(specs_from_args(["digits-mlp"], ["healthy"], [0, 1, 2, 3], depth=1, decide_every=None, budget=None,
                           replicates=3), out, workers=2, show_progress=False)
    return out


def test_replicates_share_the_prefork_epochs_and_differ_after(replicated):
    index = TreeIndex(load_library(replicated, strict=True))
    roots = [r for r in index.roots if index.meta[r]["seed"] == 0]
    assert sorted(index.meta[r]["replicate"] for r in roots) == [0, 1, 2]
    rows = [index[r] for r in roots]
    assert all(rows[0][e]["val_loss"] == rows[i][e]["val_loss"] for i in (1, 2) for e in range(6))  # before the fork
    assert len({rows[i][20]["val_loss"] for i in range(3)}) == 3  # other post-fork noise: three different runs
    assert {path_of(r) for r in roots} == {"digits-mlp:healthy:s0"}
    assert len(index.by_path["digits-mlp:healthy:s0+e5:lr_down"]) == 3


def test_scenario_families_draw_a_recipe_per_seed(replicated):
    lib = load_library(replicated)
    lrs = {s: lr for s, lr in zip(lib.runs["seed"].to_pylist(), lib.runs["init_lr"].to_pylist())}
    assert len(set(lrs.values())) == 4 and all(0.03 <= v <= 0.08 for v in lrs.values())
    assert set(lib.runs["optimizer"].to_pylist()) == {"sgd"}


def test_the_oracle_acts_alike_in_every_replicate_by_expected_outcome(replicated):
    index = TreeIndex(load_library(replicated))
    oracle = OraclePolicy(index)
    for s in range(4):
        roots = [r for r in index.roots if index.meta[r]["seed"] == s]
        vals = [oracle.values(r, 5) for r in roots]
        assert all(v == vals[0] for v in vals)
        expected = np.mean([index.final_val_loss(r) for r in index.by_path[f"digits-mlp:healthy:s{s}+e5:lr_down"]])
        assert vals[0]["lr_down"] <= expected + 1e-12


def test_hierarchical_bootstrap_widens_with_replicate_noise():
    rng = np.random.default_rng(0)
    roots = rng.normal(0, 1, 30)
    quiet = [r + rng.normal(0, 0.01, 3) for r in roots]
    noisy = [r + rng.normal(0, 3.0, 3) for r in roots]
    lo_q, hi_q = hier_boot_median(quiet)
    lo_n, hi_n = hier_boot_median(noisy)
    assert hi_n - lo_n > hi_q - lo_q and lo_q < np.median([q.mean() for q in quiet]) < hi_q
    assert hier_boot_median([np.array([2.0])]) == (2.0, 2.0)


def test_permutation_test_false_alarm_rate_is_near_alpha():
    rng = np.random.default_rng(1)
    p = [permutation_test([(rng.normal(0, 1, 3), rng.normal(0, 1, 3)) for _ in range(10)], n_perm=300, seed=i)[1]
         for i in range(60)]
    assert 0.0 <= np.mean(np.array(p) < 0.05) <= 0.15  # exchangeable draws: rejections at about the nominal rate
    shifted = [(rng.normal(0, 0.1, 3), rng.normal(1.0, 0.1, 3)) for _ in range(10)]
    assert permutation_test(shifted, n_perm=300)[1] < 0.01


def test_verify_passes_on_the_recording_machine(replicated, tmp_path, capsys):
    out = tmp_path / "verify.json"
    rc = main(["verify", "--traces", str(replicated), "--sample", "2", "--json", str(out), "--quiet"])
    report = json.loads(out.read_text())
    assert rc == 0 and report["passed"] and report["pairs"] >= 6, capsys.readouterr().out
    assert "false-alarm rate 1%" in capsys.readouterr().out


def test_verify_refuses_a_library_without_replicates(small_library, capsys):
    assert main(["verify", "--traces", str(small_library), "--sample", "1", "--quiet"]) == 2
    assert "needs a library recorded with replicates" in capsys.readouterr().err


def test_blind_lookup_reads_no_telemetry(replicated):
    index = TreeIndex(load_library(replicated))
    pol = LookupPolicy(index, train_seeds="even")
    from tmsim.policies.check import decision_points

    snaps = [s for s in decision_points(index) if index.meta[s.run_id]["seed"] == 1]
    a = [pol.decide(s).action for s in snaps]
    from dataclasses import replace

    scrambled = [replace(s, history=s.history[:1] + tuple(h._replace(val_loss=9.9, train_loss=0.1) for h in s.history[1:]))
                 for s in snaps]
    assert [pol.decide(s).action for s in scrambled] == a  # the curves do not change its answer
    assert pol.trained_on == {"seeds": "even", "holdout_tasks": []}  # the split gbm records


def test_zero_shot_fidelity_and_a_leaderboard_on_the_surrogate_alone(small_library, deep_library, tmp_path, capsys):
    """A surrogate fitted on one library judged on another one's hidden trees (`tmsim fidelity --surrogate`), and a
    leaderboard that says what the surrogate alone predicts (`--hide-trees`), with a warning for unseen tasks."""
    sur = tmp_path / "digits.skops"
    assert main(["surrogate", "fit", "--traces", str(small_library), "--out", str(sur), "--trees", "10"]) == 0
    rep = tmp_path / "zero-shot.json"
    assert main(["fidelity", "--traces", str(deep_library), "--surrogate", str(sur), "--json", str(rep),
                 "--quiet"]) == 0
    r = json.loads(rep.read_text())
    for key in ("kendall_tau", "kendall_tau_competitive", "regret_at_1", "coverage_80"):
        assert key in r
    assert -1 <= r["kendall_tau"] <= 1 and r["unseen_tasks"] == [] and r["roots"] > 0
    other = tmp_path / "friedman"
    record(specs_from_args(["friedman-mlp"], ["healthy"], [0], depth=1, decide_every=None, budget=None), other,
           workers=1, show_progress=False)
    capsys.readouterr()
    out = tmp_path / "lb.json"
    assert main(["leaderboard", "--traces", str(other), "--surrogate", str(sur), "--hide-trees", "--no-report",
                 "--quiet", "--json", str(out), "--policies", "policies/rules.toml"]) == 0
    text = capsys.readouterr().out
    assert "TREES HIDDEN" in text and "not fitted on task(s) friedman-mlp" in text
    rows = json.loads(out.read_text())
    rules = next(x for x in rows if x["policy"] == "rules")
    assert rules["trees_hidden"] and rules["unseen_tasks"] == ["friedman-mlp"] and rules["replayed_share"] < 0.5
