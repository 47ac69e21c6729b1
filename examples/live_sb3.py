"""A stable-baselines3 PPO run steered by a tmsim policy through the live hook's SB3 callback, recorded as a trace.

Run from the repository root:  python examples/live_sb3.py [--spec policies/rules.toml] [--record traces-live]
                                                           [--promotions eval/promotions-rl]

The run is declared as what it is: the ``pendulum-ppo`` task's ``unsafe`` family (PPO on Pendulum-v1 with wide
action noise kept wide by a large entropy bonus), 16 evaluations of 4,000 environment steps, a decision every 4.
The manager reads the LR, entropy coefficient, clip range and action-noise log-std from the running agent and
turns them there; the safety monitor stops the run if the training episodes' control effort passes 0.75.

A policy runs only where a promotion record covers it: ``--promotions`` names the directory of records (the RL
suite's promotions are kept apart from the supervised ones; see docs/rl.md), or ``--unpromoted`` runs a policy
without one, which the trace records.
"""
from __future__ import annotations

import argparse

from tmsim.live import LiveManager
from tmsim.live.sb3 import TMSimSB3Callback
from tmsim.tasks import get_task
from tmsim.tasks.rl import make_env


def main(spec: str = "policies/rules.toml", record: str | None = None, promotions: str | None = None,
         unpromoted: bool = False, seed: int = 0, mode: str = "sync", evaluations: int = 16) -> LiveManager:
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv

    task = get_task("pendulum-ppo")
    sc = task.scenario("unsafe", seed)
    s = task.settings(sc)
    env = DummyVecEnv([lambda: make_env(task.env_id) for _ in range(s["n_envs"])])
    hp = sc.hparams
    agent = PPO("MlpPolicy", env, learning_rate=hp.lr, n_steps=s["n_steps"], batch_size=s["batch_size"],
                n_epochs=s["n_epochs"], gamma=s["gamma"], gae_lambda=s["gae_lambda"], ent_coef=hp.ent_coef,
                clip_range=hp.clip_range, seed=seed, device="cpu",
                policy_kwargs={"net_arch": [s["width"], s["width"]], "log_std_init": hp.log_std})
    if unpromoted:
        from tmsim.policies import load_spec, make_policy

        mgr = LiveManager(make_policy(load_spec(spec)), allow_unpromoted=True, max_epochs=evaluations,
                          decide_every=sc.decide_every, mode=mode, task=task.name, scenario=sc.name, seed=seed,
                          record_dir=record)
    else:
        mgr = LiveManager.from_spec(spec, promotions=promotions, max_epochs=evaluations, decide_every=sc.decide_every,
                                    mode=mode, task=task.name, scenario=sc.name, seed=seed, record_dir=record)
    callback = TMSimSB3Callback(mgr, make_env(task.env_id), rollouts_per_eval=s["rollouts_per_epoch"],
                                eval_episodes=s["eval_episodes"], safety_budget=s["safety_budget"])
    agent.learn(evaluations * task.steps_per_epoch(sc), callback=callback)
    for row in mgr.decision_rows:
        print(f"evaluation {row['epoch']:>2}: {row['action']:<12} {row['violations'] or ''}")
    last = mgr.history[-1]
    print(f"stopped: {mgr.should_stop}; last evaluation return {last['val_return']:.1f}, safety cost "
          f"{last['safety_cost'] if last['safety_cost'] is not None else float('nan'):.3f} (budget {s['safety_budget']})")
    return mgr


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default="policies/rules.toml")
    ap.add_argument("--record", default=None, help="write the live run's trace here")
    ap.add_argument("--promotions", default=None, help="promotion records to check (default: $TMSIM_PROMOTIONS, "
                    "else eval/promotions)")
    ap.add_argument("--unpromoted", action="store_true", help="run the policy without a promotion record (recorded)")
    ap.add_argument("--mode", default="sync", choices=("sync", "async"))
    ap.add_argument("--evaluations", type=int, default=16)
    a = ap.parse_args()
    main(a.spec, a.record, a.promotions, a.unpromoted, mode=a.mode, evaluations=a.evaluations)
