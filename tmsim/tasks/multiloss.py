"""``multiloss``: digits classification plus reconstruction from a shared encoder, two weighted losses.

Training minimises ``CE + w_aux * MSE`` (``w_aux`` is the knob ``aux_loss_weight``); the objective recorded as
``val_loss`` weighs both parts equally (``CE + MSE``), so a run whose weights are badly out of balance scores
poorly even when one of its losses looks fine ("loss imbalance"). Pixels are standardised, so the reconstruction
MSE starts near 1 and the classification CE near 2.3: the equal-weight objective is not dominated by either.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from .base import Hyperparams, Scenario, TorchTask
from .digits import digits_split


class EncoderTwoHeads(nn.Module):
    def __init__(self, hidden: int, latent: int, dropout: float):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, latent), nn.ReLU())
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(latent, 10))
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, 64))

    def forward(self, x):
        z = self.encoder(x)
        return self.classifier(z), self.decoder(z)


class MultiLoss(TorchTask):
    name = "multiloss"
    losses = ("cross_entropy", "reconstruction_mse")
    dataset_descriptor = "sklearn digits 8x8 standardised, fixed split"

    SCENARIOS = {
        s.name: s
        for s in [
            Scenario("imbalance", Hyperparams(lr=0.05, aux_loss_weight=0.01), 20, 5,
                     "reconstruction weighted 1/100: the decoder barely trains and the joint objective stalls",
                     {"hidden": 128, "latent": 32, "n_train": 600, "batch_size": 32, "momentum": 0.9},
                     {"lr": ("log", 0.03, 0.08), "aux_loss_weight": ("log", 0.005, 0.02), "hidden": ("choice", [96, 128, 192]),
                      "n_train": ("int", 500, 700), "momentum": ("uniform", 0.85, 0.93)}),
            Scenario("overfit", Hyperparams(lr=0.1, aux_loss_weight=1.0), 20, 5,
                     "wide encoder on 250 images: validation objective rises after a few epochs",
                     {"hidden": 512, "latent": 64, "n_train": 250, "batch_size": 25, "momentum": 0.9},
                     {"lr": ("log", 0.07, 0.14), "aux_loss_weight": ("log", 0.7, 1.4), "hidden": ("choice", [384, 512, 640]),
                      "latent": ("choice", [48, 64]), "n_train": ("int", 200, 300), "momentum": ("uniform", 0.85, 0.93)}),
            Scenario("plateau", Hyperparams(lr=0.002, aux_loss_weight=1.0), 20, 5,
                     "LR far too low: both losses creep down",
                     {"hidden": 128, "latent": 32, "n_train": 600, "batch_size": 32, "momentum": 0.9},
                     {"lr": ("log", 0.001, 0.004), "aux_loss_weight": ("log", 0.7, 1.4), "hidden": ("choice", [96, 128, 192]),
                      "n_train": ("int", 500, 700), "momentum": ("uniform", 0.85, 0.93)}),
            Scenario("healthy", Hyperparams(lr=0.05, aux_loss_weight=1.0, dropout=0.1), 20, 5,
                     "balanced weights and a sensible LR: leave it alone",
                     {"hidden": 128, "latent": 32, "n_train": 900, "batch_size": 32, "momentum": 0.9},
                     {"lr": ("log", 0.03, 0.08), "aux_loss_weight": ("log", 0.7, 1.4), "dropout": ("uniform", 0.05, 0.15),
                      "hidden": ("choice", [128, 160]), "n_train": ("int", 800, 990), "momentum": ("uniform", 0.85, 0.93)}),
        ]
    }

    def data(self, scenario: Scenario):
        d = digits_split(scenario.settings["n_train"])
        x_train = d["train"][0]
        mu, sd = x_train.mean(0), x_train.std(0).clamp_min(0.05)
        return {k: ((x - mu) / sd, y) for k, (x, y) in d.items()}

    def make_model(self, scenario: Scenario, hp: Hyperparams) -> nn.Module:
        return EncoderTwoHeads(scenario.settings["hidden"], scenario.settings["latent"], hp.dropout)

    def batch_loss(self, model, xb, yb, hp):
        logits, recon = model(xb)
        return F.cross_entropy(logits, yb) + hp.aux_loss_weight * F.mse_loss(recon, xb)

    def evaluate_split(self, model, x, y, hp):
        logits, recon = model(x)
        loss = F.cross_entropy(logits, y) + F.mse_loss(recon, x)
        return float(loss), float((logits.argmax(1) == y).float().mean())
