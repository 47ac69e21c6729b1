"""Plain-Adam MLP regressors on a table: the base class of ``friedman2-adam``, ``swissroll-adam`` and
``sparse-adam``, and the four scenario families they share.

A task gives its table (``table()``: features and target as arrays), its split sizes and the numbers where its
families differ (``adam_regression_families``); the model (a ReLU MLP with ``nn.Dropout`` after every hidden layer),
the loss (MSE on the standardised target), the optimizer (``torch.optim.Adam`` with the member's ``betas`` and the
run's weight decay as a coupled L2 term) and the split (``regression_split``) are the same for all of them.

Example
-------
>>> fam = adam_regression_families(small_rows=(50, 80), rows=(500, 700), healthy_hidden=[[64, 64], [96, 48], [128]])
>>> sorted(fam), fam["plateau"].family["lr"] == fam["overfit"].family["lr"]
(['diverge', 'healthy', 'overfit', 'plateau'], True)
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Hyperparams, MSERegression, Scenario, adam
from .hidden import overlapping_families
from .diabetes import regression_split
from .digits import mlp

def adam_regression_families(*, small_rows: tuple[int, int], rows: tuple[int, int], healthy_hidden: list[list[int]],
                             memorised: str = "the noise is") -> dict[str, Scenario]:
    """The four families of a plain-Adam regression task (library v5). Every family draws its learning rate, weight
    decay, dropout, batch size and betas from ``SHARED_ADAM``, so the recipe does not say which family a run is
    from; what differs is hidden (``tmsim.tasks.hidden``):

    - ``overfit``: a wide MLP on ``small_rows`` rows whose targets get Gaussian noise (sd 0.5-1.0) from a drawn epoch
      on (0-12): ``memorised`` memorised and validation MSE climbs, sooner or later;
    - ``diverge``: one very wide hidden layer (2048-4096 units): Adam moves every output weight by about the LR each
      step, so the loss is noisy and a lower LR helps;
    - ``plateau``: features scaled down 200-700x (a pipeline that standardised twice): the first layer learns far
      too slowly and the run ends under-trained; a higher LR helps, weight decay hurts badly;
    - ``healthy``: ``rows`` clean, standardised rows: leave it alone.

    ``rows`` is also the range of training rows of ``diverge`` and ``plateau``; ``healthy_hidden`` lists the widths
    of ``healthy`` and ``plateau``."""
    wide = ("choice", [[256, 256], [384, 192], [320]])
    return overlapping_families(Hyperparams(lr=2e-3, weight_decay=1e-4, dropout=0.05), SHARED_ADAM, {
        "overfit": (f"a wide MLP on {small_rows[0]}-{small_rows[1]} rows, with noisy targets from a drawn epoch on: "
                    f"{memorised} memorised and validation MSE climbs",
                    {"hidden": [256, 256], "n_train": small_rows[0]},
                    {"hidden": wide, "n_train": ("int", *small_rows), "label_noise": ("uniform", 0.5, 1.0),
                     "noise_onset": ("int", 0, 12)}),
        "diverge": ("one very wide hidden layer (2048-4096 units): Adam moves every output weight by about the LR each "
                    "step, so the loss jumps about and the run ends above a sensible one",
                    {"hidden": [128, 128], "n_train": rows[0]},
                    {"hidden": ("choice", [[2048], [3072], [4096]]), "n_train": ("int", *rows)}),
        "plateau": ("features scaled down 200-700x: the first layer learns far too slowly and the run ends under-trained",
                    {"hidden": healthy_hidden[0], "n_train": rows[0]},
                    {"hidden": ("choice", healthy_hidden), "n_train": ("int", *rows),
                     "input_scale": ("log", 0.0015, 0.005)}),
        "healthy": (f"enough clean, standardised rows ({rows[0]}-{rows[1]}): the best move is to leave it alone",
                    {"hidden": healthy_hidden[0], "n_train": rows[0]},
                    {"hidden": ("choice", healthy_hidden), "n_train": ("int", *rows)}),
    })


#: The hyperparameter ranges every family of a plain-Adam task draws from (library v5).
SHARED_ADAM = {"lr": ("log", 1e-3, 4e-3), "weight_decay": ("log", 3e-5, 3e-4), "dropout": ("uniform", 0.0, 0.1),
               "batch_size": ("choice", [16, 32]), "betas": ("choice", [(0.9, 0.999), (0.9, 0.99), (0.85, 0.98)])}


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
