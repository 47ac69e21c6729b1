"""``plateau`` is torch's ReduceLROnPlateau: checked against a long-lived torch scheduler on random histories and on
every decision of its rollouts through the bundled library, and against the documented hand-set rule on every
recorded decision point of the library."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tmsim.core import Bounds, EpochView, Hyperparams, Snapshot, validate
from tmsim.core.snapshot import PastDecision
from tmsim.policies import PlateauPolicy
from tmsim.policies.check import decision_points
from tmsim.simulate import Simulator
from tmsim.traces import TreeIndex, load_library

WIDE = Bounds(lr_min=1e-12, max_factor=1e6)  # so that no clamp hides a disagreement


def _scheduler(lr, **kw):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    return opt, torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", **kw)


settings_kw = st.fixed_dictionaries({
    "factor": st.sampled_from([0.5, 0.3, 0.1]),
    "patience": st.integers(0, 4),
    "cooldown": st.integers(0, 3),
    "threshold": st.sampled_from([0.0, 1e-4, 0.05]),
    "threshold_mode": st.sampled_from(["rel", "abs"]),
    "min_lr": st.sampled_from([0.0, 1e-3]),
})


@settings(max_examples=150, deadline=None)
@given(kw=settings_kw, every=st.integers(1, 5),
       losses=st.lists(st.sampled_from([1.0, 0.9, 0.8, 0.85, 0.8, 0.7, 0.75, 0.72, float("nan")]), min_size=3, max_size=30))
def test_plateau_follows_a_live_torch_scheduler_on_random_histories(kw, every, losses):
    """A training loop steps one scheduler after every epoch; the run's LR changes only at decision epochs, to what
    the policy proposes. At every decision the applied LR is the scheduler's LR."""
    opt, sched = _scheduler(0.1, **kw)
    pol = PlateauPolicy(**kw)
    lr = 0.1
    hist = [EpochView(epoch=0, val_loss=2.0, train_loss=2.0, lr=lr)]
    for e, v in enumerate(losses, start=1):
        hist.append(EpochView(epoch=e, val_loss=v, train_loss=v, lr=lr))  # trained at the run's LR
        sched.step(v)
        if e % every == 0:
            s = Snapshot.build("r", "t", hist, Hyperparams(lr=lr), len(losses) + 1, every)
            act, violations = validate(pol.decide(s), s, WIDE)
            assert violations == []
            lr = act.hparams.lr
            assert lr == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12), (e, kw)


@settings(max_examples=60, deadline=None)
@given(kw=settings_kw, losses=st.lists(st.sampled_from([1.0, 0.9, 0.95, 0.8, 0.85]), min_size=8, max_size=20),
       at=st.integers(2, 7), hand=st.sampled_from([0.4, 0.025]))
def test_a_change_the_policy_did_not_make_is_set_by_hand(kw, losses, at, hand):
    """An LR set from outside at epoch ``at`` (another action) is written into the optimizer; the scheduler's state
    (best value, bad epochs, cooldown) is kept, as when a user sets ``param_group["lr"]`` by hand."""
    opt, sched = _scheduler(0.1, **kw)
    pol = PlateauPolicy(**kw)
    lr = 0.1
    hist = [EpochView(epoch=0, val_loss=2.0, train_loss=2.0, lr=lr)]
    past = []  # the decisions taken so far, as the harness's snapshots carry them
    for e, v in enumerate(losses, start=1):
        if e == at:
            lr = hand
            opt.param_groups[0]["lr"] = hand
        hist.append(EpochView(epoch=e, val_loss=v, train_loss=v, lr=lr))
        sched.step(v)
        s = Snapshot.build("r", "t", hist, Hyperparams(lr=lr), 40, 1, decisions=past)
        act, _ = validate(pol.decide(s), s, WIDE)
        past.append(PastDecision(e, act.action if act.intervenes else "continue", None))
        lr = act.hparams.lr
        assert lr == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12), (e, kw)


@pytest.fixture(scope="module")
def index(bundled):
    return TreeIndex(load_library(bundled))


def test_plateau_rollouts_on_the_bundled_library_equal_torch_at_every_decision(index):
    """Every decision of plateau's rollouts from every root of the bundled library (exact replay; a rollout that
    leaves the recorded tree ends there): one torch scheduler per rollout, stepped with the rollout's validation loss
    after every epoch, holds exactly the LR plateau applied at each decision epoch."""
    pol = PlateauPolicy(patience=2)
    sim = Simulator(index, on_off_tree="truncate")
    outs = sim.rollout(pol)
    decisions = cuts = 0
    for o in outs:
        opt, sched = _scheduler(o.epochs[0]["lr"], factor=0.5, patience=2)
        by_epoch = {d["epoch"]: d for d in o.decisions}
        for r in o.epochs[1:]:
            assert r["lr"] == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12) or r["epoch"] - 1 not in by_epoch
            if r["val_loss"] is None:  # a non-finite loss ends the recorded run: nothing is decided after it
                assert r["diverged"] and r is o.epochs[-1] and r["epoch"] not in by_epoch
                break
            sched.step(r["val_loss"])
            d = by_epoch.get(r["epoch"])
            if d is not None:
                decisions += 1
                cuts += d["action"] != "continue"
                assert d["violations"] == []
                assert d["applied"].hparams.lr == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12), (o.root, r["epoch"])
    assert decisions > 1000 and cuts > 50


def _reference(snapshot, patience=2):
    """The documented rule written out: a fresh scheduler at the first LR; an LR change in the history that the
    scheduler did not make is set by hand; step after every epoch from 1."""
    opt, sched = _scheduler(snapshot.history[0].lr, factor=0.5, patience=patience)
    prev = snapshot.history[0].lr
    for h in snapshot.history[1:]:
        if h.lr != prev and h.lr != opt.param_groups[0]["lr"]:
            opt.param_groups[0]["lr"] = h.lr
        prev = h.lr
        sched.step(h.val_loss)
    return opt.param_groups[0]["lr"]


def test_plateau_equals_torch_on_every_recorded_decision_point(bundled):
    snaps = decision_points(load_library(bundled))
    pol = PlateauPolicy(patience=2)
    agree = held = 0
    for s in snaps:
        act, _ = validate(pol.decide(s), s, WIDE)
        ref = _reference(s)
        agree += act.hparams.lr == pytest.approx(min(ref, s.hparams.lr), rel=1e-12)
        held += ref < s.hparams.lr
    assert agree == len(snaps) > 7000
    assert held > 0  # some decision points hold a cut the run has not made yet


def test_menu_only_stays_on_the_menu_and_follows_torch_by_hand_setting(index):
    """With ``menu_only`` every cut is one ``lr_down``, so rollouts replay exactly; at each decision it cuts exactly
    when torch's scheduler (with the run's LR set by hand where they differ) holds a lower LR."""
    pol = PlateauPolicy(patience=0, menu_only=True)
    from tmsim.policies.oracle import upper_bound_roots

    full = upper_bound_roots(index, index.roots)  # full trees: every menu action recorded everywhere
    outs = Simulator(index, on_off_tree="truncate").rollout(pol, [r for r in index.roots if index.meta[r]["group"] in full])
    assert not any(o.truncated for o in outs)
    n = 0
    for o in outs:
        for d in o.decisions:
            s = d["snapshot"]
            assert d["action"] in ("continue", "lr_down")
            assert (d["action"] == "lr_down") == (_reference(s, patience=0) < s.hparams.lr * (1 - 1e-12))
            n += 1
    assert n > 200
