"""Import training logs that already exist into a tmsim trace library (see ``docs/import.md``).

Four sources are read, each with its own library's reader where it has one:

- ``hf``: a Hugging Face ``trainer_state.json`` (its ``log_history``);
- ``tensorboard``: event files, read with TensorBoard's ``EventAccumulator``;
- ``mlflow``: the metric histories of MLflow runs, read with ``MlflowClient`` (file store or SQLite URI);
- ``neuropt``: the JSONL search log that neuropt's ``ArchSearch`` writes (one experiment per line).

Every imported run becomes one linear tree: a root with no branches, ``scenario = "imported"``, seeds 0, 1, ...
in source order, ``source = "imported"``. Its ``epochs`` rows are its evaluation points, one per step (or per epoch
for neuropt), in order, numbered 1, 2, ... (0 for an evaluation at step 0). A value the source did not log is null,
except the learning rate, which the format requires: it is the last one logged at or before the point (or
``lr=`` when given). The files are written with ``tmsim.traces.format.write_table``.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from .format import EPOCHS, RUNS, TraceError, dumps, write_table

FIELDS = ("train_loss", "val_loss", "val_acc", "lr")
SCENARIO = "imported"
SOURCE = "imported"
#: Default metric names per source, mapped onto tmsim's epochs columns. Hugging Face's own logging callbacks use
#: these names: ``TensorBoardCallback`` writes the ``train/``/``eval/`` tags, ``MLflowCallback`` the bare keys.
DEFAULT_NAMES = {
    "hf": {"train_loss": "loss", "val_loss": "eval_loss", "val_acc": "eval_accuracy", "lr": "learning_rate"},
    "tensorboard": {"train_loss": "train/loss", "val_loss": "eval/loss", "val_acc": "eval/accuracy",
                    "lr": "train/learning_rate"},
    "mlflow": {"train_loss": "loss", "val_loss": "eval_loss", "val_acc": "eval_accuracy", "lr": "learning_rate"},
    "neuropt": {"train_loss": "train_losses", "val_loss": "val_losses", "val_acc": "val_accuracies",
                "lr": "lr"},
}
KINDS = tuple(DEFAULT_NAMES)


@dataclass
class Series:
    """One imported run: per field, ``{position: value}`` (position = step, or epoch for neuropt)."""

    label: str
    where: str
    values: dict[str, dict[int, float]] = field(default_factory=lambda: {f: {} for f in FIELDS})
    status: str = "complete"
    settings: dict = field(default_factory=dict)
    by_step: bool = True


@dataclass
class ImportResult:
    out: Path
    task: str
    run_ids: list[str]
    rows: int
    skipped: list[str]


def names_for(kind: str, overrides: dict[str, str] | None = None) -> dict[str, str]:
    """The metric names read for ``kind``: the defaults with ``overrides`` (field -> name) applied."""
    names = dict(DEFAULT_NAMES[kind])
    for k, v in (overrides or {}).items():
        if k not in FIELDS:
            raise ValueError(f"unknown field {k!r} in a metric name override (fields: {', '.join(FIELDS)})")
        if not v:
            raise ValueError(f"empty metric name for field {k!r}")
        names[k] = v
    return names


def _num(v, where: str, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TraceError(f"{where}: field {name!r} is {v!r}, expected a number")
    return float(v)


def _step(v, where: str, name: str = "step") -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v < 0 or int(v) != v:
        raise TraceError(f"{where}: field {name!r} is {v!r}, expected a non-negative integer")
    return int(v)


# ---------------------------------------------------------------------------------------------------- readers


def read_hf(path: str | os.PathLike) -> Series:
    """A Hugging Face ``trainer_state.json`` (or a directory holding one): train entries carry ``loss`` and
    ``learning_rate``, eval entries ``eval_loss`` and ``eval_accuracy``, all keyed by ``step``."""
    p = Path(path)
    if p.is_dir():
        p = p / "trainer_state.json"
    if not p.is_file():
        raise TraceError(f"{p}: file does not exist (expected a Hugging Face trainer_state.json)")
    try:
        state = json.loads(p.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TraceError(f"{p}: not valid JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(state, dict) or not isinstance(state.get("log_history"), list):
        raise TraceError(f"{p}: field 'log_history' missing or not a list (not a Hugging Face trainer_state.json?)")
    names = DEFAULT_NAMES["hf"]
    s = Series(label=p.parent.name, where=str(p))
    for i, entry in enumerate(state["log_history"]):
        where = f"{p}: log_history[{i}]"
        if not isinstance(entry, dict):
            raise TraceError(f"{where}: entry is {type(entry).__name__}, expected an object")
        if "train_runtime" in entry:  # the end-of-training summary: its train_loss is a mean over the whole run
            continue
        if "step" not in entry:
            raise TraceError(f"{where}: field 'step' missing")
        step = _step(entry["step"], where)
        for f, key in names.items():
            if key in entry and entry[key] is not None:
                s.values[f][step] = _num(entry[key], where, key)
    s.settings = {k: state[k] for k in ("max_steps", "num_train_epochs", "train_batch_size", "eval_steps", "logging_steps")
                  if isinstance(state.get(k), (int, float))}
    return s


def read_tensorboard(path: str | os.PathLike, names: dict[str, str]) -> Series:
    """TensorBoard event files (one file, or a log directory) read with TensorBoard's ``EventAccumulator``."""
    try:
        from tensorboard.backend.event_processing import event_accumulator as ea
    except ImportError:
        raise ValueError("importing TensorBoard logs needs tensorboard: pip install 'tmsim[import]'") from None
    p = Path(path)
    if p.is_dir():
        if not any(q.is_file() and "tfevents" in q.name for q in p.iterdir()):
            raise TraceError(f"{p}: no TensorBoard event file (*tfevents*) in this directory")
    elif not p.is_file():
        raise TraceError(f"{p}: file or directory does not exist (expected TensorBoard event files)")
    acc = ea.EventAccumulator(str(p), size_guidance={ea.SCALARS: 0})
    try:
        acc.Reload()
    except Exception as exc:  # noqa: BLE001 -- corrupt records surface as several exception types
        raise TraceError(f"{p}: not a readable TensorBoard event file ({type(exc).__name__}: "
                         f"{(str(exc).splitlines() or [''])[0]})") from None
    tags = set(acc.Tags().get("scalars", []))
    s = Series(label=p.name if p.is_dir() else p.parent.name, where=str(p))
    for f, tag in names.items():
        if tag in tags:
            for ev in acc.Scalars(tag):  # a step logged twice (a resumed run): the later event wins
                s.values[f][_step(ev.step, str(p), f"{tag} step")] = float(ev.value)
    if not s.values["val_loss"]:
        raise TraceError(f"{p}: no scalar tag {names['val_loss']!r} (the validation loss; scalar tags here: "
                         f"{sorted(tags) or 'none'})")
    return s


def _mlflow_uri(source: str) -> str:
    if source.startswith("sqlite:///"):
        db = source[len("sqlite:///"):]
        if not Path(db).is_file():
            raise TraceError(f"{db}: SQLite tracking database does not exist")
        return source
    if "://" in source and not source.startswith("file://"):
        return source
    d = Path(source[len("file://"):] if source.startswith("file://") else source)
    if d.is_file() and d.suffix in (".db", ".sqlite"):
        return f"sqlite:///{d.resolve()}"
    if not d.is_dir():
        raise TraceError(f"{d}: MLflow file store directory does not exist")
    return d.resolve().as_uri()


def read_mlflow(source: str, names: dict[str, str], experiment: str | None = None,
                run_ids: list[str] | None = None) -> tuple[list[Series], str, list[str]]:
    """The runs of an MLflow tracking store (all experiments, one by name, or the given run ids), oldest first.
    Returns the series, a default task name (the experiment's) and one line per run skipped for lack of a
    validation loss."""
    try:
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise ValueError("importing MLflow runs needs mlflow: pip install 'tmsim[import]'") from None
    uri = _mlflow_uri(str(source))
    allow = os.environ.get("MLFLOW_ALLOW_FILE_STORE")
    if uri.startswith("file:"):  # MLflow 3 reads an existing file store only when this is set
        os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    try:
        client = MlflowClient(tracking_uri=uri)
        if run_ids:
            runs = [client.get_run(r) for r in run_ids]
        else:
            if experiment is not None:
                exp = client.get_experiment_by_name(experiment)
                if exp is None:
                    raise TraceError(f"{source}: no MLflow experiment named {experiment!r} (field 'experiment')")
                exps = [exp]
            else:
                exps = client.search_experiments()
            runs = client.search_runs([e.experiment_id for e in exps], order_by=["attributes.start_time ASC"],
                                      max_results=50000) if exps else []
        exp_names = {}
        out, skipped = [], []
        for run in runs:
            eid = run.info.experiment_id
            if eid not in exp_names:
                exp_names[eid] = client.get_experiment(eid).name
            where = f"{source}: run {run.info.run_id}"
            s = Series(label=run.info.run_name or run.info.run_id, where=where)
            for f, key in names.items():
                if key in run.data.metrics:
                    for m in client.get_metric_history(run.info.run_id, key):
                        s.values[f][_step(m.step, where, f"{key} step")] = float(m.value)
            if not s.values["val_loss"]:
                skipped.append(f"{where}: no metric {names['val_loss']!r} (the validation loss) -- skipped")
                continue
            s.status = "complete" if run.info.status == "FINISHED" else "incomplete"
            s.settings = {"mlflow_run_id": run.info.run_id, "mlflow_experiment": exp_names[eid],
                          "params": dict(sorted(run.data.params.items()))}
            out.append(s)
    except MlflowException as exc:
        raise TraceError(f"{source}: MLflow cannot read it ({(str(exc).splitlines() or [''])[0]})") from None
    finally:
        if allow is None:
            os.environ.pop("MLFLOW_ALLOW_FILE_STORE", None)
        else:
            os.environ["MLFLOW_ALLOW_FILE_STORE"] = allow
    if not out:
        raise TraceError(f"{source}: no MLflow run with a metric {names['val_loss']!r} (the validation loss)")
    default_task = next(iter(exp_names.values())) if len(set(exp_names.values())) == 1 else "mlflow"
    return out, default_task, skipped


def read_neuropt(path: str | os.PathLike, names: dict[str, str]) -> tuple[list[Series], list[str]]:
    """neuropt's JSONL log: one experiment per line with ``config``, ``status`` and ``curves`` (per-epoch lists,
    index 0 = epoch 1); older logs hold the curves at the top level. Lines whose status is not ``ok`` (errors,
    timeouts) or that hold no validation-loss curve are skipped and reported. The learning rate is the config's
    ``lr`` key (``names['lr']``), constant over the run."""
    p = Path(path)
    if not p.is_file():
        raise TraceError(f"{p}: file does not exist (expected a neuropt JSONL log)")
    out, skipped = [], []
    try:
        lines = p.read_text().splitlines()
    except UnicodeDecodeError:
        raise TraceError(f"{p}: not UTF-8 text (expected a neuropt JSONL log)") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{p}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TraceError(f"{where}: not valid JSON ({str(exc).splitlines()[0]})") from None
        if not isinstance(row, dict):
            raise TraceError(f"{where}: line is {type(row).__name__}, expected a JSON object")
        if row.get("status", "ok") != "ok":
            skipped.append(f"{where}: status {row.get('status')!r} -- skipped")
            continue
        curves = row.get("curves") or {k: row[k] for k in FIELDS_NEUROPT_OLD if isinstance(row.get(k), list)}
        if not isinstance(curves, dict):
            raise TraceError(f"{where}: field 'curves' is {type(curves).__name__}, expected an object")
        config = row.get("config") or {}
        if not isinstance(config, dict):
            raise TraceError(f"{where}: field 'config' is {type(config).__name__}, expected an object")
        s = Series(label=str(row.get("id", n)), where=where, by_step=False)
        for f, key in names.items():
            if f == "lr":
                if key in config and config[key] is not None:
                    s.values["lr"][1] = _num(config[key], where, f"config.{key}")
                continue
            curve = curves.get(key)
            if curve is None:
                continue
            if not isinstance(curve, list):
                raise TraceError(f"{where}: field 'curves.{key}' is {type(curve).__name__}, expected a list")
            for e, v in enumerate(curve, 1):
                s.values[f][e] = _num(v, where, f"curves.{key}[{e - 1}]") if v is not None else None
            s.values[f] = {k: v for k, v in s.values[f].items() if v is not None}
        if not s.values["val_loss"]:
            skipped.append(f"{where}: no curve {names['val_loss']!r} (the validation loss) -- skipped")
            continue
        s.settings = {"neuropt_id": row.get("id"), "config": config}
        out.append(s)
    if not out:
        raise TraceError(f"{p}: no experiment with status 'ok' and a curve {names['val_loss']!r} (field 'curves')")
    return out, skipped


FIELDS_NEUROPT_OLD = ("train_losses", "val_losses", "val_accuracies")


# ---------------------------------------------------------------------------------------------------- writer


def _clean(v: float | None) -> float | None:
    return v if v is not None and math.isfinite(v) else None


def tables(series: Series, task: str, seed: int, kind: str, lr: float | None = None) -> tuple[pa.Table, pa.Table]:
    """The ``runs`` and ``epochs`` tables of one imported run (one row per evaluation point: a logged validation
    loss). Raises ``TraceError`` naming the source when a point has no learning rate."""
    run_id = f"{task}:{SCENARIO}:s{seed}"
    v = series.values
    points = sorted(v["val_loss"])
    lr_at = sorted(v["lr"].items())
    rows, status = [], series.status
    for i, pos in enumerate(points):
        epoch = pos if not series.by_step else (i if points[0] == 0 else i + 1)
        known = [x for p_, x in lr_at if p_ <= pos] if series.by_step else [x for _, x in lr_at]
        rate = known[-1] if known else lr
        if rate is None:
            what = "step" if series.by_step else "epoch"
            raise TraceError(f"{series.where}: no learning rate ({DEFAULT_NAMES[kind]['lr']!r} or the name given) logged at "
                             f"or before {what} {pos}; field 'lr' is required (pass --lr for a constant rate)")
        val, train = v["val_loss"][pos], v["train_loss"].get(pos)
        diverged = _clean(val) is None or (train is not None and _clean(train) is None)
        rows.append(dict(run_id=run_id, task=task, epoch=epoch, lr=rate, train_loss=_clean(train), val_loss=_clean(val),
                         val_acc=_clean(v["val_acc"].get(pos)), step=pos if series.by_step else None,
                         diverged=diverged, source=SOURCE))
        if diverged:  # a non-finite loss ends the run, as in recorded traces
            status = "diverged"
            break
    end = rows[-1]["epoch"]
    if end < 1:
        raise TraceError(f"{series.where}: only an evaluation at step 0; nothing was trained (field 'val_loss')")
    run = dict(run_id=run_id, parent_run_id=None, root_run_id=run_id, depth=0, task=task, scenario=SCENARIO, seed=seed,
               replicate=0, init_lr=rows[0]["lr"], settings_json=dumps({"imported_from": kind, "run": series.label,
                                                                         **series.settings}),
               max_epochs=end, decide_every=1, status=status, end_epoch=end, source=SOURCE,
               recorder_version=f"tmsim-import/{kind}")
    return pa.Table.from_pylist([run], schema=RUNS), pa.Table.from_pylist(rows, schema=EPOCHS)


_TASK_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def task_name(name: str) -> str:
    """``name`` made safe for a partition directory (letters, digits, ``.``, ``_`` and ``-``)."""
    t = re.sub(r"[^A-Za-z0-9._-]+", "-", str(name)).strip("-.") or "imported"
    return t if _TASK_OK.match(t) else f"t{t}"


def write_library(series: list[Series], out: str | os.PathLike, task: str, kind: str, lr: float | None = None,
                  overwrite: bool = False, skipped: list[str] | None = None) -> ImportResult:
    """Write ``series`` as trees ``TASK:imported:s0``, ``s1``, ... under ``out`` (epochs file first, runs file last)."""
    out = Path(out)
    if not task or not _TASK_OK.match(task):
        raise ValueError(f"task name {task!r} is not usable as a directory name (letters, digits, '.', '_', '-')")
    existing = sorted((out / "runs" / f"task={task}").glob(f"{SCENARIO}-s*.parquet"))
    if existing and not overwrite:
        raise TraceError(f"{existing[0]}: already exists (field 'task' = {task!r}); pass --overwrite or another --task/--out")
    built = [tables(s, task, seed, kind, lr) for seed, s in enumerate(series)]  # every check before any write
    for path in existing:
        path.unlink()
        (out / "epochs" / f"task={task}" / path.name).unlink(missing_ok=True)
    ids, rows = [], 0
    for seed, (runs, epochs) in enumerate(built):
        stem = f"{SCENARIO}-s{seed}.parquet"
        write_table(epochs, out / "epochs" / f"task={task}" / stem, "epochs")
        write_table(runs, out / "runs" / f"task={task}" / stem, "runs")
        ids.append(runs["run_id"][0].as_py())
        rows += epochs.num_rows
    return ImportResult(out, task, ids, rows, list(skipped or []))


def import_logs(kind: str, sources: list[str], out: str | os.PathLike, task: str | None = None,
                names: dict[str, str] | None = None, lr: float | None = None, experiment: str | None = None,
                run_ids: list[str] | None = None, overwrite: bool = False) -> ImportResult:
    """Import ``sources`` of one ``kind`` (``hf``, ``tensorboard``, ``mlflow``, ``neuropt``) into the library ``out``.

    ``hf`` and ``tensorboard`` take one run per source; ``mlflow`` one source (a tracking URI or store directory)
    holding many runs; ``neuropt`` one run per experiment line. ``names`` overrides metric names (field -> name;
    for neuropt, the curve keys and the config key of ``lr``). ``lr`` is the learning rate of points before the
    first logged one (required when a source logs none)."""
    if kind not in KINDS:
        raise ValueError(f"unknown import kind {kind!r} (kinds: {', '.join(KINDS)})")
    if not sources:
        raise ValueError("no source given")
    if lr is not None and not (math.isfinite(lr) and lr >= 0):
        raise ValueError(f"--lr must be a finite number >= 0, got {lr}")
    if kind == "hf" and names:
        raise ValueError("metric name overrides apply to tensorboard, mlflow and neuropt; trainer_state.json keys are fixed")
    n = names_for(kind, names)
    skipped: list[str] = []
    if kind == "hf":
        series = [read_hf(s) for s in sources]
        default = series[0].label if series[0].label not in ("", ".") and not series[0].label.startswith("checkpoint-") \
            else Path(series[0].where).parent.parent.name
    elif kind == "tensorboard":
        series = [read_tensorboard(s, n) for s in sources]
        default = series[0].label
    elif kind == "mlflow":
        if len(sources) != 1:
            raise ValueError("mlflow takes one source: a tracking URI or a file store directory")
        series, default, skipped = read_mlflow(sources[0], n, experiment, run_ids)
    else:
        series = []
        for s in sources:
            got, sk = read_neuropt(s, n)
            series += got
            skipped += sk
        default = Path(sources[0]).stem
    return write_library(series, out, task if task is not None else task_name(default), kind, lr, overwrite, skipped)


# ---------------------------------------------------------------------------------------------------- CLI


def add_cli(sub) -> None:
    """Add ``tmsim import {hf,tensorboard,mlflow,neuropt} SOURCE... --out DIR`` to the CLI's subparsers."""
    im = sub.add_parser("import", help="import existing training logs (HF, TensorBoard, MLflow, neuropt) as linear traces")
    im.add_argument("kind", choices=KINDS, help="what SOURCE is")
    im.add_argument("sources", nargs="+", metavar="SOURCE",
                    help="hf: trainer_state.json or its directory; tensorboard: event file or log directory; "
                         "mlflow: tracking URI (sqlite:///m.db) or file store directory; neuropt: search.jsonl")
    im.add_argument("--out", required=True, type=Path, help="library directory to write")
    im.add_argument("--task", default=None, help="task name (default: from the source)")
    im.add_argument("--metric", action="append", default=[], metavar="FIELD=NAME",
                    help="read FIELD (train_loss, val_loss, val_acc, lr) from the tag/key/curve NAME (repeatable)")
    im.add_argument("--lr", type=float, default=None, help="learning rate for points before the first logged one")
    im.add_argument("--experiment", default=None, help="mlflow: only this experiment (default: all)")
    im.add_argument("--run-id", action="append", default=None, dest="run_ids", help="mlflow: only this run (repeatable)")
    im.add_argument("--overwrite", action="store_true", help="replace runs imported before under the same task")
    im.set_defaults(func=_cmd_import)


def _cmd_import(args) -> int:
    import sys

    names = {}
    for m in args.metric:
        field_, sep, name = m.partition("=")
        if not sep:
            raise ValueError(f"--metric {m!r}: expected FIELD=NAME")
        names[field_.strip()] = name.strip()
    res = import_logs(args.kind, args.sources, args.out, task=args.task, names=names or None, lr=args.lr,
                      experiment=args.experiment, run_ids=args.run_ids, overwrite=args.overwrite)
    for line in res.skipped:
        print(f"tmsim: warning: {line}", file=sys.stderr)
    print(f"imported {len(res.run_ids)} run(s), {res.rows} epochs row(s) into {res.out} (task {res.task}, "
          f"scenario {SCENARIO})")
    return 0
