"""``swissroll-adam``: an MLP regressor that reads a point's position along a noisy Swiss roll, trained with plain Adam.

Data: ``sklearn.datasets.make_swiss_roll`` with a fixed ``random_state``: 1,400 points on a rolled-up sheet in 3-D
plus Gaussian noise; the target is the point's position along the roll (the sheet's unrolled coordinate), a smooth
but strongly non-linear function of the three coordinates. The split is fixed (a seed-0 permutation): 250 validation
rows, 250 test rows, and the first ``n_train`` of the remaining 900 for training. Features and target are
standardised with statistics of the training rows only; predicting the training mean scores a validation MSE near 1.

Model: ReLU MLP with ``nn.Dropout`` after every hidden layer (dropout is a live knob). Loss: MSE on the standardised
target; there is no accuracy. Optimizer: ``torch.optim.Adam`` with the member's ``betas`` and the run's weight decay
as a classic (coupled) L2 term.

Scenarios (library v5): the four plain-Adam families of ``adam_regression_families`` (overfit on 60-100 rows,
the other three on 350-500); their recipes overlap and their causes are hidden.
"""
from __future__ import annotations

from .adam_regression import AdamMLPRegression, adam_regression_families

_ROWS, _NOISE, _DATA_SEED = 1_400, 2.5, 2


class SwissRollAdam(AdamMLPRegression):
    name = "swissroll-adam"
    dataset_descriptor = (f"sklearn make_swiss_roll ({_ROWS} x 3, noise {_NOISE}, random_state {_DATA_SEED}), "
                          "target the position along the roll, standardised, fixed split")
    n_features = 3

    SCENARIOS = adam_regression_families(small_rows=(60, 100), rows=(350, 500), healthy_hidden=[[64, 64], [96, 48], [128]])

    def table(self):
        from sklearn.datasets import make_swiss_roll

        return make_swiss_roll(n_samples=_ROWS, noise=_NOISE, random_state=_DATA_SEED)
