import pytest
import torch

from tmsim.core import apply_action, changing_actions
from tmsim.core import Hyperparams
from tmsim.tasks import get_task, task_names

# the supervised tasks (the RL tasks, PPO with no dropout and no accuracy, have their own tests in test_rl.py)
SUPERVISED = [n for n in task_names() if get_task(n).scenario("healthy").hparams.log_std is None]


@pytest.mark.parametrize("name", SUPERVISED)
def test_every_task_trains_evaluates_and_has_four_scenarios(name):
    task = get_task(name)
    assert len(task.scenarios()) >= 4
    st = task.build("healthy", seed=0)  # the recipe built to train well: one epoch lowers the training loss
    before = task.evaluate(st)
    tr = task.train_epoch(st)
    after = task.evaluate(st)
    assert st.epoch == 1 and tr["samples_seen"] > 0 and tr["grad_norm"] > 0 and tr["update_ratio"] > 0
    assert after["train_loss"] < before["train_loss"]
    assert set(after) == {"train_loss", "val_loss", "test_loss", "train_acc", "val_acc", "test_acc"}


@pytest.mark.parametrize("scenario", ["overfit", "healthy"])
@pytest.mark.parametrize("name", SUPERVISED)
def test_save_restore_continues_bit_for_bit(name, scenario):
    task = get_task(name)
    st = task.build(scenario, seed=3)
    task.apply(st, st.hparams.with_(dropout=0.2))  # dropout on: the global RNG matters too
    task.train_epoch(st)
    blob = task.save(st)
    a = task.train_epoch(st), task.evaluate(st)
    torch.manual_seed(12345)  # disturb the global RNG: restore must put it back
    st2 = task.restore(blob)
    b = task.train_epoch(st2), task.evaluate(st2)
    assert a[1] == b[1]
    assert a[0]["grad_norm"] == b[0]["grad_norm"] and a[0]["update_ratio"] == b[0]["update_ratio"]
    assert st2.hparams == st.hparams and st2.hparams.dropout == 0.2
    assert all(torch.equal(p, q) for p, q in zip(st.model.parameters(), st2.model.parameters()))


def test_apply_changes_optimizer_dropout_and_attention_dropout():
    task = get_task("text-lm")
    st = task.build("healthy", seed=0)
    task.apply(st, Hyperparams(lr=1e-3, weight_decay=0.05, dropout=0.3))
    assert all(g["lr"] == 1e-3 and g["weight_decay"] == 0.05 for g in st.optimizer.param_groups)
    drops = [m.p for m in st.model.modules() if isinstance(m, torch.nn.Dropout)]
    assert drops and all(p == 0.3 for p in drops)
    assert all(m.attention_dropout == 0.3 for m in st.model.modules() if hasattr(m, "attention_dropout"))


def test_multiloss_weight_changes_training_loss():
    task = get_task("multiloss")
    st = task.build("imbalance", seed=0)
    x, y = task.data(st.scenario)["train"]
    with torch.no_grad():
        lo = float(task.batch_loss(st.model, x[:64], y[:64], st.hparams))
        hi = float(task.batch_loss(st.model, x[:64], y[:64], st.hparams.with_(aux_loss_weight=10.0)))
    assert hi > lo


def test_menu_offers_only_actions_that_change_something():
    hp = Hyperparams(lr=0.1, dropout=0.5)
    offered = changing_actions(hp, losses=1)
    assert "dropout_up" not in offered and "dropout_down" in offered
    assert not any(a.startswith("aux_") for a in offered)
    assert "weight_decay_down" not in offered  # already zero
    assert "aux_weight_up" in changing_actions(Hyperparams(lr=0.1, aux_loss_weight=1.0), losses=2)
    assert apply_action(hp, "lr_up").lr == pytest.approx(0.2)
    assert apply_action(Hyperparams(lr=0.1), "weight_decay_up").weight_decay > 0
    with pytest.raises(ValueError, match="unknown action"):
        apply_action(hp, "explode")


def test_unknown_task_and_scenario_are_clear_errors():
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        get_task("nope")
    with pytest.raises(ValueError, match="no scenario 'nope'"):
        get_task("digits-mlp").scenario("nope")
