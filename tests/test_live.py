"""The live hook: real trainers, asynchronous decisions, safety, promotion, and the recorded trace."""
import json
import math
import sys
import time

import pytest
import torch
from torch import nn

from tmsim.core import Proposal
from tmsim.cli import REPO, main
from tmsim.live import LiveManager, NotPromotedError
from tmsim.policies import SequencePolicy
from tmsim.core import Hyperparams
from tmsim.traces import load_library

sys.path.insert(0, str(REPO))


def _setup(lr=0.1):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.1), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + 0.1 * s))
    return model, opt, sched


def _steps(mgr, opt, sched, n, sleep=0.0):
    for _ in range(n):
        opt.step()
        sched.step()
        mgr.on_step_end()
        if sleep:
            time.sleep(sleep)


def _epoch(mgr, e, val=1.0):
    mgr.on_epoch_end({"train_loss": 0.5 + 0.1 * e, "val_loss": val + 0.05 * e})


class Raises:
    policy_id, version = "raises", "1"

    def decide(self, s):
        raise RuntimeError("boom")


class Sleeps:
    policy_id, version = "sleeps", "1"

    def __init__(self, seconds, action="lr_down"):
        self.seconds, self.action = seconds, action

    def decide(self, s):
        time.sleep(self.seconds)
        return Proposal(action=self.action)


def test_scheduler_aware_lr_change_on_a_real_lambdalr():
    model, opt, sched = _setup()
    mgr = LiveManager(SequencePolicy(["lr_down"]), hparams=Hyperparams(lr=0.1), max_epochs=5, decide_every=1,
                      optimizer=opt, scheduler=sched, model=model, mode="sync", allow_unpromoted=True)
    _epoch(mgr, 0)
    _steps(mgr, opt, sched, 10)
    _epoch(mgr, 1)  # decision: lr_down, applied now
    assert sched.base_lrs == [pytest.approx(0.05)]
    _steps(mgr, opt, sched, 5)
    # the scheduler recomputed the LR from base_lrs: the change survived, at half the schedule
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05 / (1 + 0.1 * 15))
    assert mgr.decision_rows[0]["action"] == "lr_down"


def test_async_decision_is_applied_at_the_next_step_boundary_and_training_never_waits():
    model, opt, sched = _setup()
    mgr = LiveManager(Sleeps(0.2), hparams=Hyperparams(lr=0.1), max_epochs=5, decide_every=1, optimizer=opt,
                      scheduler=sched, model=model, allow_unpromoted=True, stale_steps=1000)
    _epoch(mgr, 0)
    t0 = time.perf_counter()
    _epoch(mgr, 1)
    assert time.perf_counter() - t0 < 0.1  # submitted, not waited for
    assert sched.base_lrs == [0.1]
    _steps(mgr, opt, sched, 40, sleep=0.01)
    assert sched.base_lrs == [pytest.approx(0.05)]
    row = mgr.decision_rows[0]
    assert row["action"] == "lr_down" and row["staleness_steps"] > 0 and row["latency_ms"] >= 190


def test_stale_decisions_are_dropped_and_logged():
    model, opt, sched = _setup()
    mgr = LiveManager(Sleeps(0.15), hparams=Hyperparams(lr=0.1), max_epochs=5, decide_every=1, optimizer=opt,
                      scheduler=sched, model=model, allow_unpromoted=True, stale_steps=3)
    _epoch(mgr, 0)
    _epoch(mgr, 1)
    _steps(mgr, opt, sched, 30, sleep=0.01)
    row = mgr.decision_rows[0]
    assert "stale" in row["violations"] and row["source"] == "fallback" and row["staleness_steps"] > 3
    assert sched.base_lrs == [0.1]


@pytest.mark.parametrize("policy, kind", [(Raises(), "policy_exception"), (Sleeps(5.0), "timeout")])
def test_raising_or_hanging_policy_leaves_training_unchanged(policy, kind):
    model, opt, sched = _setup()
    mgr = LiveManager(policy, hparams=Hyperparams(lr=0.1), max_epochs=6, decide_every=1, optimizer=opt,
                      scheduler=sched, model=model, mode="sync", timeout=0.2, allow_unpromoted=True)
    for e in range(6):
        _epoch(mgr, e)
        _steps(mgr, opt, sched, 3)
    assert not mgr.should_stop and sched.base_lrs == [0.1] and mgr.epoch == 5
    assert all(r["violations"] == [kind] and r["source"] == "fallback" for r in mgr.decision_rows)
    assert [r["epoch"] for r in mgr.decision_rows] == [1, 2, 3, 4, 5]  # none at epoch 0 (nothing trained yet)


def test_nan_guard_stops_the_run():
    model, opt, sched = _setup()
    mgr = LiveManager(SequencePolicy([]), hparams=Hyperparams(lr=0.1), max_epochs=5, optimizer=opt, model=model,
                      allow_unpromoted=True, mode="sync")
    _epoch(mgr, 0)
    mgr.on_epoch_end({"train_loss": float("nan"), "val_loss": 1.0})
    assert mgr.should_stop and mgr.history[-1]["diverged"]


def test_unpromoted_policy_is_refused_and_the_override_is_recorded(tmp_path):
    model, opt, sched = _setup()
    with pytest.raises(NotPromotedError, match="refusing an unpromoted policy"):
        LiveManager(SequencePolicy([]), hparams=Hyperparams(lr=0.1), max_epochs=3, optimizer=opt)
    spec = tmp_path / "p.toml"
    spec.write_text('name = "never-promoted"\nkind = "constant"\n')
    with pytest.raises(NotPromotedError, match="no promotion record"):
        LiveManager(SequencePolicy([]), spec=spec, promotions=tmp_path, hparams=Hyperparams(lr=0.1), max_epochs=3)
    mgr = LiveManager(SequencePolicy([]), spec=spec, promotions=tmp_path, hparams=Hyperparams(lr=0.1), max_epochs=2,
                      optimizer=opt, allow_unpromoted=True, record_dir=tmp_path / "rec", mode="sync")
    for e in range(3):
        _epoch(mgr, e)
    mgr.close()
    lib = load_library(tmp_path / "rec", strict=True)
    settings = json.loads(lib.runs["settings_json"][0].as_py())
    assert settings["promotion"].startswith("UNPROMOTED") and lib.runs["source"][0].as_py() == "live"


@pytest.fixture(scope="module")
def promoted(small_library, tmp_path_factory):
    """A sequence policy promoted for real by the gate on the small library's overfit roots."""
    import os

    d = tmp_path_factory.mktemp("prom")
    os.environ["TMSIM_SURROGATE_CACHE"] = str(d / "cache")
    try:
        suite = d / "overfit.toml"
        suite.write_text('name = "overfit"\nscenarios = ["overfit"]\n[gate]\nmax_unsafe_rate = 0.0\n')
        spec = d / "halve.toml"
        spec.write_text('name = "halve"\nkind = "sequence"\n[settings]\nactions = ["lr_down", "lr_down"]\n')
        assert main(["promote", str(spec), "--traces", str(small_library), "--suite", str(suite),
                     "--promotions", str(d / "proms"), "--quiet"]) == 0
    finally:
        del os.environ["TMSIM_SURROGATE_CACHE"]
    return spec, d / "proms"


def test_hf_trainer_with_a_promoted_policy_changes_the_lr_and_records_the_trace(promoted, tmp_path):
    from examples.live_hf_trainer import main as hf_main

    spec, proms = promoted
    mgr, trainer = hf_main(spec=str(spec), promotions=str(proms), record=str(tmp_path / "rec"), epochs=3, lr=5e-3)
    assert mgr.promotion == "promoted (halve)"
    assert [(r["epoch"], r["action"]) for r in mgr.decision_rows] == [(1, "lr_down"), (2, "lr_down")]
    logs = [h for h in trainer.state.log_history if "learning_rate" in h]
    total = trainer.state.max_steps
    per_epoch = total // 3
    for h in logs:
        # the Trainer logs the LR its scheduler computed after the previous step, so step s shows schedule(s - 1):
        # the LR step s trained with. The hook scales what get_last_lr() reports too, so from the first step after
        # a decision (at the end of epoch k, step k * per_epoch) the log shows the LR in force.
        prev = round(h["epoch"] * per_epoch) - 1
        scale = 1.0 if prev < per_epoch else 0.5 if prev < 2 * per_epoch else 0.25
        linear = 5e-3 * (total - prev) / total
        assert h["learning_rate"] == pytest.approx(scale * linear, rel=1e-6), (prev, h)
    lib = load_library(tmp_path / "rec", strict=True)
    assert lib.runs.num_rows == 1 and lib.epochs.num_rows == 4
    assert lib.decisions["action"].to_pylist() == ["lr_down", "lr_down"]
    assert all(v is not None and v >= 0 for v in lib.decisions["latency_ms"].to_pylist())


def test_plain_pytorch_example_with_the_bundled_promoted_rules(tmp_path):
    from examples.live_pytorch import main as pt_main

    mgr = pt_main(record=str(tmp_path / "rec"), mode="sync")
    assert mgr.promotion == "promoted (rules)" and mgr.scope == "within the promoted scope"
    assert len(mgr.history) == 21 and all(math.isfinite(h["val_loss"]) for h in mgr.history)
    from tmsim.traces.query import query

    t = query("select source, count(*) as n from epochs group by all", tmp_path / "rec")
    assert t.to_pylist() == [{"source": "live", "n": 21}]


def test_a_change_with_nothing_attached_is_not_recorded_as_applied():
    mgr = LiveManager(SequencePolicy(["lr_down"]), hparams=Hyperparams(lr=0.1), max_epochs=4, decide_every=1,
                      mode="sync", allow_unpromoted=True)
    _epoch(mgr, 0)
    _epoch(mgr, 1)
    _epoch(mgr, 2)
    assert mgr.hparams.lr == 0.1 and mgr.history[-1]["lr"] == 0.1
