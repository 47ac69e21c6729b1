"""``diabetes-mlp``: an MLP regressor on scikit-learn's bundled diabetes data, trained with AdamW.

Data: 442 patients, 10 baseline features, a disease-progression target one year later. The split is fixed (a
seed-0 permutation): 100 validation rows, 100 test rows, and the first ``n_train`` of the remaining 242 rows for
training. Features and target are standardised with the mean and standard deviation of the training rows only, so
no statistic leaks from validation or test, and a model that predicts the training mean scores a validation MSE
near 1.

Model: ReLU MLP with ``nn.Dropout`` after every hidden layer (dropout is a live knob). Loss: MSE on the
standardised target; ``val_loss`` is that MSE and there is no accuracy (``val_acc`` is ``None``). Optimizer:
``torch.optim.AdamW`` with the run's weight decay (decoupled) and the member's ``betas``.

Scenarios (library v5; each a family, every seed draws its own member). Every family draws its LR, weight decay
(0.02-0.2, decoupled), dropout, batch size and betas from one shared range; the cause is hidden
(``tmsim.tasks.hidden``):

- ``overfit``: a wide MLP on 40-60 rows whose targets get Gaussian noise (sd 0.8-1.5) from a drawn epoch on (0-12):
  the noise is memorised and validation MSE climbs; stopping early or more weight decay helps.
- ``diverge``: one very wide hidden layer (2048-4096 units): AdamW moves every output weight by about the LR each
  step, the loss jumps about and some runs blow up; a lower LR helps.
- ``plateau``: features scaled down 170-330x: with AdamW's decay pulling on it, the first layer cannot grow the
  weights it needs and the run ends under-trained; a higher LR helps.
- ``healthy``: a small MLP on every clean, standardised row: leave it alone.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Hyperparams, MSERegression, Scenario, adam
from .hidden import overlapping_families
from .digits import mlp

_VAL, _TEST = 100, 100


def tabular_split(x: torch.Tensor, y: torch.Tensor, n_val: int, n_test: int, n_train: int
                  ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Split rows by a fixed seed-0 permutation into val, test and the first ``n_train`` of the rest, then
    standardise the features with statistics of the training rows only (the targets are left as they are)."""
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    if not 0 < n_train <= len(x) - n_val - n_test:
        raise ValueError(f"n_train must be in 1..{len(x) - n_val - n_test}, got {n_train}")
    parts = {"val": slice(0, n_val), "test": slice(n_val, n_val + n_test),
             "train": slice(n_val + n_test, n_val + n_test + n_train)}
    xt = x[parts["train"]]
    x_mu, x_sd = xt.mean(0), xt.std(0).clamp_min(1e-6)
    return {k: ((x[s] - x_mu) / x_sd, y[s]) for k, s in parts.items()}


def regression_split(x: torch.Tensor, y: torch.Tensor, n_val: int, n_test: int, n_train: int
                     ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``tabular_split`` with the target as a column vector, standardised with statistics of the training rows."""
    parts = tabular_split(x, y.reshape(-1, 1), n_val, n_test, n_train)
    yt = parts["train"][1]
    y_mu, y_sd = yt.mean(0), yt.std(0).clamp_min(1e-6)
    return {k: (xs, (ys - y_mu) / y_sd) for k, (xs, ys) in parts.items()}


class DiabetesMLP(MSERegression):
    name = "diabetes-mlp"
    model_descriptor = "MLP regressor (ReLU, dropout), AdamW"
    dataset_descriptor = "sklearn diabetes (442 x 10), standardised, fixed split"

    SCENARIOS = overlapping_families(Hyperparams(lr=3e-3, weight_decay=0.05, dropout=0.05), {
        "lr": ("log", 1.5e-3, 5e-3), "weight_decay": ("log", 0.02, 0.2), "dropout": ("uniform", 0.0, 0.1),
        "batch_size": ("choice", [12, 16]), "betas": ("choice", [(0.9, 0.999), (0.9, 0.99), (0.85, 0.98)])}, {
        "overfit": ("a wide MLP on 40-60 rows, with noisy targets from a drawn epoch on: the noise is memorised and "
                    "validation MSE climbs",
                    {"hidden": [512, 512], "n_train": 50},
                    {"hidden": ("choice", [[384, 384], [512, 512], [512, 256]]), "n_train": ("int", 40, 60),
                     "label_noise": ("uniform", 0.8, 1.5), "noise_onset": ("int", 0, 12)}),
        "diverge": ("a very wide single hidden layer (2048-4096 units): AdamW moves every output weight by about the "
                    "LR each step, so the loss jumps about and some runs blow up",
                    {"hidden": [2048], "n_train": 242},
                    {"hidden": ("choice", [[2048], [3072], [4096]]), "n_train": ("int", 200, 242)}),
        "plateau": ("features scaled down 170-330x: with AdamW's decay pulling on it, the first layer cannot grow "
                    "the weights it needs, learns far too slowly and the run ends under-trained",
                    {"hidden": [64, 64], "n_train": 242},
                    {"hidden": ("choice", [[64, 64], [96, 48], [48, 48]]), "n_train": ("int", 200, 242),
                     "input_scale": ("log", 0.003, 0.006)}),
        "healthy": ("a small MLP on every clean, standardised training row: the best move is to leave it alone",
                    {"hidden": [32], "n_train": 242},
                    {"hidden": ("choice", [[24], [32], [48]]), "n_train": ("int", 200, 242)}),
    })

    def data(self, scenario: Scenario):
        from sklearn.datasets import load_diabetes

        d = load_diabetes()
        x = torch.tensor(d.data, dtype=torch.float32)
        y = torch.tensor(d.target, dtype=torch.float32)
        return regression_split(x, y, _VAL, _TEST, scenario.settings["n_train"])

    def make_model(self, scenario: Scenario, hp: Hyperparams) -> nn.Module:
        return mlp([10, *scenario.settings["hidden"], 1], hp.dropout)

    def make_optimizer(self, model, scenario, hp):
        # Decoupled weight decay: the weight_decay knob shrinks weights by lr * wd per step, whatever the gradient.
        return adam(model, scenario, hp, decoupled=True)
