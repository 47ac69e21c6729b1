"""Trace format v2: Parquet tables ``runs``, ``epochs`` and ``decisions``, hive-partitioned by task.

Version 3 adds reinforcement-learning runs: the exploration knobs (``ent_coef``, ``log_std``, ``clip_range`` and their
``init_*`` values) and PPO's telemetry per epoch (training and evaluation returns, entropy, approximate KL, clip
fraction, explained variance, safety cost and budget); version-2 files read them as null. Version 2 adds the ``replicate`` of every run (the same tree re-trained with other post-fork noise), the run's
``optimizer`` and its settings, and the optimizer ``step`` of every epoch row and decision; recorded files also carry
their provenance (``tmsim.provenance``: torch build, CPU capability, threads, numpy and its BLAS). Version-1 files
are still read: as replicate 0, with the optimizer and steps null.

Layout of a trace library directory::

    LIB/runs/task=digits-mlp/overfit-s0.parquet
    LIB/epochs/task=digits-mlp/overfit-s0.parquet
    LIB/decisions/task=.../....parquet        (written by the live hook and `tmsim policy check --audit`)

Each file carries ``tmsim.schema_version`` and ``tmsim.table`` in its Parquet key-value metadata. Every column is
documented in ``docs/trace-format.md``; the schemas below are the single source of truth for names and types.

Files are written atomically (temporary name in the same directory, then ``os.replace``), so a reader never sees a
half-written file. Readers check the version, the table name, the schema, that metrics are finite and in range, and
that keys are unique; a file that fails is reported with a one-line error naming the file and the field, and the
other files are still read. ``load_library`` then checks the library as a whole (one file per run and per epoch
row, every run reachable from a root, every run's epochs present) and skips what fails, so every command sees the
same consistent trees.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..core.hparams import KNOBS, RL_KNOBS

SCHEMA_VERSION = "3"
#: Versions this reader accepts; an older file is read with the columns added since filled in (``ADDED``).
READABLE_VERSIONS = ("1", "2", "3")
TABLES = ("runs", "epochs", "decisions")

RUNS = pa.schema(
    [
        ("run_id", pa.string()),
        ("parent_run_id", pa.string()),
        ("root_run_id", pa.string()),
        ("depth", pa.int32()),
        ("branch_epoch", pa.int32()),
        ("branch_action", pa.string()),
        ("task", pa.string()),
        ("scenario", pa.string()),
        ("seed", pa.int64()),
        ("replicate", pa.int32()),
        ("model", pa.string()),
        ("n_params", pa.int64()),
        ("dataset", pa.string()),
        *[(f"init_{k}", pa.float64()) for k in KNOBS],
        ("optimizer", pa.string()),
        ("optimizer_json", pa.string()),
        ("settings_json", pa.string()),
        ("max_epochs", pa.int32()),
        ("decide_every", pa.int32()),
        ("status", pa.string()),
        ("end_epoch", pa.int32()),
        ("source", pa.string()),
        ("recorder_version", pa.string()),
    ]
)

EPOCHS = pa.schema(
    [
        ("run_id", pa.string()),
        ("task", pa.string()),
        ("epoch", pa.int32()),
        *[(k, pa.float64()) for k in KNOBS],
        ("train_loss", pa.float64()),
        ("val_loss", pa.float64()),
        ("test_loss", pa.float64()),
        ("train_acc", pa.float64()),
        ("val_acc", pa.float64()),
        ("test_acc", pa.float64()),
        ("grad_norm", pa.float64()),
        ("update_ratio", pa.float64()),
        ("samples_seen", pa.int64()),
        ("step", pa.int64()),
        ("step_time_s", pa.float64()),
        ("wall_time_s", pa.float64()),
        *[(c, pa.float64()) for c in ("ep_return", "ep_return_std", "ep_len", "val_return", "test_return", "entropy",
                                      "approx_kl", "clip_fraction", "explained_variance", "safety_cost", "safety_budget")],
        ("diverged", pa.bool_()),
        ("source", pa.string()),
    ]
)

#: The per-epoch telemetry columns of reinforcement-learning runs (null for supervised runs).
RL_COLUMNS = ("ep_return", "ep_return_std", "ep_len", "val_return", "test_return", "entropy", "approx_kl", "clip_fraction",
              "explained_variance", "safety_cost", "safety_budget")

DECISIONS = pa.schema(
    [
        ("run_id", pa.string()),
        ("task", pa.string()),
        ("epoch", pa.int32()),
        ("step", pa.int64()),
        ("policy_id", pa.string()),
        ("policy_version", pa.string()),
        ("snapshot_hash", pa.string()),
        ("raw_output", pa.string()),
        ("proposal_json", pa.string()),
        ("action", pa.string()),
        ("action_json", pa.string()),
        ("violations", pa.list_(pa.string())),
        ("source", pa.string()),
        ("latency_ms", pa.float64()),
        ("staleness_steps", pa.int64()),
    ]
)

SCHEMAS = {"runs": RUNS, "epochs": EPOCHS, "decisions": DECISIONS}
#: Columns added by each version and the value an older file reads them as. Version 2: one replicate per tree (0),
#: the optimizer not recorded (null), the optimizer step not recorded (null). Version 3: no exploration knobs and no
#: RL telemetry (null).
_RL_KNOBS = tuple(k for k in RL_KNOBS if k != "lr")
ADDED = {
    "2": {"runs": {"replicate": 0, "optimizer": None, "optimizer_json": None},
          "epochs": {"step": None}, "decisions": {"step": None}},
    "3": {"runs": {f"init_{k}": None for k in _RL_KNOBS},
          "epochs": {**{k: None for k in _RL_KNOBS}, **{c: None for c in RL_COLUMNS}}, "decisions": {}},
}


def added_since(version: str, kind: str) -> dict:
    """The columns of ``kind`` a file of ``version`` lacks, with the value each reads as."""
    out: dict = {}
    for v, tables in ADDED.items():
        if int(v) > int(version):
            out.update(tables[kind])
    return out

#: Columns that must never be null, per table.
REQUIRED = {
    "runs": ("run_id", "root_run_id", "depth", "task", "scenario", "seed", "max_epochs", "status", "end_epoch", "source"),
    "epochs": ("run_id", "task", "epoch", "lr", "diverged", "source"),
    "decisions": ("run_id", "task", "epoch", "policy_id", "action", "source"),
}
#: Float columns whose non-null values must be finite (a diverged epoch stores null and ``diverged = true``).
FINITE = {
    "runs": tuple(f"init_{k}" for k in KNOBS),
    "epochs": tuple(f.name for f in EPOCHS if pa.types.is_floating(f.type)),
    "decisions": ("latency_ms",),
}
#: Closed ranges that non-null values must lie in, per table (None: unbounded on that side). Losses are
#: cross-entropies and squared errors, so never negative; accuracies are fractions.
RANGES = {
    "runs": {"depth": (0, None), "branch_epoch": (0, None), "replicate": (0, None), "max_epochs": (1, None), "decide_every": (1, None),
             "end_epoch": (0, None), **{f"init_{k}": (0, 1 if k == "dropout" else None) for k in KNOBS if k != "log_std"}},
    "epochs": {"epoch": (0, None), **{k: (0, 1 if k == "dropout" else None) for k in KNOBS if k != "log_std"},
               "ep_len": (0, None), "approx_kl": (0, None), "clip_fraction": (0, 1),
               "safety_cost": (0, None), "safety_budget": (0, None),
               **{f"{s}_loss": (0, None) for s in ("train", "val", "test")},
               **{f"{s}_acc": (0, 1) for s in ("train", "val", "test")},
               "grad_norm": (0, None), "update_ratio": (0, None), "samples_seen": (0, None), "step": (0, None)},
    "decisions": {"epoch": (0, None), "step": (0, None)},
}
#: Columns that identify a row; no two rows of a library may share them.
KEYS = {"runs": ("run_id",), "epochs": ("run_id", "epoch")}
#: Columns measured with a clock: excluded from the deterministic "content" of a trace.
TIMING_COLUMNS = ("step_time_s", "wall_time_s")
STATUSES = ("complete", "incomplete", "diverged")


class TraceError(ValueError):
    """A trace file or library that cannot be used; the message names the file and the field."""


def write_table(table: pa.Table, path: str | os.PathLike, kind: str, extra_metadata: dict[str, str] | None = None) -> Path:
    """Write ``table`` as a ``kind`` file at ``path`` atomically, after casting it to the current schema."""
    path = Path(path)
    table = conform(table, kind)
    md = {b"tmsim.schema_version": SCHEMA_VERSION.encode(), b"tmsim.table": kind.encode()}
    for k, v in (extra_metadata or {}).items():
        md[f"tmsim.{k}".encode()] = v.encode()
    table = table.replace_schema_metadata(md)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        pq.write_table(table, tmp, compression="zstd", write_statistics=True)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def conform(table: pa.Table, kind: str) -> pa.Table:
    """``table`` with exactly the current columns of ``kind`` in order (missing optional columns become null)."""
    schema = SCHEMAS[kind]
    cols = []
    for f in schema:
        if f.name in table.column_names:
            cols.append(table.column(f.name).cast(f.type))
        elif f.name in REQUIRED[kind]:
            raise TraceError(f"{kind}: missing required column {f.name!r}")
        else:
            cols.append(pa.nulls(len(table), f.type))
    return pa.Table.from_arrays(cols, schema=schema)


def decode_metadata(raw: dict[bytes, bytes] | None, where: str) -> dict[str, str]:
    """Parquet key-value metadata as text; raise ``TraceError`` naming ``where`` and the key when it is not UTF-8."""
    out = {}
    for k, v in (raw or {}).items():
        try:
            key = k.decode()
        except UnicodeDecodeError:
            raise TraceError(f"{where}: file metadata key {k!r} is not valid UTF-8") from None
        try:
            out[key] = v.decode()
        except UnicodeDecodeError:
            raise TraceError(f"{where}: file metadata field {key!r} is not valid UTF-8") from None
    return out


def file_metadata(path: Path) -> dict[str, str]:
    """The ``tmsim.*`` keys of a file's Parquet metadata."""
    md = decode_metadata(pq.read_schema(path).metadata, str(path))
    return {k: v for k, v in md.items() if k.startswith("tmsim.")}


def read_table(path: str | os.PathLike, kind: str) -> pa.Table:
    """Read and validate one trace file; raise ``TraceError`` naming the file and the field on any problem."""
    path = Path(path)
    try:
        pf = pq.ParquetFile(path)
        have = pf.schema_arrow
    except Exception as exc:  # pyarrow raises several types for truncated/corrupt files
        raise TraceError(f"{path}: not a readable Parquet file ({type(exc).__name__}: {_one_line(exc)})") from None
    md = decode_metadata(have.metadata, str(path))
    version = md.get("tmsim.schema_version")
    if version is None:
        raise TraceError(f"{path}: field 'tmsim.schema_version' missing from file metadata (not a tmsim trace?)")
    if version not in READABLE_VERSIONS:
        raise TraceError(f"{path}: unknown schema version {version!r} in 'tmsim.schema_version' "
                         f"(this tmsim reads {', '.join(READABLE_VERSIONS)})")
    if md.get("tmsim.table") != kind:
        raise TraceError(f"{path}: field 'tmsim.table' is {md.get('tmsim.table')!r}, expected {kind!r}")
    schema = SCHEMAS[kind]
    added = added_since(version, kind)
    for f in schema:
        idx = have.get_field_index(f.name)
        if idx < 0 and f.name in added:
            continue
        if idx < 0:
            raise TraceError(f"{path}: missing column {f.name!r} ({f.type})")
        if not have.field(idx).type.equals(f.type):
            raise TraceError(f"{path}: column {f.name!r} has type {have.field(idx).type}, expected {f.type}")
    try:
        table = pf.read(columns=[n for n in schema.names if have.get_field_index(n) >= 0])
    except Exception as exc:
        raise TraceError(f"{path}: data cannot be decoded ({type(exc).__name__}: {_one_line(exc)})") from None
    if added:  # an older file: the columns added since, with the values they stand for
        n = table.num_rows
        cols = [table.column(f.name) if f.name not in added else pa.array([added[f.name]] * n, f.type) for f in schema]
        table = pa.Table.from_arrays(cols, schema=schema)
    check_values(table, kind, str(path))
    return table.replace_schema_metadata(None)


def _one_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _count(mask) -> int:
    return pc.sum(mask.cast(pa.int64())).as_py() or 0


def check_values(table: pa.Table, kind: str, where: str) -> None:
    """Raise ``TraceError`` for nulls in required columns, non-finite or out-of-range values, unknown statuses and
    branches without their branch point. (Repeated keys are checked across the whole library by ``load_library``.)"""
    for name in REQUIRED[kind]:
        n = table.column(name).null_count
        if n:
            raise TraceError(f"{where}: column {name!r} has {n} null value(s) but is required")
    for name in FINITE[kind]:
        col = table.column(name)
        bad = pc.sum(pc.invert(pc.is_finite(col)).cast(pa.int64())).as_py() or 0
        if bad:
            raise TraceError(f"{where}: column {name!r} has {bad} NaN/inf value(s); store null and mark the epoch diverged")
    for name, (lo, hi) in RANGES[kind].items():
        col = table.column(name)
        extremes = pc.min_max(col)  # one pass; the offending values are counted only when there are some
        low, high = extremes["min"].as_py(), extremes["max"].as_py()
        if low is None:  # all null
            continue
        if (lo is not None and low < lo) or (hi is not None and high > hi):
            bad = _count(pc.or_(pc.less(col, lo if lo is not None else float("-inf")),
                                pc.greater(col, hi if hi is not None else float("inf"))))
            bounds = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
            raise TraceError(f"{where}: column {name!r} has {bad} value(s) outside {bounds}")
    if kind == "epochs" and table["val_loss"].null_count:
        hidden = _count(pc.and_(pc.is_null(table["val_loss"]), pc.invert(table["diverged"])))
        if hidden:
            raise TraceError(f"{where}: column 'val_loss' is null in {hidden} row(s) not marked diverged")
    if kind == "runs":
        branch = pc.is_valid(table["parent_run_id"])
        for name in ("branch_epoch", "branch_action"):
            n = _count(pc.and_(branch, pc.is_null(table[name])))
            if n:
                raise TraceError(f"{where}: column {name!r} is null in {n} branch row(s) (rows with a parent_run_id)")
        unknown = pc.unique(pc.filter(table["status"], pc.invert(pc.is_in(table["status"], pa.array(STATUSES))))).to_pylist()
        if unknown:
            raise TraceError(f"{where}: column 'status' has unknown value(s) {unknown}; allowed: {list(STATUSES)}")


def table_files(root: Path, kind: str) -> list[Path]:
    """The ``kind`` files of a library, in a stable order (temporary files of interrupted writes are ignored)."""
    return sorted((root / kind).glob("task=*/*.parquet"))


@dataclass
class Library:
    """A trace library read into Arrow tables, with the problems found on the way.

    ``problems`` holds one line per file that could not be used; its rows are not in the tables, and the line
    says so. Use ``load_library(..., strict=True)`` to turn the first problem into an exception instead.
    """

    root: Path
    runs: pa.Table
    epochs: pa.Table
    decisions: pa.Table
    files: dict[str, list[Path]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    _digest: str | None = field(default=None, repr=False, compare=False)

    def digest(self) -> str:
        """SHA-256 over every trace file of the library (relative path and bytes), in path order; computed once."""
        if self._digest is None:
            import hashlib

            h = hashlib.sha256()
            for kind in sorted(self.files):
                for p in sorted(self.files[kind]):
                    h.update(str(p.relative_to(self.root)).encode())
                    h.update(hashlib.sha256(p.read_bytes()).digest())
            self._digest = h.hexdigest()
        return self._digest


def load_library(root: str | os.PathLike, strict: bool = False) -> Library:
    """Read every trace file under ``root``; see ``Library``. Raises ``TraceError`` when nothing usable is there.

    Besides each file's own checks (``read_table``), the library must hold every run and every ``(run_id, epoch)``
    row in one file only: a later file (in path order) that repeats a key of an earlier one is skipped, and the
    problem names both files. Then runs that cannot be replayed are skipped with their descendants: a run whose
    parent is missing or whose ancestry is a cycle, a root that is not its own ``root_run_id``, a branch whose
    ``root_run_id`` or ``branch_epoch`` disagrees with its parent, and a run that should hold epochs but has none.
    Epoch rows of runs that are missing or skipped are skipped too. Each problem is one line naming the file and
    the field; ``strict=True`` raises the first one instead.
    """
    root = Path(root)
    if not root.is_dir():
        raise TraceError(f"{root}: trace library directory does not exist")
    problems: list[str] = []

    def report(msg: str) -> None:
        if strict:
            raise TraceError(msg)
        problems.append(msg)

    tables: dict[str, list[pa.Table]] = {k: [] for k in TABLES}
    files: dict[str, list[Path]] = {k: [] for k in TABLES}
    for kind in TABLES:
        for path in table_files(root, kind):
            try:
                t = read_table(path, kind)
                part = path.parent.name.split("=", 1)[1]
                wrong = _count(pc.not_equal(t["task"], part))
                if wrong:
                    raise TraceError(f"{path}: column 'task' disagrees with its partition directory task={part} in {wrong} row(s)")
            except TraceError as exc:
                report(f"{exc} -- skipped")
                continue
            tables[kind].append(t)
            files[kind].append(path)
    if not files["runs"] and not files["epochs"]:
        detail = f"; {len(problems)} unreadable file(s): {problems[0]}" if problems else ""
        raise TraceError(f"{root}: no usable trace files (expected {root}/runs/task=*/*.parquet){detail}")
    for kind in KEYS:
        _skip_repeated_keys(tables[kind], files[kind], kind, report)
    merged = {k: pa.concat_tables(v) if v else SCHEMAS[k].empty_table() for k, v in tables.items()}
    row_file = {k: np.repeat(np.arange(len(v)), [t.num_rows for t in v]).astype(np.int64) for k, v in tables.items()}
    keep = _usable_runs(merged["runs"], merged["epochs"], row_file["runs"], files["runs"], report)
    runs = merged["runs"].filter(pa.array(keep))
    # Epoch rows whose run is missing (its runs file was unreadable, or not yet written) or was skipped above.
    owned = pc.is_in(merged["epochs"]["run_id"], value_set=runs["run_id"]).to_numpy(zero_copy_only=False)
    for i in np.unique(row_file["epochs"][~owned]):
        lost = ~owned & (row_file["epochs"] == i)
        example = merged["epochs"]["run_id"][int(np.flatnonzero(lost)[0])].as_py()
        report(f"{files['epochs'][i]}: {int(lost.sum())} epochs row(s) belong to runs missing from the runs table or "
               f"skipped (field 'run_id', e.g. {example!r}) -- skipped")
    epochs = merged["epochs"].filter(pa.array(owned))
    return Library(root, runs, epochs, merged["decisions"], files, problems)


def _skip_repeated_keys(tables: list[pa.Table], paths: list[Path], kind: str, report) -> None:
    """Drop (in place) every file whose ``KEYS[kind]`` repeat within the file or repeat a key of an earlier kept
    file, reporting the file (and the earlier one).

    Keys become dense integer codes over the whole library in one vectorised pass; each file then claims its codes
    in path order, so the cost is a few array operations per file however many rows there are."""
    if not tables:
        return
    runs = pa.chunked_array([t["run_id"] for t in tables], pa.string()).combine_chunks().dictionary_encode()
    codes = runs.indices.to_numpy().astype(np.int64)
    if kind == "epochs":
        epoch = np.concatenate([t["epoch"].to_numpy() for t in tables]).astype(np.int64)
        codes = codes * (int(epoch.max(initial=0)) + 1) + epoch
    codes = np.unique(codes, return_inverse=True)[1].ravel()
    owner = np.full(int(codes.max(initial=-1)) + 1, -1, dtype=np.int64)
    starts = np.cumsum([0] + [t.num_rows for t in tables])
    keys = " and ".join(KEYS[kind])
    dropped = []
    for i in range(len(tables)):
        mine = codes[starts[i]:starts[i + 1]]
        earlier = owner[mine]
        clash = np.flatnonzero(earlier >= 0)
        repeats = mine.size - np.unique(mine).size
        if clash.size == 0 and repeats == 0:
            owner[mine] = i
            continue
        if clash.size:
            row = tables[i].slice(int(clash[0]), 1).to_pylist()[0]
            example = tuple(row[k] for k in KEYS[kind]) if len(KEYS[kind]) > 1 else row[KEYS[kind][0]]
            report(f"{paths[i]}: {clash.size} row(s) repeat the {keys} of rows in {paths[int(earlier[clash[0]])]} "
                   f"(field {KEYS[kind][-1]!r}, e.g. {example!r}); a row belongs in one file only -- skipped")
        else:
            report(f"{paths[i]}: {repeats} row(s) repeat the {keys} of another row of the file (field {KEYS[kind][-1]!r}) -- skipped")
        dropped.append(i)
    for i in reversed(dropped):
        del tables[i], paths[i]


def _usable_runs(runs: pa.Table, epochs: pa.Table, row_file: np.ndarray, paths: list[Path], report) -> np.ndarray:
    """A boolean mask over ``runs``: the runs that form consistent trees with their epochs (see ``load_library``).
    Every skipped run is reported, one line per file and reason."""
    n = runs.num_rows
    if n == 0:
        return np.zeros(0, dtype=bool)
    is_root = pc.is_null(runs["parent_run_id"]).to_numpy(zero_copy_only=False)
    parent = pc.index_in(runs["parent_run_id"], value_set=runs["run_id"]).fill_null(-1).to_numpy().astype(np.int64)
    has_parent = parent >= 0
    at = np.where(has_parent, parent, 0)  # a valid position everywhere; masked by has_parent below
    branch_epoch = runs["branch_epoch"].fill_null(-1).to_numpy().astype(np.int64)
    end_epoch = runs["end_epoch"].to_numpy().astype(np.int64)
    root_id = runs["root_run_id"]
    own_root = pc.equal(root_id, runs["run_id"]).to_numpy(zero_copy_only=False)
    parents_root = pc.equal(root_id, pc.take(root_id, pa.array(at))).to_numpy(zero_copy_only=False)
    has_rows = pc.is_in(runs["run_id"], value_set=pc.unique(epochs["run_id"])).to_numpy(zero_copy_only=False)
    reasons = [  # (mask of runs failing, what is wrong, field)
        (~is_root & ~has_parent, "have a parent run that is not in the library", "parent_run_id"),
        (is_root & ~own_root, "are roots whose root_run_id is not their own run_id", "root_run_id"),
        (has_parent & ~parents_root, "disagree with their parent run's root_run_id", "root_run_id"),
        (has_parent & ((branch_epoch <= branch_epoch[at]) | (branch_epoch > end_epoch[at])),
         "branch outside their parent run's own epochs", "branch_epoch"),
        ((end_epoch > branch_epoch) & ~has_rows, "have no rows in the epochs table", "run_id"),
    ]
    sound = ~np.logical_or.reduce([m for m, _, _ in reasons])
    # Usable: sound, and a root or the child of a usable run. Grows one tree level per pass; a cycle never joins.
    usable = sound & is_root
    while True:
        grown = usable | (sound & has_parent & usable[at])
        if (grown == usable).all():
            break
        usable = grown
    reasons.append((sound & ~usable, "descend from a skipped run or sit on a cycle of parents", "parent_run_id"))
    for i in np.unique(row_file[~usable]):
        for mask, what, field_ in reasons:
            hit = mask & (row_file == i)
            if hit.any():
                example = runs["run_id"][int(np.flatnonzero(hit)[0])].as_py()
                report(f"{paths[i]}: {int(hit.sum())} run(s) {what} (field {field_!r}, e.g. {example!r}) -- skipped")
    return usable


def content_hash(table: pa.Table) -> str:
    """A hash of a table's deterministic content (timing columns excluded), stable across runs and machines."""
    import hashlib

    keep = [c for c in table.column_names if c not in TIMING_COLUMNS]
    sink = pa.BufferOutputStream()
    t = table.select(keep).replace_schema_metadata(None).combine_chunks()
    with pa.ipc.new_stream(sink, t.schema) as w:
        w.write_table(t)
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()


def dumps(obj) -> str:
    """Canonical JSON used inside trace columns (sorted keys, no spaces)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))
