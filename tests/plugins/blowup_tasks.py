"""A task defined outside tmsim (used by the tests through ``"blowup_tasks:BlowupTask"`` on ``PYTHONPATH``).

A small MLP on generated data (two Gaussian blobs per class), trained with plain SGD. Scenario ``blowup`` uses a
learning rate so far above the edge of stability that every run diverges within a few epochs on any machine, so a
test can check how divergence is recorded without depending on one chaotic draw; ``calm`` is an ordinary run.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tmsim.core import Hyperparams
from tmsim.tasks import Scenario, TorchTask


class BlowupTask(TorchTask):
    name = "blowup"
    losses = ("cross_entropy",)
    dataset_descriptor = "generated blobs, 4 classes"
    SCENARIOS = {
        "blowup": Scenario("blowup", Hyperparams(lr=500.0), 6, 2, "LR far beyond stability: diverges at once",
                           {"batch_size": 32, "momentum": 0.9}),
        "calm": Scenario("calm", Hyperparams(lr=0.05), 6, 2, "an ordinary run", {"batch_size": 32, "momentum": 0.9}),
    }

    def data(self, scenario):
        g = torch.Generator().manual_seed(1234)
        centers = torch.randn(4, 8, generator=g) * 3
        y = torch.arange(400) % 4
        x = centers[y] + torch.randn(400, 8, generator=g)
        return {"train": (x[:240], y[:240]), "val": (x[240:320], y[240:320]), "test": (x[320:], y[320:])}

    def make_model(self, scenario, hp):
        return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(hp.dropout), nn.Linear(32, 4))

    def batch_loss(self, model, xb, yb, hp):
        return F.cross_entropy(model(xb), yb)

    def evaluate_split(self, model, x, y, hp):
        logits = model(x)
        return float(F.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())
