"""The simulator: exact replay, the oracle property, surrogate rollouts, safe surrogate files."""
import math
import zipfile

import numpy as np
import pytest

from tmsim.core import Proposal
from tmsim.policies import ConstantPolicy, OraclePolicy, RulesPolicy, SequencePolicy
from tmsim.simulate import Simulator, final_band, summarize_rollouts
from tmsim.traces import TreeIndex
from tmsim.simulate import FEATURES, Surrogate, SurrogateError, segment_data
from tmsim.simulate.surrogate import FORMAT
from tmsim.traces import load_library


@pytest.fixture(scope="module")
def index(small_library):
    return TreeIndex(load_library(small_library))


@pytest.fixture(scope="module")
def surrogate(index):
    return Surrogate(n_estimators=20).fit(segment_data(index))


def test_constant_rollout_reproduces_the_do_nothing_branch_exactly(index):
    sim = Simulator(index)
    for o in sim.rollout(ConstantPolicy()):
        recorded = index[o.root]
        assert [r["epoch"] for r in o.epochs] == sorted(recorded)
        for r in o.epochs:
            assert r["source"] == "replayed"
            assert r["val_loss"] == recorded[r["epoch"]]["val_loss"] and r["train_loss"] == recorded[r["epoch"]]["train_loss"]
        assert o.replayed_share == 1.0 and o.final_val_loss == index.final_val_loss(o.root)


def test_oracle_rollout_reaches_the_best_recorded_leaf(index, small_library):
    sim = Simulator(index)
    oracle = OraclePolicy(load_library(small_library))
    for o in sim.rollout(oracle):
        best = min(index.final_val_loss(r) for r, m in index.meta.items() if m["root_run_id"] == o.root)
        assert o.final_val_loss == pytest.approx(best)
        assert o.replayed_share == 1.0


def test_recorded_action_sequences_replay_their_branch(index):
    sim = Simulator(index)
    for o in sim.rollout(SequencePolicy(["lr_down", "weight_decay_up"])):
        rid = f"{o.root}+e5:lr_down+e10:weight_decay_up"
        assert o.node == rid
        assert o.final_val_loss == index.final_val_loss(rid)
        assert [d["action"] for d in o.decisions][:2] == ["lr_down", "weight_decay_up"]


class SetLR:
    policy_id, version = "set-lr", "1"

    def decide(self, snapshot):
        return Proposal(action="set_lr", value=snapshot.hparams.lr * 0.7) if snapshot.epoch == 10 else Proposal(action="continue")


def test_off_tree_action_continues_on_the_surrogate(index, surrogate):
    sim = Simulator(index, surrogate)
    for o in sim.rollout(SetLR()):
        sources = {r["epoch"]: r["source"] for r in o.epochs}
        assert all(sources[e] == "replayed" for e in range(0, 11))
        assert all(sources[e] == "surrogate" for e in range(11, 21) if e in sources)
        assert o.node is None and 0 < o.replayed_share < 1
        assert all(math.isfinite(r["val_loss"]) and r["val_lo"] <= r["val_loss"] <= r["val_hi"] for r in o.epochs if r["source"] == "surrogate")
        lo, hi = final_band(o) if not o.diverged else (0, math.inf)
        assert lo <= o.final_val_loss <= hi
    summary = summarize_rollouts(sim.rollout(SetLR()))
    assert 0 < summary["replayed_share"] < 1 and summary["decisions"] > 0


def test_surrogate_only_rollout(index, surrogate):
    sim = Simulator(index, surrogate, replay=False)
    outs = sim.rollout(RulesPolicy())
    assert len(outs) == len(index.roots)
    for o in outs:
        first = index.meta[o.root]["decide_every"]
        assert all(r["source"] == ("replayed" if r["epoch"] <= first else "surrogate") for r in o.epochs)
        assert o.final_epoch() <= 20 and math.isfinite(o.final_val_loss)
    # deterministic: same surrogate, same rollouts
    again = sim.rollout(RulesPolicy())
    assert [o.final_val_loss for o in outs] == [o.final_val_loss for o in again]


def test_off_tree_without_surrogate_is_a_clear_error_or_truncates(index):
    with pytest.raises(ValueError, match="no surrogate is loaded"):
        Simulator(index).rollout(SetLR())
    outs = Simulator(index, on_off_tree="truncate").rollout(SetLR())
    assert all(o.truncated and o.final_epoch() == 10 for o in outs)


def test_the_fast_divergence_path_gives_the_forests_own_probabilities(surrogate, index):
    """``p_diverge`` sums the classifier's trees itself (no joblib per call): the numbers must be the forest's own,
    to the bit, on the library's rows and on rows far outside it."""
    from tmsim.simulate.surrogate import _fast_classifier, _forest_proba

    clf = surrogate.clf
    assert clf is not None and _fast_classifier(clf)
    X = segment_data(index).X
    far = np.random.default_rng(0).normal(scale=50.0, size=(64, X.shape[1]))
    for rows in (X[:200], far):
        assert np.array_equal(_forest_proba(clf, rows), clf.predict_proba(rows))
    assert not _fast_classifier(None) and not _fast_classifier(object())


def test_the_closed_form_line_fit_agrees_with_numpys_least_squares():
    from tmsim.simulate.surrogate import _fit_line

    rng = np.random.default_rng(1)
    for n in range(0, 9):
        for _ in range(50):
            ys = list(rng.normal(-1.0, 3.0, size=n))
            slope, rough = _fit_line(ys)
            if n < 2:
                assert (slope, rough) == (0.0, 0.0)
                continue
            xs = np.arange(n, dtype=float)
            coef = np.polyfit(xs, ys, 1)
            ref = float(np.sqrt(np.mean((np.asarray(ys) - np.polyval(coef, xs)) ** 2))) if n > 2 else 0.0
            assert slope == pytest.approx(coef[0], rel=1e-9, abs=1e-12)
            assert rough == pytest.approx(ref, rel=1e-9, abs=1e-12)


def test_surrogate_save_load_round_trip(surrogate, index, tmp_path):
    path = surrogate.save(tmp_path / "s.skops")
    loaded = Surrogate.load(path)
    data = segment_data(index)
    assert np.array_equal(loaded.predict(data.X[:50]), surrogate.predict(data.X[:50]))
    assert np.array_equal(loaded.q, surrogate.q)
    assert data.X.shape[1] == len(FEATURES)


def test_corrupted_or_foreign_surrogate_files_are_refused(surrogate, tmp_path):
    path = surrogate.save(tmp_path / "s.skops")
    truncated = tmp_path / "truncated.skops"
    truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(SurrogateError, match="truncated.skops: not a readable surrogate file"):
        Surrogate.load(truncated)
    garbage = tmp_path / "garbage.skops"
    garbage.write_bytes(b"\x80\x04not a zip at all")
    with pytest.raises(SurrogateError, match="garbage.skops"):
        Surrogate.load(garbage)
    with pytest.raises(SurrogateError, match="not found"):
        Surrogate.load(tmp_path / "missing.skops")
    # a skops file that carries a type a surrogate never holds is refused before anything is built
    import os

    import skops.io as sio
    from sklearn.linear_model import LinearRegression

    foreign = tmp_path / "foreign.skops"
    sio.dump({"format": "tmsim-surrogate-1", "base": os.system}, foreign)
    with pytest.raises(SurrogateError, match=r"refuses to load unexpected type\(s\) \['posix.system'\]"):
        Surrogate.load(foreign)
    wrong = tmp_path / "wrong.skops"
    sio.dump({"format": FORMAT, "base": LinearRegression()}, wrong)
    with pytest.raises(SurrogateError, match="field 'effect' is missing or of the wrong type|field 'base'"):
        Surrogate.load(wrong)
    assert zipfile.is_zipfile(path)


def test_cli_fit_and_fidelity(small_library, deep_library, tmp_path, capsys):
    import json

    from tmsim.cli import main

    out = tmp_path / "s.skops"
    assert main(["surrogate", "fit", "--traces", str(small_library), "--out", str(out), "--trees", "10"]) == 0
    assert Surrogate.load(out).info["segments"] > 0
    # the depth-2 library cannot give a truth for policies acting at epoch 15: a clear error, not a number
    assert main(["fidelity", "--traces", str(small_library), "--trees", "10", "--quiet"]) == 2
    assert "fidelity needs full trees" in capsys.readouterr().err
    rep = tmp_path / "f.json"
    assert main(["fidelity", "--traces", str(deep_library), "--json", str(rep), "--trees", "10", "--quiet"]) == 0
    report = json.loads(rep.read_text())
    for key in ("kendall_tau_seed", "kendall_tau_task", "regret_at_1_seed", "final_val_loss_mae", "coverage_80", "noise_ceiling_tau"):
        assert key in report
    assert report["policies"] >= 20 and -1 <= report["kendall_tau_seed"] <= 1
    assert "held-out seeds" in capsys.readouterr().out
