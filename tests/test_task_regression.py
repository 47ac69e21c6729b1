"""The tabular regression tasks: scenario families, one epoch of training, exact forks, and live knobs.

No test asserts a training outcome (a loss going up or down after a change): those are chaotic draws.
"""
import math

import pytest
import torch

from tmsim.core import Hyperparams, apply_action
from tmsim.tasks.diabetes import DiabetesMLP
from tmsim.tasks.friedman import FriedmanMLP

TASKS = (DiabetesMLP, FriedmanMLP)
CASES = [(cls, sc) for cls in TASKS for sc in ("overfit", "diverge", "plateau", "healthy")]


def _in_range(value, spec) -> bool:
    kind, *args = spec
    if kind == "choice":
        return value in args[0]
    lo, hi = args
    return lo <= value <= hi


@pytest.mark.parametrize("cls", TASKS, ids=lambda c: c.name)
def test_four_scenario_families_with_the_same_schedule(cls):
    task = cls()
    assert set(task.scenarios()) == {"overfit", "diverge", "plateau", "healthy"}
    for sc in task.scenarios().values():
        assert (sc.epochs, sc.decide_every) == (20, 5)
        assert "lr" in sc.family and "n_train" in sc.family


@pytest.mark.parametrize("cls,name", CASES, ids=lambda x: getattr(x, "name", x))
def test_members_differ_between_seeds_and_stay_in_their_ranges(cls, name):
    task = cls()
    family = task.scenario(name).family
    members = [task.scenario(name, seed) for seed in (0, 1)]
    for m in members:
        hp = m.hparams.to_dict()
        for key, spec in family.items():
            value = hp[key] if key in hp else m.settings[key]
            assert _in_range(value, spec), (name, key, value, spec)
    a, b = members
    assert (a.hparams, a.settings) != (b.hparams, b.settings)
    assert task.scenario(name, 0) == a  # the draw is deterministic


@pytest.mark.parametrize("cls,name", CASES, ids=lambda x: getattr(x, "name", x))
def test_one_epoch_trains_and_evaluates_with_finite_losses_and_no_accuracy(cls, name):
    task = cls()
    for seed in (0, 1):
        st = task.build(name, seed)
        before = task.evaluate(st)
        tr = task.train_epoch(st)
        after = task.evaluate(st)
        assert st.epoch == 1 and tr["samples_seen"] > 0
        assert set(after) == {"train_loss", "val_loss", "test_loss", "train_acc", "val_acc", "test_acc"}
        for row in (before, after):
            assert all(row[f"{s}_acc"] is None for s in ("train", "val", "test"))
            assert all(math.isfinite(row[f"{s}_loss"]) for s in ("train", "val", "test"))
        assert math.isfinite(tr["grad_norm"]) and tr["grad_norm"] > 0


@pytest.mark.parametrize("cls", TASKS, ids=lambda c: c.name)
def test_features_and_target_are_standardised_on_the_training_rows(cls):
    task = cls()
    d = task.data(task.scenario("healthy", 0))
    x, y = d["train"]
    assert y.shape == (len(x), 1) and x.shape[1] == 10
    assert torch.allclose(x.mean(0), torch.zeros(10), atol=1e-4)
    assert torch.allclose(y.std(0), torch.ones(1), atol=1e-4)
    assert len(d["val"][0]) > 0 and len(d["test"][0]) > 0


def test_optimizers_follow_the_scenario_settings():
    d = DiabetesMLP()
    st = d.build("healthy", seed=1)
    assert isinstance(st.optimizer, torch.optim.AdamW)
    assert st.optimizer.defaults["betas"] == tuple(st.scenario.settings["betas"])
    assert st.optimizer.defaults["weight_decay"] == st.hparams.weight_decay
    f = FriedmanMLP()
    st = f.build("plateau", seed=1)
    assert type(st.optimizer) is torch.optim.SGD
    assert st.optimizer.defaults["momentum"] == st.scenario.settings["momentum"]
    assert f.optimizer_info(st)[0] == "sgd" and d.optimizer_info(d.build("healthy", 0))[0] == "adamw"


@pytest.mark.parametrize("cls", TASKS, ids=lambda c: c.name)
def test_lr_weight_decay_and_dropout_changes_take_effect(cls):
    task = cls()
    member = task.scenario("overfit", 0)
    # start without dropout (library v5 members draw some): training mode is then deterministic
    st = task.build(member, seed=0, hparams=member.hparams.with_(dropout=0.0))
    x = task.data(st.scenario)["val"][0][:32]
    st.model.train()
    with torch.no_grad():
        assert torch.equal(st.model(x), st.model(x))  # no dropout yet: training mode is deterministic
    hp = apply_action(apply_action(st.hparams, "dropout_up"), "lr_down")
    hp = apply_action(hp, "weight_decay_up")
    task.apply(st, hp)
    assert all(g["lr"] == st.hparams.lr == hp.lr for g in st.optimizer.param_groups)
    assert all(g["weight_decay"] == hp.weight_decay > 0 for g in st.optimizer.param_groups)
    drops = [m.p for m in st.model.modules() if isinstance(m, torch.nn.Dropout)]
    assert drops and all(p == hp.dropout > 0 for p in drops)
    with torch.no_grad():
        assert not torch.equal(st.model(x), st.model(x))  # dropout masks now differ between passes
        st.model.eval()
        assert torch.equal(st.model(x), st.model(x))


def test_the_lr_in_force_scales_the_first_step():
    # The same state stepped at two LRs moves the weights by different amounts: the optimizer reads the new LR.
    task = FriedmanMLP()
    moves = []
    for lr in (0.001, 0.004):
        st = task.build("healthy", seed=0, hparams=Hyperparams(lr=0.001))
        task.apply(st, st.hparams.with_(lr=lr))
        w0 = [p.detach().clone() for p in st.model.parameters()]
        x, y = task.data(st.scenario)["train"]
        st.optimizer.zero_grad()
        task.batch_loss(st.model, x[:32], y[:32], st.hparams).backward()
        st.optimizer.step()
        moves.append(sum(float((p.detach() - q).norm()) for p, q in zip(st.model.parameters(), w0)))
    assert moves[1] == pytest.approx(4 * moves[0], rel=1e-3)
