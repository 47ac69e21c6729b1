"""Read-only SQL over a trace library: DuckDB views ``runs``, ``epochs``, ``decisions`` and ``lineage``.

The library is read and validated by ``tmsim.traces.load_library`` (so SQL sees exactly the rows the reader
accepted, and every skipped file is reported), then its Arrow tables are handed to an in-memory DuckDB without a
copy. After the views exist the connection is locked down: external file access is switched off, the configuration
is locked, and only ``SELECT``-like statements are run, so a query can neither read nor write files.

``lineage`` stitches a branch's full history: one row per epoch of the run *as it was trained*, its ancestors'
epochs up to each branch epoch followed by its own. Its columns are those of ``epochs`` plus ``lineage_run_id``
(the run whose history this is; ``run_id`` stays the run that trained the epoch).

Example
-------
>>> from tmsim.traces.query import connect
>>> with connect("traces") as db:                                        # doctest: +SKIP
...     db.sql("select task, count(*) as n from runs group by all order by task")
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from typing import TextIO

import duckdb
import pyarrow as pa

from .format import Library, load_library

ALLOWED = {"SELECT", "EXPLAIN"}

LINEAGE_SQL = """
CREATE VIEW lineage AS
WITH RECURSIVE chain(lineage_run_id, member_id, upto) AS (
    SELECT run_id, run_id, 2147483647 FROM runs
    UNION ALL
    SELECT c.lineage_run_id, r.parent_run_id, least(c.upto, r.branch_epoch)
    FROM chain c JOIN runs r ON r.run_id = c.member_id
    WHERE r.parent_run_id IS NOT NULL
)
SELECT c.lineage_run_id, e.*
FROM chain c JOIN epochs e ON e.run_id = c.member_id AND e.epoch <= c.upto
"""

#: One row per run: where its lineage ends and how. ``final_val_loss`` is null for a diverged run.
FINALS_SQL = """
CREATE VIEW finals AS
WITH last AS (
    SELECT lineage_run_id AS run_id, max(epoch) AS final_epoch, min(val_loss) AS best_val_loss
    FROM lineage GROUP BY 1
)
SELECT r.run_id, r.root_run_id, r.task, r.scenario, r.seed, r.depth, r.branch_action, r.status,
       l.final_epoch, l.best_val_loss,
       CASE WHEN r.status = 'diverged' THEN NULL ELSE e.val_loss END AS final_val_loss
FROM runs r
JOIN last l USING (run_id)
JOIN lineage e ON e.lineage_run_id = r.run_id AND e.epoch = l.final_epoch
"""


class TraceDB:
    """A read-only DuckDB connection over one trace library. ``sql`` returns an Arrow table."""

    def __init__(self, library: Library):
        self.library = library
        self.con = duckdb.connect(":memory:")
        for name in ("runs", "epochs", "decisions"):
            self.con.register(f"_{name}", getattr(library, name))
            self.con.execute(f"CREATE VIEW {name} AS SELECT * FROM _{name}")
        self.con.execute(LINEAGE_SQL)
        self.con.execute(FINALS_SQL)
        self.con.execute("SET enable_external_access = false")
        self.con.execute("SET lock_configuration = true")

    def sql(self, query: str) -> pa.Table:
        """Run one read-only statement; anything but SELECT/EXPLAIN is refused with a clear error."""
        try:
            statements = self.con.extract_statements(query)
        except duckdb.Error as exc:
            raise ValueError(f"SQL does not parse: {str(exc).splitlines()[0]}") from None
        if len(statements) != 1:
            raise ValueError(f"expected exactly one SQL statement, got {len(statements)}")
        kind = statements[0].type.name
        if kind not in ALLOWED:
            raise ValueError(f"only read-only queries are allowed (SELECT/EXPLAIN); got a {kind} statement")
        try:
            rel = self.con.sql(query)
            # DuckDB 2 names it to_arrow_table; 1.x names it arrow (both return a pyarrow.Table).
            return (getattr(rel, "to_arrow_table", None) or rel.arrow)()
        except duckdb.Error as exc:
            raise ValueError(f"query failed: {str(exc).splitlines()[0]}") from None

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> "TraceDB":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def connect(traces: str | os.PathLike, warn: TextIO | None = None, strict: bool = False) -> TraceDB:
    """Open the library at ``traces``; each unusable file is reported to ``warn`` (one line each) and skipped."""
    lib = load_library(traces, strict=strict)
    if warn is not None:
        for p in lib.problems:
            print(f"tmsim: warning: {p}", file=warn)
    return TraceDB(lib)


def query(sql: str, traces: str | os.PathLike) -> pa.Table:
    """One-shot: run ``sql`` over the library at ``traces`` and return Arrow."""
    with connect(traces) as db:
        return db.sql(sql)


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}" if math.isfinite(v) else str(v)
    return str(v)


def format_table(table: pa.Table, fmt: str = "table", max_rows: int = 200) -> str:
    """Render ``table`` as an aligned text table, CSV or a JSON array of objects."""
    rows = table.to_pylist()
    if fmt == "json":
        return json.dumps(rows, default=str, indent=1) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(table.column_names)
        w.writerows([[_fmt(r[c]) for c in table.column_names] for r in rows])
        return buf.getvalue()
    if fmt != "table":
        raise ValueError(f"--format: unknown format {fmt!r}; use table, csv or json")
    cells = [list(table.column_names)] + [[_fmt(r[c]) for c in table.column_names] for r in rows[:max_rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))] if cells[0] else []
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if len(rows) > max_rows:
        lines.append(f"... {len(rows) - max_rows} more rows (use --format csv for all)")
    lines.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(lines) + "\n"


