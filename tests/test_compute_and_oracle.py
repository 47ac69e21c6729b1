"""Compute-aware scores, the oracle's coverage and the rows that beat it, training roots, the stable run key and the
library given to a policy that asks for it."""
import json

import numpy as np
import pytest

from tmsim.core import Bounds
from tmsim.evaluate.leaderboard import (LeaderboardResult, Suite, dumps, format_markdown, format_table, json_rows,
                                        run_leaderboard, score_policy)
from tmsim.evaluate.report import write_report
from tmsim.policies import ConstantPolicy, OraclePolicy, PolicySpec, RulesPolicy, SequencePolicy, make_policy
from tmsim.policies.oracle import full_tree, upper_bound_roots
from tmsim.simulate import Simulator, Surrogate, segment_data
from tmsim.simulate.simulator import Rollout
from tmsim.traces import TreeIndex, load_library

NEW_KEYS = {"epochs_share", "epochs_per_run", "epochs_saved_per_run", "train_seconds_per_run", "compute_share",
            "best_val_loss_change_pct", "pareto", "stops_only", "beats_oracle_roots", "beats_oracle_off_tree_roots",
            "upper_bound_roots", "train_overlap", "trained_roots_excluded", "model"}
META_KEYS = {"rank_by", "rank_measure", "pareto_ranking", "include_train", "oracle_upper_bound_roots", "suite_roots",
             "oracle_beaten_at", "skipped_policies"}


class Tuned(RulesPolicy):
    """A rules policy that says it was tuned on even seeds and runs a model (for the row fields)."""

    model_name = "demo-model"

    def __init__(self):
        super().__init__(policy_id="tuned")
        self.trained_on = {"seeds": "even"}


@pytest.fixture(scope="module")
def index(small_library):
    return TreeIndex(load_library(small_library))


@pytest.fixture(scope="module")
def surrogate(index):
    return Surrogate(n_estimators=15).fit(segment_data(index))


@pytest.fixture(scope="module")
def result(index, surrogate):
    pols = [ConstantPolicy(), RulesPolicy(), SequencePolicy(["continue", "stop"], policy_id="stop-at-10"), Tuned()]
    return run_leaderboard(index, pols, Suite(name="t"), surrogate, "test")


def test_compute_figures(result):
    by = {s.policy: s for s in result.scores}
    const, stop = by["constant"], by["stop-at-10"]
    assert const.epochs_share == 1 and const.compute_share == 1 and const.epochs_saved_per_run == 0
    assert stop.stops_only and not by["rules"].stops_only
    outs = result.rollouts["stop-at-10"]
    assert all(o.trained_epochs == 10 for o in outs if not o.diverged)
    assert stop.epochs_per_run == pytest.approx(np.mean([o.trained_epochs for o in outs]))
    base = {o.root: o.trained_epochs for o in result.rollouts["constant"]}
    assert stop.epochs_share == pytest.approx(sum(o.trained_epochs for o in outs) / sum(base[o.root] for o in outs))
    assert 0 < stop.compute_share < 1 and stop.train_seconds_per_run < const.train_seconds_per_run
    # a stopped run's best val loss is the best up to its stop: never better than the constant's best on that root
    assert stop.best_val_loss_change_pct >= 0


def test_pareto_layers_and_rankings(result):
    layers = result.layers()
    pts = {s.policy: (result.loss(s), s.epochs_share) for s in result.scores if not s.upper_bound}

    def dominated(p, by):
        a, b = pts[p]
        return any(q != p and pts[q][0] <= a and pts[q][1] <= b and pts[q] != pts[p] for q in by)

    for p, k in layers.items():
        if p not in pts:
            continue
        assert not dominated(p, [q for q in pts if layers[q] == k])
        if k > 1:
            assert dominated(p, [q for q in pts if layers[q] == k - 1])
    assert {s.policy for s in result.scores if s.pareto} == {p for p, k in layers.items() if k == 1 and p in pts}
    best = LeaderboardResult(**{**result.__dict__, "rank_by": "best"})
    order = [s.best_val_loss_change_pct for s in best.ranked() if not s.upper_bound]
    assert order == sorted(order) and best.ranked()[0].upper_bound
    par = LeaderboardResult(**{**result.__dict__, "pareto": True})
    ks = [layers[s.policy] for s in par.ranked() if not s.upper_bound]
    assert ks == sorted(ks)
    assert result.ranked() == sorted(result.scores, key=lambda s: (not s.upper_bound, s.val_loss_change_pct,
                                                                   s.val_loss_change_mean_pct, s.unsafe_rate))


def test_training_roots_are_left_out_unless_asked(index, surrogate, result):
    row = next(s for s in result.scores if s.policy == "tuned")
    assert row.train_overlap == 0.5 and row.trained_roots_excluded == row.roots == 2 and row.trained_roots == 0
    assert {o.seed % 2 for o in result.rollouts["tuned"]} == {1}
    assert row.model == "demo-model"
    incl = run_leaderboard(index, [Tuned()], Suite(name="t"), surrogate, "test", include_train=True)
    row = next(s for s in incl.scores if s.policy == "tuned")
    assert row.roots == 4 and row.trained_roots == 2 and row.trained_roots_excluded == 0
    assert "tuned *" in format_table(incl) and json.loads(dumps(incl))[0]["include_train"] is True


def test_json_table_and_report_carry_everything(result, tmp_path):
    rows = json_rows(result)
    assert all(NEW_KEYS <= set(r) for r in rows)
    assert all(META_KEYS <= set(r) for r in json.loads(dumps(result)))
    assert all(r["train_overlap"] == 0 for r in rows if r["policy"] != "tuned")
    table = format_table(result)
    assert "compute" in table and "oracle: an upper bound on the recorded menu on 0 of 4 roots" in table
    assert "tuned: scored on 2 roots; 2 roots of its training split left out" in table
    files = write_report(result, tmp_path / "rep")
    assert files["compute"].read_bytes()[:4] == b"\x89PNG" and "compute.png" in files["html"].read_text()
    assert "| compute (epochs) |" in files["md"].read_text()


def test_oracle_is_an_upper_bound_exactly_on_full_trees(bundled):
    """The bundled library: the cheap tasks are full trees, the budgeted ones are not; on a full tree the oracle's
    value is the best expected final of every recorded path, and removing one recorded branch makes it not full."""
    index = TreeIndex(load_library(bundled))
    covered = upper_bound_roots(index, index.roots)
    full = {"digits-mlp", "diabetes-mlp", "friedman-mlp", "cancer-mlp", "friedman2-adam", "swissroll-adam",
            "sparse-adam"}
    # every root group of a full-tree task is covered (library v5: 4 x 4-5 seeds per task), none of the others
    assert set(covered) == {index.meta[r]["group"] for r in index.roots if index.meta[r]["task"] in full}
    oracle = OraclePolicy(index)
    for r in [r for r in index.roots if index.meta[r]["group"] in covered][:9]:
        paths = {index.meta[x]["path"] for x in index.descendants(r)}
        best = min(index.expected_final_val_loss(p) for p in paths)
        assert oracle._subtree(index.meta[r]["path"]) == pytest.approx(best)
    root = next(r for r in index.roots if index.meta[r]["group"] in covered)
    (key, child), *_ = index.children[root].items()
    del index.children[root][key]
    assert not full_tree(index, root)
    index.children[root][key] = child
    assert full_tree(index, root)


def _rollout(root, policy, finals, surrogate=False):
    o = Rollout(root, "t", "s", int(root[-1]), policy, max_epochs=2)
    for e, v in enumerate(finals):
        o.epochs.append({"epoch": e, "val_loss": v, "source": "surrogate" if surrogate and e else "replayed",
                         "wall_time_s": 1.0 if e else 0.0})
    o.surrogate_segments = int(surrogate)
    o.node = None if surrogate else root
    return o


def test_rows_that_beat_the_oracle_are_counted_and_marked():
    roots = ["a0", "a1"]
    const = {r: _rollout(r, "constant", [1.0, 0.9, 0.8]) for r in roots}
    orc = {r: _rollout(r, "oracle", [1.0, 0.7, 0.6]) for r in roots}
    pol = [_rollout("a0", "p", [1.0, 0.7, 0.5], surrogate=True), _rollout("a1", "p", [1.0, 0.7, 0.7])]
    s = score_policy("p", pol, const, orc, Suite(name="t").gate)
    assert (s.beats_oracle_roots, s.beats_oracle_off_tree_roots, s.beats_oracle_at) == (1, 1, ["t/s/0"])
    assert s.epochs_share == 1 and s.train_seconds_per_run == 2


class KeyLog:
    """Records what each call saw: the run key, the run id and the epoch."""

    def __init__(self):
        self.policy_id, self.version, self.seen = "keylog", "1", []

    def decide(self, snapshot):
        self.seen.append((snapshot.run_key, snapshot.run_id, snapshot.epoch))
        if snapshot.epoch == 10:
            return {"action": "set_lr", "value": snapshot.hparams.lr * 0.3}
        return "lr_down" if snapshot.epoch == 5 else "continue"


def test_run_key_is_stable_along_a_rollout_and_reveals_nothing(index, surrogate):
    """The rollout moves to a child branch at epoch 5 and leaves the tree at 10: one key throughout; one key per
    rollout; a second call hands out new keys; the key is neither the run id nor in the prompt or the hash."""
    sim = Simulator(index, surrogate)
    pol = KeyLog()
    outs = sim.rollout(pol)
    keys = {}
    for key, rid, epoch in pol.seen:
        keys.setdefault(key, set()).add(rid)
    assert len(keys) == len(outs) and {o.run_key for o in outs} == set(keys)
    assert all(len(rids) >= 2 for rids in keys.values())  # the run id changed under one key
    assert all(o.surrogate_segments for o in outs)  # and every rollout left the tree at epoch 10
    snap = outs[0].decisions[0]["snapshot"]
    assert snap.run_key is None or snap.run_key not in snap.to_text()
    twin = snap.with_run_key("other")
    assert twin.hash == snap.hash and twin.run_key == "other"
    for key in keys:
        assert all(part not in key for part in ("digits", "overfit", "healthy", ":"))
    pol2 = KeyLog()
    sim.rollout(pol2)
    assert not {k for k, _, _ in pol2.seen} & set(keys)


class LibrarySize:
    """A python policy that asks for the library: it answers with the number of roots it was given."""

    needs_library = True

    def __init__(self, library):
        self.n = len(library.roots)
        self.policy_id, self.version = "libsize", "1"

    def decide(self, snapshot):
        return {"action": "continue", "reason": f"roots={self.n}"}


def test_a_python_policy_that_asks_gets_the_library_of_the_command(index):
    spec = PolicySpec(name="libsize", kind="python", target="tests.test_compute_and_oracle:LibrarySize")
    pol = make_policy(spec, index)  # its own process, given the library the command runs on
    try:
        (o,) = Simulator(index, on_off_tree="truncate").rollout(pol, index.roots[:1])
        from tmsim.core.decision import call_policy_batch

        answers, _ = call_policy_batch(pol, [o.decisions[0]["snapshot"]], 30)
        assert answers[0].value.reason == f"roots={len(index.roots)}"
    finally:
        pol.close()
