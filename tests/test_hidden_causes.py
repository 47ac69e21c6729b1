"""Hidden causes (library v5): families that share their hyperparameter ranges, causes a snapshot never carries,
and mid-run onsets that switch on at their drawn epoch."""
import json

import pytest
import torch

from tmsim.core import Bounds, RunInfo, build_snapshot
from tmsim.core.snapshot import EpochView, Snapshot
from tmsim.tasks import get_task
from tmsim.tasks.hidden import HIDDEN_KEYS, loss_scale, prepare, train_split

HIDDEN_TASKS = ["diabetes-mlp", "cancer-mlp", "friedman-mlp", "friedman2-adam", "sparse-adam", "swissroll-adam"]
KNOB_RANGES = ("lr", "weight_decay", "dropout", "batch_size", "momentum", "betas")


@pytest.mark.parametrize("name", HIDDEN_TASKS)
def test_every_family_of_a_task_draws_its_recipe_from_the_same_ranges(name):
    fams = get_task(name).scenarios()
    shared = {k: v for k, v in fams["healthy"].family.items() if k in KNOB_RANGES}
    assert {"lr", "weight_decay", "dropout", "batch_size"} <= set(shared)
    for sc in fams.values():
        assert {k: v for k, v in sc.family.items() if k in KNOB_RANGES} == shared, sc.name
        assert sc.hparams == fams["healthy"].hparams  # one centre: the family's name is not in its recipe
    # and the failure is somewhere a snapshot cannot see
    causes = {sc.name: set(sc.family) - set(KNOB_RANGES) for sc in fams.values()}
    assert all(c <= set(HIDDEN_KEYS) for c in causes.values()), causes
    assert causes["overfit"] >= {"label_noise", "noise_onset"}


@pytest.mark.parametrize("name", HIDDEN_TASKS)
def test_members_of_different_families_overlap_in_learning_rate(name):
    task = get_task(name)
    lrs = {f: [task.scenario(f, s).hparams.lr for s in range(8)] for f in task.scenarios()}
    lo = max(min(v) for v in lrs.values())
    hi = min(max(v) for v in lrs.values())
    assert lo < hi, lrs  # every family has members inside one common LR interval


def test_no_snapshot_field_can_carry_a_hidden_cause():
    names = set(Snapshot.__dataclass_fields__) | set(EpochView._fields)
    assert not names & (set(HIDDEN_KEYS) | {"settings", "settings_json", "scenario", "samples_seen", "step"})


def test_a_trace_row_with_the_causes_in_it_gives_the_snapshot_of_a_row_without_them():
    rows = [{"epoch": e, "train_loss": 1 / (e + 1), "val_loss": 0.8, "lr": 0.01, "weight_decay": 1e-4, "dropout": 0.0}
            for e in range(6)]
    leaky = [{**r, "label_noise": 0.3, "noise_onset": 4, "input_scale": 0.01, "loss_scale": 5.0, "n_train": 50,
              "settings_json": '{"label_noise": 0.3}', "scenario": "overfit", "samples_seen": 50 * r["epoch"]}
             for r in rows]
    run = RunInfo("r", "friedman-mlp", 5, 20)
    a, b = build_snapshot(run, rows, {}, 5, Bounds()), build_snapshot(run, leaky, {}, 5, Bounds())
    assert a.to_json() == b.to_json() and a.hash == b.hash


def test_recorded_snapshots_of_the_bundled_library_name_no_cause():
    from tmsim.policies.check import decision_points
    from tmsim.traces import TreeIndex, load_library

    index = TreeIndex(load_library("traces"))
    roots = [r for r in index.roots if index.meta[r]["task"] == "friedman-mlp" and index.meta[r]["seed"] == 1]
    assert roots
    keep = set(roots) | {d for r in roots for d in index.descendants(r)}
    snaps = [s for s in decision_points(index, tasks=["friedman-mlp"]) if s.run_id in keep]
    assert len(snaps) > 50
    settings = {json.dumps(k) for k in HIDDEN_KEYS}
    for s in snaps:
        text = json.dumps({k: v for k, v in s.to_dict().items() if k not in ("run_id", "run_key")})
        assert not any(k in text for k in settings), s.run_id


def test_label_noise_switches_on_at_its_onset_and_every_fork_sees_the_same_labels():
    x = torch.zeros(200, 3)
    y = torch.arange(200) % 4
    data = {"train": (x, y), "val": (x[:10], y[:10])}
    d1 = prepare(data, {"label_noise": 0.3, "noise_onset": 7})
    d2 = prepare(data, {"label_noise": 0.3, "noise_onset": 7})
    assert torch.equal(d1["train_noisy"][1], d2["train_noisy"][1])
    flipped = (d1["train_noisy"][1] != y).float().mean()
    assert 0.2 < float(flipped) < 0.4 and int(d1["train_noisy"][1].max()) <= 3
    assert train_split(d1, {"noise_onset": 7}, 6)[1] is y
    assert train_split(d1, {"noise_onset": 7}, 7)[1] is d1["train_noisy"][1]
    # a regression target gets Gaussian noise of the drawn standard deviation
    yr = torch.zeros(2000, 1)
    dr = prepare({"train": (torch.zeros(2000, 2), yr)}, {"label_noise": 0.5})
    assert abs(float(dr["train_noisy"][1].std()) - 0.5) < 0.05


def test_a_loss_scale_jump_multiplies_the_gradient_from_its_onset_and_leaves_the_metrics_alone():
    assert loss_scale({"loss_scale": 6.0, "scale_onset": 5}, 4) is None
    assert loss_scale({"loss_scale": 6.0, "scale_onset": 5}, 5) == 6.0
    task = get_task("friedman-mlp")
    sc = task.scenario("diverge", 0)
    onset = sc.settings["scale_onset"]
    st = task.build(sc, 0)
    norms, losses = {}, {}
    for _ in range(onset):
        row = task.train_epoch(st)
        norms[st.epoch], losses[st.epoch] = row["grad_norm"], task.evaluate(st)["val_loss"]
    # epoch `onset` (the first trained on the scaled objective): its gradient norm jumps by about the scale
    assert norms[onset] / norms[onset - 1] > 0.5 * sc.settings["loss_scale"]
    assert all(v < 10 for e, v in losses.items() if e < onset)


def test_an_unstandardised_input_scale_reaches_every_split():
    task = get_task("cancer-mlp")
    sc = task.scenario("plateau", 0)
    d = task._data(sc)
    raw = task.data(sc)
    s = sc.settings["input_scale"]
    for split in ("train", "val", "test"):
        assert torch.allclose(d[split][0], raw[split][0] * s)


def test_a_policy_in_its_own_process_does_not_learn_the_scenario_family_from_the_run_id(tmp_path, monkeypatch):
    from pathlib import Path

    from tmsim.core.decision import call_policy_batch
    from tmsim.policies import load_spec, make_policy
    from tmsim.policies.check import decision_points
    from tmsim.policies.protocol import close_policy
    from tmsim.traces import TreeIndex, load_library

    plugins = Path(__file__).parent / "plugins"
    monkeypatch.syspath_prepend(str(plugins))
    monkeypatch.setenv("PYTHONPATH", str(plugins))
    spec = tmp_path / "reader.toml"
    spec.write_text('name = "run-id-reader"\nkind = "python"\ntarget = "plugin_policies:RunIdReader"\n')
    index = TreeIndex(load_library("traces"))
    snaps = [s for s in decision_points(index, tasks=["friedman-mlp"]) if ":s1:" in s.run_id][:6]
    pol = make_policy(load_spec(spec), index)
    try:
        answers, _ = call_policy_batch(pol, snaps, timeout=60)
    finally:
        close_policy(pol)
    texts = [a.text for a in answers]
    assert all("run_id=run-" in t for t in texts), texts
    assert not any(w in t for t in texts for w in ("friedman", "overfit", "diverge", "plateau", "healthy", ":s1"))
    # the harness's own snapshots keep their run ids (the audit trail names the run)
    assert all(s.run_id.startswith("friedman-mlp:") for s in snaps)
