"""Benchmarks (pytest-benchmark): run with `pytest bench --benchmark-only` (not part of the test suite).

- a DuckDB aggregate over >= 10 million `epochs` rows of a generated, scaled-up library (target: < 1 s);
- recording throughput for digits-mlp, epochs per second, in one process and with the 2-process pool.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from make_big_library import make  # noqa: E402

from tmsim.traces.query import connect  # noqa: E402
from tmsim.record import TreeSpec, plan_tree, record, record_tree  # noqa: E402

BIG_ROWS = int(os.environ.get("TMSIM_BENCH_ROWS", 10_000_000))

AGGREGATE = """
select task, epoch, count(*) as n, avg(val_loss) as mean_val, min(val_loss) as best_val,
       quantile_cont(train_loss, 0.9) as p90_train, sum(diverged::int) as diverged
from epochs group by all order by all
"""


@pytest.fixture(scope="module")
def big_db(tmp_path_factory):
    out = tmp_path_factory.mktemp("big")
    n = make(BIG_ROWS, out)
    db = connect(out)
    assert db.library.epochs.num_rows == n >= BIG_ROWS
    yield db
    db.close()


def test_duckdb_aggregate_over_10m_epochs(benchmark, big_db):
    benchmark.extra_info["epochs_rows"] = big_db.library.epochs.num_rows
    result = benchmark(big_db.sql, AGGREGATE)
    assert result.num_rows > 0
    assert sum(result["n"].to_pylist()) == big_db.library.epochs.num_rows


def test_lineage_query_over_10m_epochs(benchmark, big_db):
    sql = "select count(*) as n, avg(val_loss) as v from lineage where lineage_run_id like 'digits-mlp:overfit:s0+%#7'"
    result = benchmark.pedantic(big_db.sql, args=(sql,), rounds=3, iterations=1)
    assert result["n"][0].as_py() > 0


def test_recording_throughput_one_process(benchmark):
    spec = TreeSpec("digits-mlp", "overfit", 0, depth=2)
    runs, epochs = benchmark.pedantic(record_tree, args=(spec,), rounds=3, iterations=1)
    trained = epochs.num_rows - 1  # the epoch-0 row is an evaluation, not a trained epoch
    benchmark.extra_info["epochs_trained"] = trained
    benchmark.extra_info["epochs_per_s"] = round(trained / benchmark.stats.stats.mean, 1)
    assert 0 < runs.num_rows <= len(plan_tree(spec))


def test_recording_throughput_two_workers(benchmark, tmp_path):
    specs = [TreeSpec("digits-mlp", "overfit", s, depth=2) for s in range(4)]
    counter = iter(range(100))

    def go():
        return record(specs, tmp_path / f"run{next(counter)}", workers=2, show_progress=False)

    stats = benchmark.pedantic(go, rounds=2, iterations=1)
    trained = stats["epochs"] - len(specs)
    benchmark.extra_info["epochs_trained"] = trained
    benchmark.extra_info["epochs_per_s"] = round(trained / benchmark.stats.stats.mean, 1)
