"""``friedman2-adam``: an MLP regressor on generated Friedman #2 data, trained with plain Adam.

Data: ``sklearn.datasets.make_friedman2`` with a fixed ``random_state``: 1,200 rows of 4 features (the impedance of a
circuit, ``sqrt(x1^2 + (x2 x3 - 1 / (x2 x4))^2)``) plus Gaussian noise. The split is fixed (a seed-0 permutation):
250 validation rows, 250 test rows, and the first ``n_train`` of the remaining 700 for training. Features and target
are standardised with statistics of the training rows only; predicting the training mean scores a validation MSE
near 1.

Model: ReLU MLP with ``nn.Dropout`` after every hidden layer (dropout is a live knob). Loss: MSE on the standardised
target; there is no accuracy. Optimizer: ``torch.optim.Adam`` with the member's ``betas`` and the run's weight decay as
a classic (coupled) L2 term.

Scenarios (library v5): the four plain-Adam families of ``adam_regression_families`` (overfit on 50-80 rows,
the other three on 300-450); their recipes overlap and their causes are hidden.
"""
from __future__ import annotations

from .adam_regression import AdamMLPRegression, adam_regression_families

_ROWS, _NOISE, _DATA_SEED = 1_200, 120.0, 1


class Friedman2Adam(AdamMLPRegression):
    name = "friedman2-adam"
    dataset_descriptor = (f"sklearn make_friedman2 ({_ROWS} x 4, noise {_NOISE}, random_state {_DATA_SEED}), "
                          "standardised, fixed split")
    n_features = 4

    SCENARIOS = adam_regression_families(small_rows=(50, 80), rows=(300, 450), healthy_hidden=[[64, 64], [96, 48], [128]])

    def table(self):
        from sklearn.datasets import make_friedman2

        return make_friedman2(n_samples=_ROWS, noise=_NOISE, random_state=_DATA_SEED)
