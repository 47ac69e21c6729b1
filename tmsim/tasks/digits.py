"""``digits-mlp``: an over-parameterisable MLP classifier on scikit-learn's bundled 8x8 digits (1,797 images).

The split is fixed (a seed-0 permutation): a scenario-sized training set, 400 validation and 400 test images.
The run's seed drives weight initialisation, data order and dropout masks.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Classification, Hyperparams, Scenario

_VAL, _TEST = 400, 400


def digits_split(n_train: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Digits as float features in [0, 1], split train/val/test by a fixed permutation."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    val = (x[:_VAL], y[:_VAL])
    test = (x[_VAL : _VAL + _TEST], y[_VAL : _VAL + _TEST])
    train = (x[_VAL + _TEST : _VAL + _TEST + n_train], y[_VAL + _TEST : _VAL + _TEST + n_train])
    return {"train": train, "val": val, "test": test}


def mlp(sizes: list[int], dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-2], sizes[1:-1]):
        layers += [nn.Linear(a, b), nn.ReLU(), nn.Dropout(dropout)]
    layers.append(nn.Linear(sizes[-2], sizes[-1]))
    return nn.Sequential(*layers)


class DigitsMLP(Classification):
    name = "digits-mlp"
    dataset_descriptor = "sklearn digits 8x8, fixed split"

    SCENARIOS = {
        s.name: s
        for s in [
            Scenario("overfit", Hyperparams(lr=0.2), 20, 5,
                     "over-parameterised MLP on 300 images, SGD lr 0.2 momentum 0.9: validation loss climbs after a few epochs",
                     {"hidden": [512, 512], "n_train": 300, "batch_size": 32, "momentum": 0.9},
                     {"lr": ("log", 0.12, 0.3), "hidden": ("choice", [[384, 384], [512, 512], [640, 320]]),
                      "n_train": ("int", 240, 360), "batch_size": ("choice", [24, 32]), "momentum": ("uniform", 0.85, 0.95)}),
            Scenario("diverge", Hyperparams(lr=0.6), 20, 5,
                     "LR at the edge of stability: some runs blow up, all are noisy",
                     {"hidden": [256, 256], "n_train": 600, "batch_size": 32, "momentum": 0.9},
                     {"lr": ("log", 0.45, 0.8), "hidden": ("choice", [[256, 256], [384, 192]]),
                      "n_train": ("int", 500, 700), "batch_size": ("choice", [24, 32]), "momentum": ("uniform", 0.88, 0.95)}),
            Scenario("plateau", Hyperparams(lr=0.0015), 20, 5,
                     "LR far too low: loss creeps down and the run ends under-trained",
                     {"hidden": [128], "n_train": 600, "batch_size": 32, "momentum": 0.9},
                     {"lr": ("log", 0.0008, 0.0025), "hidden": ("choice", [[96], [128], [192]]),
                      "n_train": ("int", 500, 700), "batch_size": ("choice", [24, 32]), "momentum": ("uniform", 0.85, 0.92)}),
            Scenario("healthy", Hyperparams(lr=0.05, weight_decay=1e-4, dropout=0.1), 20, 5,
                     "a sensible recipe on enough data: the best move is to leave it alone",
                     {"hidden": [128], "n_train": 900, "batch_size": 32, "momentum": 0.9},
                     {"lr": ("log", 0.03, 0.08), "weight_decay": ("log", 5e-5, 3e-4), "dropout": ("uniform", 0.05, 0.15),
                      "hidden": ("choice", [[128], [160], [96, 96]]), "n_train": ("int", 800, 990),
                      "batch_size": ("choice", [24, 32]), "momentum": ("uniform", 0.85, 0.95)}),
        ]
    }

    def data(self, scenario: Scenario):
        return digits_split(scenario.settings["n_train"])

    def make_model(self, scenario: Scenario, hp: Hyperparams) -> nn.Module:
        return mlp([64, *scenario.settings["hidden"], 10], hp.dropout)
