"""The fidelity protocol: validation/test split, leave-one-task-out figures over surrogate seeds, rankings over
competitive and top policies, coverage that counts missed divergences, and the surrogate's transfer features."""
import json
import math

import numpy as np
import pytest

from tmsim.cli import main
from tmsim.evaluate.fidelity import (SPLITS, VALIDATION_SEEDS, FidelityConfig, OnMenu, branch_summary, format_report,
                                     measure, meets, policy_pool, ranking_agreement, split_of)
from tmsim.policies import PlateauPolicy
from tmsim.simulate.surrogate import (BAND_BINS, BAND_DEPTHS, FEATURES, MODEL_CLASSES, RunContext, SegmentData,
                                      Surrogate, band_lookup, band_quantiles, run_context, segment_data, state_features)
from tmsim.traces import TreeIndex, load_library


def test_ranking_agreement_over_competitive_and_top_policies():
    true = {"constant": 0.0, "a": -0.5, "b": -0.4, "c": -0.3, "d": -0.2, "e": -0.1, "f": 0.2, "g": 0.4}
    # the simulator gets the order of the bad policies wrong, and swaps the two best
    sim = dict(true, a=-0.39, f=0.5, g=0.1)
    r = ranking_agreement(sim, true)
    assert r["competitive_policies"] == 5 and r["sim_top"] == "b" and r["true_top"] == "a"
    assert r["regret_at_1"] == pytest.approx(0.1 / 0.5) and r["regret_at_3"] == 0.0
    assert r["kendall_tau_competitive"] == pytest.approx(0.8)  # one discordant pair of 10
    assert r["kendall_tau_top5"] == pytest.approx(0.8)
    assert r["kendall_tau"] > r["kendall_tau_competitive"]  # the easy pairs (the bad policies) lift the overall tau
    # nothing truly beats doing nothing: regret (a share of that gain) is not a number
    flat = ranking_agreement({"constant": 0.0, "a": -0.1, "b": 0.1}, {"constant": 0.0, "a": -0.001, "b": 0.2})
    assert flat["regret_at_1"] is None and flat["regret_at_3"] is None and flat["competitive_policies"] == 1


def test_coverage_counts_a_missed_divergence_as_not_covered():
    branch = [{"pred": 1.0, "true": 1.05, "band": (0.9, 1.1), "pred_div": False, "true_div": False, "p_div": 0.1},
              {"pred": 1.0, "true": 3.0, "band": (0.9, 1.1), "pred_div": False, "true_div": True, "p_div": 0.2},
              {"pred": 3.0, "true": 3.0, "band": None, "pred_div": True, "true_div": True, "p_div": 0.9},
              {"pred": 3.0, "true": 1.0, "band": None, "pred_div": True, "true_div": False, "p_div": 0.6}]
    s = branch_summary(branch)
    assert s["coverage_80"] == pytest.approx(2 / 4) and s["coverage_80_finite"] == 1.0
    assert s["missed_divergences"] == 1 and s["false_divergences"] == 1 and s["recorded_divergences"] == 2
    assert s["divergence_brier"] == pytest.approx(np.mean([0.01, 0.64, 0.01, 0.36]))
    assert s["final_val_loss_rel_error"] == pytest.approx(0.05 / 1.05)


def test_the_split_is_by_seed_and_fixed():
    assert VALIDATION_SEEDS == (0, 1, 2) and SPLITS == ("validation", "test", "all")
    assert [split_of(s) for s in range(7)] == ["validation"] * 3 + ["test"] * 2 + ["validation"] * 2
    assert meets("kendall_tau_task", 0.71) and not meets("kendall_tau_task", 0.69)
    assert meets("coverage_80_task", 0.8) and not meets("coverage_80_task", 0.9) and meets("nothing", 1.0) is None


def test_the_pool_holds_close_policies_and_stays_on_the_menu():
    pool = policy_pool()
    ids = [p.policy_id for p in pool]
    assert len(ids) == len(set(ids)) >= 40
    assert {"rules-gap0.2", "rules-gap0.35", "seq-lr_down-lr_down", "seq-continue-lr_down-lr_down"} <= set(ids)
    plateau = next(p for p in pool if p.policy_id == "plateau-p0")
    assert isinstance(plateau, OnMenu) and isinstance(plateau.policy, PlateauPolicy)


def test_features_are_relative_and_know_the_optimizer(bundled):
    index = TreeIndex(load_library(bundled))
    root = next(r for r in index.roots if index.meta[r]["task"] == "diabetes-mlp")
    ctx = run_context(index.meta[root])
    assert ctx.optimizer == "adamw" and ctx.adaptive == 1.0 and 0 < ctx.momentum < 1 and ctx.steps_per_epoch > 0
    sgd = run_context(index.meta[next(r for r in index.roots if index.meta[r]["task"] == "friedman-mlp")])
    assert sgd.adaptive == 0.0 and sgd.momentum == pytest.approx(index.meta[_sgd_root(index)]["optimizer_settings"]["momentum"])
    rows = index[root]
    hist = [rows[e] for e in range(0, 6)]
    f = dict(zip(FEATURES, state_features(hist, index.hparams_at(root, 5), ctx)))
    assert "val_acc" not in FEATURES and f["opt_adaptive"] == 1.0 and math.isfinite(f["log_update_ratio"])
    # the same history on a 10x larger loss scale gives the same features
    scaled = [dict(h, val_loss=h["val_loss"] * 10, train_loss=h["train_loss"] * 10) for h in hist]
    assert state_features(scaled, index.hparams_at(root, 5), ctx) == pytest.approx(list(f.values()))
    # an unrecorded optimizer is neither SGD nor Adam
    blank = RunContext(ctx.hp_init, 20, 5)
    assert blank.adaptive == 0.5 and blank.momentum == 0.9 and blank.coupled_l2 == 0.5
    # weight decay through Adam's step (coupled L2) is told apart from AdamW's shrink and SGD's L2
    adam = run_context(index.meta[next(r for r in index.roots if index.meta[r]["task"] == "cancer-mlp")])
    assert adam.optimizer == "adam" and adam.adaptive == 1.0 and adam.coupled_l2 == 1.0
    assert ctx.coupled_l2 == 0.0 and sgd.coupled_l2 == 0.0 and f["opt_coupled_l2"] == 0.0


def _sgd_root(index):
    return next(r for r in index.roots if index.meta[r]["task"] == "friedman-mlp")


@pytest.mark.parametrize("model", MODEL_CLASSES)
def test_every_model_class_fits_predicts_and_round_trips(small_library, tmp_path, model):
    index = TreeIndex(load_library(small_library))
    data = segment_data(index)
    sur = Surrogate(n_estimators=8, model=model).fit(data)
    pred = sur.predict(data.X[:7])
    assert pred.shape == (7, 4) and np.isfinite(pred).all()
    band = sur.band(data.X[:7])
    assert band.shape == (7, 2) and (band[:, 0] <= band[:, 1]).all()
    path = sur.save(tmp_path / f"{model}.skops")
    back = Surrogate.load(path)
    assert np.array_equal(back.predict(data.X[:7]), pred) and back.params["model"] == model


def test_segment_chains_link_each_segment_to_the_one_that_reached_its_start(small_library):
    """``prev`` names the recorded segment that ended in the state a segment starts from: the loss it reached is the
    loss the next one starts from (checked through the features: ln(v_d / v_0) = that of the segment before plus
    its last row's ln(v_end / v_start))."""
    data = segment_data(TreeIndex(load_library(small_library)))
    assert len(data.seg) == len(data.X) and len(data.prev) == len(data.end) == len(data.Xs)
    assert (np.diff(data.seg) >= 0).all() and set(data.seg.tolist()) <= set(range(len(data.Xs)))
    j = FEATURES.index("log_val_over_init")
    chained = [(i, p) for i, p in enumerate(data.prev.tolist()) if p >= 0 and data.end[p] >= 0]
    assert len(chained) > 20  # depth-2 trees: every segment after the first decision has one
    for i, p in chained:
        assert data.seg[data.end[p]] == p
        assert data.Xs[i, j] == pytest.approx(data.Xs[p, j] + data.Y[data.end[p], 0], abs=1e-9)
    first = [i for i, p in enumerate(data.prev.tolist()) if p < 0]
    assert first and all(data.Xs[i, FEATURES.index("frac_epoch")] == data.Xs[first[0], FEATURES.index("frac_epoch")]
                         for i in first)  # only segments at a root's first decision have no segment before them


def _chains(first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, SegmentData]:
    """Residuals and data for n two-segment paths of one row each (k_seg 1): segment 2i reached segment 2i+1."""
    n = len(first)
    X = np.zeros((2 * n, len(FEATURES)))
    X[:, FEATURES.index("k_seg")] = 1.0
    resid = np.empty(2 * n)
    resid[0::2], resid[1::2] = first, second
    prev = np.full(2 * n, -1)
    prev[1::2] = np.arange(0, 2 * n, 2)
    data = SegmentData(X, np.zeros((2 * n, 4)), np.zeros((2 * n, 4)), np.ones(2 * n, bool), np.array(["t/0"] * (2 * n)),
                       X, np.zeros(2 * n, bool), np.arange(2 * n), prev, np.arange(2 * n))
    return resid, data


def test_the_band_sums_the_residuals_recorded_along_each_path():
    """Split-conformal along paths: the band after one predicted segment is the quantiles of the summed residuals,
    so errors that repeat widen it like adding the widths, errors that cancel leave it as narrow as one segment."""
    a = np.random.default_rng(0).normal(0, 0.1, 400)
    resid, data = _chains(a, a)  # the second segment repeats the first's error
    q = band_quantiles(resid, data)
    assert q.shape == (BAND_DEPTHS, BAND_BINS + 1, 2)
    assert q[1, BAND_BINS] == pytest.approx(np.quantile(2 * a, [0.1, 0.9]))
    both = np.concatenate([a, a])  # depth 0 pools every segment's own residual
    assert q[0, BAND_BINS] == pytest.approx(np.quantile(both, [0.1, 0.9]))
    resid, data = _chains(a, -a)  # ... or undoes it
    q = band_quantiles(resid, data)
    assert q[1, BAND_BINS] == pytest.approx([0.0, 0.0])
    # no three-segment path was recorded: depth 2 extrapolates (the widths add), and so does every depth past the last
    assert q[2, BAND_BINS] == pytest.approx(q[1, BAND_BINS] + q[0, BAND_BINS])
    far = band_lookup(q, np.array([BAND_BINS, 1]), np.array([BAND_DEPTHS + 1, 0]))
    assert far[0] == pytest.approx(q[BAND_DEPTHS - 1, BAND_BINS] + 2 * q[0, BAND_BINS])
    assert far[1] == pytest.approx(q[0, 1])


def test_a_rollouts_band_grows_with_the_segments_it_predicted(small_library):
    index = TreeIndex(load_library(small_library))
    sur = Surrogate(n_estimators=8).fit(segment_data(index))
    from tmsim.simulate import Simulator, final_band

    for o in Simulator(index, sur, replay=False).rollout(policy_pool()[0]):
        lo, hi = final_band(o)
        assert o.surrogate_segments >= 2 and lo < o.final_val_loss < hi
        last = o.epochs[-1]
        assert (last["val_lo"], last["val_hi"]) == pytest.approx((lo, hi))  # the last epoch's band spans the rollout


def test_leave_one_task_out_over_surrogate_seeds(bundled):
    """Two tasks, one scenario, the validation split: every documented key, per task and per scenario, with flags."""
    index = TreeIndex(load_library(bundled))
    index.roots = [r for r in index.roots if index.meta[r]["task"] in ("digits-mlp", "friedman-mlp")
                   and index.meta[r]["scenario"] == "plateau"]
    cfg = FidelityConfig(n_estimators=6, branch_sequences=3, surrogate_seeds=(0, 1), protocols=("task",))
    r = measure(index, cfg, progress=lambda m: None)
    assert r["split"] == "validation" and r["surrogate_seeds"] == [0, 1]
    assert 0 < r["roots"] <= sum(split_of(index.meta[x]["seed"]) == "validation" for x in index.roots)
    for key in ("kendall_tau_task", "kendall_tau_competitive_task", "kendall_tau_top5_task", "regret_at_1_task",
                "regret_at_3_task", "coverage_80_task", "kendall_tau_task_sd", "noise_ceiling_tau"):
        assert key in r, key
    assert len(r["kendall_tau_task_seeds"]) == 2 and r["kendall_tau_task_sd"] >= 0
    assert set(r["per_task"]) == {"digits-mlp", "friedman-mlp"}
    assert set(r["per_scenario"]) == {"digits-mlp/plateau", "friedman-mlp/plateau"}
    for v in list(r["per_task"].values()) + list(r["per_scenario"].values()):
        assert v["flag"] == (v["spearman_rho"] is None or v["spearman_rho"] < 0.7 or v["kendall_tau"] < 0.4)
        assert v["noise_ceiling_tau"] is None or -1 <= v["noise_ceiling_tau"] <= 1  # the group's own, from replicates
    assert set(r["flagged"]) == {k for k, v in {**r["per_task"], **r["per_scenario"]}.items() if v["flag"]}
    # each held-out task's own branch figures add up to the pooled ones
    assert sum(v["branches"] for v in r["per_task"].values()) == r["branches_task"]
    assert sum(v["missed_divergences"] for v in r["per_task"].values()) == r["missed_divergences_task"]
    assert all(v["coverage_80"] is None or 0 <= v["coverage_80"] <= 1 for v in r["per_task"].values())
    text = format_report(r)
    assert "leave one task out" in text and "per scenario" in text and "noise ceiling" in text and "coverage" in text


def test_fidelity_command_takes_the_split_and_model(deep_library, tmp_path, capsys):
    rep = tmp_path / "f.json"
    assert main(["fidelity", "--traces", str(deep_library), "--split", "all", "--model", "forest", "--trees", "6",
                 "--surrogate-seeds", "1", "--json", str(rep), "--quiet"]) == 0
    r = json.loads(rep.read_text())
    assert r["split"] == "all" and r["model"] == "forest" and r["kendall_tau_task"] is None  # one task
    assert "held-out seeds" in capsys.readouterr().out
    assert main(["fidelity", "--traces", str(deep_library), "--model", "nope", "--quiet"]) == 2
    assert "unknown surrogate model 'nope'" in capsys.readouterr().err


def test_the_leaderboard_states_its_trust(small_library, tmp_path, capsys):
    """The table, the JSON and the report quote the fidelity measured on the library they ran on, and mark rows
    whose epochs come from the surrogate for more than 20%."""
    digest = load_library(small_library).digest()
    fid = tmp_path / "fid.json"
    fid.write_text(json.dumps({"library_sha256": digest, "split": "test", "model": "forest", "kendall_tau_task": 0.61,
                               "kendall_tau_competitive_task": 0.42, "regret_at_1_task": 0.2, "coverage_80_task": 0.8,
                               "kendall_tau_seed": 0.7, "flagged": ["digits-mlp", "digits-mlp/healthy"]}))
    out, rep = tmp_path / "lb.json", tmp_path / "report"
    assert main(["leaderboard", "--traces", str(small_library), "--fidelity", str(fid), "--policies",
                 "policies/rules.toml", "policies/random.toml", "--report", str(rep), "--quiet", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "trust: the surrogate's fidelity on this library (test split, fid.json): leave one task out tau 0.610" in text
    assert "flagged tasks: digits-mlp" in text
    rows = json.loads(out.read_text())
    assert rows[0]["fidelity"]["kendall_tau_task"] == 0.61
    for r in rows:
        assert r["surrogate_heavy"] == (r["policy"] != "oracle" and 1 - r["replayed_share"] > 0.2)
        if r["surrogate_heavy"]:
            assert f"{r['policy']} ~" in text or f"{r['policy']} † ~" in text or f"{r['policy']} * ~" in text
    assert "leave one task out tau 0.61" in (rep / "leaderboard.md").read_text()
    # a report measured on another library is not quoted
    fid.write_text(json.dumps({"library_sha256": "0" * 64, "kendall_tau_task": 0.99}))
    assert main(["leaderboard", "--traces", str(small_library), "--fidelity", str(fid), "--policies",
                 "policies/rules.toml", "--no-report", "--quiet"]) == 0
    assert "fidelity was not measured on this library" in capsys.readouterr().out


def test_a_suite_names_the_policies_it_is_scored_with(tmp_path):
    """`tmsim leaderboard --suite S` without --policies takes the suite's own list (the LLM suite lists the LLM
    managers and the learned baselines); paths resolve from the repository when not from the current directory."""
    from tmsim.cli import _suite_policies
    from tmsim.evaluate.leaderboard import load_suite

    suite = load_suite("eval/suites/llm-heldout.toml")
    names = [p.rsplit("/", 1)[-1] for p in _suite_policies(suite)]
    assert {"llm-prompted.toml", "llm-lora.toml", "gbm.toml", "blind-lookup.toml", "rules.toml", "constant.toml",
            "oracle.toml"} == set(names)
    assert all(__import__("pathlib").Path(p).exists() for p in _suite_policies(suite))
    plain = load_suite("eval/suites/default.toml")
    assert _suite_policies(plain)[0].endswith("policies")
