"""Read-only SQL over a trace library: DuckDB views ``runs``, ``epochs``, ``decisions`` and ``lineage``.

The library is read and validated by ``tmsim.traces.load_library`` (so SQL sees exactly the rows the reader
accepted, and every skipped file is reported), then its Arrow tables are handed to an in-memory DuckDB without a
copy. Read-only holds in fact, not only by statement type:

- the database lives in memory and has no temporary directory, so nothing spills to disk (a query that needs more
  memory than DuckDB's limit fails instead of writing files);
- after the views exist, external access (files, extensions, the network) is switched off and the configuration is
  locked, so no statement can read or write a file or turn either back on;
- each call parses its text first and runs exactly one statement whose type is on an allow-list: ``SELECT`` (which
  covers ``WITH``, ``FROM``-first, ``VALUES``, ``DESCRIBE``, ``SUMMARIZE``, ``SHOW``), or ``EXPLAIN`` /
  ``EXPLAIN ANALYZE`` of such a ``SELECT``. ``EXPLAIN ANALYZE`` runs the statement it explains, so the explained
  statement is parsed and checked too;
- a query runs on a worker thread while the caller waits, so a timeout or Ctrl-C reaches ``interrupt()`` and stops
  DuckDB mid-query (DuckDB does not look at Python signals while it computes).

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
import threading
import time
from typing import TextIO

import duckdb
import pyarrow as pa

from ..core.outcome import DIVERGE_FACTOR
from .format import Library, load_library

#: Statement types a query may be (after parsing); EXPLAIN only of a statement that is itself a SELECT.
ALLOWED = {"SELECT"}

#: Connection settings fixed before any data is loaded: no temporary directory (so no spilling to disk), no
#: automatic extension installs or loads, and no lookup of Python variables by table name.
SANDBOX = {"temp_directory": "", "max_temp_directory_size": "0B", "autoinstall_known_extensions": False,
           "autoload_known_extensions": False, "python_enable_replacements": False}

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
FINALS_SQL = f"""
CREATE VIEW finals AS
WITH last AS (
    SELECT lineage_run_id AS run_id, max(epoch) AS final_epoch, min(val_loss) AS best_val_loss,
           arg_min(val_loss, epoch) AS initial_val_loss
    FROM lineage GROUP BY 1
)
SELECT r.run_id, r.root_run_id, r.task, r.scenario, r.seed, r.replicate,
       regexp_replace(r.run_id, ':r[0-9]+', '') AS path,
       r.depth, r.branch_action, r.status, l.final_epoch, l.best_val_loss,
       CASE WHEN r.status = 'diverged' THEN NULL ELSE e.val_loss END AS final_val_loss,
       CASE WHEN r.status = 'diverged' THEN {DIVERGE_FACTOR!r} * l.initial_val_loss ELSE e.val_loss END AS scored_val_loss
FROM runs r
JOIN last l USING (run_id)
JOIN lineage e ON e.lineage_run_id = r.run_id AND e.epoch = l.final_epoch
"""


class QueryTimeout(ValueError):
    """A query ran past its time limit and was stopped."""


class TraceDB:
    """A read-only DuckDB connection over one trace library (see the module docs). ``sql`` returns an Arrow table."""

    def __init__(self, library: Library):
        self.library = library
        self.con = duckdb.connect(":memory:", config=dict(SANDBOX))
        for name in ("runs", "epochs", "decisions"):
            self.con.register(f"_{name}", getattr(library, name))
            self.con.execute(f"CREATE VIEW {name} AS SELECT * FROM _{name}")
        self.con.execute(LINEAGE_SQL)
        self.con.execute(FINALS_SQL)
        self.con.execute("SET enable_external_access = false")
        self.con.execute("SET lock_configuration = true")

    def check(self, query: str) -> None:
        """Raise ``ValueError`` unless ``query`` is exactly one allowed statement (see ``ALLOWED``)."""
        statements = self._parse(query)
        if len(statements) != 1:
            raise ValueError(f"expected exactly one SQL statement, got {len(statements)}")
        kind = statements[0].type.name
        if kind == "EXPLAIN":
            inner = _explained(query)
            inner_kinds = [st.type.name for st in self._parse(inner)] if inner is not None else []
            if inner_kinds != ["SELECT"]:
                raise ValueError("only read-only queries are allowed: EXPLAIN [ANALYZE] takes a single SELECT; got "
                                 + (f"EXPLAIN of a {'/'.join(inner_kinds) or 'unrecognised'} statement"))
        elif kind not in ALLOWED:
            raise ValueError(f"only read-only queries are allowed (SELECT, or EXPLAIN of a SELECT); got a {kind} statement")

    def _parse(self, query: str) -> list:
        try:
            return self.con.extract_statements(query)
        except duckdb.Error as exc:
            raise ValueError(f"SQL does not parse: {str(exc).splitlines()[0]}") from None

    def sql(self, query: str, timeout: float | None = None) -> pa.Table:
        """Run one read-only statement and return its result as Arrow.

        Anything but a SELECT (or EXPLAIN of one) is refused with ``ValueError``. With ``timeout`` (seconds) a
        query still running then is stopped and ``QueryTimeout`` raised. ``KeyboardInterrupt`` (Ctrl-C) stops the
        running query before it propagates.

        Example
        -------
        >>> with connect("traces") as db:                                  # doctest: +SKIP
        ...     db.sql("select count(*) as n from runs", timeout=10)["n"][0].as_py()
        17833
        """
        self.check(query)
        done: dict = {}
        finished = threading.Event()

        def run() -> None:
            try:
                rel = self.con.sql(query)
                # DuckDB 2 names it to_arrow_table; 1.x names it arrow (both return a pyarrow.Table).
                done["table"] = (getattr(rel, "to_arrow_table", None) or rel.arrow)()
            except BaseException as exc:  # handed to the waiting thread, which raises it
                done["error"] = exc
            finally:
                finished.set()

        # An Event, not Thread.join: a join interrupted by Ctrl-C can wrongly mark a running thread as finished.
        threading.Thread(target=run, name="tmsim-query", daemon=True).start()
        try:
            if not finished.wait(timeout):
                self._stop(finished)
                if "table" not in done:
                    raise QueryTimeout(f"query stopped after {timeout:g} s (its time limit)")
        except KeyboardInterrupt:
            self._stop(finished)
            raise
        if "error" in done:
            exc = done["error"]
            if isinstance(exc, duckdb.Error):
                raise ValueError(f"query failed: {str(exc).splitlines()[0]}") from None
            raise exc
        return done["table"]

    def _stop(self, finished: threading.Event) -> None:
        """Interrupt the running query and wait until DuckDB has let go of the connection (it checks for an
        interrupt often, so this takes milliseconds; a second Ctrl-C meanwhile only interrupts again)."""
        while True:
            self.con.interrupt()
            try:
                finished.wait()
                return
            except KeyboardInterrupt:
                continue

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> "TraceDB":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _explained(query: str) -> str | None:
    """The statement an ``EXPLAIN`` wraps, as text: what follows ``EXPLAIN``, an optional ``ANALYZE`` and an
    optional option list such as ``(FORMAT json)``; None if there is nothing there. Words are found with DuckDB's
    own tokenizer, which skips comments and keeps quoted strings whole, so nothing can hide a statement from the
    check. Getting it wrong can only refuse a query: the text returned must itself parse as one SELECT."""
    starts = [(pos, kind) for pos, kind in duckdb.tokenize(query)]
    ends = [pos for pos, _ in starts[1:]] + [len(query)]
    words = [(pos, query[pos:end].strip().upper()) for (pos, kind), end in zip(starts, ends)
             if kind != duckdb.token_type.comment]
    if not words or words[0][1] != "EXPLAIN":
        return None
    i = 1
    if i < len(words) and words[i][1] in ("ANALYZE", "ANALYSE"):
        i += 1
    # "(" opens either an option list or a parenthesised query such as "(SELECT 1) UNION (SELECT 2)".
    if i + 1 < len(words) and words[i][1] == "(" and words[i + 1][1] not in ("SELECT", "WITH", "FROM", "VALUES", "TABLE", "("):
        depth = 0
        for j in range(i, len(words)):
            depth += {"(": 1, ")": -1}.get(words[j][1], 0)
            if depth == 0:
                i = j + 1
                break
        else:
            return None
    return query[words[i][0]:] if i < len(words) else None


def connect(traces: str | os.PathLike, warn: TextIO | None = None, strict: bool = False) -> TraceDB:
    """Open the library at ``traces``; each unusable file is reported to ``warn`` (one line each) and skipped."""
    lib = load_library(traces, strict=strict)
    if warn is not None:
        for p in lib.problems:
            print(f"tmsim: warning: {p}", file=warn)
    return TraceDB(lib)


def query(sql: str, traces: str | os.PathLike, timeout: float | None = None) -> pa.Table:
    """One-shot: run ``sql`` over the library at ``traces`` and return Arrow (see ``TraceDB.sql``)."""
    with connect(traces) as db:
        return db.sql(sql, timeout=timeout)


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


