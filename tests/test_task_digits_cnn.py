import math

import pytest
import torch

from tmsim.core import apply_action
from tmsim.tasks.digits_cnn import DigitsCNN

SCENARIOS = ("overfit", "diverge", "plateau", "healthy")


def _in_range(value, spec):
    kind, *args = spec
    if kind == "choice":
        return value in args[0]
    lo, hi = args
    return lo <= value <= hi


@pytest.mark.parametrize("name", SCENARIOS)
def test_seeds_draw_different_members_within_the_family(name):
    task = DigitsCNN()
    family = task.scenario(name).family
    members = [task.scenario(name, seed) for seed in (0, 1)]
    recipes = [(m.hparams, sorted(m.settings.items())) for m in members]
    assert recipes[0] != recipes[1]
    for m in members:
        values = {**m.hparams.to_dict(), **m.settings}
        for key, spec in family.items():
            assert _in_range(values[key], spec), (name, key, values[key], spec)
    assert task.scenario(name, 0) == members[0]  # the draw is deterministic


@pytest.mark.parametrize("name", SCENARIOS)
def test_one_epoch_trains_and_evaluates(name):
    task = DigitsCNN()
    st = task.build(name, seed=1)
    assert isinstance(st.optimizer, torch.optim.Adam)
    family, settings = task.optimizer_info(st)
    assert family == "adam" and tuple(settings["betas"]) == tuple(st.scenario.settings["betas"])
    before = task.evaluate(st)
    row = task.train_epoch(st)
    after = task.evaluate(st)
    assert st.epoch == 1 and row["samples_seen"] > 0
    assert all(math.isfinite(row[k]) and row[k] > 0 for k in ("grad_norm", "update_ratio", "step_time_s"))
    assert all(math.isfinite(v) for v in (*before.values(), *after.values()))
    assert 0.0 <= after["val_acc"] <= 1.0
    steps = st.scenario.settings.get("steps_per_epoch")
    if steps:  # an epoch of a fixed number of steps spans several passes over a small training split
        assert row["step"] == steps and row["samples_seen"] == steps * st.scenario.settings["batch_size"]


def test_images_are_one_channel_8x8():
    task = DigitsCNN()
    sc = task.scenario("overfit", 0)
    data = task.data(sc)
    assert data["train"][0].shape == (sc.settings["n_train"], 1, 8, 8)
    assert data["val"][0].shape == (400, 1, 8, 8) and data["test"][0].shape == (400, 1, 8, 8)


def test_dropout_knob_reaches_every_dropout_module_and_acts():
    task = DigitsCNN()
    st = task.build("overfit", seed=0)
    drops = [m for m in st.model.modules() if isinstance(m, torch.nn.Dropout)]
    assert len(drops) == 2 and all(m.p == 0.0 for m in drops)
    x = task.data(st.scenario)["val"][0][:32]
    st.model.train()
    with torch.no_grad():
        plain = st.model(x)
    task.apply(st, apply_action(st.hparams, "dropout_up"))
    assert all(m.p == pytest.approx(0.1) for m in drops)
    st.model.train()
    with torch.no_grad():
        dropped = st.model(x)
    assert not torch.equal(plain, dropped)  # masks are drawn in train mode
    st.model.eval()
    with torch.no_grad():
        assert torch.equal(st.model(x), plain)  # and none in eval mode


def test_lr_and_weight_decay_changes_take_effect():
    task = DigitsCNN()
    st = task.build("healthy", seed=0)
    task.train_epoch(st)  # Adam has moment estimates now
    blob = task.save(st)
    x, y = task.data(st.scenario)["train"]
    xb, yb = x[:32], y[:32]

    def one_step(action):
        s = task.restore(blob)
        task.apply(s, apply_action(s.hparams, action))
        w0 = [p.detach().clone() for p in s.model.parameters()]
        s.optimizer.zero_grad()
        task.batch_loss(s.model, xb, yb, s.hparams).backward()
        s.optimizer.step()
        return s, torch.cat([(p.detach() - w).reshape(-1) for p, w in zip(s.model.parameters(), w0)])

    base, d0 = one_step("continue")
    up, d_up = one_step("lr_up")
    assert all(g["lr"] == pytest.approx(2 * base.hparams.lr) for g in up.optimizer.param_groups)
    # Both branches draw the same dropout masks from the restored RNG, so gradients and moments are identical and
    # Adam's step scales with the LR alone.
    assert float(d_up.norm()) == pytest.approx(2 * float(d0.norm()), rel=1e-4)
    wd, _ = one_step("weight_decay_up")
    assert all(g["weight_decay"] == pytest.approx(10 * base.hparams.weight_decay) for g in wd.optimizer.param_groups)
