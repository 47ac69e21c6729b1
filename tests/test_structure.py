"""The one-way structure: a torch-free core, one home for each shared rule, one tree index per leaderboard run, a
live hook that checks promotions without the offline stack, and the extension points (tasks, policy kinds)."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tmsim.cli import REPO, main

PLUGINS = Path(__file__).parent / "plugins"
SRC = REPO / "tmsim"


def _run(code: str, env_extra: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def test_core_imports_and_validates_where_torch_cannot_be_imported():
    code = """
import sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is not available here")
sys.meta_path.insert(0, NoTorch())
import tmsim.core as core
snap = core.Snapshot.build("r", "t", [{"epoch": 0, "val_loss": 1.0}, {"epoch": 5, "val_loss": 0.9}],
                           core.Hyperparams(lr=0.1), max_epochs=20, decide_every=5)
act, v = core.validate('{"action": "lr_down"}', snap, core.Bounds())
assert act.hparams.lr == 0.05 and not v
assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules)
print("ok")
"""
    r = _run(code)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def _defs(pattern: str) -> list[str]:
    """Files under tmsim/ whose source matches ``pattern`` (a definition, not a use)."""
    rx = re.compile(pattern, re.M)
    return sorted(str(p.relative_to(SRC)) for p in SRC.rglob("*.py") if rx.search(p.read_text()))


def test_each_shared_rule_is_defined_once():
    assert _defs(r"^DIVERGE_FACTOR\s*=") == ["core/outcome.py"]
    assert _defs(r"^def (is_diverged|divergence_penalty)\b") == ["core/outcome.py"]
    assert _defs(r"^def final_val_loss\b") == ["core/outcome.py", "live/fidelity.py"]  # the latter delegates
    assert _defs(r"^(RECORD_MENU|ACTIONS|SET_ACTIONS)\s*=") == ["core/menu.py"]
    assert _defs(r"^\s*\"(lr_down|weight_decay_up|stop)\":") == []  # no second action table keyed by name
    assert _defs(r"^KNOBS\s*=") == ["core/hparams.py"]
    # an epoch row becomes Hyperparams only through Hyperparams.from_row
    assert _defs(r"Hyperparams\(\s*\w+\[\s*[\"'](init_)?lr") == []
    assert _defs(r"^class TreeIndex\b") == ["traces/index.py"]
    assert _defs(r"while .*\[\"parent_run_id\"\]") == ["traces/index.py"]


def test_stages_use_the_shared_rules():
    import tmsim.core.menu as menu
    import tmsim.core.outcome as outcome
    import tmsim.live.fidelity
    import tmsim.live.manager
    import tmsim.policies.llm.prompt as prompt
    import tmsim.record
    import tmsim.simulate.simulator
    import tmsim.simulate.surrogate
    import tmsim.traces.index

    assert tmsim.record.is_diverged is outcome.is_diverged
    assert tmsim.live.manager.is_diverged is outcome.is_diverged
    assert tmsim.simulate.simulator.final_val_loss is outcome.final_val_loss
    assert tmsim.traces.index.final_val_loss is outcome.final_val_loss
    assert prompt.ACTION_TABLE is menu.ACTION_TABLE
    assert tmsim.simulate.surrogate.SUPERVISED_KNOBS is tmsim.core.hparams.SUPERVISED_KNOBS
    assert tmsim.simulate.surrogate.RL_KNOBS is tmsim.core.hparams.RL_KNOBS


def test_one_tree_index_and_one_hash_per_file_in_a_leaderboard_run(small_library, tmp_path, monkeypatch):
    import pathlib

    import tmsim.traces.index as index_mod

    built = []
    real_init = index_mod.TreeIndex.__init__

    def counting_init(self, *a, **kw):
        built.append(1)
        real_init(self, *a, **kw)

    reads: dict[str, int] = {}
    real_read = pathlib.Path.read_bytes

    def counting_read(self):
        if self.suffix == ".parquet":
            reads[str(self)] = reads.get(str(self), 0) + 1
        return real_read(self)

    monkeypatch.setattr(index_mod.TreeIndex, "__init__", counting_init)
    monkeypatch.setattr(pathlib.Path, "read_bytes", counting_read)
    monkeypatch.setenv("TMSIM_SURROGATE_CACHE", str(tmp_path / "cache"))
    assert main(["leaderboard", "--traces", str(small_library), "--no-report", "--quiet",
                 "--policies", str(REPO / "policies" / "rules.toml"), str(REPO / "policies" / "oracle.toml")]) == 0
    assert len(built) == 1
    assert reads and set(reads.values()) == {1}


def test_live_hook_checks_a_promotion_without_the_offline_stack_and_takes_the_suites_bounds():
    code = f"""
import json, sys
from tmsim.live import LiveManager
from tmsim.core import Hyperparams
from tmsim.policies import load_spec, make_policy
spec = load_spec({str(REPO / 'policies' / 'rules.toml')!r})
mgr = LiveManager(make_policy(spec), spec=spec, promotions={str(REPO / 'eval' / 'promotions')!r},
                  hparams=Hyperparams(lr=0.1), max_epochs=20, decide_every=5, task="digits-mlp", scenario="overfit")
heavy = [m for m in ("tmsim.simulate.simulator", "tmsim.evaluate.leaderboard", "duckdb", "sklearn") if m in sys.modules]
print(json.dumps({{"promotion": mgr.promotion, "heavy": heavy, "bounds": mgr.bounds.model_dump()}}))
"""
    r = _run(code, cwd=REPO)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["promotion"].startswith("promoted") and out["heavy"] == []
    import tomllib

    from tmsim.core import Bounds

    suite = tomllib.loads((REPO / "eval" / "suites" / "overfit.toml").read_text())
    assert out["bounds"] == Bounds(**suite.get("bounds", {})).model_dump()


def test_tmsimcallback_is_a_real_trainer_callback():
    from transformers import TrainerCallback

    from tmsim.core import Hyperparams
    from tmsim.live import LiveManager, TMSimCallback
    from tmsim.policies import ConstantPolicy

    mgr = LiveManager(ConstantPolicy(), hparams=Hyperparams(lr=0.1), max_epochs=2, allow_unpromoted=True)
    assert isinstance(TMSimCallback(mgr), TrainerCallback)


def test_record_a_task_defined_outside_tmsim_with_two_workers(tmp_path):
    from tmsim.traces import load_library

    out = tmp_path / "lib"
    r = subprocess.run([sys.executable, "-m", "tmsim.cli", "record", "--task", "blowup_tasks:BlowupTask",
                        "--scenario", "calm", "--seeds", "0-1", "--depth", "1", "--workers", "2", "--quiet",
                        "--out", str(out)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(PLUGINS)}, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lib = load_library(out, strict=True)
    assert set(lib.runs["task"].to_pylist()) == {"blowup"} and set(lib.runs["seed"].to_pylist()) == {0, 1}
    assert (out / "runs" / "task=blowup" / "calm-s0.parquet").exists()


def _dist(site: Path, group: str, line: str) -> None:
    """An installed distribution with one entry point: what `pip install` of a plugin leaves on sys.path."""
    info = site / "tmsim_test_plugin-0.1.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tmsim-test-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{group}]\n{line}\n")


def test_entry_points_register_a_task_and_a_policy_kind(tmp_path, small_library):
    site = tmp_path / "site"
    _dist(site, "tmsim.tasks", "blowup-plugin = blowup_tasks:BlowupTask")
    with open(site / "tmsim_test_plugin-0.1.dist-info" / "entry_points.txt", "a") as fh:
        fh.write("[tmsim.policies]\nalways-halve = plugin_policies:AlwaysHalve\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(PLUGINS)])}
    out = tmp_path / "lib"
    r = subprocess.run([sys.executable, "-m", "tmsim.cli", "record", "--task", "blowup-plugin", "--scenario", "calm",
                        "--seeds", "0", "--depth", "1", "--workers", "2", "--quiet", "--out", str(out)],
                       capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (out / "runs" / "task=blowup" / "calm-s0.parquet").exists()
    spec = tmp_path / "halve.toml"
    spec.write_text('name = "halve-plugin"\nkind = "always-halve"\n[settings]\nreason = "plugin"\n')
    r = subprocess.run([sys.executable, "-m", "tmsim.cli", "policy", "check", str(spec), "--traces", str(small_library),
                        "--quiet", "--json", str(tmp_path / "check.json")],
                       capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "check.json").read_text())
    assert report["policy"] == "halve-plugin" and report["actions"].get("lr_down", 0) > 0


def test_register_kind_and_register_task_in_code(monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGINS))
    from tmsim.policies import PolicySpec, kind_names, make_policy, register_kind
    from tmsim.tasks import get_task, register, task_names

    register_kind("halver", "plugin_policies:AlwaysHalve", overwrite=True)
    assert "halver" in kind_names()
    from tmsim.core import Bounds, Hyperparams, Snapshot, validate

    snap = Snapshot.build("r", "t", [{"epoch": 0, "val_loss": 1.0}, {"epoch": 5, "val_loss": 0.9}],
                          Hyperparams(lr=0.1), max_epochs=20, decide_every=5)
    pol = make_policy(PolicySpec(name="h", kind="halver"))  # a plugin kind: built in its own process
    try:
        assert pol.policy_id == "h" and validate(pol.decide(snap), snap, Bounds())[0].action == "lr_down"
    finally:
        pol.close()
    assert make_policy(PolicySpec(name="h", kind="halver"), isolate=False).decide(snap).action == "lr_down"
    register("blowup-in-code", "blowup_tasks:BlowupTask", overwrite=True)
    assert "blowup-in-code" in task_names() and get_task("blowup-in-code").name == "blowup"
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        get_task("nope")
    with pytest.raises(ValueError, match="reserved"):
        register_kind("python", "plugin_policies:AlwaysHalve")
