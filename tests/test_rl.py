"""Reinforcement-learning tasks: SB3 PPO behind the Task interface, exploration knobs, safety, RL trees, the live
SB3 callback and the leaderboard on RL roots."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("stable_baselines3")
pytest.importorskip("mujoco")

from tmsim.core import EpochView, Hyperparams, Proposal, Snapshot, validate  # noqa: E402
from tmsim.core.actions import Bounds, offered_actions  # noqa: E402
from tmsim.core.menu import changing_actions, record_menu  # noqa: E402
from tmsim.record import TreeSpec, record, record_tree  # noqa: E402
from tmsim.tasks import get_task  # noqa: E402
from tmsim.traces import content_hash, load_library  # noqa: E402

PLUGINS = Path(__file__).parent / "plugins"
REPO = Path(__file__).resolve().parent.parent
RL_LIB = REPO / "eval" / "rl" / "traces"


@pytest.fixture(autouse=True)
def _plugins(monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGINS))


@pytest.fixture(scope="module")
def tiny_library(tmp_path_factory):
    """Depth-1 trees of the tiny Reacher (healthy, unsafe; seeds 0-1; 2 replicates) and the tiny Pendulum."""
    import sys

    sys.path.insert(0, str(PLUGINS))
    out = tmp_path_factory.mktemp("rl")
    specs = [TreeSpec("tiny_rl_tasks:TinyReacher", sc, s, depth=1, replicates=2) for sc in ("healthy", "unsafe")
             for s in (0, 1)]
    specs.append(TreeSpec("tiny_rl_tasks:TinyPendulum", "collapse", 0, depth=1))
    record(specs, out, workers=1, show_progress=False)
    return out


# --- the task ----------------------------------------------------------------------------------------------------
def test_save_and_restore_continue_bit_for_bit():
    task = get_task("tiny_rl_tasks:TinyReacher")
    state = task.build("healthy", seed=0)
    task.train_epoch(state)
    blob = task.save(state)
    a_train, a_eval = task.train_epoch(state), task.evaluate(state)
    a_params = [p.detach().clone() for p in state.agent.policy.parameters()]
    twin = task.restore(blob)
    b_train, b_eval = task.train_epoch(twin), task.evaluate(twin)
    assert {k: v for k, v in a_train.items() if k != "step_time_s"} == {k: v for k, v in b_train.items() if k != "step_time_s"}
    assert a_eval == b_eval
    assert all(torch.equal(x, y) for x, y in zip(a_params, twin.agent.policy.parameters()))
    assert twin.epoch == state.epoch == 2 and twin.steps == state.steps == 2 * 2 * 50  # environment steps


def test_a_restored_fork_takes_the_knobs_it_is_given():
    task = get_task("tiny_rl_tasks:TinyReacher")
    state = task.build("healthy", seed=0)
    task.train_epoch(state)
    child = task.restore(task.save(state))
    hp = state.hparams.with_(lr=state.hparams.lr * 2, ent_coef=0.01, log_std=state.hparams.log_std + 0.5,
                             clip_range=0.1)
    task.apply(child, hp)
    agent = child.agent
    assert agent.policy.optimizer.param_groups[0]["lr"] == pytest.approx(hp.lr)
    assert agent.lr_schedule(1.0) == pytest.approx(hp.lr) and agent.clip_range(1.0) == pytest.approx(0.1)
    assert agent.ent_coef == 0.01
    assert float(agent.policy.log_std.detach().mean()) == pytest.approx(hp.log_std, abs=1e-6)


def test_the_same_tree_twice_is_the_same_trace():
    spec = TreeSpec("tiny_rl_tasks:TinyReacher", "healthy", 3, depth=1)
    (r1, e1), (r2, e2) = record_tree(spec), record_tree(spec)
    assert content_hash(e1) == content_hash(e2) and content_hash(r1.drop(["recorder_version"])) == content_hash(
        r2.drop(["recorder_version"]))


# --- the trees -----------------------------------------------------------------------------------------------------
def test_rl_trees_branch_the_exploration_menu_and_carry_ppo_telemetry(tiny_library):
    lib = load_library(tiny_library, strict=True)
    runs = lib.runs.to_pylist()
    reacher = [r for r in runs if r["task"] == "tiny-reacher-ppo" and r["replicate"] == 0 and r["scenario"] == "healthy"
               and r["seed"] == 0]
    assert len(reacher) == 1 + len(record_menu(rl=True))
    assert {r["branch_action"] for r in reacher if r["depth"] == 1} == set(record_menu(rl=True))
    assert not {"weight_decay_up", "dropout_up"} & {r["branch_action"] for r in runs}
    rows = [e for e in lib.epochs.to_pylist() if e["task"] == "tiny-reacher-ppo"]
    trained = [e for e in rows if e["epoch"] > 0]
    for e in trained:
        for col in ("ep_return", "ep_len", "entropy", "approx_kl", "clip_fraction", "explained_variance", "safety_cost",
                    "safety_budget", "val_return", "test_return", "log_std", "ent_coef", "clip_range"):
            assert e[col] is not None, col
        assert e["val_loss"] == pytest.approx(-e["val_return"]) and e["weight_decay"] == 0.0
    assert all(e["val_return"] is not None and e["safety_cost"] is None for e in rows if e["epoch"] == 0)
    settings = json.loads(next(r for r in runs if r["depth"] == 0)["settings_json"])
    assert {"n_steps", "n_envs", "safety_budget", "gamma"} <= set(settings)
    noise_up = next(r for r in reacher if r["branch_action"] == "noise_up")
    first = next(e for e in rows if e["run_id"] == noise_up["run_id"])
    parent_at_fork = next(e for e in rows if e["run_id"] == noise_up["parent_run_id"] and e["epoch"] == noise_up["branch_epoch"])
    assert first["epoch"] == noise_up["branch_epoch"] + 1
    # the noise was widened by the menu step at the fork, then learned on for an epoch
    assert first["log_std"] > parent_at_fork["log_std"] + 0.3


def test_replicates_differ_after_the_fork_only(tiny_library):
    lib = load_library(tiny_library)
    rows = lib.epochs.to_pylist()
    by = {(e["run_id"], e["epoch"]): e for e in rows}
    r0, r1 = "tiny-reacher-ppo:healthy:s0:r0", "tiny-reacher-ppo:healthy:s0:r1"
    assert by[(r0, 2)]["val_loss"] == by[(r1, 2)]["val_loss"]  # before the first decision: trained once
    assert by[(r0, 4)]["ep_return"] != by[(r1, 4)]["ep_return"]  # after it: other environment and action noise


def test_a_safety_breach_stops_the_run_as_diverged():
    runs, epochs = record_tree(TreeSpec("tiny_rl_tasks:TinyReacher", "no-budget", 0, depth=1))
    assert runs["status"].to_pylist() == ["diverged"] and runs["end_epoch"].to_pylist() == [1]
    last = epochs.to_pylist()[-1]
    assert last["diverged"] and last["safety_cost"] > last["safety_budget"] == 0.0


# --- knobs, menu and validator --------------------------------------------------------------------------------------
RL_HP = Hyperparams(lr=1e-3, ent_coef=0.0, log_std=-0.5, clip_range=0.2)


def _snap(hp, rows=None, epoch=4):
    rows = rows or [EpochView(epoch=e, train_loss=10.0, val_loss=10.0 - 0.5 * e, lr=hp.lr, ent_coef=hp.ent_coef,
                              log_std=hp.log_std, clip_range=hp.clip_range, val_return=-(10.0 - 0.5 * e))
                    for e in range(epoch + 1)]
    return Snapshot.build("r", "reacher-ppo", rows, hp, max_epochs=12, decide_every=2)


def test_rl_runs_are_offered_exploration_actions_and_never_supervised_ones():
    offered = offered_actions(_snap(RL_HP), Bounds())
    assert {"lr_down", "lr_up", "ent_coef_up", "noise_up", "noise_down", "clip_range_up", "clip_range_down", "stop"} <= set(offered)
    assert not {"weight_decay_up", "dropout_up", "ent_coef_down"} & set(offered)  # ent_coef is 0: nothing to lower
    act, v = validate(Proposal(action="weight_decay_up"), _snap(RL_HP), Bounds())
    assert act.action == "continue" and v == ["no_effect"]
    sl = Hyperparams(lr=0.1)
    assert not {"noise_up", "ent_coef_up", "clip_range_up"} & set(changing_actions(sl, 1))


def test_the_validator_bounds_the_exploration_knobs():
    act, v = validate(Proposal(action="ent_coef_up"), _snap(RL_HP), Bounds())
    assert act.hparams.ent_coef == pytest.approx(1e-3) and not v
    act, v = validate(Proposal(action="set_log_std", value=2.0), _snap(RL_HP), Bounds())
    assert act.hparams.log_std == pytest.approx(0.0) and "change_too_large" in v  # one step: +0.5 at most
    act, v = validate(Proposal(action="set_clip_range", value=0.9), _snap(RL_HP.with_(clip_range=0.7)), Bounds())
    assert act.hparams.clip_range == pytest.approx(0.8) and "out_of_bounds" in v
    act, v = validate(Proposal(action="set_ent_coef", value=float("nan")), _snap(RL_HP), Bounds())
    assert act.action == "continue" and v == ["non_finite_value"]


def test_rl_signals_flag_collapse_and_unsafe_exploration_and_rules_answer_them():
    from tmsim.policies.baselines import RulesPolicy

    flat = [EpochView(epoch=e, train_loss=1000.0, val_loss=1000.0, lr=1e-3, ent_coef=0.0, log_std=-2.3, clip_range=0.2,
                      safety_cost=0.01, safety_budget=0.7) for e in range(5)]
    s = _snap(RL_HP.with_(log_std=-2.3), flat)
    assert s.signals.collapse and not s.signals.unsafe and not s.signals.overfitting
    assert RulesPolicy().decide(s).action == "noise_up"
    hot = [r._replace(log_std=0.3, safety_cost=0.66, val_loss=1000.0 - e) for e, r in enumerate(flat)]
    s = _snap(RL_HP.with_(log_std=0.3), hot)
    assert s.signals.unsafe and s.signals.cost_ratio == pytest.approx(0.66 / 0.7)
    assert RulesPolicy().decide(s).action == "noise_down"
    text = Snapshot.build("r", "reacher-ppo", hot, s.hparams, 12, 2, offered=offered_actions(s, Bounds())).to_text()
    assert "94% of its budget" in text
    assert "reinforcement learning" in text and "unsafe exploration" in text and "safety_cost/budget" in text
    assert "noise_down" in text and "weight_decay" not in text


def test_supervised_snapshots_hash_as_before_the_rl_fields():
    import hashlib

    rows = [EpochView(epoch=e, train_loss=1 / (e + 1), val_loss=0.5, lr=0.1) for e in range(3)]
    s = Snapshot.build("d", "digits-mlp", rows, Hyperparams(lr=0.1), max_epochs=20, decide_every=5)
    # the hash of a supervised snapshot is the one computed before RL fields existed (recorded decisions stay valid)
    old_fields = ("epoch", "train_loss", "val_loss", "train_acc", "val_acc", "grad_norm", "update_ratio", "lr",
                  "weight_decay", "dropout", "aux_loss_weight")
    parts = ("d", "digits-mlp", 2, 20, 5, (0.1, 0.0, 0.0, None), [tuple(getattr(h, f) for f in old_fields) for h in rows],
             [], None, 1, [])
    assert s.hash == hashlib.sha256(repr(parts).encode()).hexdigest()[:16]
    rl = Snapshot.build("r", "reacher-ppo", [r._replace(log_std=-0.5, ent_coef=0.0) for r in rows], RL_HP, 20, 5)
    assert rl.hash != Snapshot.build("r", "reacher-ppo", [r._replace(log_std=-0.4, ent_coef=0.0) for r in rows],
                                     RL_HP, 20, 5).hash


# --- the live hook in SB3 ------------------------------------------------------------------------------------------
class AlwaysNarrow:
    policy_id, version = "always-narrow", "1"

    def decide(self, snap):
        return Proposal(action="noise_down", reason="test")


def test_the_sb3_callback_steers_a_running_ppo_and_records_it(tmp_path):
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv

    from tmsim.live import LiveManager
    from tmsim.live.sb3 import TMSimSB3Callback
    from tmsim.tasks.rl import make_env

    env = DummyVecEnv([lambda: make_env("Pendulum-v1")])
    agent = PPO("MlpPolicy", env, n_steps=200, batch_size=100, n_epochs=2, seed=0, device="cpu",
                policy_kwargs={"log_std_init": 0.0})
    mgr = LiveManager(AlwaysNarrow(), allow_unpromoted=True, max_epochs=4, decide_every=1, mode="sync",
                      task="pendulum-ppo", scenario="live-test", record_dir=tmp_path)
    cb = TMSimSB3Callback(mgr, make_env("Pendulum-v1"), eval_episodes=1, safety_budget=0.75)
    agent.learn(4 * 200, callback=cb)
    applied = [json.loads(r["action_json"]) for r in mgr.decision_rows]
    assert [r["action"] for r in mgr.decision_rows] == ["noise_down"] * 3  # at evaluations 1, 2, 3 (not the last)
    for a in applied:
        before, after = a["applied"]["log_std"]["before"], a["applied"]["log_std"]["after"]
        assert after == pytest.approx(before - 0.5, abs=1e-6)
    lib = load_library(tmp_path, strict=True)
    rows = lib.epochs.to_pylist()
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3, 4]
    assert all(r["safety_cost"] is not None for r in rows[1:])
    assert all(r["entropy"] is not None for r in rows[2:])  # PPO's first update comes after the first evaluation
    assert rows[-1]["log_std"] < rows[0]["log_std"] - 1.0
    assert lib.runs["status"].to_pylist() == ["complete"] and lib.decisions.num_rows == 3


def test_the_sb3_callback_stops_a_run_over_its_safety_budget(tmp_path):
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv

    from tmsim.live import LiveManager
    from tmsim.live.sb3 import TMSimSB3Callback
    from tmsim.tasks.rl import make_env

    env = DummyVecEnv([lambda: make_env("Pendulum-v1")])
    agent = PPO("MlpPolicy", env, n_steps=200, batch_size=100, n_epochs=1, seed=0, device="cpu")
    mgr = LiveManager(AlwaysNarrow(), allow_unpromoted=True, max_epochs=5, decide_every=2, mode="sync",
                      task="pendulum-ppo", scenario="live-test", record_dir=tmp_path)
    agent.learn(5 * 200, callback=TMSimSB3Callback(mgr, make_env("Pendulum-v1"), eval_episodes=1, safety_budget=0.0))
    assert agent.num_timesteps < 5 * 200
    lib = load_library(tmp_path, strict=True)
    assert lib.runs["status"].to_pylist() == ["diverged"]


# --- the leaderboard on RL roots -------------------------------------------------------------------------------------
def test_the_leaderboard_ranks_policies_on_rl_roots_with_the_gate(tiny_library, tmp_path):
    from tmsim.cli import main

    suite = tmp_path / "rl.toml"
    suite.write_text('name = "tiny-rl"\ntasks = ["tiny-reacher-ppo", "tiny-pendulum-ppo"]\n'
                     f'traces = "{tiny_library}"\n')
    out = tmp_path / "lb.json"
    rc = main(["leaderboard", "--suite", str(suite), "--no-report", "--quiet", "--json", str(out), "--policies",
               str(REPO / "policies/constant.toml"), str(REPO / "policies/rules.toml"), str(REPO / "policies/oracle.toml"),
               str(REPO / "policies/random.toml")])
    assert rc == 0
    rows = {r["policy"]: r for r in json.loads(out.read_text())}
    assert set(rows) >= {"constant", "rules", "oracle", "random"}
    assert rows["constant"]["val_loss_change_pct"] == 0 and rows["oracle"]["val_loss_change_pct"] <= 0
    assert rows["oracle"]["roots"] == 5  # 4 tiny Reacher roots and a Pendulum root
    # the same gate as every suite: a promotion on the RL suite is judged, and recorded only when it passes
    rc = main(["promote", "random", "--suite", str(suite), "--promotions", str(tmp_path / "promotions"), "--quiet"])
    assert rc == (0 if list((tmp_path / "promotions").glob("*.json")) else 1)


# --- the bundled RL library --------------------------------------------------------------------------------------------
def test_the_rl_library_is_complete_and_its_best_branches_beat_doing_nothing_where_recorded():
    from tmsim.traces.query import connect
    from tmsim.traces.summary import SUMMARY_SQL

    lib = load_library(RL_LIB, strict=True)
    assert not lib.problems
    assert set(lib.runs["task"].to_pylist()) == {"reacher-ppo", "pendulum-ppo"}
    assert set(lib.runs["scenario"].to_pylist()) == {"healthy", "collapse", "unsafe", "conservative"}
    assert set(lib.runs["replicate"].to_pylist()) == {0, 1}
    with connect(RL_LIB) as db:
        rows = {(r["task"], r["scenario"]): r for r in db.sql(SUMMARY_SQL).to_pylist()}
    assert len(rows) == 8 and all(r["seeds"] == 3 and r["replicates"] == 2 for r in rows.values())
    # what the recorded library holds (docs/rl.md quotes every ratio): on both tasks a recorded branch rescues the
    # unsafe runs (most of which the safety monitor stops), and widening the noise helps Pendulum's collapsed runs;
    # Reacher's collapse is mild and no recorded branch beats doing nothing there on the median seed
    assert rows[("reacher-ppo", "unsafe")]["best_over_do_nothing"] < 1.0
    assert rows[("pendulum-ppo", "unsafe")]["best_over_do_nothing"] < 1.0
    assert rows[("pendulum-ppo", "collapse")]["best_over_do_nothing"] < 1.0
    assert rows[("reacher-ppo", "unsafe")]["diverged_share"] > 0.3 and rows[("pendulum-ppo", "unsafe")]["diverged_share"] > 0.3


def test_a_plain_loop_exposes_its_exploration_knobs_through_setters_and_getters(tmp_path):
    """A hand-written policy-gradient loop: the manager turns the entropy bonus it holds in a variable and the
    log-std parameter of its Gaussian policy, both through the loop's own functions."""
    from tmsim.live import LiveManager

    class Wants:
        policy_id, version = "wants", "1"
        plan = ["ent_coef_up", "noise_up", "weight_decay_up"]

        def decide(self, snap):
            return Proposal(action=self.plan[snap.epoch // 2 - 1])

    torch.manual_seed(0)
    log_std = torch.nn.Parameter(torch.full((2,), -1.0))
    opt = torch.optim.Adam([log_std], lr=1e-3)
    knobs = {"ent_coef": 0.0}

    def set_log_std(v):
        with torch.no_grad():
            log_std.add_(v - float(log_std.mean()))

    mgr = LiveManager(Wants(), allow_unpromoted=True, max_epochs=8, decide_every=2, mode="sync", task="my-rl-loop",
                      hparams=Hyperparams(lr=1e-3, ent_coef=0.0, log_std=-1.0, clip_range=0.2), optimizer=opt,
                      setters={"ent_coef": lambda v: knobs.__setitem__("ent_coef", v), "log_std": set_log_std},
                      getters={"log_std": lambda: float(log_std.detach().mean())}, record_dir=tmp_path)
    for e in range(8):
        with torch.no_grad():
            log_std.sub_(0.05)  # learning narrows the noise between evaluations
        mgr.on_epoch_end({"val_loss": 100.0 - e, "train_loss": 120.0 - e, "safety_cost": 0.1, "safety_budget": 0.7})
    acts = [r["action"] for r in mgr.decision_rows]
    assert acts[:2] == ["ent_coef_up", "noise_up"] and knobs["ent_coef"] == pytest.approx(1e-3)
    noise = json.loads(mgr.decision_rows[1]["action_json"])["applied"]["log_std"]
    assert noise["after"] == pytest.approx(noise["before"] + 0.5, abs=1e-6)
    assert mgr.decision_rows[2]["action"] == "continue" and "no_effect" in mgr.decision_rows[2]["violations"]
    mgr.close()
    rows = load_library(tmp_path, strict=True).epochs.to_pylist()
    assert rows[-1]["ent_coef"] == pytest.approx(1e-3) and rows[-1]["safety_cost"] == 0.1


def test_rl_actions_replay_their_recorded_branches_though_the_log_std_is_learned(tiny_library):
    """The row after an RL fork holds the log-std after an epoch of learning; the simulator still finds the recorded
    branch of an unclamped menu action (and leaves the tree for a set_log_std, which no branch recorded)."""
    from tmsim.policies.baselines import SequencePolicy
    from tmsim.simulate.simulator import Simulator
    from tmsim.traces.index import TreeIndex

    index = TreeIndex(load_library(tiny_library))
    roots = [r for r in index.roots if index.meta[r]["task"] == "tiny-reacher-ppo"]
    sim = Simulator(index, None)
    for action in ("noise_up", "noise_down", "lr_up", "ent_coef_up"):
        for o in sim.rollout(SequencePolicy([action]), roots):
            rid = index.lookup(o.root, (action,))
            assert rid is not None and o.surrogate_segments == 0, (action, o.root)
            assert o.final_val_loss == index.final_val_loss(rid)

    class SetNoise:
        policy_id, version = "set-noise", "1"

        def decide(self, snap):
            return Proposal(action="set_log_std", value=snap.hparams.log_std + 0.5)

    with pytest.raises(Exception):  # off the tree with no surrogate to continue on
        sim.rollout(SetNoise(), roots[:1])
