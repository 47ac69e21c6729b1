"""Trace format v1: Parquet tables ``runs``, ``epochs`` and ``decisions``, hive-partitioned by task.

Layout of a trace library directory::

    LIB/runs/task=digits-mlp/overfit-s0.parquet
    LIB/epochs/task=digits-mlp/overfit-s0.parquet
    LIB/decisions/task=.../....parquet        (written by the live hook and `tmsim policy check --audit`)

Each file carries ``tmsim.schema_version`` and ``tmsim.table`` in its Parquet key-value metadata. Every column is
documented in ``docs/trace-format.md``; the schemas below are the single source of truth for names and types.

Files are written atomically (temporary name in the same directory, then ``os.replace``), so a reader never sees a
half-written file. Readers check the version, the table name, the schema and that metrics are finite; a file that
fails is reported with a one-line error naming the file and the field, and the other files are still read.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..core.hparams import KNOBS

SCHEMA_VERSION = "1"
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
        ("model", pa.string()),
        ("n_params", pa.int64()),
        ("dataset", pa.string()),
        *[(f"init_{k}", pa.float64()) for k in KNOBS],
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
        ("step_time_s", pa.float64()),
        ("wall_time_s", pa.float64()),
        ("diverged", pa.bool_()),
        ("source", pa.string()),
    ]
)

DECISIONS = pa.schema(
    [
        ("run_id", pa.string()),
        ("task", pa.string()),
        ("epoch", pa.int32()),
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
#: Columns measured with a clock: excluded from the deterministic "content" of a trace.
TIMING_COLUMNS = ("step_time_s", "wall_time_s")
STATUSES = ("complete", "incomplete", "diverged")


class TraceError(ValueError):
    """A trace file or library that cannot be used; the message names the file and the field."""


def write_table(table: pa.Table, path: str | os.PathLike, kind: str, extra_metadata: dict[str, str] | None = None) -> Path:
    """Write ``table`` as a ``kind`` file at ``path`` atomically, after casting it to the v1 schema."""
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
    """``table`` with exactly the v1 columns of ``kind`` in order (missing optional columns become null)."""
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


def file_metadata(path: Path) -> dict[str, str]:
    md = pq.read_schema(path).metadata or {}
    return {k.decode(): v.decode() for k, v in md.items() if k.startswith(b"tmsim.")}


def read_table(path: str | os.PathLike, kind: str) -> pa.Table:
    """Read and validate one trace file; raise ``TraceError`` naming the file and the field on any problem."""
    path = Path(path)
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for truncated/corrupt files
        raise TraceError(f"{path}: not a readable Parquet file ({type(exc).__name__}: {exc})") from None
    md = {k.decode(): v.decode() for k, v in (pf.schema_arrow.metadata or {}).items()}
    version = md.get("tmsim.schema_version")
    if version is None:
        raise TraceError(f"{path}: field 'tmsim.schema_version' missing from file metadata (not a tmsim trace?)")
    if version != SCHEMA_VERSION:
        raise TraceError(f"{path}: unknown schema version {version!r} in 'tmsim.schema_version' (this tmsim reads {SCHEMA_VERSION!r})")
    if md.get("tmsim.table") != kind:
        raise TraceError(f"{path}: field 'tmsim.table' is {md.get('tmsim.table')!r}, expected {kind!r}")
    schema = SCHEMAS[kind]
    have = pf.schema_arrow
    for f in schema:
        idx = have.get_field_index(f.name)
        if idx < 0:
            raise TraceError(f"{path}: missing column {f.name!r} ({f.type})")
        if not have.field(idx).type.equals(f.type):
            raise TraceError(f"{path}: column {f.name!r} has type {have.field(idx).type}, expected {f.type}")
    try:
        table = pf.read(columns=schema.names)
    except Exception as exc:
        raise TraceError(f"{path}: data cannot be decoded ({type(exc).__name__}: {exc})") from None
    check_values(table, kind, str(path))
    return table.replace_schema_metadata(None)


def check_values(table: pa.Table, kind: str, where: str) -> None:
    """Raise ``TraceError`` for nulls in required columns, non-finite metrics and unknown statuses."""
    for name in REQUIRED[kind]:
        n = table.column(name).null_count
        if n:
            raise TraceError(f"{where}: column {name!r} has {n} null value(s) but is required")
    for name in FINITE[kind]:
        col = table.column(name)
        bad = pc.sum(pc.invert(pc.is_finite(col)).cast(pa.int64())).as_py() or 0
        if bad:
            raise TraceError(f"{where}: column {name!r} has {bad} NaN/inf value(s); store null and mark the epoch diverged")
    if kind == "runs":
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
    """Read every trace file under ``root``; see ``Library``. Raises ``TraceError`` when nothing usable is there."""
    root = Path(root)
    if not root.is_dir():
        raise TraceError(f"{root}: trace library directory does not exist")
    tables: dict[str, list[pa.Table]] = {k: [] for k in TABLES}
    files: dict[str, list[Path]] = {k: [] for k in TABLES}
    problems: list[str] = []
    for kind in TABLES:
        for path in table_files(root, kind):
            try:
                t = read_table(path, kind)
                part = path.parent.name.split("=", 1)[1]
                wrong = pc.sum(pc.not_equal(t["task"], part).cast(pa.int64())).as_py() or 0
                if wrong:
                    raise TraceError(f"{path}: column 'task' disagrees with its partition directory task={part} in {wrong} row(s)")
            except TraceError as exc:
                if strict:
                    raise
                problems.append(f"{exc} -- skipped")
                continue
            tables[kind].append(t)
            files[kind].append(path)
    if not files["runs"] and not files["epochs"]:
        detail = f"; {len(problems)} unreadable file(s): {problems[0]}" if problems else ""
        raise TraceError(f"{root}: no usable trace files (expected {root}/runs/task=*/*.parquet){detail}")
    merged = {k: pa.concat_tables(v) if v else SCHEMAS[k].empty_table() for k, v in tables.items()}
    # Epoch rows whose run is missing (e.g. its runs file was corrupt) are kept but reported, never dropped silently.
    orphans = pc.sum(pc.invert(pc.is_in(merged["epochs"]["run_id"], merged["runs"]["run_id"])).cast(pa.int64())).as_py() or 0
    if orphans:
        msg = f"{root}: {orphans} epochs row(s) belong to runs missing from the runs table (field 'run_id')"
        if strict:
            raise TraceError(msg)
        problems.append(msg)
    return Library(root, merged["runs"], merged["epochs"], merged["decisions"], files, problems)


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
