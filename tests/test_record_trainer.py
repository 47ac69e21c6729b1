"""Trace trees of a user's own Hugging Face Trainer (`tmsim record --trainer`), decisions at its evaluation steps,
and the live hook on the same factory."""
import json

import pytest

from tmsim.cli import REPO, main
from tmsim.record_trainer import plan_branches
from tmsim.traces import load_library
from tmsim.traces.query import query

FACTORY = f"{REPO / 'examples' / 'hf_trainer_tree.py'}:make_trainer"


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    out = tmp_path_factory.mktemp("mine")
    assert main(["record", "--trainer", FACTORY, "--seeds", "0", "--depth", "1", "--out", str(out), "--quiet"]) == 0
    return out


def test_a_trainer_tree_branches_every_action_at_a_step_based_decision_point(tree):
    lib = load_library(tree, strict=True)
    runs = {r["run_id"]: r for r in lib.runs.to_pylist()}
    root = "hf-trainer-tree:default:s0"
    kids = [r for r in runs.values() if r["parent_run_id"] == root]
    assert {r["branch_action"] for r in kids} == {"lr_down", "lr_up", "weight_decay_up", "dropout_up", "stop"}
    assert {r["branch_epoch"] for r in kids} == {1} and runs[root]["decide_every"] == 1
    # evaluations every 4 optimizer steps: the trace's epoch is the evaluation's index, step the optimizer step
    rows = query(f"select epoch, step from epochs where run_id = '{root}' order by epoch", tree).to_pylist()
    assert [(r["epoch"], r["step"]) for r in rows] == [(0, 0), (1, 4), (2, 8), (3, 12), (4, 16)]
    lr_down = f"{root}+e1:lr_down"
    line = query(f"select epoch, step, lr from lineage where lineage_run_id = '{lr_down}' order by epoch", tree)
    assert line.column("step").to_pylist() == [0, 4, 8, 12, 16]
    lrs = line.column("lr").to_pylist()
    assert lrs[:2] == [5e-3, 5e-3] and lrs[2:] == [pytest.approx(2.5e-3)] * 3
    wd = query(f"select weight_decay from epochs where run_id = '{root}+e1:weight_decay_up'", tree)
    assert wd.column("weight_decay").to_pylist() == [pytest.approx(0.1)] * 3  # 0.01 from the arguments, x10
    assert runs[f"{root}+e1:stop"]["end_epoch"] == 1
    # the decisions view has the step column too (recorded trees hold no decisions)
    assert query("select step from decisions", tree).num_rows == 0
    assert all(r["train_loss"] is not None for r in lib.epochs.to_pylist())


def test_dry_run_prints_the_estimate_and_records_nothing_and_a_rerun_resumes(tree, tmp_path, capsys):
    assert main(["record", "--trainer", FACTORY, "--seeds", "0,1", "--depth", "1", "--out", str(tmp_path / "x"),
                 "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "6 runs (5 branches" in out and "optimizer steps x" in out and "s/step measured" in out
    assert "dry run: nothing recorded" in out and not (tmp_path / "x" / "runs").exists()
    assert main(["record", "--trainer", FACTORY, "--seeds", "0", "--depth", "1", "--out", str(tree)]) == 0
    assert "0 tree(s) (1 already there)" in capsys.readouterr().out


def test_a_trainer_that_never_evaluates_or_logs_too_rarely_is_refused_by_name(tmp_path, capsys):
    mod = tmp_path / "bad_trainer.py"
    mod.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "from examples.hf_trainer_tree import make_trainer as base\n"
        "def never(output_dir, seed=0):\n"
        "    t = base(output_dir, seed)\n    t.args.eval_strategy = 'no'\n    return t\n"
        "def rare_logs(output_dir, seed=0):\n"
        "    t = base(output_dir, seed)\n    t.args.logging_steps = 10\n    return t\n")
    for fn, out, match in (("never", "a", "eval_strategy='no'"), ("rare_logs", "b", "logging_steps"),
                           ("f", "c", "no file")):
        target = f"{mod}:{fn}" if fn != "f" else f"{tmp_path / 'missing.py'}:f"
        assert main(["record", "--trainer", target, "--seeds", "0", "--out", str(tmp_path / out)]) == 2
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("tmsim:")]
        assert len(err) == 1 and match in err[0], err  # one line naming the problem


def test_budgeted_trainer_trees_keep_the_root_and_single_actions_first():
    full = plan_branches([1, 2, 3], ("lr_down", "lr_up", "stop"), depth=2, budget=None, seed_key="k")
    assert full[0] == () and len([b for b in full if len(b) == 1]) == 6
    assert not any(len(b) == 2 and b[0][1] == "stop" for b in full)  # stop ends a path
    cut = plan_branches([1, 2, 3], ("lr_down", "lr_up", "stop"), depth=2, budget=9, seed_key="k")
    assert len(cut) == 9 and cut[:7] == full[:7]
    assert cut == plan_branches([1, 2, 3], ("lr_down", "lr_up", "stop"), depth=2, budget=9, seed_key="k")


def test_the_live_hook_on_the_same_factory_decides_once_per_evaluation(tmp_path):
    from examples.hf_trainer_tree import make_trainer
    from tmsim.live import LiveManager, TMSimCallback
    from tmsim.policies import SequencePolicy

    # 4 evaluations during training (steps 4, 8, 12, 16): decisions at the first three, the last ends the run
    mgr = LiveManager(SequencePolicy(["continue", "lr_down", "continue"]), max_epochs=4, mode="sync",
                      allow_unpromoted=True, task="hf-trainer-tree", record_dir=tmp_path / "rec")
    tr = make_trainer(str(tmp_path / "out"))
    tr.add_callback(TMSimCallback(mgr))
    tr.evaluate()
    tr.train()
    assert [(r["epoch"], r["step"], r["action"]) for r in mgr.decision_rows] == [(1, 4, "continue"), (2, 8, "lr_down"),
                                                                                (3, 12, "continue")]
    rows = query("select epoch, step from decisions order by epoch", tmp_path / "rec").to_pylist()
    assert [(r["epoch"], r["step"]) for r in rows] == [(1, 4), (2, 8), (3, 12)]
    applied = json.loads(mgr.decision_rows[1]["action_json"])["applied"]["lr"]
    assert applied["after"] == pytest.approx(applied["before"] / 2)


def test_the_plan_follows_the_trainers_own_evaluation_rule(tmp_path):
    import torch

    from examples.hf_trainer_tree import make_trainer
    from tmsim.record_trainer import _eval_schedule

    assert _eval_schedule(make_trainer(str(tmp_path), max_steps=16)) == (16, [4, 8, 12, 16])
    assert _eval_schedule(make_trainer(str(tmp_path), max_steps=14)) == (14, [4, 8, 12, 14])  # and at the end
    tr = make_trainer(str(tmp_path), max_steps=16)
    tr.args.eval_delay = 8
    assert _eval_schedule(tr) == (16, [8, 12, 16])
    tr = make_trainer(str(tmp_path))
    tr.eval_dataset = {"a": tr.eval_dataset, "b": tr.eval_dataset}
    with pytest.raises(ValueError, match="several eval datasets"):
        _eval_schedule(tr)
    assert torch  # the factory's module imports torch


def test_a_grandchild_keeps_the_dropout_its_parent_branch_set(tmp_path):
    from tmsim.record_trainer import TrainerPlan, TrainerTreeSpec, record_trainer_tree

    spec = TrainerTreeSpec(FACTORY, "hf-trainer-tree", depth=2)
    up = ((1, "dropout_up"),)
    plan = TrainerPlan(16, [4, 8, 12, 16], ("dropout_up", "lr_down"),
                       [(), up, up + ((2, "dropout_up"),), up + ((2, "lr_down"),)])
    runs, epochs = record_trainer_tree(spec, tmp_path, plan)
    rows = {}
    for r in epochs.to_pylist():
        rows.setdefault(r["run_id"], []).append(r["dropout"])
    root = spec.run_id(())
    assert rows[root] == [0.0] * 5 and rows[spec.run_id(up)] == [pytest.approx(0.1)] * 3
    # the checkpoint holds no dropout: the recorder carries it to the grandchildren, then applies their action
    assert rows[spec.run_id(up + ((2, "dropout_up"),))] == [pytest.approx(0.2)] * 2
    assert rows[spec.run_id(up + ((2, "lr_down"),))] == [pytest.approx(0.1)] * 2
    assert not (tmp_path / ".tmsim-trainer-work").exists()


def test_a_factory_that_raises_is_one_line_and_leaves_no_work_behind(tmp_path, capsys):
    mod = tmp_path / "raising.py"
    mod.write_text("def make_trainer(output_dir, seed=0):\n    raise RuntimeError('my dataset is missing')\n")
    assert main(["record", "--trainer", f"{mod}:make_trainer", "--seeds", "0", "--out", str(tmp_path / "o")]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("tmsim:")]
    assert err == ["tmsim: error: the trainer factory make_trainer raised RuntimeError: my dataset is missing"]
    assert not (tmp_path / "o" / ".tmsim-trainer-work").exists()
