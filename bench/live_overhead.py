"""Live-hook overhead: prints a table. Run: python bench/live_overhead.py [--rounds 3]

Real training runs, timed over the training loop only (train, evaluate, hook calls; not process start-up):
- text-lm healthy (16 epochs of 20 steps, ~0.3 s an epoch, a decision every 4 epochs): no manager; the manager
  with a policy that takes 1 s per decision, asynchronous (must stay within 2% of no manager) and synchronous
  (pays the latency at every decision);
- text-lm healthy again with a *compute-bound* policy (1 s of pure-Python work per decision, holding the GIL),
  asynchronous, once in a thread of the training process and once in its own process (``policy_process``, the
  default for the kinds that compute): the thread competes with training for the GIL, the process does not;
- digits-mlp overfit (20 epochs): no manager vs the manager with a do-nothing policy recording the run as a trace
  (the recorder's overhead, target < 2%).
Variants are interleaved round by round so machine drift hits them alike; medians are reported.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from tmsim.core import Proposal
from tmsim.live.fidelity import run_task_live
from tmsim.tasks import get_task


class SlowPolicy:
    policy_id, version = "slow-1s", "1"

    def decide(self, snapshot):
        time.sleep(1.0)
        return Proposal(action="continue")


class Busy:
    """1 s of pure-Python work per decision: holds the GIL the whole time it runs."""
    policy_id, version = "busy-1s", "1"

    def decide(self, snapshot):
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 1.0:
            sum(i * i for i in range(2000))
        return Proposal(action="continue")


class Nothing:
    policy_id, version = "nothing", "1"

    def decide(self, snapshot):
        return Proposal(action="continue")


def bare(task_name: str, scenario: str) -> float:
    task = get_task(task_name)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        st = task.build(scenario, 0)
        t0 = time.perf_counter()
        task.evaluate(st)
        for _ in range(st.scenario.epochs):
            task.train_epoch(st)
            task.evaluate(st)
        return time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    spec = tmp / "busy.toml"  # the same Busy policy built from a spec, so the hook can run it in its own process
    spec.write_text(f'name = "busy-1s"\nkind = "python"\ntarget = "{Path(__file__).stem}:Busy"\n')
    res: dict[str, list[float]] = {k: [] for k in ("lm bare", "lm async 1s", "lm sync 1s", "lm busy thread",
                                                   "lm busy process", "digits bare", "digits recorded")}
    for r in range(a.rounds):
        res["lm bare"].append(bare("text-lm", "healthy"))
        res["lm async 1s"].append(run_task_live("text-lm", "healthy", 0, SlowPolicy(), mode="async", allow_unpromoted=True,
                                                stale_steps=10_000).train_seconds)
        res["lm busy thread"].append(run_task_live("text-lm", "healthy", 0, Busy(), mode="async", allow_unpromoted=True,
                                                   stale_steps=10_000).train_seconds)
        res["lm busy process"].append(run_task_live("text-lm", "healthy", 0, None, spec=spec, mode="async",
                                                    allow_unpromoted=True, stale_steps=10_000).train_seconds)
        if r == 0:
            res["lm sync 1s"].append(run_task_live("text-lm", "healthy", 0, SlowPolicy(), mode="sync",
                                                   allow_unpromoted=True).train_seconds)
        for _ in range(3):
            res["digits bare"].append(bare("digits-mlp", "overfit"))
            res["digits recorded"].append(run_task_live("digits-mlp", "overfit", 0, Nothing(), mode="sync", allow_unpromoted=True,
                                                        record_dir=tmp / f"r{r}-{_}").train_seconds)
    med = {k: statistics.median(v) for k, v in res.items()}
    print(f"{'variant':<18}{'runs':>5}{'median s':>10}{'vs bare':>10}")
    for k, v in med.items():
        ref = med["lm bare"] if k.startswith("lm") else med["digits bare"]
        print(f"{k:<18}{len(res[k]):>5}{v:>10.3f}{(v / ref - 1) * 100:>+9.1f}%")


if __name__ == "__main__":
    main()
