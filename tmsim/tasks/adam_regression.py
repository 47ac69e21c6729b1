"""Plain-Adam MLP regressors on a table: the base class of ``friedman2-adam``, ``swissroll-adam`` and
``sparse-adam``, and the four scenario families they share.

A task gives its table (``table()``: features and target as arrays), its split sizes and the numbers where its
families differ (``adam_regression_families``); the model (a ReLU MLP with ``nn.Dropout`` after every hidden layer),
the loss (MSE on the standardised target), the optimizer (``torch.optim.Adam`` with the member's ``betas`` and the
run's weight decay as a coupled L2 term) and the split (``regression_split``) are the same for all of them.

Example
-------
>>> fam = adam_regression_families(small_rows=(65, 50, 80), rows=(600, 500, 700), diverge_lr=(0.12, 0.09, 0.16),
...                                plateau_lr=(3e-5, 2e-5, 5e-5), healthy_hidden=[[64, 64], [96, 48], [128]])
>>> sorted(fam), fam["plateau"].hparams.lr
(['diverge', 'healthy', 'overfit', 'plateau'], 3e-05)
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Hyperparams, MSERegression, Scenario, adam
from .diabetes import regression_split
from .digits import mlp

_BETAS = [(0.9, 0.999), (0.9, 0.99)]


def adam_regression_families(*, small_rows: tuple[int, int, int], rows: tuple[int, int, int],
                             diverge_lr: tuple[float, float, float], plateau_lr: tuple[float, float, float],
                             healthy_hidden: list[list[int]], memorised: str = "the noise is",
                             diverge: str = "the loss jumps about and the run ends above a sensible one"
                             ) -> dict[str, Scenario]:
    """The four families of a plain-Adam regression task. Each ``(centre, low, high)`` triple is a family's centre
    and the range its members are drawn from: ``small_rows`` the training rows of ``overfit``, ``rows`` those of the
    other three, ``diverge_lr`` and ``plateau_lr`` the LRs far too high and far too low. ``healthy_hidden`` lists the
    widths of ``healthy`` (the first is its centre); ``memorised`` and ``diverge`` complete two descriptions."""
    (n_small, *small_range), (n, *n_range) = small_rows, rows
    (lr_hi, *hi_range), (lr_lo, *lo_range) = diverge_lr, plateau_lr
    return {
        s.name: s
        for s in [
            Scenario("overfit", Hyperparams(lr=3e-3), 20, 5,
                     f"wide MLP on {n_small} rows, Adam lr 3e-3: {memorised} memorised and validation MSE climbs",
                     {"hidden": [256, 256], "n_train": n_small, "batch_size": 8, "betas": (0.9, 0.999)},
                     {"lr": ("log", 2e-3, 5e-3), "hidden": ("choice", [[256, 256], [384, 192], [320]]),
                      "n_train": ("int", *small_range), "batch_size": ("choice", [8, 10]),
                      "betas": ("choice", [(0.9, 0.999), (0.9, 0.99), (0.85, 0.98)])}),
            Scenario("diverge", Hyperparams(lr=lr_hi), 20, 5, f"Adam LR far too high: {diverge}",
                     {"hidden": [128, 128], "n_train": n, "batch_size": 32, "betas": (0.9, 0.999)},
                     {"lr": ("log", *hi_range), "hidden": ("choice", [[128, 128], [192, 96]]),
                      "n_train": ("int", *n_range), "batch_size": ("choice", [24, 32]), "betas": ("choice", _BETAS)}),
            Scenario("plateau", Hyperparams(lr=lr_lo), 20, 5,
                     "Adam LR far too low: validation MSE creeps down and the run ends under-trained",
                     {"hidden": [64, 64], "n_train": n, "batch_size": 32, "betas": (0.9, 0.999)},
                     {"lr": ("log", *lo_range), "hidden": ("choice", [[64, 64], [96, 48]]),
                      "n_train": ("int", *n_range), "batch_size": ("choice", [24, 32]), "betas": ("choice", _BETAS)}),
            Scenario("healthy", Hyperparams(lr=2e-3, weight_decay=1e-4, dropout=0.05), 20, 5,
                     f"a sensible Adam recipe on {n} rows: the best move is to leave it alone",
                     {"hidden": healthy_hidden[0], "n_train": n, "batch_size": 32, "betas": (0.9, 0.999)},
                     {"lr": ("log", 1.2e-3, 3e-3), "weight_decay": ("log", 5e-5, 3e-4), "dropout": ("uniform", 0.0, 0.1),
                      "hidden": ("choice", healthy_hidden), "n_train": ("int", *n_range), "betas": ("choice", _BETAS)}),
        ]
    }


class AdamMLPRegression(MSERegression):
    """A ReLU MLP regressor with plain Adam on ``table()``: ``n_val`` validation and ``n_test`` test rows, the
    scenario member's ``n_train`` training rows (``regression_split``: a fixed seed-0 permutation, standardised with
    training statistics)."""

    model_descriptor = "MLP regressor (ReLU, dropout), Adam with coupled L2"
    n_features: int
    n_val: int = 250
    n_test: int = 250

    def table(self):
        """The whole table as ``(features, target)`` arrays (n x d and n)."""
        raise NotImplementedError

    def data(self, scenario: Scenario):
        x, y = self.table()
        return regression_split(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32),
                                self.n_val, self.n_test, scenario.settings["n_train"])

    def make_model(self, scenario: Scenario, hp: Hyperparams) -> nn.Module:
        return mlp([self.n_features, *scenario.settings["hidden"], 1], hp.dropout)

    def make_optimizer(self, model, scenario, hp):
        return adam(model, scenario, hp)
