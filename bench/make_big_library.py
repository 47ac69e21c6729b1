"""Generate a scaled-up trace library for benchmarks: the bundled library's rows, replicated with fresh run ids.

Every copy is a valid trace tree set (runs and epochs, trace format v1, one file per task per copy), so the
reader, the DuckDB views and the benchmark queries treat it exactly like a recorded library. Columnar throughout:
each copy is the source table with its id columns rewritten by one vectorised string operation.

Usage: python bench/make_big_library.py --rows 10000000 --out /tmp/tmsim-big
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from tmsim.traces import load_library, write_table

REPO = Path(__file__).resolve().parent.parent


def _suffix_ids(table: pa.Table, cols: tuple[str, ...], k: int) -> pa.Table:
    for c in cols:
        if c in table.column_names:
            i = table.schema.get_field_index(c)
            table = table.set_column(i, c, pc.binary_join_element_wise(table[c], pa.scalar(f"#{k}"), ""))
    return table


def make(rows: int, out: Path, source: Path = REPO / "traces") -> int:
    """Write at least ``rows`` epochs rows to ``out``; returns the number written."""
    lib = load_library(source, strict=True)
    copies = math.ceil(rows / lib.epochs.num_rows)
    written = 0
    for task in pc.unique(lib.runs["task"]).to_pylist():
        runs = lib.runs.filter(pc.equal(lib.runs["task"], task))
        epochs = lib.epochs.filter(pc.equal(lib.epochs["task"], task))
        for k in range(copies):
            r = _suffix_ids(runs, ("run_id", "parent_run_id", "root_run_id"), k)
            r = r.set_column(r.schema.get_field_index("seed"), "seed", pc.add(r["seed"], 1000 * (k + 1)))
            write_table(r, out / "runs" / f"task={task}" / f"copy{k:04d}.parquet", "runs")
            write_table(_suffix_ids(epochs, ("run_id",), k), out / "epochs" / f"task={task}" / f"copy{k:04d}.parquet", "epochs")
            written += epochs.num_rows
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    print(f"wrote {make(a.rows, a.out):,} epochs rows to {a.out}")


if __name__ == "__main__":
    main()
