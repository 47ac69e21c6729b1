"""``tmsim evaluate``: exact verdicts on a run, recording on demand only the branches the candidate policies take.

Every test runs on the task defined outside tmsim (``tests/plugins/blowup_tasks.py``, scenario ``calm``: 6 epochs,
decisions at epochs 2 and 4), a few milliseconds an epoch, so a full tree of it is cheap enough to record beside
the on-demand one and compare.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from tmsim.cli import REPO
from tmsim.evaluate.leaderboard import Suite, json_rows, run_leaderboard
from tmsim.evaluate.on_demand import build_policies, evaluate, tree_specs
from tmsim.policies import PolicySpec, load_spec
from tmsim.record import (TreeSpec, plan_tree, prefix_closed, read_table, record, record_tree, specs_from_args,
                          tree_paths, write_tree)
from tmsim.traces import TreeIndex, content_hash, load_library
from tmsim.traces.format import write_table
from tmsim.traces.index import path_of

PLUGINS = Path(__file__).parent / "plugins"
sys.path.insert(0, str(PLUGINS))
TASK = "blowup_tasks:BlowupTask"
SEEDS = [0, 1]
REPLICATES = 2


@pytest.fixture(scope="module")
def policy_lib(tmp_path_factory):
    """The library the learned policy is fitted on: full trees of other seeds of the same task (never the trees it
    is judged on, which grow while it is judged)."""
    out = tmp_path_factory.mktemp("policy-lib")
    record(specs_from_args([TASK], ["calm"], [10, 11, 12, 13], depth=2, decide_every=None, budget=None), out,
           workers=1, show_progress=False)
    return out


def six_policies() -> list[PolicySpec]:
    """constant, rules, plateau, random, gbm and an LLM policy on the scratch test model. ``plateau`` cuts at every
    epoch that does not improve by half (factor 0.3), so it proposes ``set_lr`` values the menu does not hold, and
    the LLM answers schema-constrained JSON, which may carry a value too: both exercise exact-value branches."""
    return [PolicySpec(name="constant", kind="constant"), PolicySpec(name="rules", kind="rules"),
            PolicySpec(name="plateau", kind="plateau", settings={"factor": 0.3, "patience": 0, "threshold": 0.5}),
            PolicySpec(name="random", kind="random", settings={"seed": 0}),
            PolicySpec(name="gbm", kind="gbm", settings={"train_seeds": "even"}),
            PolicySpec(name="llm", kind="llm", settings={"model": str(REPO / "models" / "qwen3-tiny-scratch"),
                                                         "method": "json", "max_new_tokens": 24})]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, policy_lib):
    out = tmp_path_factory.mktemp("on-demand")
    lines: list[str] = []
    res = evaluate(tree_specs([TASK], ["calm"], SEEDS, REPLICATES), six_policies(), out, policy_library=policy_lib,
                   show_progress=False, say=lines.append)
    return out, res, lines


def _scored(board) -> dict:
    return {s.policy: s for s in board.scores if not s.upper_bound}


def test_six_policies_are_scored_exactly_as_a_full_tree_scores_them(evaluated, policy_lib, tmp_path):
    """Every row is 100% replayed, and each row's score equals what exact replay of a full tree of the same seeds
    gives: every menu branch to depth 2, plus the exact-value branches (a policy's ``set_lr`` value) that no menu
    holds, recorded by ``tmsim record``'s own ``record_tree`` in this session on this machine. That the numbers are
    *equal* (not close) is legitimately pinned: the same machine, the same seeds, one torch thread and the same code
    path train each branch (training is chaotic, so on another machine only the distribution would agree)."""
    out, res, lines = evaluated
    board = res.board
    rows = _scored(board)
    # only the learned policy may be missing (when it cannot be fitted on its library), and only with its reason
    assert set(rows) >= {"constant", "rules", "plateau", "random", "llm"} and ("gbm" in rows or board.skipped["gbm"])
    assert not board.failed
    assert all(s.replayed_share == 1.0 for s in board.scores), {s.policy: s.replayed_share for s in board.scores}
    assert board.surrogate_id.startswith("none")
    lib = load_library(out, strict=True)
    exact = sorted({path_of(r) for r in lib.runs["run_id"].to_pylist() if "=" in r})
    assert any("set_lr=" in r for r in exact), exact  # plateau's exact proposals were trained as they were
    # the full tree of the same seeds (every menu branch), with the exact-value branches added
    full = tmp_path / "full"
    for seed in SEEDS:
        spec = TreeSpec(TASK, "calm", seed, depth=2, replicates=REPLICATES)
        mine = [tuple((int(e[1:]), a) for e, a in (step.split(":", 1) for step in p.split("+")[1:]))
                for p in exact if p.split("+")[0].endswith(f":s{seed}")]
        plan = prefix_closed(set(plan_tree(spec)) | set(mine))
        runs, epochs = record_tree(spec, plan=plan)
        write_tree(full, spec, runs, epochs)
    index = TreeIndex(load_library(full, strict=True))
    policies, skipped, _ = build_policies(six_policies(), policy_lib, lambda m: None, {("blowup", "calm", s) for s in SEEDS})
    suite = Suite(name="full", tasks=["blowup"], scenarios=["calm"], seeds=SEEDS)
    truth = run_leaderboard(index, policies, suite, None, "", reads_run=False)  # no surrogate: exact replay or raise
    want = _scored(truth)
    assert set(want) == set(rows) and skipped == board.skipped
    for name, s in rows.items():
        w = want[name]
        assert w.replayed_share == 1.0
        got = [o.final_val_loss for o in board.rollouts[name]]
        assert got == [o.final_val_loss for o in truth.rollouts[name]], name
        for key in ("val_loss_change_pct", "ci_low", "ci_high", "val_loss_change_mean_pct", "best_val_loss_change_pct",
                    "unsafe_rate", "diverged_rate", "acted_share", "acted_change_pct", "interventions_per_run",
                    "epochs_share", "epochs_saved_per_run", "violations_by_kind"):
            assert getattr(s, key) == getattr(w, key), (name, key)
    # and the on-demand library is a small part of the full tree's cost
    c = res.costs
    assert c["runs_full_tree"] == len(SEEDS) * REPLICATES * 25  # root + 4 actions at 2 points + 4 x 4 below them
    assert 0 < c["runs_trained"] < c["runs_full_tree"] and c["epochs_trained"] < c["epochs_full_tree"]
    assert any(ln.startswith("evaluate: 2 tree(s) x 2 replicate(s), 6 policies") for ln in lines)


def test_the_json_holds_the_cost_figures_and_every_rows_replayed_share(evaluated):
    out, res, _ = evaluated
    d = json.loads(json.dumps(res.to_json(), default=str))
    assert d["runs_trained"] == res.costs["runs_trained"] and d["runs_full_tree"] == res.costs["runs_full_tree"]
    assert {r["policy"] for r in d["rows"]} >= {"constant", "rules", "plateau", "random", "llm", "oracle"}
    assert all(r["replayed_share"] == 1.0 and r["surrogate_heavy"] is False for r in d["rows"])
    assert d["replicates"] == REPLICATES and d["trees"] == ["blowup/calm/0", "blowup/calm/1"] and d["rounds"] >= 1
    # a second evaluation of the same policies trains nothing: every path is there
    again = evaluate(tree_specs([TASK], ["calm"], SEEDS, REPLICATES), six_policies()[:4], out, show_progress=False,
                     say=lambda m: None)
    assert again.this_run["runs"] == 0 and again.rounds == 0 and again.costs["runs_trained"] == res.costs["runs_trained"]


SLOW_TASK = '''
import time

from blowup_tasks import BlowupTask


class SlowTask(BlowupTask):
    """The plugin task with a pause in every epoch (its numbers unchanged), so a kill lands mid-evaluation."""

    name = "slow-blowup"

    def train_epoch(self, state, on_step=None):
        time.sleep(0.04)
        return super().train_epoch(state, on_step)
'''


def _tree_rows(out: Path, specs) -> dict:
    """Per tree, its runs and epochs sorted by run (and epoch): the content, timing columns aside."""
    got = {}
    for s in specs:
        p = tree_paths(out, s)
        runs = read_table(p["runs"], "runs").sort_by("run_id")
        epochs = read_table(p["epochs"], "epochs").sort_by([("run_id", "ascending"), ("epoch", "ascending")])
        assert len(set(runs["run_id"].to_pylist())) == runs.num_rows  # no run twice
        got[s.stem] = (runs, epochs)
    return got


def test_an_evaluation_killed_mid_way_resumes_without_losing_or_duplicating_a_branch(tmp_path, monkeypatch):
    (tmp_path / "slow_tasks.py").write_text(SLOW_TASK)
    monkeypatch.syspath_prepend(str(tmp_path))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(PLUGINS)])}
    out = tmp_path / "lib"
    pols = [str(REPO / "policies" / f"{n}.toml") for n in ("rules", "random")]
    cmd = [sys.executable, "-m", "tmsim.cli", "evaluate", "--task", "slow_tasks:SlowTask", "--scenario", "calm",
           "--seeds", "0-2", "--replicates", "2", "--policies", *pols, "--out", str(out), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp_path)
    files = out / "runs" / "task=slow-blowup"
    deadline = time.time() + 180

    def runs_on_disk() -> int:
        n = 0
        for f in files.glob("*.parquet"):
            try:
                n += read_table(f, "runs").num_rows
            except Exception:  # noqa: BLE001 -- a file being replaced
                pass
        return n

    while runs_on_disk() <= 3 * 2 and time.time() < deadline and proc.poll() is None:  # until a branch is committed
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)  # the harshest interruption: no clean-up code runs
    proc.wait()
    specs = tree_specs(["slow_tasks:SlowTask"], ["calm"], [0, 1, 2], 2)
    before = load_library(out)  # what the killed run left is readable
    kept = {r["run_id"]: r for r in before.runs.to_pylist()}
    assert len(kept) > 6, proc.stderr.read().decode()[-2000:]
    # a torn growth on top (its epochs written, its runs not): rows of a run the tree does not hold
    p = tree_paths(out, specs[0])
    ep = read_table(p["epochs"], "epochs")
    root = ep.filter(pc.equal(ep["run_id"], "slow-blowup:calm:s0:r0"))
    orphan = root.set_column(root.schema.get_field_index("run_id"), root.schema.field("run_id"),
                             pa.array(["slow-blowup:calm:s0:r0+e2:torn"] * root.num_rows, pa.string()))
    write_table(pa.concat_tables([ep, orphan]), p["epochs"], "epochs", {"recipe": specs[0].recipe()})
    pols_specs = [PolicySpec(name="rules", kind="rules"), PolicySpec(name="random", kind="random", settings={"seed": 0})]
    res = evaluate(specs, pols_specs, out, show_progress=False, say=lambda m: None)
    assert all(s.replayed_share == 1.0 for s in res.board.scores)
    after = load_library(out, strict=True)  # the orphan rows are gone, nothing else is wrong
    rows = {r["run_id"]: r for r in after.runs.to_pylist()}
    assert all(rows[k] == v for k, v in kept.items())  # nothing lost: every branch finished before the kill stayed
    assert res.this_run["runs"] == len(rows) - len(kept)  # nothing trained twice
    # the same as an evaluation that was never interrupted
    ref = tmp_path / "ref"
    evaluate(specs, pols_specs, ref, show_progress=False, say=lambda m: None)
    a, b = _tree_rows(out, specs), _tree_rows(ref, specs)
    for stem in a:
        assert a[stem][0]["run_id"].to_pylist() == b[stem][0]["run_id"].to_pylist()
        assert content_hash(a[stem][1]) == content_hash(b[stem][1])


def test_a_crashing_policy_is_a_failed_row_not_a_crashed_evaluation(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(PLUGINS))
    hostile = PolicySpec(name="hostile-os_exit", kind="python", target="hostile_policies:Hostile",
                         settings={"how": "os_exit"})
    res = evaluate(tree_specs([TASK], ["calm"], [0], 1), [PolicySpec(name="rules", kind="rules"), hostile],
                   tmp_path / "lib", show_progress=False, say=lambda m: None)
    assert "hostile-os_exit" in res.board.failed
    rows = _scored(res.board)
    assert rows["rules"].failed is None and rows["rules"].replayed_share == 1.0


def test_a_budget_caps_the_branches_and_marks_the_rows_that_lean_on_the_surrogate(tmp_path, policy_lib):
    from tmsim.simulate.surrogate import Surrogate, segment_data

    sur = Surrogate(n_estimators=10).fit(segment_data(TreeIndex(load_library(policy_lib))))
    path = sur.save(tmp_path / "s.skops")
    # a policy that halves the LR at both decisions needs two branches per tree: with the root that is one more than
    # the budget, so its second segment at least is the surrogate's on every tree (a share of at most 4 of 6
    # epochs replayed, whatever the training draws); rules and random take whatever path the draws lead them to
    pols = [PolicySpec(name="rules", kind="rules"), PolicySpec(name="random", kind="random", settings={"seed": 0}),
            PolicySpec(name="halve", kind="python", target="plugin_policies:AlwaysHalve")]
    res = evaluate(tree_specs([TASK], ["calm"], SEEDS, 1), pols, tmp_path / "lib", budget=2, surrogate=path,
                   show_progress=False, say=lambda m: None)
    runs = load_library(tmp_path / "lib").runs
    for seed in SEEDS:
        assert pc.sum(pc.equal(runs["seed"], seed)).as_py() <= 2
    rows = {r["policy"]: r for r in json_rows(res.board)}
    assert rows["halve"]["replayed_share"] <= 4 / 6 + 1e-9 and rows["halve"]["surrogate_heavy"] is True
    for r in rows.values():  # every row is marked exactly when more than a fifth of its epochs are the surrogate's
        assert r["surrogate_heavy"] is (1.0 - r["replayed_share"] > 0.2), r
    assert res.off_tree["(budget)"]


def test_dry_run_prints_the_cost_and_records_nothing(tmp_path):
    lines: list[str] = []
    res = evaluate(tree_specs([TASK], ["calm"], SEEDS, 2), [PolicySpec(name="rules", kind="rules")], tmp_path / "x",
                   dry_run=True, oracle_depth=1, show_progress=False, say=lines.append)
    assert res.board is None and not (tmp_path / "x" / "runs").exists()
    text = "\n".join(lines)
    assert "a full tree of the same depth: 100 runs" in text and "s measured" in text
    assert res.estimate["first_runs"] == 2 * 2 * 5  # the root and the 4 actions at the first decision, per replicate


def test_the_ray_executors_growth_task_writes_what_the_local_engine_writes(tmp_path, evaluated):
    """The Ray task body (run here without Ray: what a worker runs) trains the same rows as the local engine."""
    from tmsim.record import commit_growth, grow_tree, growth_input
    from tmsim.record_ray import _from_ipc, _job_task
    from tmsim.tasks import TASKS

    spec = tree_specs([TASK], ["calm"], [3], 2)[0]
    want = [((2, "lr_down"), (4, "set_lr=0.0123")), ((4, "lr_up"),)]
    for d in ("a", "b"):
        grow_tree(tmp_path / d, spec, [()])
    grow_tree(tmp_path / "a", spec, want)
    inp = growth_input(tmp_path / "b", spec, want)
    runs, epochs, keep = _job_task("grow", spec, inp, TASKS.refs())
    commit_growth(tmp_path / "b", spec, _from_ipc(runs), _from_ipc(epochs), keep)
    a, b = _tree_rows(tmp_path / "a", [spec]), _tree_rows(tmp_path / "b", [spec])
    assert a[spec.stem][0]["run_id"].to_pylist() == b[spec.stem][0]["run_id"].to_pylist()
    assert content_hash(a[spec.stem][1]) == content_hash(b[spec.stem][1])
    assert "blowup:calm:s3:r1+e2:lr_down+e4:set_lr=0.0123" in a[spec.stem][0]["run_id"].to_pylist()


def test_a_trainer_run_is_evaluated_through_its_own_checkpoints_as_record_trainer_records_it(tmp_path):
    """The user's HF ``Trainer`` (the example factory): the branch a policy takes is resumed from the root's kept
    checkpoint and equals, row for row, what ``tmsim record --trainer`` records for it (same machine, same seed)."""
    from tmsim.cli import main

    factory = f"{REPO / 'examples' / 'hf_trainer_tree.py'}:make_trainer"
    seq = tmp_path / "seq.toml"
    seq.write_text('name = "seq"\nkind = "sequence"\n[settings]\nactions = ["lr_down", "continue", "continue"]\n')
    res = evaluate(None, [load_spec(seq)], tmp_path / "mine", trainer=(factory, None, "default", [0]),
                   show_progress=False, say=lambda m: None)
    assert all(s.replayed_share == 1.0 for s in res.board.scores) and res.costs["runs_trained"] == 2
    assert main(["record", "--trainer", factory, "--seeds", "0", "--depth", "1", "--out", str(tmp_path / "full"),
                 "--quiet"]) == 0
    a, b = load_library(tmp_path / "mine", strict=True), load_library(tmp_path / "full", strict=True)
    common = sorted(set(a.runs["run_id"].to_pylist()) & set(b.runs["run_id"].to_pylist()))
    assert common == ["hf-trainer-tree:default:s0", "hf-trainer-tree:default:s0+e1:lr_down"]

    def rows(lib):
        t = lib.epochs.filter(pc.is_in(lib.epochs["run_id"], value_set=pa.array(common)))
        return t.sort_by([("run_id", "ascending"), ("epoch", "ascending")])

    assert content_hash(rows(a)) == content_hash(rows(b))


def test_an_rl_run_is_evaluated_exactly_too(tmp_path):
    """A PPO task (stable-baselines3; the tiny Reacher of tests/plugins): its exploration actions are branched on
    demand like any other, and every row is replayed."""
    pytest.importorskip("stable_baselines3")
    pols = [PolicySpec(name="rules", kind="rules"), PolicySpec(name="random", kind="random", settings={"seed": 0})]
    res = evaluate(tree_specs(["tiny_rl_tasks:TinyReacher"], ["unsafe"], [0], 1), pols, tmp_path / "lib",
                   show_progress=False, say=lambda m: None)
    assert all(s.replayed_share == 1.0 for s in res.board.scores)
    runs = load_library(tmp_path / "lib", strict=True).runs
    assert runs["init_log_std"].null_count == 0 and runs.num_rows > 1  # an RL run, branched
    assert res.rounds >= 1 and res.costs["runs_trained"] < res.costs["runs_full_tree"]


def test_a_clamped_step_is_recorded_with_the_value_it_was_clamped_to(tmp_path):
    """``lr_up`` at LR 0.05 under an LR bound of 0.06 trains at 0.06, not at the menu's 0.1: the branch is
    ``lr_up=0.06``, and the simulator replays the clamped action from it (the oracle can take it too)."""
    from tmsim.core import Bounds

    seq = PolicySpec(name="up", kind="sequence", settings={"actions": ["lr_up"]})
    res = evaluate(tree_specs([TASK], ["calm"], [0], 1), [seq], tmp_path / "lib", bounds=Bounds(lr_max=0.06),
                   show_progress=False, say=lambda m: None)
    runs = load_library(tmp_path / "lib", strict=True).runs.to_pylist()
    assert [r["branch_action"] for r in runs if r["parent_run_id"]] == ["lr_up=0.06"]
    assert all(s.replayed_share == 1.0 for s in res.board.scores)
    up = _scored(res.board)["up"]
    assert up.violations_by_kind == {"out_of_bounds": 1} and up.interventions_per_run == 1
