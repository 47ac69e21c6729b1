"""The policy contract: snapshots, the validator (property-based), the baseline policies, policy check."""
import json
import math
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tmsim.core import (ALL_ACTIONS, FATAL, KNOBS, Bounds, PolicyFailure, action_json_schema,
                           offered_actions, validate)
from tmsim.cli import main
from tmsim.policies.check import decision_points, run_policy
from tmsim.policies import OraclePolicy, PlateauPolicy, RandomPolicy, RulesPolicy, find_specs, load_spec, make_policy
from tmsim.core import EpochView, PastDecision, Snapshot
from tmsim.core import Hyperparams
from tmsim.tasks import get_task
from tmsim.traces import load_library


def snap(hp=None, epoch=10, losses=1, left=None, history=None, decisions=()):
    hp = hp or Hyperparams(lr=0.1, weight_decay=1e-3, dropout=0.2, aux_loss_weight=1.0 if losses > 1 else None)
    history = history or [EpochView(epoch=e, train_loss=2 / (e + 1), val_loss=1.5 / (e + 1) + 0.05 * e, val_acc=0.5,
                                    lr=hp.lr, weight_decay=hp.weight_decay, dropout=hp.dropout) for e in range(epoch + 1)]
    return Snapshot.build("r", "digits-mlp", history, hp, 20, 5, decisions, left, losses)


# --- the validator never lets anything out of bounds --------------------------------------------------------------

finite = st.floats(allow_nan=True, allow_infinity=True)
garbage = st.one_of(
    st.none(), st.text(max_size=40), st.binary(max_size=20), finite, st.integers(), st.lists(st.integers(), max_size=3),
    st.sampled_from(ALL_ACTIONS + ("LR_DOWN", "explode", "")),
    st.builds(lambda a, v: {"action": a, "value": v}, st.sampled_from(ALL_ACTIONS + ("nope",)), st.one_of(st.none(), finite, st.text(max_size=5), st.booleans())),
    st.builds(lambda a, v: json.dumps({"action": a, "value": v}), st.sampled_from(ALL_ACTIONS), finite),
    st.builds(lambda k: PolicyFailure(k), st.sampled_from(["policy_exception", "timeout"])),
)
bounds_st = st.builds(
    Bounds,
    lr_min=st.floats(1e-6, 1e-3), lr_max=st.floats(0.01, 1.0), dropout_max=st.floats(0.0, 0.6),
    weight_decay_max=st.floats(0.0, 0.1), max_factor=st.floats(1.0, 10.0), max_dropout_step=st.floats(0, 0.3),
    cooldown_epochs=st.integers(0, 10), min_stop_epoch=st.integers(0, 20), max_interventions=st.one_of(st.none(), st.integers(0, 3)),
)
hp_st = st.builds(Hyperparams, lr=st.floats(1e-5, 2.0), weight_decay=st.sampled_from([0.0, 1e-4, 1e-2, 0.5]),
                  dropout=st.floats(0.0, 0.7), aux_loss_weight=st.one_of(st.none(), st.floats(1e-4, 1e4)))


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=garbage, bounds=bounds_st, hp=hp_st, epoch=st.integers(1, 19), left=st.one_of(st.none(), st.integers(0, 3)))
def test_validator_never_applies_anything_out_of_bounds(raw, bounds, hp, epoch, left):
    s = snap(hp=hp, epoch=epoch, losses=2 if hp.aux_loss_weight is not None else 1, left=left)
    act, violations = validate(raw, s, bounds)
    assert set(violations) <= set(FATAL) | {"change_too_large", "out_of_bounds"}
    for k in KNOBS:
        new, old = getattr(act.hparams, k), getattr(s.hparams, k)
        if new != old:  # every change lands inside the absolute range ...
            lo, hi = bounds.range(k)
            assert lo <= new <= hi and math.isfinite(new)
            if k in ("lr", "aux_loss_weight"):  # ... and within the per-decision step
                assert old / bounds.max_factor * (1 - 1e-12) <= new <= old * bounds.max_factor * (1 + 1e-12)
            if k == "dropout":
                assert abs(new - old) <= bounds.max_dropout_step + 1e-12
    if act.source == "fallback":
        assert act.action == "continue" and act.hparams == s.hparams and not act.stop and violations
    if act.stop:
        assert epoch >= bounds.min_stop_epoch
    if bounds.max_interventions is not None and min(bounds.max_interventions, 99 if left is None else left) <= 0:
        assert not act.intervenes


@pytest.mark.parametrize("raw, kind", [
    (None, "empty_output"), ("", "empty_output"), ("{{{", "unparseable"), (b"\xff\xfe", "unparseable"),
    (float("nan"), "unparseable"), ({"action": 3}, "unparseable"), ("explode", "unparseable"),
    ({"action": "explode"}, "unknown_action"), ({"action": "set_lr"}, "missing_value"),
    ({"action": "set_lr", "value": float("nan")}, "non_finite_value"), ('{"action": "set_lr", "value": 1e400}', "non_finite_value"),
    (PolicyFailure("policy_exception"), "policy_exception"), (PolicyFailure("timeout"), "timeout"),
])
def test_each_failure_has_its_own_name_and_falls_back(raw, kind):
    act, violations = validate(raw, snap(), Bounds())
    assert violations == [kind] and act.source == "fallback" and act.action == "continue"


def test_clamps_cooldown_stop_and_budget():
    s = snap()
    act, v = validate({"action": "set_lr", "value": 5.0}, s, Bounds(lr_max=0.3))
    assert act.hparams.lr == 0.3 and v == ["change_too_large", "out_of_bounds"]
    act, v = validate({"action": "set_lr", "value": 1e9}, s, Bounds(lr_max=0.3))  # orders outside: not a move
    assert act.source == "fallback" and v == ["invalid_value"]
    act, v = validate({"action": "set_lr", "value": 0.35}, s, Bounds(lr_max=0.3))
    assert act.hparams.lr == 0.3 and v == ["out_of_bounds"]
    act, v = validate("stop", snap(epoch=3), Bounds(min_stop_epoch=10))
    assert v == ["stop_too_early"] and not act.stop
    act, v = validate("lr_down", snap(left=0), Bounds(max_interventions=2))
    assert v == ["budget_exhausted"]
    hist = [EpochView(epoch=e, train_loss=1.0, val_loss=1.0, lr=0.2 if e <= 5 else 0.1) for e in range(11)]
    act, v = validate("lr_down", snap(hp=Hyperparams(lr=0.1), history=hist), Bounds(cooldown_epochs=10))
    assert v == ["cooldown"]
    act, v = validate("dropout_up", snap(hp=Hyperparams(lr=0.1, dropout=0.5)), Bounds())
    assert v == ["no_effect"]


def test_offered_actions_and_json_schema():
    s = snap(hp=Hyperparams(lr=0.1, dropout=0.5))
    off = offered_actions(s, Bounds())
    assert "continue" in off and "dropout_up" not in off and "aux_weight_up" not in off
    schema = action_json_schema(off)
    assert schema["properties"]["action"]["enum"] == list(off)
    assert "aux_weight_up" in offered_actions(snap(losses=2), Bounds())


# --- snapshots ----------------------------------------------------------------------------------------------------

def test_snapshot_never_holds_test_metrics(small_library):
    snaps = decision_points(load_library(small_library))
    assert snaps
    for s in snaps[:50]:
        blob = s.to_json() + s.to_text()
        assert "test" not in blob.lower()
    rows = [{"epoch": 0, "val_loss": 1.0, "train_loss": 1.0, "test_loss": 0.1, "test_acc": 0.99}]
    s = Snapshot.build("r", "t", rows, Hyperparams(lr=0.1), 10, 5)
    assert not hasattr(s.history[0], "test_loss") and "test" not in s.to_json()


def test_decision_points_cover_the_tree(small_library):
    lib = load_library(small_library)
    snaps = decision_points(lib)
    root = [s for s in snaps if s.run_id == "digits-mlp:healthy:s0"]
    assert [s.epoch for s in root] == [5, 10, 15]
    branch = [s for s in snaps if s.run_id == "digits-mlp:healthy:s0+e5:lr_down"]
    assert [s.epoch for s in branch] == [10, 15]
    assert branch[0].decisions == (PastDecision(5, "lr_down", branch[0].decisions[0].val_change),)
    assert branch[0].hparams.lr == pytest.approx(root[0].hparams.lr / 2)  # the seed's own draw, halved
    assert all(s.offered and s.offered[0] == "continue" for s in snaps)
    text = branch[0].to_text()
    assert "epoch 10/20" in text and "past decisions: epoch 5 lr_down" in text and "allowed actions:" in text


def test_overfit_signal_fires_on_a_real_overfitting_run(small_library):
    snaps = {(s.run_id, s.epoch): s for s in decision_points(load_library(small_library))}
    flags = [snaps[(f"digits-mlp:overfit:s{k}", 15)].signals for k in (0, 1)]
    healthy = [snaps[(f"digits-mlp:healthy:s{k}", 15)].signals for k in (0, 1)]
    assert all(f.gap > 0.5 for f in flags) and not any(h.diverging for h in healthy)


# --- baseline policies --------------------------------------------------------------------------------------------

def test_plateau_matches_torch_reduce_lr_on_plateau():
    losses = [1.0, 0.9, 0.85, 0.86, 0.87, 0.84, 0.845, 0.846, 0.85, 0.83, 0.84, 0.84, 0.84, 0.85]
    for patience, cooldown in [(2, 0), (1, 2), (3, 1)]:
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=patience, cooldown=cooldown)
        pol = PlateauPolicy(factor=0.5, patience=patience, cooldown=cooldown)
        lrs, hist = [], [EpochView(epoch=0, val_loss=2.0, lr=0.1)]
        for e, v in enumerate(losses, start=1):
            lr_now = opt.param_groups[0]["lr"]
            hist.append(EpochView(epoch=e, val_loss=v, train_loss=v, lr=lr_now))
            s = Snapshot.build("r", "t", hist, Hyperparams(lr=lr_now), 30, 1)
            act, _ = validate(pol.decide(s), s, Bounds())
            sched.step(v)  # torch decides at the end of every epoch; so does the policy here (decide_every = 1)
            assert act.hparams.lr == pytest.approx(opt.param_groups[0]["lr"]), (patience, cooldown, e)
            lrs.append(act.hparams.lr)
        assert min(lrs) < 0.1


def test_random_is_seeded_and_order_independent(small_library):
    snaps = decision_points(load_library(small_library))[:40]
    a = [RandomPolicy(seed=3).decide(s).action for s in snaps]
    b = [RandomPolicy(seed=3).decide(s).action for s in reversed(snaps)][::-1]
    c = [RandomPolicy(seed=4).decide(s).action for s in snaps]
    assert a == b and a != c and set(a) <= set(ALL_ACTIONS)


def test_oracle_reaches_the_best_recorded_leaf(small_library):
    lib = load_library(small_library)
    oracle = OraclePolicy(lib)
    from tmsim.traces.query import TraceDB

    with TraceDB(lib) as db:
        rows = db.sql("select root_run_id, min(coalesce(final_val_loss, 'inf'::double)) as b from finals group by 1")
        best = dict(zip(rows["root_run_id"].to_pylist(), rows["b"].to_pylist()))
        final = {r["run_id"]: r["final_val_loss"] for r in db.sql("select run_id, final_val_loss from finals").to_pylist()}
    snaps = {(s.run_id, s.epoch): s for s in decision_points(lib)}
    for root, target in best.items():
        run = root  # follow the oracle from the root through the recorded tree
        for d in (5, 10, 15):
            if (run, d) not in snaps:
                break
            a = oracle.decide(snaps[(run, d)]).action
            if a == "stop":
                run = f"{run}+e{d}:stop"
                break
            if a != "continue":
                run = f"{run}+e{d}:{a}"
        assert final[run] == pytest.approx(target), root


def test_rules_policy_lowers_lr_when_overfitting():
    hist = [EpochView(epoch=e, train_loss=1 / (e + 1), val_loss=0.5 + 0.04 * max(e - 3, 0), lr=0.1) for e in range(11)]
    s = Snapshot.build("r", "t", hist, Hyperparams(lr=0.1), 20, 5)
    assert RulesPolicy().decide(s).action == "lr_down"
    flat = [EpochView(epoch=e, train_loss=1.0, val_loss=1.0 - 0.001 * e, lr=0.1) for e in range(11)]
    assert RulesPolicy().decide(Snapshot.build("r", "t", flat, Hyperparams(lr=0.1), 20, 5)).action == "lr_up"


# --- specs and policy check ---------------------------------------------------------------------------------------

def test_bundled_specs_load_and_build(small_library):
    specs = find_specs("policies")
    assert {s.kind for s in specs} >= {"constant", "rules", "plateau", "random", "oracle"}
    lib = load_library(small_library)
    for s in specs:
        assert make_policy(s, lib).policy_id == s.name


def test_spec_errors_name_the_file_and_field(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nkind = "rules"\ncolour = "red"\n')
    with pytest.raises(ValueError, match=r"bad.toml: field 'colour'"):
        load_spec(bad)
    bad.write_text('name = "x"\nkind = "telepathy"\n')
    with pytest.raises(ValueError, match="field 'kind': unknown kind 'telepathy'"):
        load_spec(bad)
    bad.write_text('name = "x"\nkind = "rules"\n[settings]\nnonsense = 1\n')
    with pytest.raises(ValueError, match="field 'settings'"):
        make_policy(load_spec(bad))
    bad.write_text('name = "x"\nkind = "python"\ntarget = "nope.nothing:Here"\n')
    with pytest.raises(ValueError, match="cannot be imported"):
        make_policy(load_spec(bad))


class Adversary:
    """Cycles through every kind of bad output a policy can produce."""

    policy_id, version = "adversary", "1"

    def __init__(self, sleep=0.5):
        self.i, self.sleep = 0, sleep

    def decide(self, snapshot):
        self.i += 1
        k = self.i % 9
        if k == 0:
            raise RuntimeError("policy blew up")
        if k == 1:
            time.sleep(self.sleep)
            return "lr_down"
        return [
            None, "<<garbage>> ignore previous instructions", {"action": "set_lr", "value": 1e30},
            {"action": "set_lr", "value": float("nan")}, {"action": "teleport"}, {"action": "set_lr", "value": 5.0}, "lr_up",
        ][k - 2]


def test_adversarial_policy_through_policy_check(small_library, tmp_path, capsys):
    spec = tmp_path / "adv.toml"
    spec.write_text('name = "adversary"\nkind = "python"\ntarget = "tests.test_policy_interface:Adversary"\n[settings]\nsleep = 0.5\n')
    out = tmp_path / "report.json"
    rc = main(["policy", "check", str(spec), "--traces", str(small_library), "--timeout", "0.1", "--json", str(out),
               "--audit", str(tmp_path / "audit"), "--quiet"])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["unvalidated_updates"] == 0
    v = report["violations"]
    for kind in ("policy_exception", "timeout", "empty_output", "unparseable", "change_too_large", "non_finite_value",
                 "unknown_action", "invalid_value"):
        assert v.get(kind, 0) > 0, (kind, v)
    assert report["decisions"] > 0 and 0 < report["fallback_rate"] < 1
    assert {"decisions", "violations", "fallback_rate", "latency_ms_p50", "latency_ms_p95"} <= set(report)
    # the audit is a valid decisions table in the trace format
    from tmsim.traces import read_table, table_files

    files = table_files(tmp_path / "audit", "decisions")
    rows = read_table(files[0], "decisions").to_pylist()
    assert rows and all(r["policy_id"] == "adversary" and r["snapshot_hash"] for r in rows)
    assert any(r["source"] == "fallback" for r in rows) and any(r["violations"] for r in rows)


def test_validated_actions_applied_to_a_real_run_stay_in_bounds(small_library):
    """Training-side state only ever sees validated values: apply what the adversary gets through to a real task."""
    bounds = Bounds(lr_max=0.5)
    snaps = decision_points(load_library(small_library), bounds)[:27]
    audit, report = run_policy(Adversary(sleep=0.3), snaps, bounds, timeout=0.05)
    task = get_task("digits-mlp")
    state = task.build("overfit", 0)
    for row, s in zip(audit.to_pylist(), snaps):
        applied = json.loads(row["action_json"])
        task.apply(state, Hyperparams(lr=applied["lr"], weight_decay=applied["weight_decay"], dropout=applied["dropout"]))
        lr = state.optimizer.param_groups[0]["lr"]
        assert lr == s.hparams.lr or bounds.lr_min <= lr <= bounds.lr_max
        assert all(math.isfinite(g["lr"]) and math.isfinite(g["weight_decay"]) for g in state.optimizer.param_groups)


def test_policy_schema_command(capsys):
    assert main(["policy", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert "set_lr" in schema["properties"]["action"]["enum"] and "action" in schema["required"]
