"""``cancer-mlp``: an MLP classifier on scikit-learn's bundled breast-cancer data, trained with plain Adam.

Data: 569 tumours, 30 measured features, malignant or benign. The split is fixed (a seed-0 permutation): 120
validation rows, 120 test rows, and the first ``n_train`` of the remaining 329 rows for training. Features are
standardised with the mean and standard deviation of the training rows only.

Model: ReLU MLP with ``nn.Dropout`` after every hidden layer (dropout is a live knob), two logits. Loss: cross-entropy;
``val_loss`` is that loss and ``val_acc`` the accuracy. Optimizer: ``torch.optim.Adam`` with the member's ``betas``
and the run's weight decay as a classic (coupled) L2 term, which Adam's per-parameter scaling weakens.

Scenarios (library v5; each a family, every seed draws its own member). Every family draws its LR, weight decay,
dropout, batch size and betas from one shared range (``adam_regression.SHARED_ADAM``); the cause is hidden
(``tmsim.tasks.hidden``):

- ``overfit``: a wide MLP on 40-70 rows, 15-35% of whose labels are flipped from a drawn epoch on (0-12): the rows
  are fitted, the model grows over-confident and validation cross-entropy climbs; stopping early or a lower LR helps.
- ``diverge``: one very wide hidden layer (2048-4096 units): Adam moves every output weight by about the LR each step,
  confident mistakes blow the cross-entropy up; a lower LR helps, a higher one blows up.
- ``plateau``: features scaled down 200-700x: the first layer learns far too slowly; a higher LR helps.
- ``healthy``: a small MLP on every clean, standardised training row: leave it alone.
"""
from __future__ import annotations

import torch
from torch import nn

from .adam_regression import SHARED_ADAM
from .base import Classification, Hyperparams, Scenario, adam
from .hidden import overlapping_families
from .diabetes import tabular_split
from .digits import mlp

_VAL, _TEST = 120, 120


class CancerMLP(Classification):
    name = "cancer-mlp"
    model_descriptor = "MLP classifier (ReLU, dropout), Adam with coupled L2"
    dataset_descriptor = "sklearn breast cancer (569 x 30), standardised, fixed split"

    SCENARIOS = overlapping_families(Hyperparams(lr=2e-3, weight_decay=1e-4, dropout=0.05), SHARED_ADAM, {
        "overfit": ("a wide MLP on 40-70 rows, with a share of flipped labels from a drawn epoch on: the rows are "
                    "fitted, the model grows over-confident and validation cross-entropy climbs",
                    {"hidden": [256, 256], "n_train": 55},
                    {"hidden": ("choice", [[256, 256], [384, 192], [320]]), "n_train": ("int", 40, 70),
                     "label_noise": ("uniform", 0.15, 0.35), "noise_onset": ("int", 0, 12)}),
        "diverge": ("a very wide single hidden layer (2048-4096 units): Adam moves every output weight by about the "
                    "LR each step, so the output jumps about and confident mistakes blow the cross-entropy up",
                    {"hidden": [2048], "n_train": 300},
                    {"hidden": ("choice", [[2048], [3072], [4096]]), "n_train": ("int", 260, 329)}),
        "plateau": ("features scaled down 200-700x: the first layer learns far too slowly and the run ends "
                    "under-trained",
                    {"hidden": [64], "n_train": 300},
                    {"hidden": ("choice", [[64], [96], [48, 48]]), "n_train": ("int", 260, 329),
                     "input_scale": ("log", 0.0015, 0.005)}),
        "healthy": ("a small MLP on every clean, standardised training row: the best move is to leave it alone",
                    {"hidden": [32], "n_train": 300},
                    {"hidden": ("choice", [[24], [32], [48]]), "n_train": ("int", 260, 329)}),
    })

    def data(self, scenario: Scenario):
        from sklearn.datasets import load_breast_cancer

        d = load_breast_cancer()
        return tabular_split(torch.tensor(d.data, dtype=torch.float32), torch.tensor(d.target, dtype=torch.long),
                             _VAL, _TEST, scenario.settings["n_train"])

    def make_model(self, scenario: Scenario, hp: Hyperparams) -> nn.Module:
        return mlp([30, *scenario.settings["hidden"], 2], hp.dropout)

    def make_optimizer(self, model, scenario, hp):
        return adam(model, scenario, hp)
