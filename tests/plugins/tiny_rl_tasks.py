"""Small RL tasks for the tests: the bundled PPO tasks with a few hundred environment steps per epoch."""
from tmsim.tasks.rl import PendulumPPO, ReacherPPO, _rl

_TINY = {"n_envs": 2, "n_steps": 50, "rollouts_per_epoch": 1, "batch_size": 50, "n_epochs": 2, "eval_episodes": 2}


class TinyReacher(ReacherPPO):
    name = "tiny-reacher-ppo"
    DEFAULTS = {**ReacherPPO.DEFAULTS, **_TINY}
    _S = {**DEFAULTS, "safety_budget": ReacherPPO.safety_budget}
    SCENARIOS = {
        "healthy": _rl("healthy", 1e-3, 0.0, -0.25, 0.2, 4, 2, "tiny healthy run", {"log_std": ("uniform", -0.5, 0.0)}, _S),
        "unsafe": _rl("unsafe", 1.5e-3, 0.15, 0.2, 0.2, 4, 2, "tiny unsafe run", {}, _S),
        # every action costs something: the first epoch breaks a zero budget
        "no-budget": _rl("no-budget", 1e-3, 0.0, 0.0, 0.2, 4, 2, "a zero safety budget", {}, {**_S, "safety_budget": 0.0}),
    }


class TinyPendulum(PendulumPPO):
    name = "tiny-pendulum-ppo"
    DEFAULTS = {**PendulumPPO.DEFAULTS, **_TINY, "n_steps": 200, "batch_size": 100}
    _S = {**DEFAULTS, "safety_budget": PendulumPPO.safety_budget}
    SCENARIOS = {
        "collapse": _rl("collapse", 1e-3, 0.0, -2.3, 0.2, 4, 2, "tiny collapse run", {}, _S),
    }
