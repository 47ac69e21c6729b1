"""The live hook in real trainers: every torch scheduler keeps an LR change, the hook reads what it steers, nothing a
policy returns raises on the training thread, an abandoned decision is recorded, the manager survives a checkpoint
resume, compute-bound policies run in their own process, and a promoted policy stays inside its scope."""
import json
import math
import os
import time

import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler as L

from tmsim.core import Hyperparams, Proposal
from tmsim.live import LiveManager, NotPromotedError
from tmsim.tasks.actuators import KNOWN_SCHEDULERS, UnsupportedScheduler
from tmsim.policies import SequencePolicy
from tmsim.traces import load_library
from tmsim.traces.query import query


def _sgd(lr=0.1, **kw):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.1), nn.Linear(8, 1))
    return model, torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, **kw)


def _mgr(policy, **kw):
    kw.setdefault("max_epochs", 6)
    kw.setdefault("mode", "sync")
    return LiveManager(policy, allow_unpromoted=True, **kw)


def _metrics(e):
    return {"train_loss": 1.0 / (e + 1), "val_loss": 1.0 + 0.01 * e}


# --- every scheduler keeps an LR change -------------------------------------------------------------------------
SCHEDULERS = {
    "LambdaLR": lambda o: L.LambdaLR(o, lambda s: 1 / (1 + 0.1 * s)),
    "MultiplicativeLR": lambda o: L.MultiplicativeLR(o, lambda s: 0.95),
    "StepLR": lambda o: L.StepLR(o, 7, 0.5),
    "MultiStepLR": lambda o: L.MultiStepLR(o, [5, 15, 25], 0.3),
    "ConstantLR": lambda o: L.ConstantLR(o, 0.3, total_iters=15),
    "LinearLR": lambda o: L.LinearLR(o, 0.2, 1.0, total_iters=20),
    "ExponentialLR": lambda o: L.ExponentialLR(o, 0.97),
    "SequentialLR": lambda o: L.SequentialLR(o, [L.LinearLR(o, 0.1, 1.0, total_iters=12),
                                                 L.CosineAnnealingLR(o, 30, eta_min=1e-3)], milestones=[15]),
    "CosineAnnealingLR": lambda o: L.CosineAnnealingLR(o, 30, eta_min=0.01),
    "ChainedScheduler": lambda o: L.ChainedScheduler([L.ConstantLR(o, 0.5, total_iters=12), L.ExponentialLR(o, 0.98)]),
    "ReduceLROnPlateau": lambda o: L.ReduceLROnPlateau(o, patience=2, factor=0.5, min_lr=1e-3),
    "CyclicLR": lambda o: L.CyclicLR(o, 0.01, 0.1, step_size_up=6),
    "CosineAnnealingWarmRestarts": lambda o: L.CosineAnnealingWarmRestarts(o, 8, eta_min=0.01),
    "OneCycleLR": lambda o: L.OneCycleLR(o, 0.1, total_steps=45),
    "PolynomialLR": lambda o: L.PolynomialLR(o, total_iters=40, power=2.0),
}


def test_the_scheduler_table_covers_every_scheduler_torch_ships():
    shipped = {n for n in L.__all__ if n not in ("LRScheduler",)}
    assert shipped == set(SCHEDULERS) == set(KNOWN_SCHEDULERS)


def _lr_trace(name, policy):
    """LRs of 40 steps (epochs of 5 steps); the manager decides at epoch 2 (after step 10)."""
    model, opt = _sgd()
    sched = SCHEDULERS[name](opt)
    mgr = _mgr(policy, max_epochs=8, decide_every=2, optimizer=opt, scheduler=sched, model=model)
    mgr.on_epoch_end(_metrics(0))
    lrs = []
    for e in range(1, 9):
        for _ in range(5):
            opt.step()
            sched.step(1.0) if name == "ReduceLROnPlateau" else sched.step()
            mgr.on_step_end()
            lrs.append(opt.param_groups[0]["lr"])
        mgr.on_epoch_end(_metrics(e))
    return lrs, mgr


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_an_lr_change_survives_every_torch_scheduler(name):
    twin, _ = _lr_trace(name, SequencePolicy([]))
    steered, mgr = _lr_trace(name, SequencePolicy(["lr_down"]))
    assert mgr.decision_rows[0]["action"] == "lr_down"
    assert steered[:10] == twin[:10]
    ratios = [b / a for a, b in zip(twin[10:], steered[10:]) if a > 0]
    assert len(ratios) >= 20 and all(r == pytest.approx(0.5, rel=1e-9) for r in ratios), (name, min(ratios), max(ratios))
    # the trace's nominal LR halves at the decision and the decisions row says what was read before and after
    applied = json.loads(mgr.decision_rows[0]["action_json"])["applied"]["lr"]
    assert applied["after"] == pytest.approx(applied["before"] / 2, rel=1e-12)


def test_a_scheduler_of_unknown_lineage_is_refused_at_start_by_name():
    class HomeMade(L.LRScheduler):
        def get_lr(self):
            return [0.1 * 0.99 ** self.last_epoch for _ in self.optimizer.param_groups]

    model, opt = _sgd()
    with pytest.raises(UnsupportedScheduler, match="HomeMade"):
        _mgr(SequencePolicy([]), optimizer=opt, scheduler=HomeMade(opt))
    # a subclass of one of torch's keeps that class's state, and is taken
    class MyStep(L.StepLR):
        pass

    _mgr(SequencePolicy([]), optimizer=opt, scheduler=MyStep(opt, 3))


# --- the hook reads what it steers --------------------------------------------------------------------------------
def test_knobs_are_read_from_the_optimizer_and_model_not_from_a_mirror(tmp_path):
    torch.manual_seed(0)
    emb = nn.Embedding(10, 4)
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.1), nn.Linear(8, 1))
    opt = torch.optim.AdamW([{"params": model.parameters(), "weight_decay": 0.01},
                             {"params": emb.parameters(), "weight_decay": 0.0}], lr=1e-3)
    holder = nn.ModuleList([model, emb])
    mgr = _mgr(SequencePolicy(["weight_decay_up", "dropout_up"]), max_epochs=6, decide_every=2, optimizer=opt,
               model=holder, record_dir=tmp_path / "rec")
    assert mgr.hparams == Hyperparams(lr=1e-3, weight_decay=0.01, dropout=0.1)
    for e in range(7):
        mgr.on_epoch_end(_metrics(e))
    mgr.close()
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(0.1)  # 0.01 x 10, not 0 -> 5e-4
    assert opt.param_groups[1]["weight_decay"] == 0.0  # the embeddings' group deliberately at zero stays there
    assert model[1].p == pytest.approx(0.2)  # 0.1 + 0.1, not 0 -> 0.1
    rows = query("select epoch, weight_decay, dropout from epochs order by epoch", tmp_path / "rec").to_pylist()
    assert [(r["weight_decay"], r["dropout"]) for r in rows][1:6:2] == [(0.01, 0.1), (pytest.approx(0.1), 0.1),
                                                                          (pytest.approx(0.1), pytest.approx(0.2))]
    acts = [json.loads(j) for j in query("select action_json from decisions order by epoch", tmp_path / "rec")
            .column("action_json").to_pylist()]
    assert acts[0]["applied"] == {"weight_decay": {"before": 0.01, "after": pytest.approx(0.1)}}
    assert acts[1]["applied"] == {"dropout": {"before": 0.1, "after": pytest.approx(0.2)}}


def test_an_action_with_nothing_to_act_on_is_neither_offered_nor_applied():
    seen = []

    class Wants:
        policy_id, version = "wants", "1"

        def decide(self, snap):
            seen.append(snap.offered)
            return Proposal(action="dropout_up")

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 1))  # no dropout anywhere
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mgr = _mgr(Wants(), max_epochs=3, optimizer=opt, model=model)
    for e in range(3):
        mgr.on_epoch_end(_metrics(e))
    assert "dropout_up" not in seen[0] and "lr_down" in seen[0]
    assert [r["violations"] for r in mgr.decision_rows] == [["no_target"]] * 2
    assert all(r["source"] == "fallback" and r["action"] == "continue" for r in mgr.decision_rows)
    assert mgr.history[-1]["dropout"] == 0.0


# --- nothing a policy returns raises on the training thread -------------------------------------------------------
class _BadDict(dict):
    def get(self, *a):
        raise RuntimeError("get")

    def __getitem__(self, k):
        raise RuntimeError("getitem")


class _Returns:
    version = "1"
    policy_id = "returns"

    def __init__(self, out):
        self.out = out

    def decide(self, snap):
        return self.out


class _RaisingId(_Returns):
    @property
    def policy_id(self):
        raise RuntimeError("policy_id")


class _Version:
    def __str__(self):
        raise RuntimeError("str")


class _OwnBatch(_Returns):
    """A policy that claims to guard itself: its call_batch is policy code and must not be trusted."""

    def call_batch(self, snaps, limit):
        raise SystemExit(3)


class _OwnBatchGarbage(_Returns):
    def call_batch(self, snaps, limit):
        return [_BadDict(action="lr_up")], [0.0]


ADVERSARIAL = {
    "dict whose get raises": lambda: _Returns(_BadDict(action="lr_down")),
    "model_construct with an object value": lambda: _Returns(Proposal.model_construct(action="set_lr", value=object())),
    "model_construct with an object action": lambda: _Returns(Proposal.model_construct(action=object())),
    "policy_id that raises": lambda: _RaisingId("lr_down"),
    "version whose str raises": lambda: type("V", (_Returns,), {"version": _Version()})("lr_down"),
    "its own call_batch raising SystemExit": lambda: _OwnBatch("lr_down"),
    "its own call_batch returning garbage": lambda: _OwnBatchGarbage("lr_down"),
}


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("case", sorted(ADVERSARIAL))
def test_adversarial_output_never_raises_on_the_training_thread(case, mode, tmp_path):
    model, opt = _sgd()
    sched = L.LambdaLR(opt, lambda s: 1.0)
    mgr = _mgr(ADVERSARIAL[case](), max_epochs=4, optimizer=opt, scheduler=sched, model=model, mode=mode,
               record_dir=tmp_path / "rec")
    for e in range(5):
        mgr.on_epoch_end(_metrics(e))
        for _ in range(3):
            opt.step()
            sched.step()
            mgr.on_step_end()
        mgr.wait(2.0)
    mgr.close()
    rows = mgr.decision_rows
    assert len(rows) == 3
    for r in rows:
        assert r["action"] in ("continue", "lr_down") and isinstance(r["policy_id"], str)
        if r["action"] == "continue":
            assert r["source"] == "fallback" and r["violations"]
    if r["action"] == "lr_down":  # a policy whose name or version could not be read still decides; it is named by type
        assert opt.param_groups[0]["lr"] == pytest.approx(0.1 / 8)
    else:
        assert opt.param_groups[0]["lr"] == pytest.approx(0.1)
    assert load_library(tmp_path / "rec", strict=True).decisions.num_rows == 3


# --- close ---------------------------------------------------------------------------------------------------------
class Slow:
    """Answers lr_down after ``seconds``."""
    policy_id, version = "slow", "1"

    def __init__(self, seconds):
        self.seconds = seconds

    def decide(self, snap):
        time.sleep(self.seconds)
        return "lr_down"


def test_a_decision_in_flight_at_close_is_recorded_as_abandoned_and_close_is_bounded(tmp_path):
    model, opt = _sgd()
    mgr = _mgr(Slow(20), mode="async", max_epochs=4, optimizer=opt, model=model, close_timeout=0.3,
               record_dir=tmp_path / "rec")
    mgr.on_epoch_end(_metrics(0))
    mgr.on_epoch_end(_metrics(1))
    for _ in range(4):
        mgr.on_step_end()
    t0 = time.perf_counter()
    mgr.close()
    assert time.perf_counter() - t0 < 5
    (row,) = mgr.decision_rows
    assert row["violations"] == ["abandoned"] and row["source"] == "fallback" and row["action"] == "continue"
    assert row["latency_ms"] >= 300 and row["staleness_steps"] == 4 and row["step"] == 0
    assert opt.param_groups[0]["lr"] == 0.1
    lib = load_library(tmp_path / "rec", strict=True)
    assert lib.decisions["violations"].to_pylist() == [["abandoned"]]


# --- resume ------------------------------------------------------------------------------------------------------
def test_a_plain_loop_resumes_from_saved_state_as_a_linked_branch(tmp_path):
    model, opt = _sgd()
    rec = tmp_path / "rec"
    first = _mgr(SequencePolicy(["lr_down", "lr_down"]), max_epochs=6, optimizer=opt, model=model, record_dir=rec,
                 run_id="live:custom:orig")
    for e in range(3):
        first.on_epoch_end(_metrics(e))
        for _ in range(2):
            first.on_step_end()
    state = json.loads(json.dumps(first.state_dict()))  # as saved beside a checkpoint
    ckpt = {"opt": opt.state_dict(), "model": model.state_dict()}
    first.write_trace(rec)  # what the first process left behind
    # a new process: fresh objects, restored from the checkpoint, and a fresh policy object
    model2, opt2 = _sgd()
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    resumed = _mgr(SequencePolicy(["lr_down", "lr_down"]), max_epochs=6, optimizer=opt2, model=model2,
                   record_dir=rec, resume_state=state)
    assert resumed.parent_run_id == "live:custom:orig" and resumed.epoch == 2 and resumed.step == 6
    assert resumed.hparams.lr == pytest.approx(0.025)  # both changes the first run applied are in force
    for e in range(3, 7):
        resumed.on_epoch_end(_metrics(e))
    resumed.close()
    lib = load_library(rec, strict=True)
    runs = {r["run_id"]: r for r in lib.runs.to_pylist()}
    child = runs[resumed.run_id]
    assert child["parent_run_id"] == "live:custom:orig" and child["branch_action"] == "resume"
    assert child["branch_epoch"] == 2 and child["root_run_id"] == "live:custom:orig"
    epochs = query(f"select epoch from lineage where lineage_run_id = '{resumed.run_id}' order by epoch", rec)
    assert epochs.column("epoch").to_pylist() == list(range(7))
    # the decisions at epochs 1 and 2 were the first run's; the resumed one made the rest and counted them
    dec = query("select run_id, epoch from decisions order by epoch", rec).to_pylist()
    assert [(d["run_id"] == resumed.run_id, d["epoch"]) for d in dec] == [(False, 1), (False, 2), (True, 3),
                                                                          (True, 4), (True, 5)]


# --- compute-bound policies run in their own process --------------------------------------------------------------
def _first_decision_landed(mgr, seconds=60):
    """Epochs 0 and 1 (a decision), then steps until its answer is applied; closes the manager."""
    mgr.on_epoch_end(_metrics(0))
    mgr.on_epoch_end(_metrics(1))
    deadline = time.perf_counter() + seconds
    while mgr._pending is not None and time.perf_counter() < deadline:
        mgr.on_step_end()
        time.sleep(0.01)
    mgr.close()


def test_a_compute_kind_runs_in_its_own_process_and_still_steers(tmp_path, monkeypatch):
    spec = tmp_path / "halve.toml"
    spec.write_text('name = "halve"\nkind = "sequence"\n[settings]\nactions = ["lr_down"]\n')
    model, opt = _sgd()
    mgr = LiveManager.from_spec(spec, promotions=tmp_path / "none", allow_unpromoted=True, policy_process=True,
                                max_epochs=3, optimizer=opt, model=model, mode="async")
    assert mgr.policy_process
    _first_decision_landed(mgr)
    assert mgr.decision_rows[0]["action"] == "lr_down" and opt.param_groups[0]["lr"] == pytest.approx(0.05)
    assert mgr.policy._proc is None  # the manager stopped the process it started


class BusyHalve:
    """Half a second of pure-Python work per decision (it holds the GIL), then lr_down."""
    policy_id, version = "busy-halve", "1"

    def decide(self, snap):
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 0.5:
            sum(i * i for i in range(1000))
        return "lr_down"


def test_a_policy_object_can_run_in_its_own_process_too():
    model, opt = _sgd()
    mgr = _mgr(BusyHalve(), mode="async", max_epochs=3, optimizer=opt, model=model, policy_process=True)
    assert mgr.policy_process and mgr._identity.policy_id == "busy-halve"
    _first_decision_landed(mgr)
    assert mgr.decision_rows[0]["action"] == "lr_down" and opt.param_groups[0]["lr"] == pytest.approx(0.05)
    with pytest.raises(ValueError, match="cannot be sent to another process"):
        _mgr(type("Local", (), {"decide": lambda self, s: "continue", "lock": __import__("threading").Lock()})(),
             policy_process=True, optimizer=opt)


def test_compute_kinds_default_to_a_process_and_cheap_ones_to_a_thread():
    from tmsim.live.manager import COMPUTE_KINDS

    assert {"llm", "gbm"} <= COMPUTE_KINDS and "rules" not in COMPUTE_KINDS


# --- promotions directory and scope --------------------------------------------------------------------------------
def test_the_default_promotions_directory_is_the_working_trees(tmp_path, monkeypatch):
    from tmsim.core.config import default_promotions

    (tmp_path / "proj" / "sub").mkdir(parents=True)
    (tmp_path / "proj" / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    monkeypatch.delenv("TMSIM_PROMOTIONS", raising=False)
    monkeypatch.chdir(tmp_path / "proj" / "sub")
    assert default_promotions() == (tmp_path / "proj" / "eval" / "promotions").resolve()
    monkeypatch.setenv("TMSIM_PROMOTIONS", str(tmp_path / "elsewhere"))
    assert default_promotions() == tmp_path / "elsewhere"
    # the live hook looks there: no record in this working tree, so the bundled rules policy is refused
    monkeypatch.delenv("TMSIM_PROMOTIONS")
    from tmsim.cli import REPO

    with pytest.raises(NotPromotedError, match=str(tmp_path / "proj" / "eval" / "promotions")):
        LiveManager.from_spec(REPO / "policies" / "rules.toml", max_epochs=20, decide_every=5, task="digits-mlp",
                              scenario="overfit")


def test_a_promoted_policy_outside_its_scope_is_refused_unless_a_reason_is_given(tmp_path, monkeypatch):
    from tmsim.cli import REPO

    monkeypatch.chdir(REPO)
    kw = dict(hparams=Hyperparams(lr=0.1), decide_every=5)
    inside = LiveManager.from_spec("policies/rules.toml", max_epochs=20, task="digits-mlp", scenario="overfit", **kw)
    assert inside.scope == "within the promoted scope"
    assert inside.bounds.model_dump() == json.loads((REPO / "eval" / "promotions" / "rules.json").read_text())["bounds"]
    for bad, match in ((dict(max_epochs=20, task="my-task", scenario="overfit"), "task 'my-task'"),
                       (dict(max_epochs=20, task="digits-mlp", scenario="healthy"), "scenario 'healthy'"),
                       (dict(max_epochs=200, task="digits-mlp", scenario="overfit"), "200 epochs")):
        with pytest.raises(NotPromotedError, match=match):
            LiveManager.from_spec("policies/rules.toml", **kw, **bad)
    mgr = LiveManager.from_spec("policies/rules.toml", max_epochs=20, task="my-task", scenario="overfit",
                                out_of_scope="trying it on a new task", record_dir=tmp_path / "rec", **kw)
    mgr.on_epoch_end(_metrics(0))
    mgr.close()
    settings = json.loads(load_library(tmp_path / "rec").runs["settings_json"][0].as_py())
    assert settings["scope"].startswith("OUTSIDE the promoted scope (override: trying it on a new task)")


def test_a_repeated_evaluation_index_is_refused():
    mgr = _mgr(SequencePolicy([]), hparams=Hyperparams(lr=0.1))
    mgr.on_epoch_end(_metrics(0), epoch=0)
    with pytest.raises(ValueError, match="new, larger index"):
        mgr.on_epoch_end(_metrics(0), epoch=0)


# --- the Hugging Face Trainer -------------------------------------------------------------------------------------
def _trainer(out, mgr, resume_from=None, **args):
    """A real Trainer on the offline scratch Qwen3-architecture model (as examples/live_hf_trainer.py)."""
    import gzip
    from importlib import resources

    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

    from examples.live_hf_trainer import REPO, Chunks
    from tmsim.live import TMSimCallback

    model_dir = str(REPO / "models" / "qwen3-tiny-scratch")
    tok = AutoTokenizer.from_pretrained(model_dir)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    text = gzip.decompress(resources.files("tmsim.data").joinpath("stdlib_docstrings.txt.gz").read_bytes()).decode()
    ids = tok(text[:6000], add_special_tokens=False)["input_ids"]
    split = int(len(ids) * 0.8)
    base = dict(output_dir=str(out), num_train_epochs=1, per_device_train_batch_size=4, per_device_eval_batch_size=16,
                learning_rate=5e-3, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, seed=0,
                disable_tqdm=True)
    base.update(args)
    return Trainer(model=model, args=TrainingArguments(**base), train_dataset=Chunks(ids[:split], 32),
                   eval_dataset=Chunks(ids[split:], 32), callbacks=[TMSimCallback(mgr, resume_from=resume_from)])


def test_hf_steps_cadence_one_decision_per_evaluation_with_its_step(tmp_path):
    # one evaluation before training (index 0), then 5 in it: max_epochs counts the evaluations of training
    mgr = _mgr(SequencePolicy(["continue"] * 10), max_epochs=5, record_dir=tmp_path / "rec")
    tr = _trainer(tmp_path / "out", mgr, eval_strategy="steps", eval_steps=4, max_steps=20)
    tr.evaluate()
    tr.train()
    evals = [h for h in tr.state.log_history if "eval_loss" in h]
    assert [round(h["epoch"], 2) for h in evals] == [0.16, 0.32, 0.48, 0.64, 0.8]  # all inside the first epoch
    assert [h["epoch"] for h in mgr.history] == list(range(6))
    assert [h["step"] for h in mgr.history] == [0, 4, 8, 12, 16, 20]
    # exactly one decision per evaluation of training but the last, each at its own step
    assert [(r["epoch"], r["step"]) for r in mgr.decision_rows] == [(1, 4), (2, 8), (3, 12), (4, 16)]
    assert all(h["train_loss"] is not None for h in mgr.history[1:])  # the mean of the losses logged in between
    rows = query("select epoch, step from epochs order by epoch", tmp_path / "rec").to_pylist()
    assert [r["step"] for r in rows] == [0, 4, 8, 12, 16, 20]


def test_hf_reads_weight_decay_from_the_arguments_and_leaves_the_no_decay_group_at_zero(tmp_path):
    mgr = _mgr(SequencePolicy(["weight_decay_up"]), max_epochs=2)
    tr = _trainer(tmp_path / "out", mgr, eval_strategy="epoch", num_train_epochs=2, weight_decay=0.01)
    tr.evaluate()
    assert mgr.hparams.weight_decay == 0.01 and mgr.hparams.lr == 5e-3
    tr.train()
    groups = tr.optimizer.param_groups
    assert sorted(g["weight_decay"] for g in groups) == [0.0, pytest.approx(0.1)]
    applied = json.loads(mgr.decision_rows[0]["action_json"])["applied"]
    assert applied == {"weight_decay": {"before": 0.01, "after": pytest.approx(0.1)}}


def test_hf_without_evaluations_warns_that_the_policy_is_never_asked(tmp_path, caplog):
    mgr = _mgr(SequencePolicy(["lr_down"]), max_epochs=2, hparams=Hyperparams(lr=5e-3))
    tr = _trainer(tmp_path / "out", mgr, eval_strategy="no", max_steps=3)
    with caplog.at_level("WARNING", logger="tmsim.live"):
        tr.train()
    assert "policy is never asked" in caplog.text and not mgr.decision_rows


def test_hf_resume_from_a_checkpoint_restores_the_manager_and_links_the_trace(tmp_path):
    from transformers import TrainerCallback

    class CrashAfter(TrainerCallback):
        """Ends the first process's training at step 14, after the checkpoint of step 12 (a crash, as the trace sees
        it: the manager is never closed)."""

        def on_step_end(self, args, state, control, **kw):
            if state.global_step >= 14:
                control.should_training_stop = True

    out, rec = tmp_path / "out", tmp_path / "rec"
    common = dict(eval_strategy="steps", eval_steps=4, max_steps=24, save_strategy="steps", save_steps=12)
    first = _mgr(SequencePolicy(["lr_down"] * 6), max_epochs=6, record_dir=rec, run_id="live:hf:first")
    tr = _trainer(out, first, **common)
    tr.add_callback(CrashAfter())
    tr.evaluate()
    tr.train()
    assert (out / "checkpoint-12" / "tmsim_live.json").exists()
    saved = json.loads((out / "checkpoint-12" / "tmsim_live.json").read_text())
    assert saved["step"] == 12 and len(saved["decisions"]) == 3  # evaluations at steps 4, 8, 12
    second = _mgr(SequencePolicy(["lr_down"] * 6), max_epochs=6, record_dir=rec)
    tr2 = _trainer(out, second, **common)
    tr2.train(resume_from_checkpoint=True)
    assert second.parent_run_id == "live:hf:first" and second.branch_epoch == 3
    # the optimizer and scheduler came back from the checkpoint with the three halvings, and two more followed
    assert second.hparams.lr == pytest.approx(5e-3 / 2 ** 5)
    assert [(r["epoch"], r["step"]) for r in second.decision_rows[3:]] == [(4, 16), (5, 20)]
    lib = load_library(rec, strict=True)
    child = next(r for r in lib.runs.to_pylist() if r["run_id"] == second.run_id)
    assert child["branch_action"] == "resume" and child["parent_run_id"] == "live:hf:first"
    steps = query(f"select step from lineage where lineage_run_id = '{second.run_id}' order by epoch", rec)
    assert steps.column("step").to_pylist() == [0, 4, 8, 12, 16, 20, 24]


def test_a_decision_in_flight_at_a_checkpoint_is_abandoned_in_the_saved_state_and_trace(tmp_path):
    model, opt = _sgd()
    rec = tmp_path / "rec"
    first = _mgr(Slow(3), mode="async", max_epochs=4, optimizer=opt, model=model, record_dir=rec,
                 run_id="live:custom:inflight", timeout=10)
    first.on_epoch_end(_metrics(0))
    first.on_epoch_end(_metrics(1))  # decision asked, still running
    first.on_step_end()
    state = json.loads(json.dumps(first.state_dict()))  # a checkpoint now
    first.write_trace(rec)  # what the checkpoint leaves on disk; then the process dies
    (row,) = state["decisions"]
    assert row["violations"] == ["abandoned"] and row["epoch"] == 1 and row["step"] == 0
    assert query("select epoch, violations from decisions", rec).to_pylist() == [{"epoch": 1, "violations": ["abandoned"]}]
    resumed = _mgr(SequencePolicy(["continue", "continue"]), max_epochs=4, optimizer=opt, model=model,
                   record_dir=rec, resume_state=state)
    for e in range(2, 5):
        resumed.on_epoch_end(_metrics(e))
    resumed.close()
    dec = query("select epoch, action, violations from decisions order by epoch", rec).to_pylist()
    assert [(d["epoch"], d["violations"]) for d in dec] == [(1, ["abandoned"]), (2, []), (3, [])]
    assert opt.param_groups[0]["lr"] == 0.1  # the abandoned decision was never applied on the resumed line


def test_a_decide_that_raises_on_lookup_is_a_policy_exception_not_a_timeout():
    class PropertyDecide:
        policy_id, version = "prop", "1"

        @property
        def decide(self):
            raise SystemExit("no decide")

    class Getattr:
        policy_id, version = "getattr", "1"

        def __getattr__(self, name):
            raise RuntimeError(name)

        def decide(self, snap):
            return "lr_down"

    for pol in (PropertyDecide(), Getattr()):
        model, opt = _sgd()
        mgr = _mgr(pol, max_epochs=3, optimizer=opt, timeout=5)
        for e in range(3):
            mgr.on_epoch_end(_metrics(e))
        kinds = [r["violations"] for r in mgr.decision_rows]
        assert kinds in ([["policy_exception"]] * 2, [[]] * 2), kinds
        assert all(r["latency_ms"] < 2000 for r in mgr.decision_rows)


def test_hf_several_eval_datasets_give_one_decision_point_per_step(tmp_path):
    mgr = _mgr(SequencePolicy(["continue"] * 5), max_epochs=4)
    tr = _trainer(tmp_path / "out", mgr, eval_strategy="steps", eval_steps=4, max_steps=16)
    tr.eval_dataset = {"a": tr.eval_dataset, "b": tr.eval_dataset}
    tr.evaluate()
    tr.train()
    assert [h["step"] for h in mgr.history] == [0, 4, 8, 12, 16]
    assert all(h["val_loss"] is not None for h in mgr.history)
    assert [(r["epoch"], r["step"]) for r in mgr.decision_rows] == [(1, 4), (2, 8), (3, 12)]
