"""``swissroll-adam``: an MLP regressor that reads a point's position along a noisy Swiss roll, trained with plain Adam.

Data: ``sklearn.datasets.make_swiss_roll`` with a fixed ``random_state``: 1,400 points on a rolled-up sheet in 3-D
plus Gaussian noise; the target is the point's position along the roll (the sheet's unrolled coordinate), a smooth
but strongly non-linear function of the three coordinates. The split is fixed (a seed-0 permutation): 250 validation
rows, 250 test rows, and the first ``n_train`` of the remaining 900 for training. Features and target are
standardised with statistics of the training rows only; predicting the training mean scores a validation MSE near 1.

Model: ReLU MLP with ``nn.Dropout`` after every hidden layer (dropout is a live knob). Loss: MSE on the standardised
target; there is no accuracy. Optimizer: ``torch.optim.Adam`` with the member's ``betas`` and the run's weight decay
as a classic (coupled) L2 term.

Scenarios (each a family; every seed draws its own member):

- ``overfit``: a wide MLP on 50-80 rows: the noise is memorised and validation MSE climbs.
- ``diverge``: an Adam LR far too high: the loss jumps about and ends above a sensible run's; lowering the LR helps.
- ``plateau``: an Adam LR far too low: validation MSE creeps down and the run ends under-trained.
- ``healthy``: a moderate MLP on 600-900 rows with a sensible LR and light regularisation: leave it alone.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Hyperparams, MSERegression, Scenario, adam
from .diabetes import regression_split
from .digits import mlp

_ROWS, _NOISE, _DATA_SEED = 1_400, 2.5, 2
_VAL, _TEST = 250, 250


class SwissRollAdam(MSERegression):
    name = "swissroll-adam"
    model_descriptor = "MLP regressor (ReLU, dropout), Adam with coupled L2"
    dataset_descriptor = (f"sklearn make_swiss_roll ({_ROWS} x 3, noise {_NOISE}, random_state {_DATA_SEED}), "
                          "target the position along the roll, standardised, fixed split")

    SCENARIOS = {
        s.name: s
        for s in [
            Scenario("overfit", Hyperparams(lr=3e-3), 20, 5,
                     "wide MLP on 65 rows, Adam lr 3e-3: the noise is memorised and validation MSE climbs",
                     {"hidden": [256, 256], "n_train": 65, "batch_size": 8, "betas": (0.9, 0.999)},
                     {"lr": ("log", 2e-3, 5e-3), "hidden": ("choice", [[256, 256], [384, 192], [320]]),
                      "n_train": ("int", 50, 80), "batch_size": ("choice", [8, 10]),
                      "betas": ("choice", [(0.9, 0.999), (0.9, 0.99), (0.85, 0.98)])}),
            Scenario("diverge", Hyperparams(lr=0.15), 20, 5,
                     "Adam LR far too high: the loss jumps about and the run ends above a sensible one",
                     {"hidden": [128, 128], "n_train": 800, "batch_size": 32, "betas": (0.9, 0.999)},
                     {"lr": ("log", 0.1, 0.22), "hidden": ("choice", [[128, 128], [192, 96]]),
                      "n_train": ("int", 650, 900), "batch_size": ("choice", [24, 32]),
                      "betas": ("choice", [(0.9, 0.999), (0.9, 0.99)])}),
            Scenario("plateau", Hyperparams(lr=4e-5), 20, 5,
                     "Adam LR far too low: validation MSE creeps down and the run ends under-trained",
                     {"hidden": [64, 64], "n_train": 800, "batch_size": 32, "betas": (0.9, 0.999)},
                     {"lr": ("log", 2.5e-5, 6e-5), "hidden": ("choice", [[64, 64], [96, 48]]),
                      "n_train": ("int", 650, 900), "batch_size": ("choice", [24, 32]),
                      "betas": ("choice", [(0.9, 0.999), (0.9, 0.99)])}),
            Scenario("healthy", Hyperparams(lr=2e-3, weight_decay=1e-4, dropout=0.05), 20, 5,
                     "a sensible Adam recipe on 800 rows: the best move is to leave it alone",
                     {"hidden": [64, 64], "n_train": 800, "batch_size": 32, "betas": (0.9, 0.999)},
                     {"lr": ("log", 1.2e-3, 3e-3), "weight_decay": ("log", 5e-5, 3e-4), "dropout": ("uniform", 0.0, 0.1),
                      "hidden": ("choice", [[64, 64], [96, 48], [128]]), "n_train": ("int", 650, 900),
                      "betas": ("choice", [(0.9, 0.999), (0.9, 0.99)])}),
        ]
    }

    def data(self, scenario: Scenario):
        from sklearn.datasets import make_swiss_roll

        x, t = make_swiss_roll(n_samples=_ROWS, noise=_NOISE, random_state=_DATA_SEED)
        return regression_split(torch.tensor(x, dtype=torch.float32), torch.tensor(t, dtype=torch.float32),
                                _VAL, _TEST, scenario.settings["n_train"])

    def make_model(self, scenario: Scenario, hp: Hyperparams) -> nn.Module:
        return mlp([3, *scenario.settings["hidden"], 1], hp.dropout)

    def make_optimizer(self, model, scenario, hp):
        return adam(model, scenario, hp)
