"""``friedman-mlp``: an MLP regressor on generated Friedman #1 data, trained with SGD and momentum.

Data: ``sklearn.datasets.make_friedman1`` with a fixed ``random_state``: 2,000 rows of 10 uniform features (only
the first five matter: ``10 sin(pi x1 x2) + 20 (x3 - 0.5)^2 + 10 x4 + 5 x5``) plus Gaussian noise. The split is
fixed (a seed-0 permutation): 400 validation rows, 400 test rows, and the first ``n_train`` of the remaining 1,200
for training. Features and target are standardised with statistics of the training rows only; predicting the
training mean scores a validation MSE near 1.

Model: ReLU MLP with ``nn.Dropout`` after every hidden layer (dropout is a live knob). Loss: MSE on the
standardised target; ``val_loss`` is that MSE and there is no accuracy (``val_acc`` is ``None``). Optimizer: the
base class's ``torch.optim.SGD`` with the member's ``momentum`` and the run's (coupled, L2) weight decay.

Scenarios (each a family; every seed draws its own member):

- ``overfit``: a wide MLP on 80-120 rows with a high LR: it fits the noise and validation MSE climbs after a few
  epochs; lowering the LR at a decision epoch helps most, and raising it blows up.
- ``diverge``: an LR at the edge of stability for momentum SGD: the loss jumps about and some runs blow up; raising
  the LR blows up, lowering it helps.
- ``plateau``: an LR far too low: the linear trend (``x4``, ``x5``) is learnt within a few epochs, the non-linear
  part barely, and the run ends under-trained; raising the LR helps.
- ``healthy``: a moderate MLP on 700-900 rows with a sensible LR and light regularisation: leave it alone.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Hyperparams, MSERegression, Scenario
from .diabetes import regression_split
from .digits import mlp

_ROWS, _NOISE, _DATA_SEED = 2_000, 1.0, 0
_VAL, _TEST = 400, 400


class FriedmanMLP(MSERegression):
    name = "friedman-mlp"
    model_descriptor = "MLP regressor (ReLU, dropout), SGD with momentum"
    dataset_descriptor = f"sklearn make_friedman1 ({_ROWS} x 10, noise {_NOISE}, random_state {_DATA_SEED}), standardised, fixed split"

    SCENARIOS = {
        s.name: s
        for s in [
            Scenario("overfit", Hyperparams(lr=0.05), 20, 5,
                     "wide MLP on 100 rows, SGD lr 0.05 momentum 0.9: validation MSE climbs after a few epochs",
                     {"hidden": [512, 512], "n_train": 100, "batch_size": 10, "momentum": 0.9},
                     {"lr": ("log", 0.035, 0.07), "hidden": ("choice", [[384, 384], [512, 512], [512, 256]]),
                      "n_train": ("int", 80, 120), "batch_size": ("choice", [8, 10]), "momentum": ("uniform", 0.88, 0.92)}),
            Scenario("diverge", Hyperparams(lr=0.13), 20, 5,
                     "LR at the edge of stability for momentum SGD: the loss jumps about and some runs blow up",
                     {"hidden": [128, 128], "n_train": 800, "batch_size": 32, "momentum": 0.9},
                     {"lr": ("log", 0.1, 0.17), "hidden": ("choice", [[128, 128], [192, 96], [160, 160]]),
                      "n_train": ("int", 700, 900), "batch_size": ("choice", [24, 32]), "momentum": ("uniform", 0.89, 0.92)}),
            Scenario("plateau", Hyperparams(lr=0.0016), 20, 5,
                     "LR far too low: the linear trend is learnt, the non-linear part barely, and the run ends under-trained",
                     {"hidden": [128], "n_train": 800, "batch_size": 32, "momentum": 0.9},
                     {"lr": ("log", 0.001, 0.0025), "hidden": ("choice", [[96], [128], [192]]),
                      "n_train": ("int", 700, 900), "batch_size": ("choice", [24, 32]), "momentum": ("uniform", 0.85, 0.92)}),
            Scenario("healthy", Hyperparams(lr=0.018, weight_decay=1e-4, dropout=0.05), 20, 5,
                     "a sensible recipe on 800 rows: the best move is to leave it alone",
                     {"hidden": [128, 64], "n_train": 800, "batch_size": 32, "momentum": 0.9},
                     {"lr": ("log", 0.013, 0.025), "weight_decay": ("log", 5e-5, 3e-4), "dropout": ("uniform", 0.0, 0.08),
                      "hidden": ("choice", [[128, 64], [96, 96], [128]]), "n_train": ("int", 700, 900),
                      "momentum": ("uniform", 0.85, 0.93)}),
        ]
    }

    def data(self, scenario: Scenario):
        from sklearn.datasets import make_friedman1

        x, y = make_friedman1(n_samples=_ROWS, n_features=10, noise=_NOISE, random_state=_DATA_SEED)
        x = torch.tensor(x, dtype=torch.float32)
        y = torch.tensor(y, dtype=torch.float32)
        return regression_split(x, y, _VAL, _TEST, scenario.settings["n_train"])

    def make_model(self, scenario: Scenario, hp: Hyperparams) -> nn.Module:
        return mlp([10, *scenario.settings["hidden"], 1], hp.dropout)
