"""SQL over the library: views, lineage, read-only guarantees, output formats, the summary."""
import json

import pyarrow as pa
import pytest

from tmsim.cli import main
from tmsim.traces.query import connect, format_table, query


def test_views_and_python_api_return_arrow(small_library):
    t = query("select task, scenario, count(distinct seed) as seeds from runs group by all order by all", small_library)
    assert isinstance(t, pa.Table)
    assert t.to_pylist() == [{"task": "digits-mlp", "scenario": "healthy", "seeds": 2},
                             {"task": "digits-mlp", "scenario": "overfit", "seeds": 2}]
    assert query("select count(*) as n from decisions", small_library)["n"][0].as_py() == 0


def test_lineage_stitches_a_branch_history(small_library):
    with connect(small_library) as db:
        rid = db.sql("select run_id from runs where depth = 2 and status = 'complete' order by run_id limit 1")["run_id"][0].as_py()
        rows = db.sql(f"select epoch, run_id, lr from lineage where lineage_run_id = '{rid}' order by epoch").to_pylist()
        root = rid.split("+")[0]
        parent = rid.rsplit("+", 1)[0]
        b1, b2 = (int(p.split(":")[0][1:]) for p in rid.split("+")[1:])
        assert [r["epoch"] for r in rows] == list(range(0, 21))
        assert all(r["run_id"] == root for r in rows if r["epoch"] <= b1)
        assert all(r["run_id"] == parent for r in rows if b1 < r["epoch"] <= b2)
        assert all(r["run_id"] == rid for r in rows if r["epoch"] > b2)
        # a root's lineage is its own epochs
        n = db.sql(f"select count(*) as n from lineage where lineage_run_id = '{root}'")["n"][0].as_py()
        assert n == 21


def test_finals_match_the_last_lineage_epoch(small_library):
    with connect(small_library) as db:
        f = db.sql("select * from finals where status = 'complete' and depth = 0").to_pylist()
        for r in f:
            last = db.sql(f"select val_loss from epochs where run_id = '{r['run_id']}' and epoch = 20")["val_loss"][0].as_py()
            assert r["final_val_loss"] == last and r["final_epoch"] == 20
        assert db.sql("select count(*) as n from finals where status = 'diverged' and final_val_loss is not null")["n"][0].as_py() == 0
        stops = db.sql("select final_epoch from finals where branch_action = 'stop'")["final_epoch"].to_pylist()
        assert stops and set(stops) <= {5, 10}


@pytest.mark.parametrize("sql, msg", [
    ("copy (select 1) to 'x.csv'", "only read-only queries"),
    ("create table t as select 1", "only read-only queries"),
    ("drop view runs", "only read-only queries"),
    ("select 1; select 2", "exactly one SQL statement"),
    ("select * from read_csv('/etc/passwd')", "query failed"),
    ("select nonsense from", "does not parse"),
])
def test_queries_are_read_only(small_library, sql, msg):
    with connect(small_library) as db, pytest.raises(ValueError, match=msg):
        db.sql(sql)


def test_formats(small_library, capsys):
    t = query("select task, count(*) as n from runs group by all", small_library)
    assert format_table(t).splitlines()[-1] == "(1 row)"
    assert format_table(t, "csv").splitlines()[0] == "task,n"
    assert json.loads(format_table(t, "json"))[0]["task"] == "digits-mlp"
    assert main(["query", "select count(*) as n from runs", "--traces", str(small_library), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["n"] > 0


def test_summary(small_library, capsys):
    assert main(["summary", "--traces", str(small_library)]) == 0
    out = capsys.readouterr().out
    assert "best_over_do_nothing" in out and "overfit" in out and "healthy" in out
