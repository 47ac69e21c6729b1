"""A plain PyTorch loop steered by a promoted policy through tmsim's live hook.

Run from the repository root:  python examples/live_pytorch.py [--spec policies/rules.toml] [--record traces-live]

The model is a small MLP on scikit-learn's digits with a LambdaLR schedule; the hook scales the schedule's base
LRs when the policy changes the LR, so the change survives the scheduler. The run is recorded as a trace.

The run is declared as what it is, the ``digits-mlp`` task's ``overfit`` family (an over-parameterised MLP on 300
digits, SGD with momentum) with the library's cadence (20 epochs, a decision every 5): the promoted ``rules``
record's scope covers it. Another length or cadence is outside that scope and needs ``--out-of-scope REASON``.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from tmsim.live import LiveManager


def main(spec: str = "policies/rules.toml", record: str | None = None, promotions: str | None = None,
         epochs: int = 20, decide_every: int = 5, mode: str = "async", seed: int = 0,
         out_of_scope: str | None = None) -> LiveManager:
    torch.manual_seed(seed)
    d = load_digits()
    x, y = torch.tensor(d.data, dtype=torch.float32) / 16, torch.tensor(d.target)
    xtr, ytr, xva, yva = x[:300], y[:300], x[300:700], y[300:700]
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Dropout(0.0), nn.Linear(256, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    steps_per_epoch = len(xtr) // 32
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - 0.5 * s / (epochs * steps_per_epoch))

    def evaluate() -> dict:
        model.eval()
        with torch.no_grad():
            tr, va = model(xtr), model(xva)
            out = {"train_loss": float(F.cross_entropy(tr, ytr)), "val_loss": float(F.cross_entropy(va, yva)),
                   "train_acc": float((tr.argmax(1) == ytr).float().mean()), "val_acc": float((va.argmax(1) == yva).float().mean())}
        model.train()
        return out

    # the manager checks the spec's promotion record, then builds the policy from the spec itself
    # the hook reads the LR, weight decay and dropout from the optimizer, scheduler and model it steers
    with LiveManager.from_spec(spec, promotions=promotions, max_epochs=epochs, decide_every=decide_every,
                               optimizer=opt, scheduler=sched, model=model, mode=mode, task="digits-mlp",
                               scenario="overfit", out_of_scope=out_of_scope, record_dir=record) as mgr:
        mgr.on_epoch_end(evaluate())
        g = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            perm = torch.randperm(len(xtr), generator=g)
            for i in range(steps_per_epoch):
                idx = perm[i * 32:(i + 1) * 32]
                loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                mgr.on_step_end()          # the step boundary: an arrived decision is applied here
                if mgr.should_stop:
                    break
            mgr.on_epoch_end(evaluate())
            if mgr.should_stop:
                break
    return mgr


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default="policies/rules.toml")
    ap.add_argument("--record", default=None)
    ap.add_argument("--mode", default="async", choices=("async", "sync"))
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--out-of-scope", default=None, help="reason to run outside the promoted scope (recorded)")
    a = ap.parse_args()
    m = main(a.spec, a.record, mode=a.mode, epochs=a.epochs, out_of_scope=a.out_of_scope)
    print(f"{m.run_id}: {len(m.history) - 1} epochs, final val loss {m.history[-1]['val_loss']:.4f}; decisions:",
          [(r["epoch"], r["action"], r["staleness_steps"]) for r in m.decision_rows], "|", m.promotion)
