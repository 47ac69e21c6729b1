"""The bundled library in traces/ holds what the project promises: real, valid, varied recordings."""
import pyarrow.compute as pc

from tmsim.traces.query import connect
from tmsim.traces.summary import summary_table
from tmsim.traces import load_library


def test_bundled_library_is_valid_and_complete(bundled):
    lib = load_library(bundled, strict=True)
    assert not lib.problems
    assert set(pc.unique(lib.runs["source"]).to_pylist()) == {"recorded"}
    with connect(bundled) as db:
        per = db.sql("select task, scenario, count(distinct seed) as seeds from runs group by all").to_pylist()
    tasks = {r["task"] for r in per}
    assert len(tasks) >= 3
    for t in tasks:
        assert len([r for r in per if r["task"] == t]) >= 4
    assert all(r["seeds"] >= 5 for r in per)


def test_overfitting_is_fixable_and_some_branches_diverge(bundled):
    rows = summary_table(bundled).to_pylist()
    overfit = [r for r in rows if r["scenario"] == "overfit"]
    assert len(overfit) == 3
    for r in overfit:  # the best recorded branch ends clearly below doing nothing
        assert r["best_over_do_nothing"] < 0.85, r
    assert any(r["diverged_share"] > 0 for r in rows)
