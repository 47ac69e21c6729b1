"""``friedman-mlp``: an MLP regressor on generated Friedman #1 data, trained with SGD and momentum.

Data: ``sklearn.datasets.make_friedman1`` with a fixed ``random_state``: 2,000 rows of 10 uniform features (only
the first five matter: ``10 sin(pi x1 x2) + 20 (x3 - 0.5)^2 + 10 x4 + 5 x5``) plus Gaussian noise. The split is
fixed (a seed-0 permutation): 400 validation rows, 400 test rows, and the first ``n_train`` of the remaining 1,200
for training. Features and target are standardised with statistics of the training rows only; predicting the
training mean scores a validation MSE near 1.

Model: ReLU MLP with ``nn.Dropout`` after every hidden layer (dropout is a live knob). Loss: MSE on the
standardised target; ``val_loss`` is that MSE and there is no accuracy (``val_acc`` is ``None``). Optimizer: the
base class's ``torch.optim.SGD`` with the member's ``momentum`` and the run's (coupled, L2) weight decay.

Scenarios (library v5; each a family, every seed draws its own member). Every family draws its LR, weight decay,
dropout, batch size and momentum from one shared range; the cause is hidden (``tmsim.tasks.hidden``):

- ``overfit``: a wide MLP on 80-140 rows whose targets get Gaussian noise (sd 0.5-1.0) from a drawn epoch on (0-12):
  it fits the noise and validation MSE climbs; stopping early or a lower LR helps, raising it blows up.
- ``diverge``: from a drawn epoch on (2-12) the optimised objective is scaled up 3.5-7x (a ``sum`` where a ``mean``
  was meant): momentum SGD's effective LR jumps past the edge of stability, the loss jumps about and some runs blow
  up; lowering the LR helps, raising it blows up.
- ``plateau``: the objective is scaled down 20-50x: the effective LR is far too low, the linear trend is learnt, the
  non-linear part barely; raising the LR helps.
- ``healthy``: a moderate MLP on 700-900 clean rows: leave it alone.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Hyperparams, MSERegression, Scenario
from .hidden import overlapping_families
from .diabetes import regression_split
from .digits import mlp

_ROWS, _NOISE, _DATA_SEED = 2_000, 1.0, 0
_VAL, _TEST = 400, 400


class FriedmanMLP(MSERegression):
    name = "friedman-mlp"
    model_descriptor = "MLP regressor (ReLU, dropout), SGD with momentum"
    dataset_descriptor = f"sklearn make_friedman1 ({_ROWS} x 10, noise {_NOISE}, random_state {_DATA_SEED}), standardised, fixed split"

    SCENARIOS = overlapping_families(Hyperparams(lr=0.02, weight_decay=1e-4, dropout=0.05), {
        "lr": ("log", 0.01, 0.028), "weight_decay": ("log", 3e-5, 3e-4), "dropout": ("uniform", 0.0, 0.08),
        "batch_size": ("choice", [10, 16]), "momentum": ("uniform", 0.86, 0.92)}, {
        "overfit": ("a wide MLP on 80-140 rows, with noisy targets from a drawn epoch on: the noise is memorised and "
                    "validation MSE climbs",
                    {"hidden": [512, 512], "n_train": 100},
                    {"hidden": ("choice", [[384, 384], [512, 512], [512, 256]]), "n_train": ("int", 80, 140),
                     "label_noise": ("uniform", 0.5, 1.0), "noise_onset": ("int", 0, 12)}),
        "diverge": ("from a drawn epoch on the objective is scaled up 3.5-7x (a sum where a mean was meant): the "
                    "effective LR jumps past the edge of stability for momentum SGD and some runs blow up",
                    {"hidden": [128, 128], "n_train": 800},
                    {"hidden": ("choice", [[128, 128], [192, 96], [160, 160]]), "n_train": ("int", 700, 900),
                     "loss_scale": ("log", 3.5, 7.0), "scale_onset": ("int", 2, 12)}),
        "plateau": ("the objective is scaled down 20-50x: the effective LR is far too low, the linear trend is "
                    "learnt, the non-linear part barely, and the run ends under-trained",
                    {"hidden": [128], "n_train": 800},
                    {"hidden": ("choice", [[96], [128], [192]]), "n_train": ("int", 700, 900),
                     "loss_scale": ("log", 0.02, 0.05)}),
        "healthy": ("enough clean rows for the model: the best move is to leave it alone",
                    {"hidden": [128, 64], "n_train": 800},
                    {"hidden": ("choice", [[128, 64], [96, 96], [128]]), "n_train": ("int", 700, 900)}),
    })

    def data(self, scenario: Scenario):
        from sklearn.datasets import make_friedman1

        x, y = make_friedman1(n_samples=_ROWS, n_features=10, noise=_NOISE, random_state=_DATA_SEED)
        x = torch.tensor(x, dtype=torch.float32)
        y = torch.tensor(y, dtype=torch.float32)
        return regression_split(x, y, _VAL, _TEST, scenario.settings["n_train"])

    def make_model(self, scenario: Scenario, hp: Hyperparams) -> nn.Module:
        return mlp([10, *scenario.settings["hidden"], 1], hp.dropout)
