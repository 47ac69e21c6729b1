"""Tasks kept out of the bundled library, for checking a surrogate on a task it has never seen.

``friedman3-adam``: an MLP regressor on scikit-learn's generated Friedman #3 data (an arctangent of a ratio of
its four inputs, with noise), trained with plain ``torch.optim.Adam`` (coupled L2 weight decay) on MSE. No bundled
task uses plain Adam on a regression: the surrogate has to transfer across optimizer and data at once.

Record it through the task registry by import path (``eval/transfer`` on ``PYTHONPATH``)::

    PYTHONPATH=eval/transfer tmsim record --task transfer_tasks:Friedman3Adam ...

(``eval/transfer/RECIPE`` holds the exact commands).
"""
from __future__ import annotations

import torch
from torch import nn

from tmsim.tasks.base import Hyperparams, MSERegression, Scenario, adam
from tmsim.tasks.diabetes import regression_split
from tmsim.tasks.digits import mlp

_ROWS, _NOISE, _DATA_SEED = 1_500, 0.1, 3
_VAL, _TEST = 300, 300


class Friedman3Adam(MSERegression):
    name = "friedman3-adam"
    model_descriptor = "MLP regressor (ReLU, dropout), Adam with coupled L2"
    dataset_descriptor = f"sklearn make_friedman3 ({_ROWS} x 4, noise {_NOISE}, random_state {_DATA_SEED}), standardised"

    SCENARIOS = {
        s.name: s
        for s in [
            Scenario("overfit", Hyperparams(lr=3e-3), 20, 5,
                     "a wide MLP on 60 rows with Adam: the rows are memorised and validation MSE climbs",
                     {"hidden": [256, 256], "n_train": 60, "batch_size": 8},
                     {"lr": ("log", 2e-3, 5e-3), "hidden": ("choice", [[256, 256], [384, 192]]),
                      "n_train": ("int", 50, 80), "batch_size": ("choice", [8, 12])}),
            Scenario("diverge", Hyperparams(lr=0.05), 20, 5,
                     "Adam LR far too high: the loss jumps about and some runs blow up",
                     {"hidden": [128, 128], "n_train": 800, "batch_size": 32},
                     {"lr": ("log", 0.03, 0.08), "hidden": ("choice", [[128, 128], [192, 96]]),
                      "n_train": ("int", 600, 900), "batch_size": ("choice", [24, 32])}),
            Scenario("plateau", Hyperparams(lr=4e-5), 20, 5,
                     "Adam LR far too low: validation MSE creeps down and the run ends under-trained",
                     {"hidden": [64, 64], "n_train": 800, "batch_size": 32},
                     {"lr": ("log", 2e-5, 6e-5), "hidden": ("choice", [[64, 64], [96, 48]]),
                      "n_train": ("int", 600, 900), "batch_size": ("choice", [24, 32])}),
            Scenario("healthy", Hyperparams(lr=2e-3, weight_decay=1e-4, dropout=0.05), 20, 5,
                     "a sensible Adam recipe: leave it alone",
                     {"hidden": [128, 64], "n_train": 800, "batch_size": 32},
                     {"lr": ("log", 1.2e-3, 3e-3), "hidden": ("choice", [[128, 64], [96, 96]]),
                      "n_train": ("int", 600, 900), "dropout": ("uniform", 0.0, 0.1)}),
        ]
    }

    def data(self, scenario: Scenario):
        from sklearn.datasets import make_friedman3

        x, y = make_friedman3(n_samples=_ROWS, noise=_NOISE, random_state=_DATA_SEED)
        return regression_split(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32),
                                _VAL, _TEST, scenario.settings["n_train"])

    def make_model(self, scenario: Scenario, hp: Hyperparams) -> nn.Module:
        return mlp([4, *scenario.settings["hidden"], 1], hp.dropout)

    def make_optimizer(self, model, scenario, hp):
        return adam(model, scenario, hp)
