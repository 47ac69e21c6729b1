"""The live hook inside stable-baselines3: a promoted policy steering a running PPO (or A2C) agent's exploration.

::

    from tmsim.live import LiveManager
    from tmsim.live.sb3 import TMSimSB3Callback
    from tmsim.tasks.rl import make_env

    agent = PPO("MlpPolicy", env, ...)
    mgr = LiveManager.from_spec("policies/rules.toml", max_epochs=16, decide_every=4, task="pendulum-ppo",
                                scenario="unsafe", record_dir="traces-live")
    agent.learn(64_000, callback=TMSimSB3Callback(mgr, make_env("Pendulum-v1"), rollouts_per_eval=1,
                                                  safety_budget=0.75))

**Evaluations are the epochs.** Every ``rollouts_per_eval`` rollouts the callback plays ``eval_episodes`` episodes
of the deterministic policy on ``eval_env`` (reset with fixed seeds, the recorder's validation seeds, so every
evaluation is on the same episodes) and hands the manager one row, as the recorder writes it for the bundled RL tasks:
``val_loss = return_max - eval return``, ``train_loss`` the same of the training episodes finished since the last
evaluation, their return (``ep_return``, ``ep_return_std``, ``ep_len``) and safety cost, and PPO's telemetry at the
last update (``entropy``, ``approx_kl``, ``clip_fraction``, ``explained_variance``). An evaluation runs before
training starts (epoch 0). The manager decides at every ``decide_every``-th evaluation; the agent is attached, so the
LR, ``ent_coef``, ``clip_range`` and the action noise's ``log_std`` are read from it and turned on it.

**Safety.** An episode's safety cost is its control effort (the mean squared action, actions scaled to [-1, 1]:
``tmsim.tasks.rl.make_env`` wraps an environment so), read from ``info["cost"]`` at the episode's end; with
``safety_budget`` set, training episodes over it on average at an evaluation stop the run (``should_stop``;
``learn`` returns), as the recorder's safety monitor does.

Training continues while a decision is computed (async mode); an arrived decision is applied at the next
environment step, before the next update. ``learn`` returning closes the manager, which writes the trace.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .manager import LiveManager

try:
    from stable_baselines3.common.callbacks import BaseCallback
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(f"tmsim.live.sb3 needs the 'rl' extra: pip install 'tmsim[rl]' ({exc})") from None

from ..tasks.rl import VAL_SEED, play, ppo_telemetry


class TMSimSB3Callback(BaseCallback):
    """Calls ``manager`` at evaluations of an SB3 on-policy agent (see the module docs)."""

    def __init__(self, manager: LiveManager, eval_env, *, rollouts_per_eval: int = 1, eval_episodes: int = 5,
                 safety_budget: float | None = None, return_max: float = 0.0, eval_seed: int = VAL_SEED,
                 close_at_end: bool = True):
        super().__init__(verbose=0)
        if int(rollouts_per_eval) < 1 or int(eval_episodes) < 1:
            raise ValueError("rollouts_per_eval and eval_episodes must be at least 1")
        self.manager, self.eval_env = manager, eval_env
        self.rollouts_per_eval, self.eval_episodes = int(rollouts_per_eval), int(eval_episodes)
        self.safety_budget, self.return_max, self.eval_seed = safety_budget, float(return_max), int(eval_seed)
        self.close_at_end = close_at_end
        self._rollouts = 0
        self._episodes: list[dict[str, float]] = []

    # --- SB3's hooks --------------------------------------------------------------------------------------------
    def _on_training_start(self) -> None:
        self.manager.attach(agent=self.model)
        if self.manager.epoch < 0:  # epoch 0: the evaluation before training
            ret = self._evaluate()
            self.manager.on_epoch_end(self._row(ret, train_return=None), epoch=0, step=int(self.model.num_timesteps))

    def _on_step(self) -> bool:
        for info in self.locals.get("infos", ()):
            ep = info.get("episode") if isinstance(info, dict) else None
            if ep is not None:
                self._episodes.append({"r": float(ep["r"]), "l": float(ep["l"]), "cost": info.get("cost", ep.get("cost"))})
        self.manager.on_step_end()
        return not self.manager.should_stop

    def _on_rollout_end(self) -> None:
        self._rollouts += 1
        if self._rollouts % self.rollouts_per_eval:
            return
        ret = self._evaluate()
        eps, self._episodes = self._episodes, []
        telemetry = ppo_telemetry(self.model, eps, self.safety_budget)
        self.manager.on_epoch_end({**telemetry, **self._row(ret, telemetry["ep_return"])},
                                  step=int(self.model.num_timesteps))

    def _on_training_end(self) -> None:
        if self.close_at_end:
            self.manager.close()

    # --- evaluation ---------------------------------------------------------------------------------------------
    def _evaluate(self) -> float:
        """Mean return of the deterministic policy on the fixed evaluation episodes."""
        return float(np.mean(play(self.model, self.eval_env, self.eval_seed, self.eval_episodes)[0]))

    def _row(self, val_return: float, train_return: float | None) -> dict[str, Any]:
        return {"val_loss": max(self.return_max - val_return, 0.0), "val_return": val_return,
                "train_loss": None if train_return is None else max(self.return_max - train_return, 0.0),
                "ep_return": train_return}

