"""``tmsim summary``: the trace library at a glance, computed with SQL over the library's views."""
from __future__ import annotations

import os
from typing import TextIO

import pyarrow as pa

from .query import connect, format_table

SUMMARY_SQL = """
WITH per_root AS (
    SELECT root_run_id,
           any_value(final_val_loss) FILTER (WHERE depth = 0) AS do_nothing,
           min(final_val_loss) AS best
    FROM finals GROUP BY 1
),
ep AS (SELECT r.task, r.scenario, count(*) AS epochs FROM epochs e JOIN runs r USING (run_id) GROUP BY ALL)
SELECT f.task, f.scenario,
       count(DISTINCT f.seed) AS seeds,
       count(*) AS runs,
       any_value(ep.epochs) AS epochs,
       round(avg((f.status = 'diverged')::INT), 3) AS diverged_share,
       round(median(p.do_nothing), 4) AS do_nothing_val_loss,
       round(median(p.best), 4) AS best_val_loss,
       round(median(p.best / p.do_nothing), 3) AS best_over_do_nothing
FROM finals f
JOIN per_root p USING (root_run_id)
JOIN ep USING (task, scenario)
GROUP BY ALL
ORDER BY f.task, f.scenario
"""


def summary_table(traces: str | os.PathLike, warn: TextIO | None = None) -> pa.Table:
    """One row per (task, scenario): seeds, runs, epochs, diverged share, and the medians over seeds of the
    do-nothing final validation loss, the best recorded final validation loss, and their ratio (per seed)."""
    with connect(traces, warn=warn) as db:
        return db.sql(SUMMARY_SQL)


def summarize(traces: str | os.PathLike, warn: TextIO | None = None) -> str:
    t = summary_table(traces, warn)
    tasks = sorted(set(t["task"].to_pylist()))
    head = (
        f"trace library {traces}: {len(tasks)} task(s), {t.num_rows} scenario(s), "
        f"{sum(t['runs'].to_pylist())} runs, {sum(t['epochs'].to_pylist())} epochs\n"
        "best_over_do_nothing: median over seeds of (best recorded final val loss / do-nothing final val loss)\n\n"
    )
    return head + format_table(t)
