"""The "reads the run" figure: a policy rolled out again on another root's telemetry, on the bundled library."""
import json

import numpy as np
import pytest

from tmsim.evaluate.leaderboard import Suite, dumps, format_table, run_leaderboard
from tmsim.evaluate.readsrun import TELEMETRY, SwappedTelemetry, donors, reads_run_test
from tmsim.policies import ConstantPolicy, RulesPolicy
from tmsim.policies.check import decision_points
from tmsim.policies.lookup import LookupPolicy
from tmsim.traces import TreeIndex, load_library

TASKS = ["friedman-mlp", "cancer-mlp"]


@pytest.fixture(scope="module")
def index(bundled):
    return TreeIndex(load_library(bundled))


@pytest.fixture(scope="module")
def board(index):
    suite = Suite(name="t", tasks=TASKS, seeds=[1, 3])
    pols = [ConstantPolicy(), RulesPolicy(), LookupPolicy(index, holdout_tasks=[])]
    return run_leaderboard(index, pols, suite, None, "none")


def test_donors_are_other_roots_of_the_same_task_and_run_length(index):
    roots = [r for r in index.roots if index.meta[r]["task"] in TASKS]
    d = donors(index, roots)
    assert set(d) == set(roots)
    for r, g in d.items():
        a, b = index.meta[r], index.meta[g]
        assert a["task"] == b["task"] and a["group"] != b["group"] and a["max_epochs"] == b["max_epochs"]
        assert a["replicate"] == b["replicate"]
    assert d == donors(index, roots)  # drawn with a fixed seed


def test_a_swapped_snapshot_keeps_the_recipe_and_carries_the_donors_curves(index):
    root = next(r for r in index.roots if index.meta[r]["task"] == "friedman-mlp")
    donor_of = donors(index, [root])
    snap = next(s for s in decision_points(index, tasks=["friedman-mlp"]) if s.run_id == root and s.epoch == 10)
    w = SwappedTelemetry(ConstantPolicy(), index, donor_of, Suite(name="t").bounds)
    out = w.swap(snap)
    rows = index[donor_of[root]]
    assert out.hparams == snap.hparams and out.epoch == snap.epoch and out.offered == snap.offered
    for v, o in zip(snap.history, out.history):
        assert (v.lr, v.weight_decay, v.dropout) == (o.lr, o.weight_decay, o.dropout)
        assert o.val_loss == rows[o.epoch]["val_loss"] and o.train_loss == rows[o.epoch]["train_loss"]
    assert any(getattr(o, k) != getattr(v, k) for o, v in zip(out.history, snap.history) for k in TELEMETRY)
    assert w.swapped == 1


def test_recipe_readers_show_no_dependence_and_a_rules_policy_does(board):
    by = {s.policy: s for s in board.scores}
    for name in ("constant", "blind-lookup"):
        s = by[name]
        assert s.reads_run_delta_pct == 0.0 and s.reads_run_p == 1.0 and s.reads_run_changed_share == 0.0, name
    assert by["rules"].reads_run_changed_share > 0
    rows = json.loads(dumps(board))
    assert all("reads_run_delta_pct" in r and "reads_run_p" in r for r in rows)
    assert "reads run" in format_table(board)


def test_the_permutation_test_is_two_sided_and_exact_at_zero():
    rng = np.random.default_rng(0)
    real = [rng.normal(0, 1, 3) for _ in range(30)]
    worse = [r + 4 for r in real]
    better = [r - 4 for r in real]
    d_w, p_w = reads_run_test(real, worse)
    d_b, p_b = reads_run_test(real, better)
    assert d_w == pytest.approx(4) and d_b == pytest.approx(-4) and p_w < 0.001 and p_b < 0.001
    noise = [r + rng.normal(0, 1, 3) for r in real]
    assert reads_run_test(real, noise)[1] > 0.01
    assert reads_run_test(real, real) == (0.0, 1.0)
