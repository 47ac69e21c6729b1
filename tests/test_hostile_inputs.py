"""Hostile inputs, in one place: every way a careless or hostile user, policy or library was found to break
tmsim, each with the test that shows it no longer does. Four sections:

1. the harness: policies that mutate what they are given, exit, hang, flood memory or return odd objects;
2. damaged and merged libraries, and hostile SQL;
3. forged promotion records, rewritten policy code, unsafe names, a swapped surrogate cache;
4. the recorder: two recorders on one library, signals, killed workers, bad arguments.

No test asserts one chaotic training outcome."""
import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tmsim.cli import main
from tmsim.core import Bounds, Hyperparams, Snapshot, call_policy, call_policy_batch, validate
from tmsim.evaluate.promote import check_record, record_path, verify_record, write_record
from tmsim.live import LiveManager, NotPromotedError
from tmsim.policies import OraclePolicy, RulesPolicy, SequencePolicy, load_spec, make_policy
from tmsim.policies.check import decision_points, run_policy
from tmsim.policies.kinds import built_from
from tmsim.record import LOCK_NAME, RecorderBusy, TreeSpec, parse_seeds, record
from tmsim.simulate import Simulator
from tmsim.tasks.digits import DigitsMLP
from tmsim.traces import TraceError, TreeIndex, load_library
from tmsim.traces.query import TraceDB, connect

REPO = Path(__file__).resolve().parent.parent
# ==================================================================================================================
# A policy under test cannot change its own score, the verdict, or a command's exit
# ==================================================================================================================

# Hostile policies against the harness: a policy cannot change its own score, the verdict, or a command's exit.

PLUGINS = Path(__file__).parent / "plugins"
sys.path.insert(0, str(PLUGINS))
from hostile_policies import Hostile  # noqa: E402


@pytest.fixture(scope="module")
def index(small_library):
    return TreeIndex(load_library(small_library))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("surrogate-cache")


def _spec(tmp_path: Path, how: str, name: str | None = None) -> Path:
    p = tmp_path / f"{name or how}.toml"
    p.write_text(f'name = "{name or "hostile-" + how}"\nkind = "python"\ntarget = "hostile_policies:Hostile"\n'
                 f'[settings]\nhow = "{how}"\n')
    return p


def _tmsim(args: list[str], cache: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(PLUGINS), "TMSIM_SURROGATE_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-m", "tmsim.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=REPO)


def _snap(lr=0.2) -> Snapshot:
    return Snapshot.build("r", "t", [{"epoch": 0, "val_loss": 1.0}, {"epoch": 5, "val_loss": 0.9, "lr": lr}],
                          Hyperparams(lr=lr), max_epochs=20, decide_every=5, offered=("continue", "lr_down"))


# --- a policy that mutates what it is given ----------------------------------------------------------------------

def test_mutating_the_snapshot_changes_neither_the_validator_nor_the_cache(index):
    snaps = decision_points(index, Bounds())[:40]
    before = [(s.hparams, s.offered, s.hash) for s in snaps]
    _, report = run_policy(Hostile("mutate"), snaps, Bounds(), timeout=5)
    assert [(s.hparams, s.offered, s.hash) for s in snaps] == before
    assert report["unvalidated_updates"] == 0 and report["violations"] == {"change_too_large": len(snaps)}
    sim = Simulator(index, None, on_off_tree="truncate")
    roots = sim.roots()
    clean = {o.root: o.final_val_loss for o in sim.rollout(RulesPolicy(), roots)}
    oracle = {o.root: o.final_val_loss for o in sim.rollout(OraclePolicy(index), roots)}
    outs = sim.rollout(Hostile("mutate"), roots)  # shares the simulator's snapshot cache with the next rollouts
    for o in outs:
        for d in o.decisions:
            assert d["applied"].hparams.lr <= 4 * d["snapshot"].hparams.lr  # the x4 step limit held
    assert {o.root: o.final_val_loss for o in sim.rollout(RulesPolicy(), roots)} == clean
    assert {o.root: o.final_val_loss for o in sim.rollout(OraclePolicy(index), roots)} == oracle


# --- exits, interrupts, hangs and odd outputs, in process (the guarded call) --------------------------------------

@pytest.mark.parametrize("how", ["sys_exit", "keyboard_interrupt"])
def test_exit_and_interrupt_inside_decide_are_policy_exceptions(how):
    ans, _ = call_policy(Hostile(how).decide, _snap(), timeout=5)
    act, violations = validate(ans, _snap(), Bounds())
    assert violations == ["policy_exception"] and act.source == "fallback"
    answers, _ = call_policy_batch(Hostile(how), [_snap(), _snap()], timeout=5)
    assert [validate(a, _snap(), Bounds())[1] for a in answers] == [["policy_exception"]] * 2


def test_a_hanging_policy_and_a_hanging_repr_are_timeouts():
    t0 = time.perf_counter()
    for how in ("hang", "slow_repr"):
        ans, _ = call_policy(Hostile(how).decide, _snap(), timeout=0.5)
        assert validate(ans, _snap(), Bounds())[1] == ["timeout"]
    answers, _ = call_policy_batch(Hostile("hang"), [_snap()] * 3, timeout=0.2)
    assert [validate(a, _snap(), Bounds())[1] for a in answers] == [["timeout"]] * 3
    assert time.perf_counter() - t0 < 10


@pytest.mark.parametrize("how", ["raising_get", "unvalidated"])
def test_outputs_that_break_on_reading_are_unparseable_and_audit_rows_are_written(how):
    snaps = [_snap()]
    audit, report = run_policy(Hostile(how), snaps, Bounds(), timeout=5)
    assert report["violations"] == {"unparseable": 1} and audit.num_rows == 1


def test_a_huge_reason_is_capped_in_the_audit(index):
    snaps = decision_points(index, Bounds())[:20]
    audit, report = run_policy(Hostile("huge_reason"), snaps, Bounds(), timeout=10)
    assert report["actions"].get("lr_down", 0) + report["actions"].get("continue", 0) == 20
    assert max(len(x) for x in audit["raw_output"].to_pylist()) <= 2000
    assert max(len(x or "") for x in audit["proposal_json"].to_pylist()) <= 1200


@pytest.mark.parametrize("raw", ['{"action": "set_lr", "value": -3.0}', '{"action": "set_lr", "value": 0}',
                                 '{"action": "set_lr", "value": 1e-300}', '{"action": "set_weight_decay", "value": -1}',
                                 '{"action": "set_dropout", "value": 1.5}', '{"action": "set_lr", "value": 1e9}'])
def test_nonsense_values_are_violations_never_moves(raw):
    snap = Snapshot.build("r", "t", [{"epoch": 0, "val_loss": 1.0}, {"epoch": 5, "val_loss": 0.9}],
                          Hyperparams(lr=0.2, weight_decay=0.01), max_epochs=20, decide_every=5)
    act, violations = validate(raw, snap, Bounds())
    assert violations == ["invalid_value"] and act.hparams == snap.hparams and act.source == "fallback"


# --- untrusted policies run in their own process: the commands -------------------------------------------------

def test_sys_exit_in_a_policy_still_gives_the_leaderboard_its_table(small_library, cache, tmp_path):
    out = tmp_path / "lb.json"
    r = _tmsim(["leaderboard", "--traces", str(small_library), "--no-report", "--quiet", "--json", str(out),
                "--policies", str(_spec(tmp_path, "sys_exit"))], cache)
    assert r.returncode == 0, r.stderr
    assert "hostile-sys_exit" in r.stdout
    row = next(x for x in json.loads(out.read_text()) if x["policy"] == "hostile-sys_exit")
    assert row["violations_by_kind"]["policy_exception"] > 0 and row["fatal_violations"] > 0


@pytest.mark.parametrize("how", ["os_exit", "hang", "memory"])
def test_a_policy_that_kills_hangs_or_floods_its_process_fails_the_command_after_the_table(small_library, cache,
                                                                                           tmp_path, how):
    out = tmp_path / "lb.json"
    t0 = time.perf_counter()
    r = _tmsim(["leaderboard", "--traces", str(small_library), "--no-report", "--quiet", "--json", str(out),
                "--timeout", "2", "--policies", str(_spec(tmp_path, how)), str(REPO / "policies" / "rules.toml")], cache)
    assert time.perf_counter() - t0 < 240
    if how == "memory":  # the allocation fails inside the policy's process: a counted exception, not a crash
        assert r.returncode == 0, r.stderr
        row = next(x for x in json.loads(out.read_text()) if x["policy"] == "hostile-memory")
        assert row["violations_by_kind"]["policy_exception"] > 0
        return
    assert r.returncode == 3, r.stderr
    assert "leaderboard:" in r.stdout and f"hostile-{how} (FAILED)" in r.stdout
    assert f"policy hostile-{how} could not be scored" in r.stderr
    rows = {x["policy"]: x for x in json.loads(out.read_text())}
    assert rows[f"hostile-{how}"]["failed"] and rows["rules"]["failed"] is None


_PEAK = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
         "print('peak_kb', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
         "sys.exit(r.returncode)")


def test_policy_check_with_a_stray_thread_and_a_huge_reason_ends_and_stays_small(small_library, cache, tmp_path):
    """The command's own peak memory (its process and the policy processes it starts), measured in a fresh parent,
    so what other tests' processes used never counts."""
    t0 = time.perf_counter()
    _spec(tmp_path, "thread")
    _spec(tmp_path, "huge_reason")
    env = {**os.environ, "PYTHONPATH": str(PLUGINS), "TMSIM_SURROGATE_CACHE": str(cache)}
    r = subprocess.run([sys.executable, "-c", _PEAK, sys.executable, "-m", "tmsim.cli", "policy", "check",
                        str(tmp_path), "--traces", str(small_library), "--quiet", "--timeout", "5"],
                       capture_output=True, text=True, env=env, timeout=240, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert time.perf_counter() - t0 < 240
    peak_mb = int(r.stderr.rsplit("peak_kb", 1)[1].split()[0]) / 1024
    assert 0 < peak_mb < 2000, peak_mb


# --- names -------------------------------------------------------------------------------------------------------

def test_a_spec_cannot_take_the_baselines_name_and_names_are_unique(small_library, cache, tmp_path):
    fake = tmp_path / "fake-constant.toml"
    fake.write_text('name = "constant"\nkind = "rules"\n')
    r = _tmsim(["leaderboard", "--traces", str(small_library), "--no-report", "--quiet", "--policies", str(fake)], cache)
    assert r.returncode == 2 and "'constant' is reserved" in r.stderr and "fake-constant.toml" in r.stderr
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    a.write_text('name = "twin"\nkind = "rules"\n')
    b.write_text('name = "twin"\nkind = "plateau"\n')
    r = _tmsim(["leaderboard", "--traces", str(small_library), "--no-report", "--quiet", "--policies", str(a), str(b)],
               cache)
    assert r.returncode == 2 and "'twin' is used twice" in r.stderr and "a.toml" in r.stderr and "b.toml" in r.stderr


# ==================================================================================================================
# Damaged and merged libraries, and hostile SQL
# ==================================================================================================================

# Hostile and damaged libraries, and hostile SQL: every command skips what it cannot use with a one-line warning
# naming the file and the field, never a traceback, and the read-only SQL is read-only in fact.
# 
# Each test builds its damaged library in ``tmp_path`` from a few trees of the bundled library.

TASK = "task=digits-mlp"
TREES = ("overfit-s0", "healthy-s1")
#: Keeps DuckDB busy for far longer than any test waits (three-way cross join of the bundled epochs).
RUNAWAY = ("select count(*) from epochs a, epochs b, epochs c "
           "where a.val_loss + b.val_loss < c.val_loss")


def make_lib(tmp_path, bundled, trees=TREES, name="lib"):
    lib = tmp_path / name
    for kind in ("runs", "epochs"):
        (lib / kind / TASK).mkdir(parents=True)
        for tree in trees:
            shutil.copy(bundled / kind / TASK / f"{tree}.parquet", lib / kind / TASK)
    return lib


def tree_file(lib, kind, tree="healthy-s1"):
    return lib / kind / TASK / f"{tree}.parquet"


def rewrite(path, fn, metadata=None):
    """Rewrite a trace file in place with ``fn`` applied, keeping (or replacing) its key-value metadata."""
    t = pq.read_table(path)
    md = t.schema.metadata if metadata is None else metadata
    pq.write_table(fn(t).replace_schema_metadata(md), path)


def without(run_id):
    return lambda t: t.filter(pc.invert(pc.equal(t["run_id"], run_id)))


def set_value(column, row, value):
    def fn(t):
        vals = t[column].to_pylist()
        vals[row] = value
        return t.set_column(t.schema.get_field_index(column), column, pa.array(vals, t.schema.field(column).type))
    return fn


def warnings_of(err):
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    return [line for line in lines if line.startswith("tmsim: warning: ")]


# --- damaged libraries: every command skips the damage and keeps the neighbouring tree -------------------------------

def _truncate(lib):
    f = tree_file(lib, "epochs")
    f.write_bytes(f.read_bytes()[:300])
    return f, "not a readable Parquet file"


def _runs_without_epochs(lib):
    tree_file(lib, "epochs").unlink()
    return tree_file(lib, "runs"), "field 'run_id'"


def _missing_parent(lib):
    rewrite(tree_file(lib, "runs"), without("digits-mlp:healthy:s1:r0+e5:lr_down"))
    return tree_file(lib, "runs"), "field 'parent_run_id'"


def _missing_root(lib):
    rewrite(tree_file(lib, "runs"), without("digits-mlp:healthy:s1:r0"))
    return tree_file(lib, "runs"), "field 'parent_run_id'"


def _branch_without_epochs(lib):
    rewrite(tree_file(lib, "epochs"), without("digits-mlp:healthy:s1:r0+e5:lr_down"))
    return tree_file(lib, "runs"), "have no rows in the epochs table (field 'run_id'"


DAMAGE = {"unreadable epochs file": _truncate, "runs file without epochs": _runs_without_epochs,
          "missing parent run": _missing_parent, "missing root run": _missing_root,
          "branch without epochs": _branch_without_epochs}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_every_command_skips_a_damaged_tree_with_one_line(damage, bundled, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TMSIM_SURROGATE_CACHE", str(tmp_path / "cache"))
    lib = make_lib(tmp_path, bundled)
    named, field = DAMAGE[damage](lib)
    loaded = load_library(lib)
    assert any(str(named) in p and field in p for p in loaded.problems), loaded.problems
    # what is left is the neighbouring tree, whole, and the index is built from it without surprises
    index = TreeIndex(loaded)
    assert "digits-mlp:overfit:s0:r0" in index.roots
    whole = load_library(make_lib(tmp_path, bundled, trees=("overfit-s0",), name="clean"))
    assert pc.sum(pc.starts_with(loaded.runs["run_id"], "digits-mlp:overfit:s0")).as_py() == whole.runs.num_rows
    for rid in index.meta:
        assert index.chain(rid) is not None and index[rid]
    commands = {
        "leaderboard": ["leaderboard", "--traces", str(lib), "--policies", str(REPO / "policies" / "constant.toml"),
                        "--no-report", "--quiet"],
        "surrogate fit": ["surrogate", "fit", "--traces", str(lib), "--out", str(tmp_path / "s.skops"), "--trees", "5"],
        "policy check": ["policy", "check", str(REPO / "policies" / "rules.toml"), "--traces", str(lib), "--quiet"],
        "summary": ["summary", "--traces", str(lib)],
        "query": ["query", "select count(*) as n from finals", "--traces", str(lib)],
    }
    for name, argv in commands.items():
        rc = main(argv)
        err = capsys.readouterr().err
        assert rc == 0, (name, err)
        warned = warnings_of(err)
        assert any(str(named) in w and field in w for w in warned), (name, err)


def test_cycle_of_parents_and_foreign_root_are_skipped(bundled, tmp_path):
    lib = make_lib(tmp_path, bundled)
    a, b = "digits-mlp:healthy:s1:r0+e5:lr_down", "digits-mlp:healthy:s1:r0+e5:lr_down+e10:lr_down"

    def loop(t):  # a's parent becomes its own child: neither is reachable from a root any more
        parents = [b if r == a else p for r, p in zip(t["run_id"].to_pylist(), t["parent_run_id"].to_pylist())]
        t = t.set_column(t.schema.get_field_index("parent_run_id"), "parent_run_id", pa.array(parents, pa.string()))
        return t

    rewrite(tree_file(lib, "runs"), loop)
    rewrite(tree_file(lib, "runs", "overfit-s0"), set_value("root_run_id", 3, "digits-mlp:healthy:s1:r0"))
    loaded = load_library(lib)
    runs = set(loaded.runs["run_id"].to_pylist())
    assert a not in runs and b not in runs and "digits-mlp:healthy:s1:r0" in runs
    assert any("cycle of parents" in p and str(tree_file(lib, "runs")) in p for p in loaded.problems)
    assert any("field 'root_run_id'" in p and str(tree_file(lib, "runs", "overfit-s0")) in p for p in loaded.problems)
    index = TreeIndex(loaded)
    assert all(isinstance(index.chain(r), dict) for r in index.meta)  # no endless walk up a cycle
    with connect(lib) as db:  # the recursive lineage view terminates too
        assert db.sql("select count(*) as n from lineage", timeout=60)["n"][0].as_py() > 0
    with pytest.raises(TraceError):
        load_library(lib, strict=True)


def test_non_utf8_file_metadata_is_one_file_error(bundled, tmp_path, capsys):
    lib = make_lib(tmp_path, bundled)
    victim = tree_file(lib, "runs")
    md = pq.read_schema(victim).metadata
    rewrite(victim, lambda t: t, {**md, b"tmsim.recipe": b"\xff\xfe not utf-8"})
    loaded = load_library(lib)
    assert any(str(victim) in p and "'tmsim.recipe'" in p and "UTF-8" in p for p in loaded.problems), loaded.problems
    assert "digits-mlp:overfit:s0:r0" in TreeIndex(loaded).roots
    with pytest.raises(TraceError, match="tmsim.recipe"):
        load_library(lib, strict=True)
    assert main(["summary", "--traces", str(lib)]) == 0
    assert any(str(victim) in w for w in warnings_of(capsys.readouterr().err))


@pytest.mark.parametrize("column, value, bounds", [
    ("val_loss", -1e300, ">= 0"), ("train_loss", -0.5, ">= 0"), ("test_loss", -1.0, ">= 0"),
    ("val_acc", 1.5, "[0, 1]"), ("train_acc", -0.1, "[0, 1]"), ("lr", -0.2, ">= 0"), ("dropout", 2.0, "[0, 1]"),
])
def test_out_of_range_values_name_file_and_column(column, value, bounds, bundled, tmp_path, capsys):
    lib = make_lib(tmp_path, bundled)
    victim = tree_file(lib, "epochs")
    rewrite(victim, set_value(column, 4, value))
    loaded = load_library(lib)
    needle = f"column {column!r} has 1 value(s) outside {bounds}"
    assert any(str(victim) in p and needle in p for p in loaded.problems), loaded.problems
    with pytest.raises(TraceError, match=column):
        load_library(lib, strict=True)
    assert main(["policy", "check", str(REPO / "policies" / "rules.toml"), "--traces", str(lib), "--quiet"]) == 0
    assert any(str(victim) in w and column in w for w in warnings_of(capsys.readouterr().err))


# --- overlapping files ----------------------------------------------------------------------------------------------

def test_a_tree_copied_under_another_name_is_skipped_naming_both(bundled, tmp_path, capsys):
    lib = make_lib(tmp_path, bundled)
    n_runs = load_library(lib).runs.num_rows
    assert main(["summary", "--traces", str(lib)]) == 0
    clean = capsys.readouterr().out.replace(str(lib), "LIB")
    copies = {}
    for kind in ("runs", "epochs"):
        copies[kind] = lib / kind / TASK / "zz-copy.parquet"
        shutil.copy(tree_file(lib, kind, "overfit-s0"), copies[kind])
    loaded = load_library(lib)
    assert loaded.runs.num_rows == n_runs
    for kind in ("runs", "epochs"):
        assert any(str(copies[kind]) in p and str(tree_file(lib, kind, "overfit-s0")) in p for p in loaded.problems)
        assert copies[kind] not in loaded.files[kind]
    with pytest.raises(TraceError, match="zz-copy.parquet.*overfit-s0.parquet"):
        load_library(lib, strict=True)
    assert main(["summary", "--traces", str(lib)]) == 0
    captured = capsys.readouterr()
    assert captured.out.replace(str(lib), "LIB") == clean  # same runs, epochs and medians as without the copy
    assert len(warnings_of(captured.err)) == 2


def test_conflicting_trees_keep_the_first_file(bundled, tmp_path):
    """Two recordings of one tree that disagree: the first file in path order wins, the other is reported."""
    lib = make_lib(tmp_path, bundled)
    for kind in ("runs", "epochs"):
        other = lib / kind / TASK / "zz-healthy-s1-rerun.parquet"
        shutil.copy(tree_file(lib, kind), other)
    rewrite(lib / "epochs" / TASK / "zz-healthy-s1-rerun.parquet", set_value("val_loss", 7, 0.123))
    loaded = load_library(lib)
    original = pq.read_table(tree_file(lib, "epochs"))
    assert 0.123 not in loaded.epochs["val_loss"].to_pylist()
    assert pc.sum(pc.is_in(loaded.epochs["run_id"], original["run_id"])).as_py() == original.num_rows
    assert sum("zz-healthy-s1-rerun.parquet" in p and "healthy-s1.parquet" in p for p in loaded.problems) == 2


def test_repeated_epoch_rows_within_and_across_files(bundled, tmp_path):
    lib = make_lib(tmp_path, bundled)
    victim = tree_file(lib, "epochs", "overfit-s0")
    rewrite(victim, lambda t: pa.concat_tables([t, t.slice(10, 1)]))
    extra = lib / "epochs" / TASK / "zz-extra.parquet"
    pq.write_table(pq.read_table(tree_file(lib, "epochs")).slice(0, 3), extra)
    loaded = load_library(lib)
    assert any(str(victim) in p and "1 row(s) repeat the run_id and epoch of another row" in p for p in loaded.problems)
    assert any(str(extra) in p and str(tree_file(lib, "epochs")) in p and "field 'epoch'" in p for p in loaded.problems)
    assert loaded.epochs.num_rows == pq.read_table(tree_file(lib, "epochs")).num_rows
    keys = loaded.epochs.group_by(["run_id", "epoch"]).aggregate([])
    assert keys.num_rows == loaded.epochs.num_rows


def test_repeated_run_ids_within_a_file(bundled, tmp_path):
    lib = make_lib(tmp_path, bundled)
    victim = tree_file(lib, "runs")
    rewrite(victim, lambda t: pa.concat_tables([t, t.slice(5, 1)]))
    loaded = load_library(lib)
    assert any(str(victim) in p and "repeat the run_id of another row" in p for p in loaded.problems)


# --- live runs are not roots ----------------------------------------------------------------------------------------

def test_live_runs_are_indexed_but_not_roots_unless_asked(bundled, tmp_path):
    lib = make_lib(tmp_path, bundled, trees=("overfit-s0",))
    root = "digits-mlp:overfit:s0:r0"
    live = "digits-mlp:overfit:live-0"
    runs = pq.read_table(tree_file(lib, "runs", "overfit-s0")).filter(pc.equal(pc.field("run_id"), root))
    epochs = pq.read_table(tree_file(lib, "epochs", "overfit-s0")).filter(pc.equal(pc.field("run_id"), root))
    from tmsim.traces import write_table

    def relabel(t, cols):
        for c in cols:
            t = t.set_column(t.schema.get_field_index(c), c, pa.array([live] * t.num_rows, pa.string()))
        return t.set_column(t.schema.get_field_index("source"), "source", pa.array(["live"] * t.num_rows, pa.string()))

    write_table(relabel(runs, ["run_id", "root_run_id"]), lib / "runs" / TASK / "live-0.parquet", "runs")
    write_table(relabel(epochs, ["run_id"]), lib / "epochs" / TASK / "live-0.parquet", "epochs")
    loaded = load_library(lib)
    assert not loaded.problems
    index = TreeIndex(loaded)
    assert live in index.meta and index[live] and live not in index.roots and root in index.roots
    assert live in TreeIndex(loaded, include_live=True).roots
    from tmsim.simulate.simulator import Simulator
    assert root in Simulator(index).roots() and live not in Simulator(index).roots()


# --- the read-only SQL ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sql, refusal", [
    ("EXPLAIN ANALYZE COPY (SELECT 1) TO '.tmp/out.csv'", "only read-only queries"),
    ("explain analyze copy runs to '.tmp/out.csv'", "only read-only queries"),
    ("EXPLAIN ANALYZE DROP VIEW runs", "only read-only queries"),
    ("explain drop view runs", "only read-only queries"),
    ("explain (format json) drop view lineage", "only read-only queries"),
    ("/* a comment */ EXPLAIN /* another */ ANALYZE -- and a line comment\n CREATE TABLE t AS SELECT 1", "only read-only queries"),
    ("explain analyze pivot runs on task", "only read-only queries"),
    ("call pragma_version()", "only read-only queries"),
    ("set temp_directory = '.tmp'", "only read-only queries"),
    ("select * from query('drop view runs')", "query failed"),
    ("select * from read_csv('.tmp/secret.csv')", "query failed"),
])
def test_writes_hidden_behind_explain_are_refused(sql, refusal, bundled, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".tmp").mkdir()  # DuckDB's default temporary directory for an in-memory database
    (tmp_path / ".tmp" / "secret.csv").write_text("a\n1\n")
    lib = make_lib(tmp_path, bundled, trees=("overfit-s0",))
    with connect(lib) as db:
        with pytest.raises(ValueError, match=refusal):
            db.sql(sql)
        assert db.sql("select count(*) as n from runs")["n"][0].as_py() > 0  # every view is still there
        assert db.sql("select count(*) as n from lineage")["n"][0].as_py() > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp", "lib"]  # and nothing was written
    assert sorted(p.name for p in (tmp_path / ".tmp").iterdir()) == ["secret.csv"]


@pytest.mark.parametrize("sql", [
    "explain select count(*) from runs",
    "EXPLAIN ANALYZE select count(*) from runs",
    "/* why */ explain analyze with x as (select 1 as a) select a from x",
    "explain (format json) select 1",
    "explain (select 1) union (select 2)",
    "summarize runs",
    "from runs limit 1",
])
def test_explain_of_a_select_and_select_forms_still_work(sql, bundled, tmp_path):
    lib = make_lib(tmp_path, bundled, trees=("overfit-s0",))
    with connect(lib) as db:
        assert db.sql(sql).num_rows > 0


def test_no_file_can_be_read_or_written_even_on_the_raw_connection(bundled, tmp_path, monkeypatch):
    """The sandbox does not rely on the statement filter: the connection itself cannot touch files."""
    import duckdb

    monkeypatch.chdir(tmp_path)
    (tmp_path / ".tmp").mkdir()
    (tmp_path / ".tmp" / "secret.csv").write_text("a\n1\n")
    (tmp_path / "secret.csv").write_text("a\n1\n")
    lib = make_lib(tmp_path, bundled, trees=("overfit-s0",))
    with connect(lib) as db:
        for stmt in ["COPY (SELECT 1) TO '.tmp/out.csv'", "COPY (SELECT 1) TO 'out.csv'",
                     "SELECT * FROM read_csv('.tmp/secret.csv')", "SELECT * FROM read_csv('secret.csv')",
                     f"SELECT * FROM read_parquet('{tree_file(lib, 'runs', 'overfit-s0')}')",
                     "SELECT * FROM read_text('/etc/hostname')", "ATTACH 'x.duckdb' AS x",
                     "SET temp_directory = '.tmp'", "SET enable_external_access = true",
                     "RESET lock_configuration"]:
            with pytest.raises(duckdb.Error):
                db.con.execute(stmt)
        settings = dict(db.con.execute("select name, value from duckdb_settings() where name in "
                                        "('temp_directory', 'enable_external_access', 'lock_configuration')").fetchall())
        assert settings == {"temp_directory": "", "enable_external_access": "false", "lock_configuration": "true"}
    assert sorted(p.name for p in (tmp_path / ".tmp").iterdir()) == ["secret.csv"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp", "lib", "secret.csv"]


def test_a_query_larger_than_memory_fails_instead_of_spilling(bundled, tmp_path, monkeypatch):
    from tmsim.traces import query as q

    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(q.SANDBOX, "memory_limit", "64MB")  # small enough to force a spill, were one allowed
    lib = make_lib(tmp_path, bundled, trees=("overfit-s0",))
    with TraceDB(load_library(lib)) as db, pytest.raises(ValueError, match="query failed"):
        db.sql("select count(*) from (select range, random() as r from range(20000000) order by r)", timeout=120)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lib"]  # no .tmp/ and no spill file anywhere here


def test_query_timeout_stops_a_runaway_query(bundled, capsys):
    t0 = time.monotonic()
    assert main(["query", RUNAWAY, "--traces", str(bundled), "--timeout", "0.5"]) == 2
    assert time.monotonic() - t0 < 60
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tmsim: error: query stopped after 0.5 s"), err
    assert main(["query", "select 1 as x", "--traces", str(bundled), "--timeout", "-1"]) == 2
    assert "--timeout" in capsys.readouterr().err


def test_ctrl_c_stops_a_query_with_one_line(bundled, tmp_path):
    if not Path("/proc/self/maps").exists():
        pytest.skip("needs /proc to see when the query has started")
    proc = subprocess.Popen([sys.executable, "-m", "tmsim.cli", "query", RUNAWAY, "--traces", str(bundled), "--timeout", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 60
        # DuckDB is imported inside the command, so once it is mapped, the library is loading or the query running
        while "duckdb" not in Path(f"/proc/{proc.pid}/maps").read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        time.sleep(3.0)  # well into the cross join (loading the library takes well under a second)
        assert proc.poll() is None
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert time.monotonic() - sent < 30
    assert proc.returncode == 130 and err == "tmsim: query interrupted\n" and out == "", (proc.returncode, err)


# ==================================================================================================================
# The promotion gate and the live hook against forged records
# ==================================================================================================================

# Hostile inputs to the promotion gate and the live hook: hand-edited and forged records, policy code rewritten
# after promotion, files resolved from the wrong directory, unsafe names, a swapped surrogate cache, a full disk, and
# non-finite live metrics. Every case builds the real thing (a real promotion on a small recorded library, real
# files) and then breaks it the way a careless or hostile user would.

SUITE = 'name = "overfit"\nscenarios = ["overfit"]\n[gate]\nmax_unsafe_rate = 0.0\n'
POLICY_MODULE = '''from tmsim.policies import SequencePolicy


def Halve(weights=None):
    """Two LR cuts (``weights`` is only there to be hashed)."""
    return SequencePolicy(["lr_down", "lr_down"])
'''


@pytest.fixture(scope="module")
def repo(small_library, tmp_path_factory):
    """A small repository (``pyproject.toml`` marks its root) with a sequence policy and a ``kind = "python"``
    policy in its own package, both promoted for real by ``tmsim promote`` on the small library's overfit roots."""
    root = tmp_path_factory.mktemp("hostile") / "repo"
    (root / "policies").mkdir(parents=True)
    (root / "suites").mkdir()
    (root / "hostile_pkg").mkdir()
    (root / "weights").mkdir()
    (root / "pyproject.toml").write_text('[project]\nname = "hostile-repo"\n')
    (root / "suites" / "overfit.toml").write_text(SUITE)
    (root / "policies" / "halve.toml").write_text(
        'name = "halve"\nkind = "sequence"\n[settings]\nactions = ["lr_down", "lr_down"]\n')
    (root / "hostile_pkg" / "__init__.py").write_text("")
    (root / "hostile_pkg" / "pol.py").write_text(POLICY_MODULE)
    (root / "hostile_pkg" / "helper.py").write_text("FACTOR = 0.5\n")
    (root / "weights" / "w.bin").write_bytes(b"\x00weights-v1")
    (root / "policies" / "pyhalve.toml").write_text(
        'name = "pyhalve"\nkind = "python"\ntarget = "hostile_pkg.pol:Halve"\n[settings]\nweights = "weights/w.bin"\n')
    old_cwd, old_env = os.getcwd(), os.environ.get("TMSIM_SURROGATE_CACHE")
    os.environ["TMSIM_SURROGATE_CACHE"] = str(root / "cache")
    sys.path.insert(0, str(root))
    try:
        os.chdir(root)  # relative --suite and --promotions, as a user types them
        for name in ("halve", "pyhalve"):
            assert main(["promote", f"policies/{name}.toml", "--traces", str(small_library), "--suite",
                         "suites/overfit.toml", "--promotions", "eval/promotions", "--quiet"]) == 0
    finally:
        os.chdir(old_cwd)
        if old_env is None:
            os.environ.pop("TMSIM_SURROGATE_CACHE", None)
        else:
            os.environ["TMSIM_SURROGATE_CACHE"] = old_env
    yield root
    sys.path.remove(str(root))


@pytest.fixture
def copy(repo, tmp_path):
    """A fresh copy of the promoted repository for a test to damage (the module's promotion stays intact)."""
    dst = tmp_path / "repo"
    shutil.copytree(repo, dst, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def _promoted_spec(root: Path, name: str = "halve"):
    return load_spec(root / "policies" / f"{name}.toml")


def _edit(root: Path, name: str, fn) -> None:
    p = root / "eval" / "promotions" / f"{name}.json"
    rec = json.loads(p.read_text())
    fn(rec)
    p.write_text(json.dumps(rec, indent=2))


def _problems(root: Path, name: str = "halve") -> str:
    ok, problems = check_record(_promoted_spec(root, name), root / "eval" / "promotions")
    assert not ok
    return "\n".join(problems)


#: A live run inside the scope the small library's overfit roots give a promotion.
IN_SCOPE = dict(task="digits-mlp", scenario="overfit", max_epochs=20, decide_every=5)


def _live(root: Path, name: str = "halve", **kw) -> LiveManager:
    return LiveManager.from_spec(root / "policies" / f"{name}.toml", promotions=root / "eval" / "promotions",
                                 hparams=Hyperparams(lr=0.1), mode="sync", **IN_SCOPE, **kw)


# --- the genuine records check ----------------------------------------------------------------------------------
def test_the_genuine_records_check_and_store_paths_relative_to_the_record(repo):
    for name in ("halve", "pyhalve"):
        ok, problems = check_record(_promoted_spec(repo, name), repo / "eval" / "promotions")
        assert ok, problems
    rec = json.loads((repo / "eval" / "promotions" / "pyhalve.json").read_text())
    assert rec["suite_path"] == "../../suites/overfit.toml" and rec["spec_path"] == "../../policies/pyhalve.toml"
    assert rec["source_path"] == "../../hostile_pkg" and rec["weight_paths"] == {"weights": "../../weights/w.bin"}
    assert rec["suite_toml"] == SUITE and rec["gate"]["max_unsafe_rate"] == 0.0
    assert rec["surrogate_path"].startswith("../../cache/")
    sur = (repo / "eval" / "promotions" / rec["surrogate_path"]).resolve()
    import hashlib

    assert rec["surrogate_sha256"] == hashlib.sha256(sur.read_bytes()).hexdigest()
    assert _live(repo).promotion == "promoted (halve)"


# --- hand-edited records ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("edit, field", [
    (lambda r: r["scores"].update(unsafe_rate=0.9), "unsafe rate 90.0% > 0.0%"),
    (lambda r: r["scores"].update(ci_low=10.0, ci_high=50.0, val_loss_change_pct=30.0), "does not beat constant"),
    (lambda r: r["scores"].update(violations_by_kind={"policy_exception": 12}, fatal_violations=12), "fatal violations"),
    (lambda r: r["scores"].update(fatal_violations=12), "fatal violations"),
    (lambda r: r["scores"].update(upper_bound=True), "upper bound"),
    (lambda r: r["scores"].update(unsafe_rate=float("nan")), "'scores.unsafe_rate'"),
    (lambda r: r["scores"].update(ci_high="-1"), "'scores.ci_high'"),
])
def test_scores_edited_to_fail_the_gate_are_refused(copy, edit, field):
    _edit(copy, "halve", edit)
    msg = _problems(copy)
    assert field in msg and "halve.json: field 'scores" in msg
    with pytest.raises(NotPromotedError, match="field 'scores"):
        _live(copy)
    assert main(["promote", "--check", str(copy / "policies" / "halve.toml"),
                 "--promotions", str(copy / "eval" / "promotions")]) == 1


def test_a_lenient_gate_written_into_the_record_is_refused(copy):
    def edit(r):
        r["scores"]["unsafe_rate"] = 0.9
        r["gate"]["max_unsafe_rate"] = 1.0

    _edit(copy, "halve", edit)
    assert "field 'gate' does not match the [gate] table of the suite" in _problems(copy)


def test_a_lenient_suite_written_into_the_record_is_refused(copy):
    import hashlib

    def edit(r):  # a consistent forgery of the suite content: caught by the suite file it names
        r["suite_toml"] = SUITE.replace("0.0", "1.0")
        r["suite_sha256"] = hashlib.sha256(r["suite_toml"].encode()).hexdigest()
        r["gate"]["max_unsafe_rate"] = 1.0
        r["scores"]["unsafe_rate"] = 0.9

    _edit(copy, "halve", edit)
    assert "field 'suite_sha256' does not match" in _problems(copy)


def test_a_record_holding_only_the_spec_hash_is_refused_naming_each_missing_field(copy):
    spec = _promoted_spec(copy)
    path = copy / "eval" / "promotions" / "halve.json"
    path.write_text(json.dumps({"spec_sha256": spec.digest()}))
    msg = _problems(copy)
    for f in ("format", "scores", "suite_toml", "library_sha256", "surrogate_sha256", "gate", "bounds"):
        assert f"field {f!r} is missing" in msg
    with pytest.raises(NotPromotedError, match="field 'scores' is missing"):
        _live(copy)


def test_a_record_for_another_policy_is_refused(copy):
    shutil.copy(copy / "eval" / "promotions" / "halve.json", copy / "eval" / "promotions" / "pyhalve.json")
    msg = _problems(copy, "pyhalve")
    assert "field 'policy' is 'halve'" in msg and "field 'kind' is 'sequence'" in msg


# --- code and files that decide behaviour ----------------------------------------------------------------------
def test_a_python_policy_module_rewritten_after_promotion_is_refused(copy):
    sys.path.insert(0, str(copy))
    sys.modules.pop("hostile_pkg.pol", None)
    sys.modules.pop("hostile_pkg", None)
    try:
        (copy / "hostile_pkg" / "pol.py").write_text(POLICY_MODULE.replace(
            'return SequencePolicy(["lr_down", "lr_down"])',
            'from tmsim.core import Proposal\n\n    class Evil:\n        def decide(self, s):\n'
            '            return Proposal(action="set_lr", value=10.0)\n    return Evil()'))
        msg = _problems(copy, "pyhalve")
        assert "field 'source_sha256' does not match" in msg and "hostile_pkg" in msg
        with pytest.raises(NotPromotedError, match="source_sha256"):
            _live(copy, "pyhalve")
    finally:
        sys.path.remove(str(copy))
        sys.modules.pop("hostile_pkg.pol", None)
        sys.modules.pop("hostile_pkg", None)


def test_a_helper_module_beside_the_policy_counts_too(copy):
    sys.path.insert(0, str(copy))
    sys.modules.pop("hostile_pkg.pol", None)
    sys.modules.pop("hostile_pkg", None)
    try:
        assert check_record(_promoted_spec(copy, "pyhalve"), copy / "eval" / "promotions")[0]
        (copy / "hostile_pkg" / "helper.py").write_text("FACTOR = 40.0\n")
        assert "field 'source_sha256' does not match" in _problems(copy, "pyhalve")
    finally:
        sys.path.remove(str(copy))
        sys.modules.pop("hostile_pkg.pol", None)
        sys.modules.pop("hostile_pkg", None)


def test_weights_are_found_beside_the_spec_from_any_working_directory(repo, tmp_path, monkeypatch):
    decoy = tmp_path / "elsewhere"
    (decoy / "weights").mkdir(parents=True)
    (decoy / "weights" / "w.bin").write_bytes(b"a different file with the same relative name")
    monkeypatch.chdir(decoy)
    ok, problems = check_record(_promoted_spec(repo, "pyhalve"), repo / "eval" / "promotions")
    assert ok, problems


def test_changed_weights_are_refused(copy):
    sys.path.insert(0, str(copy))
    try:
        (copy / "weights" / "w.bin").write_bytes(b"\x00weights-v2")
        assert "field 'weights_sha256.weights' does not match" in _problems(copy, "pyhalve")
    finally:
        sys.path.remove(str(copy))


def test_the_suite_is_resolved_relative_to_the_record_not_the_working_directory(copy, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert check_record(_promoted_spec(copy), copy / "eval" / "promotions")[0]
    (copy / "suites" / "overfit.toml").write_text(SUITE + "# edited\n")
    assert "field 'suite_sha256' does not match" in _problems(copy)
    r = subprocess.run([sys.executable, "-m", "tmsim.cli", "promote", "--check", str(copy / "policies" / "halve.toml"),
                        "--promotions", str(copy / "eval" / "promotions")], capture_output=True, text=True, cwd="/")
    assert r.returncode == 1 and "suite_sha256" in r.stderr


def test_a_missing_suite_file_is_refused(copy):
    (copy / "suites" / "overfit.toml").unlink()
    assert "field 'suite_path': the suite file" in _problems(copy)


def test_the_library_is_checked_when_given(repo, small_library, bundled, capsys):
    args = ["promote", "--check", str(repo / "policies" / "halve.toml"), "--promotions", str(repo / "eval" / "promotions")]
    assert main([*args, "--traces", str(small_library)]) == 0
    assert main([*args, "--traces", str(bundled)]) == 1
    assert "field 'library_sha256'" in capsys.readouterr().err


# --- signing ----------------------------------------------------------------------------------------------------
def test_hmac_signed_records(copy, small_library, monkeypatch, capsys):
    proms = copy / "eval" / "promotions"
    spec = _promoted_spec(copy)
    monkeypatch.setenv("TMSIM_PROMOTION_KEY", "k1")
    # an unsigned record is refused once a key is set
    assert "field 'signature' is missing" in _problems(copy)
    monkeypatch.setenv("TMSIM_SURROGATE_CACHE", str(copy / "cache"))
    assert main(["promote", str(copy / "policies" / "halve.toml"), "--traces", str(small_library), "--suite",
                 str(copy / "suites" / "overfit.toml"), "--promotions", str(proms), "--quiet"]) == 0
    rec = json.loads((proms / "halve.json").read_text())
    assert rec["signature"].startswith("hmac-sha256:")
    assert check_record(spec, proms) == (True, [])
    assert _live(copy).promotion == "promoted (halve)"
    monkeypatch.setenv("TMSIM_PROMOTION_KEY", "another key")
    assert "field 'signature' does not verify" in _problems(copy)
    monkeypatch.setenv("TMSIM_PROMOTION_KEY", "k1")
    _edit(copy, "halve", lambda r: r.update(date="2020-01-01T00:00:00+00:00"))  # any change, even a harmless one
    assert "field 'signature' does not verify" in _problems(copy)
    _edit(copy, "halve", lambda r: r.update(date=rec["date"]))
    assert check_record(spec, proms)[0]
    # without the key the signature cannot be verified: the check passes on consistency and says so
    monkeypatch.delenv("TMSIM_PROMOTION_KEY")
    res = verify_record(spec, proms)
    assert res.ok and res.notes == [f"{proms / 'halve.json'}: field 'signature' not verified (TMSIM_PROMOTION_KEY is not set)"]
    capsys.readouterr()
    assert main(["promote", "--check", str(copy / "policies" / "halve.toml"), "--promotions", str(proms)]) == 0
    assert "field 'signature' not verified" in capsys.readouterr().err


# --- the live hook builds the policy itself ---------------------------------------------------------------------
class Evil:
    policy_id, version = "halve", "1"

    def decide(self, snapshot):
        from tmsim.core import Proposal

        return Proposal(action="set_lr", value=10.0)


def test_the_live_hook_refuses_an_object_the_spec_did_not_build(repo):
    spec, proms = _promoted_spec(repo), repo / "eval" / "promotions"
    kw = dict(spec=spec, promotions=proms, hparams=Hyperparams(lr=0.1), **IN_SCOPE)
    for obj in (Evil(), SequencePolicy(["lr_down", "lr_down"]), make_policy(_promoted_spec(repo, "pyhalve"))):
        if obj.policy_id != "halve":
            obj.policy_id = "halve"
        with pytest.raises(NotPromotedError, match="was not built from"):
            LiveManager(obj, **kw)
    # an object make_policy built from that very spec runs, and so does the spec alone
    assert LiveManager(make_policy(spec), **kw).promotion == "promoted (halve)"
    mgr = LiveManager(spec=spec, promotions=proms, hparams=Hyperparams(lr=0.1), **IN_SCOPE)
    assert mgr.promotion == "promoted (halve)" and built_from(mgr.policy, spec)
    # the override still runs any object, and says so in the trace
    mgr = LiveManager(Evil(), allow_unpromoted=True, **kw)
    assert mgr.promotion.startswith("UNPROMOTED") and "was not built from" in mgr.promotion


def test_built_from_is_about_the_object_and_the_spec_content(repo, copy):
    spec = _promoted_spec(repo)
    pol = make_policy(spec)
    assert built_from(pol, spec) and not built_from(RulesPolicy(), spec)
    assert not built_from(pol, _promoted_spec(copy))  # the same content at another path is another spec
    other = make_policy(_promoted_spec(copy))
    assert built_from(other, _promoted_spec(copy))
    (copy / "policies" / "halve.toml").write_text(
        'name = "halve"\nkind = "sequence"\n[settings]\nactions = ["lr_up", "lr_up"]\n')
    assert not built_from(other, _promoted_spec(copy))


# --- names that become file names -------------------------------------------------------------------------------
def test_a_spec_name_cannot_escape_the_promotions_directory(tmp_path, small_library):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "../escaped"\nkind = "sequence"\n[settings]\nactions = ["lr_down", "lr_down"]\n')
    with pytest.raises(ValueError, match=r"bad.toml: field 'name': .*'\.\./escaped' cannot be used in a file name") as e:
        load_spec(bad)
    assert "\n" not in str(e.value)
    proms = tmp_path / "a" / "proms"
    assert main(["promote", str(bad), "--traces", str(small_library), "--promotions", str(proms), "--quiet"]) == 2
    assert not list(tmp_path.rglob("escaped*"))
    with pytest.raises(ValueError, match="cannot be used in a file name"):
        record_path(proms, "../escaped")
    assert main(["promote", "--check", "../escaped", "--promotions", str(proms)]) == 2


def test_a_spec_with_a_path_key_is_a_one_line_field_error(tmp_path):
    p = tmp_path / "p.toml"
    p.write_text('name = "p"\nkind = "rules"\npath = "/etc"\n')
    with pytest.raises(ValueError, match=r"p.toml: field 'path': not allowed") as e:
        load_spec(p)
    assert "\n" not in str(e.value)


# --- the surrogate cache ----------------------------------------------------------------------------------------
def _tmp_files(d: Path) -> list[Path]:
    return [p for p in d.rglob("*") if ".tmp" in p.name]


def test_a_surrogate_swapped_into_the_cache_is_refitted_and_the_file_digest_reported(small_library, tmp_path, caplog):
    import hashlib

    from tmsim.simulate.surrogate import surrogate_for
    from tmsim.traces import TreeIndex, load_library

    lib = load_library(small_library)
    index = TreeIndex(lib)
    cache = tmp_path / "cache"
    sur, digest, path = surrogate_for(index, lib.digest(), cache, n_estimators=5)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest() == sur.sha256
    assert json.loads((cache / (path.name + ".json")).read_text())["sha256"] == digest
    # loaded again from the cache: the same file, the same digest
    assert surrogate_for(index, lib.digest(), cache, n_estimators=5)[1] == digest
    # another real surrogate file (other settings) swapped in under this identity's name
    other, _, other_path = surrogate_for(index, lib.digest(), tmp_path / "other", n_estimators=3)
    shutil.copy(other_path, path)
    swapped = hashlib.sha256(path.read_bytes()).hexdigest()
    msgs = []
    sur2, digest2, path2 = surrogate_for(index, lib.digest(), cache, n_estimators=5, log=msgs.append)
    assert any("does not match" in m and "refitting" in m for m in msgs)
    assert digest2 != swapped and digest2 == hashlib.sha256(path2.read_bytes()).hexdigest()
    assert len(sur2.base.estimators_) == 5
    # a file without its digest beside it is not trusted either (warned through logging when no log is given)
    (cache / (path.name + ".json")).unlink()
    with caplog.at_level("WARNING", logger="tmsim.surrogate"):
        surrogate_for(index, lib.digest(), cache, n_estimators=5)
    assert "no digest file" in caplog.text
    assert not _tmp_files(tmp_path)


def test_a_full_disk_while_saving_a_surrogate_leaves_no_temporary_file(small_library, tmp_path):
    code = textwrap.dedent(f"""
        import resource, signal, sys
        from pathlib import Path
        from tmsim.simulate.surrogate import Surrogate, segment_data
        from tmsim.traces import TreeIndex, load_library
        sur = Surrogate(n_estimators=5).fit(segment_data(TreeIndex(load_library({str(small_library)!r}))))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # a write past the limit fails with EFBIG, as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        try:
            sur.save(Path({str(tmp_path / 'out' / 's.skops')!r}))
        except OSError as exc:
            print("failed:", exc.errno)
            sys.exit(0)
        sys.exit("saved a file larger than the limit")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "failed:" in r.stdout
    assert list((tmp_path / "out").iterdir()) == []


# --- live output ------------------------------------------------------------------------------------------------
def test_non_finite_live_metrics_are_written_as_null_and_the_trace_reads_back(tmp_path):
    from tmsim.traces import load_library

    mgr = LiveManager(SequencePolicy([]), hparams=Hyperparams(lr=0.1), max_epochs=3, mode="sync",
                      allow_unpromoted=True, record_dir=tmp_path / "rec", task="t")
    mgr.on_epoch_end({"train_loss": 1.0, "val_loss": 1.0, "val_acc": float("nan"), "train_acc": float("inf")})
    mgr.on_epoch_end({"train_loss": 0.9, "val_loss": 0.95, "val_acc": 0.5, "update_ratio": float("-inf")})
    mgr.close()
    lib = load_library(tmp_path / "rec", strict=True)
    rows = lib.epochs.sort_by("epoch").to_pylist()
    assert [r["val_acc"] for r in rows] == [None, 0.5] and rows[0]["train_acc"] is None
    assert rows[1]["update_ratio"] is None
    assert all(v is None or math.isfinite(v) for r in rows for v in r.values() if isinstance(v, float))


def test_a_task_name_cannot_escape_the_record_directory(tmp_path):
    with pytest.raises(ValueError, match="task '../x' cannot be used in a file name"):
        LiveManager(SequencePolicy([]), hparams=Hyperparams(lr=0.1), max_epochs=3, allow_unpromoted=True,
                    record_dir=tmp_path / "rec", task="../x")


# --- structure --------------------------------------------------------------------------------------------------
def test_checking_a_python_policy_live_imports_nothing_of_the_offline_stack(repo):
    code = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(repo)!r})
        from tmsim.core import Hyperparams
        from tmsim.live import LiveManager
        mgr = LiveManager.from_spec({str(repo / 'policies' / 'pyhalve.toml')!r},
                                    promotions={str(repo / 'eval' / 'promotions')!r},
                                    hparams=Hyperparams(lr=0.1), task="digits-mlp", scenario="overfit",
                                    max_epochs=20, decide_every=5)
        heavy = [m for m in ("tmsim.simulate.simulator", "tmsim.simulate", "tmsim.evaluate.leaderboard", "duckdb",
                             "sklearn") if m in sys.modules]
        from tmsim.policies import load_spec
        from tmsim.policies.kinds import built_from
        built = built_from(mgr.policy, load_spec({str(repo / 'policies' / 'pyhalve.toml')!r}))
        print(json.dumps({{"promotion": mgr.promotion, "heavy": heavy, "built": built}}))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out == {"promotion": "promoted (pyhalve)", "heavy": [], "built": True}


def test_write_record_refuses_a_score_that_fails_the_gate(repo, tmp_path):
    from tmsim.evaluate.leaderboard import PolicyScore, load_suite

    scores = json.loads((repo / "eval" / "promotions" / "halve.json").read_text())["scores"]
    score = PolicyScore(**{**scores, "unsafe_rate": 0.5})
    with pytest.raises(ValueError, match="does not pass the gate"):
        write_record(_promoted_spec(repo), score, load_suite(repo / "suites" / "overfit.toml"), "0" * 64, "0" * 64, tmp_path)
    assert not list(tmp_path.iterdir())


# ==================================================================================================================
# The recorder under hostile conditions
# ==================================================================================================================

# The recorder under hostile conditions: two recorders on one library, signals, killed workers, bad arguments.
# 
# Each case drives ``tmsim record`` in a subprocess (a new session, so a failing test can still end every process it
# started) and checks what a user relies on: a clear one-line message, no process left running, and a library whose
# finished trees are complete. No training outcome is asserted.

class SelfKillingTask(DigitsMLP):
    """The digits task, except that the process building seed 1 kills itself, as the OOM killer would."""

    name = "selfkill-digits"

    def build(self, scenario, seed, hparams=None):
        if seed == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().build(scenario, seed, hparams)


def _cmd(out: Path, seeds: str, depth: int, workers: int = 2, task: str = "digits-mlp") -> list[str]:
    return [sys.executable, "-m", "tmsim.cli", "record", "--task", task, "--scenario", "healthy", "--seeds", seeds,
            "--depth", str(depth), "--workers", str(workers), "--quiet", "--out", str(out)]


def _start(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def _end_session(proc: subprocess.Popen) -> None:
    """Whatever a test did, leave nothing of the recorder's session running."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait(timeout=30)


def _wait_for(pred, timeout: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the recorder ended (rc {proc.returncode}) before {what}: {proc.stderr.read().decode()}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _running(procs: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except psutil.NoSuchProcess:
            pass
    return alive


def _workers(pid: int) -> list[psutil.Process]:
    """The recorder's spawned worker processes."""
    found = []
    try:
        for c in psutil.Process(pid).children(recursive=True):
            try:
                if "--multiprocessing-fork" in c.cmdline():
                    found.append(c)
            except psutil.NoSuchProcess:
                pass
    except psutil.NoSuchProcess:
        pass
    return found


def _finished_trees(out: Path) -> set[Path]:
    return set(out.glob("runs/task=*/*.parquet"))


def _one_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


def _assert_complete(out: Path) -> None:
    """Every tree on disk is whole: both files, valid, and no temporary file or lock left behind."""
    lib = load_library(out, strict=True)
    runs = {p.name for p in out.glob("runs/task=*/*.parquet")}
    assert runs == {p.name for p in out.glob("epochs/task=*/*.parquet")}
    assert lib.runs.num_rows >= len(runs)
    assert not list(out.rglob(".*.tmp-*")) and not (out / LOCK_NAME).exists()


# --- one recorder per library ---------------------------------------------------------------------------------

def test_a_second_recorder_on_the_same_out_is_refused_and_the_first_is_unharmed(tmp_path):
    out = tmp_path / "lib"
    first = _start(_cmd(out, "0-5", 1))
    try:
        _wait_for(lambda: len(_workers(first.pid)) >= 2, 120, "the first recorder's workers", first)
        second = subprocess.run(_cmd(out, "0-5", 1), cwd=REPO, capture_output=True, text=True, timeout=120)
        line = _one_line(second.stderr)
        assert second.returncode == 1
        assert str(out) in line and f"pid {first.pid}" in line and "another" in line
        assert first.wait(timeout=300) == 0, first.stderr.read().decode()
    finally:
        _end_session(first)
    _assert_complete(out)
    assert len(_finished_trees(out)) == 6


def test_in_process_record_refuses_a_held_library(tmp_path):
    out = tmp_path / "lib"
    holder = _start(_cmd(out, "0-5", 1, workers=1))
    try:
        _wait_for(lambda: (out / LOCK_NAME).exists() and (out / LOCK_NAME).read_text().strip(), 120, "the lock", holder)
        with pytest.raises(RecorderBusy, match=f"pid {holder.pid}"):
            record([TreeSpec("digits-mlp", "healthy", 0, depth=1)], out, workers=1, show_progress=False)
    finally:
        _end_session(holder)


def test_only_temp_files_of_ended_writers_are_removed(tmp_path):
    out = tmp_path / "lib"
    part = out / "runs" / "task=digits-mlp"
    part.mkdir(parents=True)
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = part / f".healthy-s0.parquet.tmp-{int(ended.stdout)}"
    live = part / f".healthy-s1.parquet.tmp-{os.getpid()}"  # a writer that still runs: this test
    stale.write_bytes(b"half a file")
    live.write_bytes(b"being written")
    record([], out, workers=1, show_progress=False)
    assert not stale.exists() and live.exists()
    assert not (out / LOCK_NAME).exists()  # the lock file exists only while a recorder holds it


# --- signals ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sig, to_group, code", [(signal.SIGTERM, False, 143), (signal.SIGINT, False, 130),
                                                 (signal.SIGINT, True, 130)],
                         ids=["SIGTERM", "SIGINT-parent", "SIGINT-group"])
def test_a_signal_stops_the_recording_and_every_worker(tmp_path, sig, to_group, code):
    out = tmp_path / "lib"
    proc = _start(_cmd(out, "0-15", 2))
    try:
        _wait_for(lambda: _finished_trees(out), 180, "a finished tree", proc)
        workers = _workers(proc.pid)
        descendants = psutil.Process(proc.pid).children(recursive=True)
        assert workers
        finished = _finished_trees(out)
        t0 = time.monotonic()
        if to_group:
            os.killpg(proc.pid, sig)  # Ctrl-C in a terminal
        else:
            proc.send_signal(sig)
        proc.wait(timeout=60)
        took = time.monotonic() - t0
        stderr = proc.stderr.read().decode()
        assert proc.returncode == code, stderr
        assert took < 20, f"{took:.1f} s to stop"
        line = _one_line(stderr)
        assert sig.name in line and "resumes" in line
        _wait_for(lambda: not _running(descendants), 10, "every worker to end")
    finally:
        _end_session(proc)
    assert finished <= _finished_trees(out) and len(_finished_trees(out)) < 16
    _assert_complete(out)


def test_workers_end_when_the_recorder_is_killed(tmp_path):
    out = tmp_path / "lib"
    proc = _start(_cmd(out, "0-3", 3))  # trees long enough that a worker would still be training
    try:
        _wait_for(lambda: len([w for w in _workers(proc.pid) if w.cpu_times().user > 2.0]) == 2, 180,
                  "two busy workers", proc)
        descendants = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGKILL)  # no clean-up code runs in the recorder
        proc.wait(timeout=30)
        _wait_for(lambda: not _running(descendants), 8, "every worker to end after its recorder")
    finally:
        _end_session(proc)
    # the next recorder starts cleanly: the dead recorder's lock is free, its workers' temp files are removed
    stats = record([TreeSpec("digits-mlp", "healthy", 9, depth=0)], out, workers=1, show_progress=False)
    assert stats["trees"] == 1 and not list(out.rglob(".*.tmp-*"))


# --- a worker killed from outside --------------------------------------------------------------------------------

def test_a_tree_lost_with_its_killed_worker_is_recorded_again(tmp_path):
    out = tmp_path / "lib"
    proc = _start(_cmd(out, "0-5", 1))
    try:
        _wait_for(lambda: _finished_trees(out), 180, "a finished tree", proc)
        victim = max(_workers(proc.pid), key=lambda w: w.cpu_times().user)
        victim.send_signal(signal.SIGKILL)  # as the OOM killer would
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr.decode()
        assert "Traceback" not in stderr.decode()
        assert "recorded" in stdout.decode()
    finally:
        _end_session(proc)
    _assert_complete(out)
    assert len(_finished_trees(out)) == 6


def test_a_tree_whose_worker_always_dies_is_reported_and_the_others_are_recorded(tmp_path):
    out = tmp_path / "lib"
    proc = _start(_cmd(out, "0-2", 1, task="tests.test_hostile_inputs:SelfKillingTask"))
    try:
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        _end_session(proc)
    line = _one_line(stderr.decode())
    assert proc.returncode == 1
    assert "selfkill-digits:healthy:s1" in line and "SIGKILL" in line and "3 times" in line
    assert "recorded 2 tree(s)" in stdout.decode()
    _assert_complete(out)
    assert {p.name for p in _finished_trees(out)} == {"healthy-s0.parquet", "healthy-s2.parquet"}


# --- bad arguments -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, expected", [
    (["--depth", "-1"], "--depth must be a whole number >= 0"),
    (["--decide-every", "0"], "--decide-every must be a whole number >= 1"),
    (["--budget", "0"], "--budget must be a whole number >= 1"),
    (["--workers", "0"], "--workers must be a whole number >= 1"),
    (["--workers", "-2"], "--workers must be a whole number >= 1"),
    (["--seeds", "3-0"], "--seeds: the range 3-0 is empty"),
    (["--seeds", "-1"], "--seeds: seeds are whole numbers >= 0"),
    (["--seeds", "0,-2"], "--seeds: seeds are whole numbers >= 0"),
])
def test_bad_arguments_are_refused_with_one_line_naming_the_option(tmp_path, capsys, args, expected):
    out = tmp_path / "lib"
    argv = ["record", "--task", "digits-mlp", "--scenario", "healthy", "--seeds", "0", "--depth", "0",
            "--quiet", "--out", str(out)] + args
    assert main(argv) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("tmsim: error: ") and expected in line
    assert not out.exists()  # refused before anything was written


def test_seed_lists_and_specs_are_checked_where_they_are_built():
    assert parse_seeds("0-2,1") == [0, 1, 2] and parse_seeds(" 4 - 5 ") == [4, 5]
    with pytest.raises(ValueError, match="--seeds: the range 3-0 is empty"):
        parse_seeds("3-0")
    with pytest.raises(ValueError, match="--depth"):
        TreeSpec("digits-mlp", "healthy", 0, depth=-1)
    with pytest.raises(ValueError, match="--seeds"):
        TreeSpec("digits-mlp", "healthy", -3)
    with pytest.raises(ValueError, match="--workers"):
        record([], "unused", workers=0)
