"""Reinforcement-learning tasks: stable-baselines3's PPO on Gymnasium environments, behind the ``Task`` interface.

An *epoch* of an RL task is a fixed number of PPO rollouts (``rollouts_per_epoch`` x ``n_steps`` x ``n_envs``
environment steps) followed by an evaluation: the deterministic policy on fixed validation episodes (the score) and on
other, fixed test episodes (recorded, never shown to a policy). That evaluation boundary is the decision point.

**The loss of an RL run** is the shortfall of the evaluation return from the best return the task can give,
``val_loss = return_max - val_return``. Both tasks here have rewards that are never positive (costs), so
``return_max = 0`` and the loss is the negated return: lower is better, as for every other task, and a leaderboard
change of -20% closes a fifth of the gap to a perfect return. The returns themselves are recorded beside it
(``val_return``, ``test_return``, ``ep_return``), higher is better.

**Forking exactly.** Each epoch starts from environments reset with seeds drawn from the run's noise seed and the
epoch, so the state at an epoch boundary is the policy (weights and the Gaussian action noise's ``log_std``), its Adam
state, torch's and numpy's global generators (action sampling, minibatch order) and a few counters: ``save`` and
``restore`` round-trip them through ``torch.save``/``torch.load(weights_only=True)`` and a restored run continues
bit-for-bit like the original. Episodes are fixed-length (``TimeLimit``), and an epoch holds whole episodes, so no
episode is cut at the boundary.

**Safety.** Every training episode's *safety cost* is its control effort: the mean over its steps of the squared
action, the action space scaled to [-1, 1] (0: at rest, 1: every actuator saturated at every step). An epoch whose
training episodes average more than the task's ``safety_budget`` is a safety breach: the run is stopped there, as a
safety monitor on a robot would, and scored as diverged (``tmsim.core.outcome``). The budget lies between what a
healthy run spends and what saturating exploration spends (measured: ``docs/rl.md``).

Exploration knobs: ``ent_coef`` (PPO's entropy bonus), ``log_std`` (the mean log standard deviation of the action
noise, a learned parameter: the knob value is read from the policy after every epoch and an action shifts it) and
``clip_range``; the LR as for every task. The live hook turns the same knobs on a running SB3 model
(``tmsim.live.sb3``) through ``read_agent``/``apply_agent``.

Requires the ``rl`` extra (``stable-baselines3``, ``gymnasium[mujoco]``).
"""
from __future__ import annotations

import functools
import hashlib
import io
import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from ..core.hparams import Hyperparams
from .base import Scenario, TorchTask, TrainState

#: Validation and test episodes are reset with these seeds plus their index: the same on every run and every epoch.
VAL_SEED, TEST_SEED = 10_000, 20_000


def _require():
    try:
        import gymnasium  # noqa: F401
        import stable_baselines3  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(f"RL tasks need the 'rl' extra: pip install 'tmsim[rl]' ({exc})") from None


def make_env(env_id: str, seed: int | None = None):
    """One environment as the tasks use it: actions scaled to [-1, 1], the safety cost of every episode in its final
    ``info["cost"]`` (mean squared action), episode statistics from SB3's ``Monitor`` (with the cost)."""
    import gymnasium as gym
    from stable_baselines3.common.monitor import Monitor

    env = gym.make(env_id)
    if not np.allclose(env.action_space.low, -1) or not np.allclose(env.action_space.high, 1):
        shape = env.action_space.shape
        env = gym.wrappers.RescaleAction(env, np.full(shape, -1, np.float32), np.full(shape, 1, np.float32))
    env = Monitor(ControlCost(env), info_keywords=("cost",))
    if seed is not None:
        env.reset(seed=seed)
    return env


@functools.cache
def _control_cost_class():
    import gymnasium as gym

    class ControlCost(gym.Wrapper):
        """Adds ``info["cost"]`` at the end of each episode: the mean over its steps of the squared action (the
        action clipped to the [-1, 1] box, as the environment applies it), averaged over the action's dimensions."""

        def reset(self, **kw):
            self._sum, self._n = 0.0, 0
            return self.env.reset(**kw)

        def step(self, action):
            a = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
            self._sum += float(np.mean(a * a))
            self._n += 1
            obs, r, term, trunc, info = self.env.step(action)
            if term or trunc:
                info = dict(info, cost=self._sum / max(self._n, 1))
            return obs, r, term, trunc, info

    return ControlCost


def ControlCost(env):  # noqa: N802 - the wrapper class is made on first use: importing this module needs no gymnasium
    """``env`` wrapped to report each episode's safety cost (see ``make_env``)."""
    return _control_cost_class()(env)


@dataclass
class RLState(TrainState):
    """A PPO run: ``model`` is the SB3 policy, ``optimizer`` its Adam, ``agent`` the PPO object that owns them."""

    agent: Any = None
    noise_seed: int = 0
    last_train: dict | None = None  # the telemetry of the epoch just trained (read by ``evaluate``)


def play(agent, env, first_seed: int, n: int, deterministic: bool = True) -> tuple[list[float], list[float]]:
    """Play ``n`` episodes of ``agent`` on ``env``, reset with seeds ``first_seed``, ``first_seed + 1``, ...: their
    returns and safety costs (``info["cost"]`` at the end, 0 where the environment reports none). The recorder's
    evaluations and the SB3 callback's are this one function."""
    rets, costs = [], []
    for i in range(n):
        obs, _ = env.reset(seed=first_seed + i)
        total, done, info = 0.0, False, {}
        while not done:
            action, _ = agent.predict(obs, deterministic=deterministic)
            obs, r, term, trunc, info = env.step(action)
            total += float(r)
            done = term or trunc
        rets.append(total)
        costs.append(float(info.get("cost", 0.0)))
    return rets, costs


def ppo_telemetry(agent, episodes: list[dict], safety_budget: float | None) -> dict[str, float | None]:
    """An epoch's RL columns from the training episodes it finished (SB3 ``Monitor`` records: ``r``, ``l`` and
    ``cost``, a missing or NaN cost left out) and PPO's values at the agent's last update (its logger). The recorder's
    epochs and the SB3 callback's evaluations are this one function."""
    logged = agent.logger.name_to_value
    rets = [float(e["r"]) for e in episodes]
    costs = [c for c in (num(e.get("cost")) for e in episodes) if c is not None]
    return {
        "ep_return": float(np.mean(rets)) if rets else None,
        "ep_return_std": float(np.std(rets)) if rets else None,
        "ep_len": float(np.mean([e["l"] for e in episodes])) if episodes else None,
        "entropy": -float(logged["train/entropy_loss"]) if "train/entropy_loss" in logged else None,
        "approx_kl": num(logged.get("train/approx_kl")),
        "clip_fraction": num(logged.get("train/clip_fraction")),
        "explained_variance": num(logged.get("train/explained_variance")),
        "safety_cost": float(np.mean(costs)) if costs else None,
        "safety_budget": safety_budget,
    }


# --- reading and turning the knobs of a running SB3 on-policy agent (shared with the live hook) --------------------
def read_agent(agent) -> dict[str, float]:
    """The knobs an SB3 PPO/A2C agent holds now: ``lr``, ``ent_coef``, ``clip_range`` (PPO) and ``log_std`` (a
    Gaussian policy's mean log-std)."""
    progress = getattr(agent, "_current_progress_remaining", 1.0)
    out = {"lr": float(agent.lr_schedule(progress)), "ent_coef": float(agent.ent_coef)}
    if getattr(agent, "clip_range", None) is not None:
        out["clip_range"] = float(agent.clip_range(progress))
    log_std = getattr(agent.policy, "log_std", None)
    if isinstance(log_std, torch.Tensor):
        out["log_std"] = float(log_std.detach().mean())
    return out


def agent_targets(agent) -> set[str]:
    """The knobs of ``read_agent`` that this agent has."""
    return set(read_agent(agent))


def apply_agent(agent, old: Hyperparams, new: Hyperparams) -> None:
    """Turn a running SB3 agent from ``old`` to ``new``: the LR schedule becomes constant at ``new.lr`` (and the
    optimizer's groups take it now), ``ent_coef`` and the clip range are set, the action noise's log-std is shifted
    so its mean is ``new.log_std`` (each dimension keeps its offset). A knob that does not change is left alone."""
    from stable_baselines3.common.utils import ConstantSchedule

    if new.lr != old.lr:
        agent.lr_schedule = ConstantSchedule(float(new.lr))
        agent.learning_rate = float(new.lr)
        for g in agent.policy.optimizer.param_groups:
            g["lr"] = float(new.lr)
    if new.ent_coef is not None and new.ent_coef != old.ent_coef:
        agent.ent_coef = float(new.ent_coef)
    if new.clip_range is not None and new.clip_range != old.clip_range and getattr(agent, "clip_range", None) is not None:
        agent.clip_range = ConstantSchedule(float(new.clip_range))
    if new.log_std is not None and new.log_std != old.log_std:
        log_std = agent.policy.log_std
        with torch.no_grad():
            log_std.add_(float(new.log_std) - float(log_std.mean()))


class PPOTask(TorchTask):
    """PPO (stable-baselines3) on one Gymnasium environment; subclasses set the environment and the scenarios.

    Scenario settings: ``n_envs``, ``n_steps`` (per environment per rollout), ``rollouts_per_epoch``, ``batch_size``,
    ``n_epochs`` (PPO's passes per rollout), ``gamma``, ``gae_lambda``, ``width`` (two hidden layers),
    ``eval_episodes`` and ``safety_budget``."""

    env_id: str = ""
    episode_steps: int = 0
    losses = ("return_shortfall",)
    return_max: float = 0.0
    safety_budget: float = 0.5
    DEFAULTS: dict[str, Any] = {"n_envs": 4, "n_steps": 200, "rollouts_per_epoch": 5, "batch_size": 200, "n_epochs": 5,
                                "gamma": 0.98, "gae_lambda": 0.95, "width": 64, "eval_episodes": 5}

    @property
    def model_descriptor(self) -> str:  # type: ignore[override]
        return f"SB3 PPO MlpPolicy on {self.env_id}"

    @property
    def dataset_descriptor(self) -> str:  # type: ignore[override]
        return f"gymnasium:{self.env_id}"

    def settings(self, sc: Scenario) -> dict[str, Any]:
        return {**self.DEFAULTS, "safety_budget": self.safety_budget, **sc.settings}

    def steps_per_epoch(self, sc: Scenario) -> int:
        s = self.settings(sc)
        return s["rollouts_per_epoch"] * s["n_steps"] * s["n_envs"]

    def record_menu(self) -> tuple[str, ...]:
        from ..core.menu import record_menu

        return record_menu(rl=True)

    # --- building, training, evaluating -------------------------------------------------------------------------
    def build(self, scenario: str | Scenario, seed: int, hparams: Hyperparams | None = None) -> RLState:
        _require()
        from stable_baselines3 import PPO
        from stable_baselines3.common.logger import configure
        from stable_baselines3.common.vec_env import DummyVecEnv

        sc = self.scenario(scenario, seed) if isinstance(scenario, str) else scenario
        hp = hparams or sc.hparams
        s = self.settings(sc)
        env = DummyVecEnv([lambda: make_env(self.env_id) for _ in range(s["n_envs"])])
        agent = PPO("MlpPolicy", env, learning_rate=hp.lr, n_steps=s["n_steps"], batch_size=s["batch_size"],
                    n_epochs=s["n_epochs"], gamma=s["gamma"], gae_lambda=s["gae_lambda"], ent_coef=hp.ent_coef or 0.0,
                    clip_range=hp.clip_range or 0.2, seed=seed, device="cpu", verbose=0,
                    policy_kwargs={"net_arch": [s["width"], s["width"]], "log_std_init": hp.log_std or 0.0})
        agent.set_logger(configure(None, []))  # telemetry is read from the logger's values, nothing is written
        state = RLState(sc, seed, hp, agent.policy, agent.policy.optimizer, torch.Generator().manual_seed(seed),
                        agent=agent, noise_seed=seed)
        self.apply(state, hp)
        return state

    def apply(self, state: TrainState, hp: Hyperparams) -> None:
        apply_agent(state.agent, Hyperparams(**{**state.hparams.to_dict(), **read_agent(state.agent)}), hp)
        state.hparams = hp

    def reseed(self, state: TrainState, noise_seed: int) -> None:
        torch.manual_seed(noise_seed)
        np.random.seed(noise_seed % 2**32)
        state.noise_seed = noise_seed

    def _epoch_seed(self, state: RLState) -> int:
        h = hashlib.sha256(f"{self.name}/{state.noise_seed}/epoch-{state.epoch}".encode()).digest()
        return int.from_bytes(h[:4], "little")

    def train_epoch(self, state: TrainState, on_step: Callable[[], None] | None = None) -> dict[str, Any]:
        agent = state.agent
        n = self.steps_per_epoch(state.scenario)
        agent.env.seed(self._epoch_seed(state))
        agent._last_obs = None  # start the epoch from freshly reset environments (seeded above)
        agent.ep_info_buffer, agent.ep_success_buffer = deque(maxlen=10_000), deque(maxlen=10_000)
        w0 = torch.cat([p.detach().reshape(-1) for p in agent.policy.parameters()]).clone()
        t0 = time.perf_counter()
        agent.learn(total_timesteps=n, reset_num_timesteps=False, log_interval=None, progress_bar=False)
        elapsed = time.perf_counter() - t0
        w1 = torch.cat([p.detach().reshape(-1) for p in agent.policy.parameters()])
        state.epoch += 1
        state.samples_seen = int(agent.num_timesteps)
        state.steps = int(agent.num_timesteps)  # RL runs count environment steps
        state.hparams = state.hparams.with_(**read_agent(agent))  # the log-std is learned: record what it is now
        out = {
            "grad_norm": None,
            "update_ratio": float((w1 - w0).norm() / w0.norm()),
            "samples_seen": state.samples_seen, "step": state.steps,
            "step_time_s": elapsed / max(n, 1),
            **ppo_telemetry(agent, list(agent.ep_info_buffer), self.settings(state.scenario)["safety_budget"]),
        }
        state.last_train = out
        if on_step is not None:
            on_step()
        return out

    def episodes(self, state: RLState, first_seed: int, n: int, deterministic: bool = True) -> tuple[list[float], list[float]]:
        """Returns and safety costs of ``n`` episodes reset with seeds ``first_seed``, ``first_seed + 1``, ..."""
        env = self.__dict__.get("_eval_env")
        if env is None:
            env = self.__dict__["_eval_env"] = make_env(self.env_id)
        return play(state.agent, env, first_seed, n, deterministic)

    def evaluate(self, state: TrainState) -> dict[str, float | None]:
        """Deterministic returns on the validation and test episodes; the losses are their shortfalls from
        ``return_max``. ``train_loss`` is the shortfall of the epoch's training episodes (exploring); before training,
        of the validation episodes played with exploration noise (with torch's generator put back afterwards, so
        evaluating changes nothing of the run)."""
        k = self.settings(state.scenario)["eval_episodes"]
        val, _ = self.episodes(state, VAL_SEED, k)
        test, _ = self.episodes(state, TEST_SEED, k)
        if state.last_train and state.last_train.get("ep_return") is not None:
            train_ret = state.last_train["ep_return"]
        else:
            rng = torch.get_rng_state()
            train_ret = float(np.mean(self.episodes(state, VAL_SEED, k, deterministic=False)[0]))
            torch.set_rng_state(rng)
        v, t = float(np.mean(val)), float(np.mean(test))
        return {"train_loss": max(self.return_max - train_ret, 0.0), "val_loss": max(self.return_max - v, 0.0),
                "test_loss": max(self.return_max - t, 0.0), "train_acc": None, "val_acc": None, "test_acc": None,
                "val_return": v, "test_return": t}

    def breach(self, train: dict | None) -> bool:
        """Whether an epoch's training telemetry breaks the safety budget (the run stops there, as diverged)."""
        return bool(train) and train.get("safety_cost") is not None and train["safety_cost"] > train["safety_budget"]

    # --- fork support -------------------------------------------------------------------------------------------
    def save(self, state: TrainState) -> bytes:
        agent = state.agent
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        buf = io.BytesIO()
        torch.save({
            "policy": agent.policy.state_dict(), "optimizer": agent.policy.optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "np_rng": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                       "cached": float(cached)},
            "hparams": state.hparams.to_dict(), "seed": state.seed, "noise_seed": int(state.noise_seed),
            "epoch": state.epoch, "samples_seen": state.samples_seen, "steps": state.steps,
            "num_timesteps": int(agent.num_timesteps), "n_updates": int(agent._n_updates),
            "scenario": state.scenario.name,
        }, buf)
        return buf.getvalue()

    def restore(self, blob: bytes) -> RLState:
        d = torch.load(io.BytesIO(blob), weights_only=True)
        sc = self.scenario(d["scenario"], d["seed"])
        hp = Hyperparams(**d["hparams"])
        state = self.build(sc, d["seed"], hp)
        agent = state.agent
        agent.policy.load_state_dict(d["policy"])
        agent.policy.optimizer.load_state_dict(d["optimizer"])
        self.apply(state, hp)
        agent.num_timesteps, agent._n_updates = d["num_timesteps"], d["n_updates"]
        torch.set_rng_state(d["torch_rng"])
        r = d["np_rng"]
        np.random.set_state(("MT19937", r["keys"].numpy().astype(np.uint32), r["pos"], r["has_gauss"], r["cached"]))
        state.noise_seed = d["noise_seed"]
        state.epoch, state.samples_seen, state.steps = d["epoch"], d["samples_seen"], d["steps"]
        return state


def num(v) -> float | None:
    """``v`` as a finite float, else None (SB3's logged values may be missing, NaN or numpy scalars)."""
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _rl(name: str, lr: float, ent: float, log_std: float, clip: float, epochs: int, every: int, desc: str,
        family: dict[str, tuple], settings: dict[str, Any]) -> Scenario:
    """A scenario family of an RL task; ``settings`` (the task's PPO settings and safety budget) are stored whole in
    every run's ``settings_json``."""
    return Scenario(name, Hyperparams(lr=lr, ent_coef=ent, log_std=log_std, clip_range=clip), epochs, every, desc,
                    settings=dict(settings), family=family)


class PendulumPPO(PPOTask):
    """Swing-up of a torque-limited pendulum (``Pendulum-v1``, classic control, 200-step episodes)."""

    name = "pendulum-ppo"
    env_id = "Pendulum-v1"
    safety_budget = 0.75
    DEFAULTS = {**PPOTask.DEFAULTS, "n_steps": 1000, "rollouts_per_epoch": 1, "batch_size": 250, "n_epochs": 10,
                "gamma": 0.9}
    _S = {**DEFAULTS, "safety_budget": safety_budget}
    SCENARIOS = {
        "healthy": _rl("healthy", 1e-3, 0.0, -0.25, 0.2, 16, 4,
                       "sound settings: the pendulum is swung up within about 12 epochs; best left alone",
                       {"lr": ("log", 7e-4, 1.5e-3), "log_std": ("uniform", -0.5, 0.0)}, _S),
        "collapse": _rl("collapse", 1e-3, 0.0, -2.3, 0.2, 16, 4,
                        "exploration collapse: action noise started far too narrow, the return stalls at the "
                        "random policy's; fixed by widening the noise",
                        {"log_std": ("uniform", -2.6, -2.1)}, _S),
        "unsafe": _rl("unsafe", 1e-3, 0.03, 0.65, 0.2, 16, 4,
                      "unsafe exploration: wide action noise kept wide by a large entropy bonus; the control effort "
                      "climbs past the safety budget; fixed by narrowing the noise or cutting the bonus",
                      {"log_std": ("uniform", 0.6, 0.7), "ent_coef": ("log", 0.02, 0.05)}, _S),
        "conservative": _rl("conservative", 7e-5, 0.0, -0.25, 0.08, 16, 4,
                            "too conservative: a tiny LR and clip range, the policy barely moves; fixed by raising "
                            "the LR", {"lr": ("log", 5e-5, 1e-4), "clip_range": ("uniform", 0.05, 0.1),
                                       "log_std": ("uniform", -0.5, 0.0)}, _S),
    }


class ReacherPPO(PPOTask):
    """A two-joint arm reaching for a target (``Reacher-v5``, MuJoCo, 50-step episodes)."""

    name = "reacher-ppo"
    env_id = "Reacher-v5"
    safety_budget = 0.7
    DEFAULTS = {**PPOTask.DEFAULTS, "n_steps": 200, "rollouts_per_epoch": 4, "batch_size": 200, "n_epochs": 10,
                "eval_episodes": 10}
    _S = {**DEFAULTS, "safety_budget": safety_budget}
    SCENARIOS = {
        "healthy": _rl("healthy", 1e-3, 0.0, -0.25, 0.2, 15, 3,
                       "sound settings: the return climbs steadily while PPO narrows its own noise; best left alone",
                       {"lr": ("log", 5e-4, 1.5e-3), "log_std": ("uniform", -0.5, 0.0)}, _S),
        "collapse": _rl("collapse", 1e-3, 0.0, -2.3, 0.2, 15, 3,
                        "exploration collapse: action noise started far too narrow, the return stalls early; fixed "
                        "by widening the noise", {"log_std": ("uniform", -2.6, -2.1)}, _S),
        "unsafe": _rl("unsafe", 1.5e-3, 0.15, 0.2, 0.2, 15, 3,
                      "unsafe exploration: a large entropy bonus widens the noise every update; control effort "
                      "climbs past the safety budget and the return collapses; fixed by cutting the bonus or "
                      "narrowing the noise", {"ent_coef": ("log", 0.12, 0.2), "log_std": ("uniform", 0.1, 0.3)}, _S),
        "conservative": _rl("conservative", 4e-5, 0.0, -0.25, 0.2, 15, 3,
                            "too conservative: a tiny LR, the policy barely moves; fixed by raising the LR",
                            {"lr": ("log", 3e-5, 6e-5), "log_std": ("uniform", -0.5, 0.0)}, _S),
    }
