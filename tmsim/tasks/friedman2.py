"""``friedman2-adam``: an MLP regressor on generated Friedman #2 data, trained with plain Adam.

Data: ``sklearn.datasets.make_friedman2`` with a fixed ``random_state``: 1,200 rows of 4 features (the impedance of a
circuit, ``sqrt(x1^2 + (x2 x3 - 1 / (x2 x4))^2)``) plus Gaussian noise. The split is fixed (a seed-0 permutation):
250 validation rows, 250 test rows, and the first ``n_train`` of the remaining 700 for training. Features and target
are standardised with statistics of the training rows only; predicting the training mean scores a validation MSE
near 1.

Model: ReLU MLP with ``nn.Dropout`` after every hidden layer (dropout is a live knob). Loss: MSE on the standardised
target; there is no accuracy. Optimizer: ``torch.optim.Adam`` with the member's ``betas`` and the run's weight decay as
a classic (coupled) L2 term.

Scenarios (library v5; each a family, every seed draws its own member). Every family draws its LR, weight decay,
dropout, batch size and betas from one shared range (``adam_regression.SHARED_ADAM``), so the recipe does not say
which family a run is from; the cause is hidden (``tmsim.tasks.hidden``):

- ``overfit``: a wide MLP on 50-80 rows whose targets get Gaussian noise (sd 0.5-1.0) from a drawn epoch on
  (0-12): the noise is memorised and validation MSE climbs, sooner or later.
- ``diverge``: one very wide hidden layer (2048-4096 units): Adam moves every output weight by about the LR each step,
  so the loss is noisy and a lower LR helps.
- ``plateau``: features scaled down 200-700x (a pipeline that standardised twice): the first layer learns far too
  slowly and the run ends under-trained; a higher LR helps, weight decay hurts badly.
- ``healthy``: 300-450 clean, standardised rows: leave it alone.
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
