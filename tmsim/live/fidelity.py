"""Sim-vs-live: policies re-run for real through the live hook, compared with the simulator's verdicts.

``run_task_live`` trains a bundled task's scenario from a seed with a policy steering it through ``LiveManager``
(a plain PyTorch loop, the same one the recorder uses). ``measure_live`` does that for a sample of policies on
held-out seeds of the bundled library and compares each live final validation loss with the simulator's for the
same root: rank agreement (Kendall tau over policies of the mean log-ratio to doing nothing) and the error of the
final validation loss. In ``sync`` mode an action is applied at the epoch boundary, exactly where the recorder
forked, so a policy that stays on recorded branches must match the replay; ``async`` mode applies it a few steps
later, which is the gap a live run really has.
"""
from __future__ import annotations

import math
import time

import numpy as np

from ..core.outcome import final_val_loss as _final
from ..tasks import get_task
from .manager import LiveManager


def run_task_live(task_name: str, scenario: str, seed: int, policy, *, mode: str = "sync", spec=None,
                  allow_unpromoted: bool = False, record_dir=None, bounds=None, stale_steps: int = 100,
                  step_hook=None) -> LiveManager:
    """Train (task, scenario, seed) for real with ``policy`` steering it (or, with ``policy=None``, the policy the
    manager builds from ``spec``: in its own process for the kinds that compute); returns the closed manager."""
    import torch

    task = get_task(task_name)
    sc = task.scenario(scenario, seed)  # the seed's member of the scenario family, as recorded
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the recorder's setting: same numbers as the recording
    try:
        state = task.build(sc, seed)

        def set_aux(w: float) -> None:
            state.hparams = state.hparams.with_(aux_loss_weight=w)

        mgr = LiveManager(policy, hparams=sc.hparams, max_epochs=sc.epochs, decide_every=sc.decide_every,
                          optimizer=state.optimizer, model=state.model, loss_weight_setter=set_aux, spec=spec,
                          allow_unpromoted=allow_unpromoted, bounds=bounds, mode=mode, stale_steps=stale_steps,
                          task=task_name, scenario=scenario, seed=seed, record_dir=record_dir,
                          run_id=f"live:{task_name}:{scenario}:s{seed}:{getattr(policy, 'policy_id', None) or 'spec'}:{mode}")

        def on_step():
            mgr.on_step_end()
            if step_hook:
                step_hook()

        with mgr:
            t0 = time.perf_counter()
            mgr.on_epoch_end(task.evaluate(state))
            for _ in range(sc.epochs):
                tr = task.train_epoch(state, on_step=on_step)
                mgr.on_epoch_end({**task.evaluate(state), **tr})
                if mgr.should_stop:
                    break
            mgr.train_seconds = time.perf_counter() - t0  # the training loop only, not the final drain
            if mode == "async":
                mgr.wait()
        return mgr
    finally:
        torch.set_num_threads(threads)


def final_val_loss(mgr: LiveManager) -> float:
    """The live run's final validation loss, by the shared outcome rule."""
    return _final(mgr.history, any(h["diverged"] for h in mgr.history))


def measure_live(index, surrogate, policies: list, roots: list[str], mode: str = "sync", progress=None) -> dict:
    """Live re-runs of ``policies`` (constant must be among them) on ``roots`` vs the simulator on the same roots."""
    from scipy.stats import kendalltau

    from ..simulate.simulator import Simulator

    import logging

    t0 = time.perf_counter()
    sim = Simulator(index, surrogate)
    # these re-runs are an evaluation, not a deployment: the per-run "unpromoted" warning would only repeat itself
    live_log = logging.getLogger("tmsim.live")
    level = live_log.level
    live_log.setLevel(logging.ERROR)
    simulated, live = {}, {}
    for p in policies:
        simulated[p.policy_id] = {o.root: o.final_val_loss for o in sim.rollout(p, roots)}
        live[p.policy_id] = {}
        for r in roots:
            m = index.meta[r]
            mgr = run_task_live(m["task"], m["scenario"], m["seed"], p, mode=mode, allow_unpromoted=True)
            live[p.policy_id][r] = final_val_loss(mgr)
        if progress:
            progress(p.policy_id)
    live_log.setLevel(level)
    ids = [p.policy_id for p in policies]

    def score(d):
        return {pid: float(np.mean([math.log(d[pid][r] / d["constant"][r]) for r in roots])) for pid in ids}

    s_sim, s_live = score(simulated), score(live)
    tau = kendalltau([s_sim[i] for i in ids], [s_live[i] for i in ids]).statistic
    err = [abs(simulated[i][r] - live[i][r]) / live[i][r] for i in ids for r in roots]
    exact = sum(abs(simulated[i][r] - live[i][r]) <= 1e-9 * live[i][r] for i in ids for r in roots)
    return {"mode": mode, "policies": ids, "roots": roots, "kendall_tau_live": float(tau),
            "final_val_loss_rel_error_live": float(np.mean(err)), "exact_matches": int(exact), "pairs": len(err),
            "sim_scores": s_sim, "live_scores": s_live, "seconds": round(time.perf_counter() - t0, 1)}
