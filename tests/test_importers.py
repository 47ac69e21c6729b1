"""Importers of existing training logs (``tmsim import``): every input file here is written by the real library.

- Hugging Face: a real ``transformers.Trainer`` run on a tiny torch model writes ``trainer_state.json`` (via
  ``Trainer.save_state``) and, through its own ``TensorBoardCallback``, TensorBoard event files with its tag names.
- TensorBoard: also ``torch.utils.tensorboard.SummaryWriter`` with custom tags (read with ``--metric`` overrides).
- MLflow: a real SQLite tracking store and a real file store, written with ``mlflow.log_metric(..., step=...)``.
- neuropt: the JSONL written by neuropt's own ``ArchSearch`` (``backend="none"``: random search, no LLM) with a
  tiny ``train_fn`` returning per-epoch curves.
"""
from __future__ import annotations

import json
import math

import pytest

from tmsim.cli import main
from tmsim.traces.format import TraceError, load_library
from tmsim.traces.importers import import_logs
from tmsim.traces.query import connect
from tmsim.traces.summary import summarize

torch = pytest.importorskip("torch")


def _check_library(out, task, n_runs):
    lib = load_library(out, strict=True)
    assert lib.problems == []
    runs = lib.runs.to_pylist()
    assert len(runs) == n_runs
    assert {r["run_id"] for r in runs} == {f"{task}:imported:s{i}" for i in range(n_runs)}
    for r in runs:
        assert (r["scenario"], r["source"], r["depth"], r["parent_run_id"]) == ("imported", "imported", 0, None)
    eps = lib.epochs.to_pylist()
    for r in runs:
        mine = [e for e in eps if e["run_id"] == r["run_id"]]
        assert [e["epoch"] for e in mine] == sorted({e["epoch"] for e in mine})  # one row per point
        assert r["end_epoch"] == r["max_epochs"] == mine[-1]["epoch"]
    assert "imported" in summarize(out)
    return lib


# ------------------------------------------------------------------------------------------ Hugging Face


@pytest.fixture(scope="module")
def hf_run(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("tensorboard")
    import numpy as np

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))

        def forward(self, x, labels=None):
            logits = self.net(x)
            loss = torch.nn.functional.cross_entropy(logits, labels) if labels is not None else None
            return {"loss": loss, "logits": logits}

    g = torch.Generator().manual_seed(0)
    xs = torch.randn(64, 4, generator=g)
    ys = (xs[:, 0] > 0).long()
    data = [{"x": xs[i], "labels": ys[i]} for i in range(64)]
    out = tmp_path_factory.mktemp("hf")

    def acc(p):
        return {"accuracy": float((np.argmax(p.predictions, -1) == p.label_ids).mean())}

    args = transformers.TrainingArguments(
        output_dir=str(out / "run"), max_steps=6, eval_strategy="steps", eval_steps=2, logging_steps=1,
        per_device_train_batch_size=8, per_device_eval_batch_size=32, learning_rate=0.05, save_strategy="no",
        report_to=["tensorboard"], use_cpu=True, seed=0, disable_tqdm=True,
        dataloader_num_workers=0)
    trainer = transformers.Trainer(model=Tiny(), args=args, train_dataset=data[:48], eval_dataset=data[48:],
                                   compute_metrics=acc)
    trainer.train()
    trainer.save_state()
    return out


def test_hf_trainer_state(hf_run, tmp_path):
    state = json.loads((hf_run / "run" / "trainer_state.json").read_text())
    evals = {e["step"]: e for e in state["log_history"] if "eval_loss" in e}
    trains = {e["step"]: e for e in state["log_history"] if "loss" in e}
    assert sorted(evals) == [2, 4, 6]
    res = import_logs("hf", [str(hf_run / "run")], tmp_path / "lib", task="tiny")
    lib = _check_library(tmp_path / "lib", "tiny", 1)
    rows = lib.epochs.to_pylist()
    assert [(r["epoch"], r["step"]) for r in rows] == [(1, 2), (2, 4), (3, 6)]
    for r in rows:
        assert r["val_loss"] == pytest.approx(evals[r["step"]]["eval_loss"])
        assert r["val_acc"] == pytest.approx(evals[r["step"]]["eval_accuracy"])
        assert r["train_loss"] == pytest.approx(trains[r["step"]]["loss"])
        assert r["lr"] == pytest.approx(trains[r["step"]]["learning_rate"])
        assert r["test_loss"] is None and r["train_acc"] is None and not r["diverged"]
    assert res.rows == 3 and lib.runs["status"][0].as_py() == "complete"


def test_hf_cli_query_summary(hf_run, tmp_path, capsys):
    assert main(["import", "hf", str(hf_run / "run" / "trainer_state.json"), "--out", str(tmp_path / "lib")]) == 0
    assert "imported 1 run(s), 3 epochs row(s)" in capsys.readouterr().out
    assert main(["query", "--traces", str(tmp_path / "lib"), "select * from epochs", "--format", "csv"]) == 0
    assert capsys.readouterr().out.count("\n") == 4  # header and 3 rows
    assert main(["summary", "--traces", str(tmp_path / "lib")]) == 0
    assert "run" in capsys.readouterr().out  # default task: the output directory's name
    # importing again under the same task refuses, unless --overwrite
    assert main(["import", "hf", str(hf_run / "run"), "--out", str(tmp_path / "lib")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["import", "hf", str(hf_run / "run"), "--out", str(tmp_path / "lib"), "--overwrite"]) == 0


def test_hf_bad_input(tmp_path, capsys):
    assert main(["import", "hf", str(tmp_path / "nope.json"), "--out", str(tmp_path / "lib")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope.json" in err and "Traceback" not in err
    bad = tmp_path / "trainer_state.json"
    bad.write_text(json.dumps({"log_history": {"loss": 1}}))
    with pytest.raises(TraceError, match=r"trainer_state.json: field 'log_history'"):
        import_logs("hf", [str(bad)], tmp_path / "lib")
    bad.write_text(json.dumps({"log_history": [{"eval_loss": 1.0}]}))
    with pytest.raises(TraceError, match=r"log_history\[0\]: field 'step' missing"):
        import_logs("hf", [str(bad)], tmp_path / "lib")
    assert not (tmp_path / "lib").exists()


# ------------------------------------------------------------------------------------------ TensorBoard


def test_tensorboard_from_hf_callback(hf_run, tmp_path):
    """The Trainer's own TensorBoardCallback tags (train/loss, eval/loss, ...) are the defaults."""
    logdir = next(p.parent for p in (hf_run / "run").rglob("*tfevents*"))
    state = json.loads((hf_run / "run" / "trainer_state.json").read_text())
    evals = {e["step"]: e["eval_loss"] for e in state["log_history"] if "eval_loss" in e}
    import_logs("tensorboard", [str(logdir)], tmp_path / "lib", task="tb")
    lib = _check_library(tmp_path / "lib", "tb", 1)
    rows = lib.epochs.to_pylist()
    assert [r["step"] for r in rows] == [2, 4, 6]
    for r in rows:
        assert r["val_loss"] == pytest.approx(evals[r["step"]], rel=1e-6)  # stored as float32 by TensorBoard
        assert r["val_acc"] is not None and r["train_loss"] is not None and r["lr"] > 0


def test_tensorboard_summary_writer_custom_tags(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(log_dir=str(tmp_path / "tb"))
    for step in range(0, 31, 5):
        w.add_scalar("loss/train", 2.0 / (step + 1), step)
        if step % 10 == 0:
            w.add_scalar("loss/val", 2.5 / (step + 1), step)
        if step == 20:
            w.add_scalar("opt/lr", 0.01, step)
    w.close()
    argv = ["import", "tensorboard", str(tmp_path / "tb"), "--out", str(tmp_path / "lib"), "--task", "sw",
            "--metric", "train_loss=loss/train", "--metric", "val_loss=loss/val", "--metric", "lr=opt/lr"]
    assert main(argv) == 2  # steps 0 and 10 come before the first logged learning rate
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "field 'lr'" in err and str(tmp_path / "tb") in err
    assert main(argv + ["--lr", "0.1"]) == 0
    rows = _check_library(tmp_path / "lib", "sw", 1).epochs.to_pylist()
    assert [(r["epoch"], r["step"]) for r in rows] == [(0, 0), (1, 10), (2, 20), (3, 30)]
    assert [r["lr"] for r in rows] == pytest.approx([0.1, 0.1, 0.01, 0.01])  # TensorBoard stores float32
    assert all(r["val_acc"] is None for r in rows)  # never logged: null
    assert rows[1]["train_loss"] == pytest.approx(2.0 / 11)


def test_tensorboard_bad_input(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    (tmp_path / "empty").mkdir()
    assert main(["import", "tensorboard", str(tmp_path / "empty"), "--out", str(tmp_path / "lib")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "empty: no TensorBoard event file" in err
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(log_dir=str(tmp_path / "tb"))
    w.add_scalar("something", 1.0, 1)
    w.close()
    with pytest.raises(TraceError, match=r"tb: no scalar tag 'eval/loss'"):
        import_logs("tensorboard", [str(tmp_path / "tb")], tmp_path / "lib")


# ------------------------------------------------------------------------------------------ MLflow


def _log_mlflow(uri, experiment="exp-a"):
    mlflow = pytest.importorskip("mlflow")
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment)
    for k, lr in enumerate((0.1, 0.01)):
        with mlflow.start_run(run_name=f"lr{lr}"):
            mlflow.log_param("learning_rate", lr)
            for step in (1, 2, 3, 4):
                mlflow.log_metric("loss", 1.0 / step + k, step=step)
                mlflow.log_metric("learning_rate", lr, step=step)
                if step % 2 == 0:
                    mlflow.log_metric("eval_loss", 1.2 / step + k, step=step)
                    mlflow.log_metric("eval_accuracy", 0.5 + 0.1 * step, step=step)
    with mlflow.start_run(run_name="no-eval"):
        mlflow.log_metric("loss", 1.0, step=1)


@pytest.mark.parametrize("store", ["sqlite", "file"])
def test_mlflow(tmp_path, capsys, monkeypatch, store):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 writes a file store only when asked to
    uri = f"sqlite:///{tmp_path}/m.db" if store == "sqlite" else (tmp_path / "mlruns").as_uri()
    _log_mlflow(uri)
    source = uri if store == "sqlite" else str(tmp_path / "mlruns")
    assert main(["import", "mlflow", source, "--out", str(tmp_path / "lib"), "--experiment", "exp-a"]) == 0
    cap = capsys.readouterr()
    assert "no metric 'eval_loss'" in cap.err and "imported 2 run(s), 4 epochs row(s)" in cap.out
    lib = _check_library(tmp_path / "lib", "exp-a", 2)
    rows = sorted(lib.epochs.to_pylist(), key=lambda r: (r["run_id"], r["epoch"]))
    assert [(r["run_id"][-2:], r["epoch"], r["step"], r["lr"]) for r in rows] == [
        ("s0", 1, 2, 0.1), ("s0", 2, 4, 0.1), ("s1", 1, 2, 0.01), ("s1", 2, 4, 0.01)]
    assert rows[1]["val_loss"] == pytest.approx(0.3) and rows[1]["train_loss"] == pytest.approx(0.25)
    assert rows[3]["val_acc"] == pytest.approx(0.9)
    settings = json.loads(lib.runs.to_pylist()[0]["settings_json"])
    assert settings["imported_from"] == "mlflow" and settings["mlflow_experiment"] == "exp-a"


def test_mlflow_bad_input(tmp_path, capsys):
    pytest.importorskip("mlflow")
    assert main(["import", "mlflow", f"sqlite:///{tmp_path}/missing.db", "--out", str(tmp_path / "lib")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.db: SQLite tracking database does not exist" in err
    assert not (tmp_path / "missing.db").exists()  # never created by the import
    _log_mlflow(f"sqlite:///{tmp_path}/m.db")
    with pytest.raises(TraceError, match=r"m.db: no MLflow experiment named 'nope' \(field 'experiment'\)"):
        import_logs("mlflow", [f"sqlite:///{tmp_path}/m.db"], tmp_path / "lib", experiment="nope")


# ------------------------------------------------------------------------------------------ neuropt


def test_neuropt_arch_search_log(tmp_path, capsys, monkeypatch):
    neuropt = pytest.importorskip("neuropt")
    monkeypatch.chdir(tmp_path)

    def train_fn(config):
        lr = config["lr"]
        if config["width"] == 3:
            raise RuntimeError("bad width")  # neuropt logs status 'error'
        val = [1.0 / (e + 1) + lr for e in range(4)]
        return {"score": val[-1], "train_losses": [v - 0.1 for v in val], "val_losses": val,
                "val_accuracies": [0.5, 0.6, 0.7, 0.8]}

    search = neuropt.ArchSearch(train_fn=train_fn, search_space={"lr": (1e-3, 1e-1), "width": [2, 3, 4]},
                                backend="none", log_path=str(tmp_path / "search.jsonl"), timeout=60)
    search.run(max_evals=6)
    lines = [json.loads(x) for x in (tmp_path / "search.jsonl").read_text().splitlines()]
    ok = [x for x in lines if x["status"] == "ok"]
    assert ok and len(lines) == 6
    capsys.readouterr()
    assert main(["import", "neuropt", str(tmp_path / "search.jsonl"), "--out", str(tmp_path / "lib")]) == 0
    cap = capsys.readouterr()
    assert f"imported {len(ok)} run(s), {4 * len(ok)} epochs row(s)" in cap.out
    assert cap.err.count("status 'error' -- skipped") == len(lines) - len(ok)
    lib = _check_library(tmp_path / "lib", "search", len(ok))
    rows = [r for r in lib.epochs.to_pylist() if r["run_id"] == "search:imported:s0"]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4] and all(r["step"] is None for r in rows)
    assert [r["val_loss"] for r in rows] == pytest.approx(ok[0]["curves"]["val_losses"])
    assert all(r["lr"] == pytest.approx(ok[0]["config"]["lr"]) for r in rows)
    assert math.isclose(rows[0]["train_loss"], ok[0]["curves"]["train_losses"][0])


def test_neuropt_bad_input(tmp_path, capsys):
    assert main(["import", "neuropt", str(tmp_path / "search.jsonl"), "--out", str(tmp_path / "lib")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "search.jsonl: file does not exist" in err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "status": "ok", "curves": {"val_losses": [1.0]}, "config": {}}\n{not json\n')
    with pytest.raises(TraceError, match=r"bad.jsonl:2: not valid JSON"):
        import_logs("neuropt", [str(bad)], tmp_path / "lib")
    bad.write_text('{"id": 1, "status": "ok", "curves": {"val_losses": "x"}, "config": {"lr": 0.1}}\n')
    with pytest.raises(TraceError, match=r"bad.jsonl:1: field 'curves.val_losses' is str"):
        import_logs("neuropt", [str(bad)], tmp_path / "lib")
    bad.write_text('{"id": 1, "status": "ok", "curves": {"val_losses": [1.0, NaN]}, "config": {"lr": 0.1}}\n')
    import_logs("neuropt", [str(bad)], tmp_path / "lib")  # a non-finite loss: stored null, the run diverged
    lib = load_library(tmp_path / "lib", strict=True)
    assert lib.runs["status"].to_pylist() == ["diverged"]
    assert [(r["val_loss"], r["diverged"]) for r in lib.epochs.to_pylist()] == [(1.0, False), (None, True)]


def test_query_view_of_imported(tmp_path):
    bad = tmp_path / "log.jsonl"
    bad.write_text('{"id": 1, "status": "ok", "curves": {"val_losses": [1.0, 0.5]}, "config": {"lr": 0.1}}\n')
    import_logs("neuropt", [str(bad)], tmp_path / "lib", task="t")
    with connect(tmp_path / "lib") as db:
        t = db.sql("select run_id, final_val_loss from finals")
    assert t.to_pylist() == [{"run_id": "t:imported:s0", "final_val_loss": 0.5}]
