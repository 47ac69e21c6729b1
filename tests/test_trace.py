"""Trace format v1: round trip, determinism, and every kind of bad input a user can hand it."""
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tmsim.record import TreeSpec, record_tree
from tmsim.traces import (EPOCHS, RUNS, SCHEMA_VERSION, TraceError, content_hash, load_library, read_table,
                         table_files, write_table)


def copy_lib(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_schema_round_trip(tmp_path):
    runs, epochs = record_tree(TreeSpec("digits-mlp", "healthy", 0, depth=1))
    write_table(runs, tmp_path / "r.parquet", "runs")
    write_table(epochs, tmp_path / "e.parquet", "epochs")
    r2, e2 = read_table(tmp_path / "r.parquet", "runs"), read_table(tmp_path / "e.parquet", "epochs")
    assert r2.schema.equals(RUNS) and e2.schema.equals(EPOCHS)
    assert r2.equals(runs) and e2.equals(epochs)
    md = pq.read_schema(tmp_path / "e.parquet").metadata
    assert md[b"tmsim.schema_version"] == SCHEMA_VERSION.encode() and md[b"tmsim.table"] == b"epochs"
    # the tree: the do-nothing root from epoch 0, one branch per offered action, stop holds no epochs
    assert runs.num_rows == 6 and sorted(a for a in runs["branch_action"].to_pylist() if a) == [
        "dropout_up", "lr_down", "lr_up", "stop", "weight_decay_up"]
    stop_id = [r["run_id"] for r in runs.to_pylist() if r["branch_action"] == "stop"][0]
    assert stop_id not in epochs["run_id"].to_pylist()
    branch_epochs = [r["epoch"] for r in epochs.to_pylist() if r["run_id"].endswith("+e5:lr_down")]
    assert branch_epochs == list(range(6, 21))


def test_same_seed_same_trace_and_another_seed_differs():
    a = record_tree(TreeSpec("digits-mlp", "overfit", 4, depth=1))
    b = record_tree(TreeSpec("digits-mlp", "overfit", 4, depth=1))
    c = record_tree(TreeSpec("digits-mlp", "overfit", 5, depth=1))
    assert content_hash(a[0]) == content_hash(b[0]) and content_hash(a[1]) == content_hash(b[1])
    assert a[1]["val_loss"].equals(b[1]["val_loss"])
    assert content_hash(a[1]) != content_hash(c[1])


def test_files_are_byte_identical_for_the_same_seed(tmp_path):
    from tmsim.record import record, tree_paths

    spec = TreeSpec("multiloss", "imbalance", 1, depth=1)
    for d in ("a", "b"):
        record([spec], tmp_path / d, workers=1, show_progress=False)
    pa_, pb = tree_paths(tmp_path / "a", spec), tree_paths(tmp_path / "b", spec)
    assert pa_["runs"].read_bytes() == pb["runs"].read_bytes()
    assert content_hash(read_table(pa_["epochs"], "epochs")) == content_hash(read_table(pb["epochs"], "epochs"))


def _first(lib, kind):
    return table_files(lib, kind)[0]


def _expect_skipped(lib, needle, kind="epochs"):
    loaded = load_library(lib)
    assert any(needle in p for p in loaded.problems), loaded.problems
    with pytest.raises(TraceError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        load_library(lib, strict=True)
    return loaded


def test_truncated_file_is_named_and_neighbours_still_read(small_library, tmp_path):
    lib = copy_lib(small_library, tmp_path / "lib")
    victim = _first(lib, "epochs")
    victim.write_bytes(victim.read_bytes()[:200])
    loaded = _expect_skipped(lib, str(victim))
    assert "not a readable Parquet file" in loaded.problems[0]
    assert len(loaded.files["epochs"]) == len(table_files(small_library, "epochs")) - 1
    # its runs cannot be used without their epochs: they are skipped and reported, never silently absent
    assert any("have no rows in the epochs table" in p for p in loaded.problems)
    assert 0 < loaded.runs.num_rows < load_library(small_library).runs.num_rows


def test_corrupt_bytes_in_the_middle(small_library, tmp_path):
    lib = copy_lib(small_library, tmp_path / "lib")
    victim = _first(lib, "runs")
    data = bytearray(victim.read_bytes())
    data[8:len(data) // 2] = b"\x00" * (len(data) // 2 - 8)
    victim.write_bytes(bytes(data))
    loaded = load_library(lib)
    assert any(str(victim) in p for p in loaded.problems)
    assert any("belong to runs missing" in p for p in loaded.problems)  # its epochs are kept, and flagged


def _rewrite(path, kind, fn, metadata=None):
    t = pq.read_table(path)
    md = t.schema.metadata if metadata is None else metadata
    t = fn(t).replace_schema_metadata(md)
    pq.write_table(t, path)


def test_missing_column(small_library, tmp_path):
    lib = copy_lib(small_library, tmp_path / "lib")
    victim = _first(lib, "epochs")
    _rewrite(victim, "epochs", lambda t: t.drop_columns(["grad_norm"]))
    _expect_skipped(lib, "missing column 'grad_norm'")


def test_mistyped_column(small_library, tmp_path):
    lib = copy_lib(small_library, tmp_path / "lib")
    victim = _first(lib, "epochs")
    _rewrite(victim, "epochs", lambda t: t.set_column(t.schema.get_field_index("val_loss"), "val_loss", t["val_loss"].cast(pa.string())))
    _expect_skipped(lib, "column 'val_loss' has type string, expected double")


def test_unknown_schema_version_and_missing_version(small_library, tmp_path):
    lib = copy_lib(small_library, tmp_path / "lib")
    a, b = table_files(lib, "epochs")[:2]
    md = pq.read_schema(a).metadata
    _rewrite(a, "epochs", lambda t: t, {**md, b"tmsim.schema_version": b"99"})
    _rewrite(b, "epochs", lambda t: t, {k: v for k, v in md.items() if k != b"tmsim.schema_version"})
    loaded = load_library(lib)
    assert any("unknown schema version '99'" in p and str(a) in p for p in loaded.problems)
    assert any("'tmsim.schema_version' missing" in p and str(b) in p for p in loaded.problems)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_metric(small_library, tmp_path, bad):
    lib = copy_lib(small_library, tmp_path / "lib")
    victim = _first(lib, "epochs")

    def poison(t):
        vals = t["train_loss"].to_pylist()
        vals[3] = bad
        return t.set_column(t.schema.get_field_index("train_loss"), "train_loss", pa.array(vals, pa.float64()))

    _rewrite(victim, "epochs", poison)
    _expect_skipped(lib, "column 'train_loss' has 1 NaN/inf value(s)")


def test_empty_directory_and_missing_directory(tmp_path):
    with pytest.raises(TraceError, match="no usable trace files"):
        load_library(tmp_path)
    with pytest.raises(TraceError, match="does not exist"):
        load_library(tmp_path / "nope")


def test_partition_mismatch_and_wrong_table(small_library, tmp_path):
    lib = copy_lib(small_library, tmp_path / "lib")
    victim = _first(lib, "runs")
    moved = lib / "runs" / "task=text-lm" / victim.name
    moved.parent.mkdir()
    victim.rename(moved)
    e = _first(lib, "epochs")
    (lib / "runs" / "task=digits-mlp" / "x.parquet").write_bytes(e.read_bytes())
    loaded = load_library(lib)
    assert any("disagrees with its partition directory task=text-lm" in p for p in loaded.problems)
    assert any("'tmsim.table' is 'epochs', expected 'runs'" in p for p in loaded.problems)


def test_cli_error_is_one_line(small_library, tmp_path, capsys):
    from tmsim.cli import main

    lib = copy_lib(small_library, tmp_path / "lib")
    for f in table_files(lib, "runs") + table_files(lib, "epochs"):
        f.write_bytes(b"garbage")
    assert main(["summary", "--traces", str(lib)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tmsim: error:") and "not a readable Parquet file" in err[0]


def test_writer_refuses_missing_required_column(tmp_path):
    with pytest.raises(TraceError, match="missing required column 'run_id'"):
        write_table(pa.table({"epoch": [1]}), tmp_path / "x.parquet", "epochs")
