"""``tmsim summary``: the trace library at a glance, computed with SQL over the library's views."""
from __future__ import annotations

import os
from typing import TextIO

import pyarrow as pa

from .query import connect, format_table

SUMMARY_SQL = """
WITH tree_paths AS (SELECT DISTINCT task, scenario, seed, path, depth FROM finals),
inherited AS (   -- a replicate lacks a path because a run on the way diverged before the path's next branch epoch:
                 -- following the path there gives that divergence (TreeIndex.expected_final_val_loss)
    SELECT p.task, p.scenario, p.seed, p.path, p.depth, d.scored_val_loss
    FROM tree_paths p
    JOIN finals d ON d.status = 'diverged' AND d.task = p.task AND d.scenario = p.scenario AND d.seed = p.seed
         AND starts_with(p.path, d.path || '+')
         AND CAST(regexp_extract(substr(p.path, length(d.path) + 2), '^e([0-9]+):', 1) AS INTEGER) >= d.final_epoch
    WHERE NOT EXISTS (SELECT 1 FROM finals h WHERE h.task = p.task AND h.scenario = p.scenario AND h.seed = p.seed
                      AND h.replicate = d.replicate AND h.path = p.path)
),
paths AS (   -- one row per recorded path of a tree: its expected outcome over the tree's replicates
    SELECT task, scenario, seed, path, any_value(depth) AS depth, avg(scored_val_loss) AS expected
    FROM (SELECT task, scenario, seed, path, depth, scored_val_loss FROM finals
          UNION ALL SELECT task, scenario, seed, path, depth, scored_val_loss FROM inherited)
    GROUP BY task, scenario, seed, path
),
per_seed AS (
    SELECT task, scenario, seed,
           any_value(expected) FILTER (WHERE depth = 0) AS do_nothing, min(expected) AS best
    FROM paths GROUP BY ALL
),
ep AS (SELECT r.task, r.scenario, count(*) AS epochs FROM epochs e JOIN runs r USING (run_id) GROUP BY ALL),
rs AS (SELECT task, scenario, count(*) AS runs, max(replicate) + 1 AS replicates, count(DISTINCT init_lr) AS lrs,
              round(avg((status = 'diverged')::INT), 3) AS diverged_share
       FROM runs GROUP BY ALL)
SELECT p.task, p.scenario,
       count(*) AS seeds,
       any_value(rs.replicates) AS replicates,
       any_value(rs.lrs) AS lrs,
       any_value(rs.runs) AS runs,
       any_value(ep.epochs) AS epochs,
       any_value(rs.diverged_share) AS diverged_share,
       round(median(p.do_nothing), 4) AS do_nothing_val_loss,
       round(median(p.best), 4) AS best_val_loss,
       round(median(p.best / p.do_nothing), 3) AS best_over_do_nothing
FROM per_seed p
JOIN rs USING (task, scenario)
JOIN ep USING (task, scenario)
GROUP BY ALL
ORDER BY p.task, p.scenario
"""


def summary_table(traces: str | os.PathLike, warn: TextIO | None = None) -> pa.Table:
    """One row per (task, scenario): seeds, replicates, distinct initial learning rates (scenario families), runs,
    epochs, diverged share, and the medians over seeds of the do-nothing final validation loss, the best recorded
    path's final validation loss, and their ratio; each path scored by its expected outcome over replicates (a
    diverged run scores the divergence penalty)."""
    with connect(traces, warn=warn) as db:
        return db.sql(SUMMARY_SQL)


def provenance_table(files: list) -> pa.Table:
    """Where a library's trees were recorded (``files``: its runs files, as loaded): one row per distinct provenance
    (torch build, CPU capability, threads, numpy and its BLAS, CPU), with the number of trees."""
    import json

    from .format import file_metadata

    counts: dict[str, int] = {}
    for path in files:
        try:
            prov = file_metadata(path).get("tmsim.provenance", "{}")
        except Exception:  # noqa: BLE001 -- an unreadable file is reported by the library reader
            continue
        counts[prov] = counts.get(prov, 0) + 1
    keys = ("torch", "cpu_capability", "threads", "numpy", "blas", "cpu")
    rows = []
    for prov, n in sorted(counts.items(), key=lambda kv: -kv[1]):
        d = json.loads(prov)
        rows.append({"trees": n, **{k: None if d.get(k) is None else str(d.get(k)) for k in keys}})
    return pa.Table.from_pylist(rows, schema=pa.schema([("trees", pa.int64())] + [(k, pa.string()) for k in keys]))


def summarize(traces: str | os.PathLike, warn: TextIO | None = None) -> str:
    with connect(traces, warn=warn) as db:
        t = db.sql(SUMMARY_SQL)
        runs_files = db.library.files["runs"]
    tasks = sorted(set(t["task"].to_pylist()))
    head = (
        f"trace library {traces}: {len(tasks)} task(s), {t.num_rows} scenario(s), "
        f"{sum(t['runs'].to_pylist())} runs, {sum(t['epochs'].to_pylist())} epochs\n"
        "best_over_do_nothing: median over seeds of (best recorded path / do-nothing), each path's final val loss "
        "its expected value over replicates\n\n"
    )
    prov = provenance_table(runs_files)
    tail = "\nrecorded on (provenance of the trees; another CPU or BLAS gives other draws of the same runs):\n"
    return head + format_table(t) + tail + format_table(prov)
