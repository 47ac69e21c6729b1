"""Hostile policies against the harness: a policy cannot change its own score, the verdict, or a command's exit."""
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tmsim.cli import REPO
from tmsim.core import Bounds, Hyperparams, Snapshot, call_policy, call_policy_batch, validate
from tmsim.policies import OraclePolicy, RulesPolicy
from tmsim.policies.check import decision_points, run_policy
from tmsim.simulate import Simulator
from tmsim.traces import TreeIndex, load_library

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


def test_policy_check_with_a_stray_thread_and_a_huge_reason_ends_and_stays_small(small_library, cache, tmp_path):
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    _spec(tmp_path, "thread")
    _spec(tmp_path, "huge_reason")
    r = _tmsim(["policy", "check", str(tmp_path), "--traces", str(small_library), "--quiet", "--timeout", "5"], cache,
               timeout=240)
    assert r.returncode == 0, r.stderr
    assert time.perf_counter() - t0 < 240
    peak_mb = max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
    assert peak_mb < 2000, peak_mb


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
