"""``sparse-adam``: an MLP regressor on generated sparse linear data with many distractor features, trained with
plain Adam.

Data: ``sklearn.datasets.make_sparse_uncorrelated`` with a fixed ``random_state``: 1,400 rows of 10 independent
Gaussian features of which only the first four set the target (a linear function, plus unit Gaussian noise); the
other six are distractors an over-parameterised network can fit noise with. The split is fixed (a seed-0
permutation): 250 validation rows, 250 test rows, and the first ``n_train`` of the remaining 900 for training.
Features and target are standardised with statistics of the training rows only; predicting the training mean scores
a validation MSE near 1.

Model: ReLU MLP with ``nn.Dropout`` after every hidden layer (dropout is a live knob). Loss: MSE on the standardised
target; there is no accuracy. Optimizer: ``torch.optim.Adam`` with the member's ``betas`` and the run's weight decay
as a classic (coupled) L2 term.

Scenarios (library v5): the four plain-Adam families of ``adam_regression_families`` (overfit on 30-50 rows,
the other three on 350-500); their recipes overlap and their causes are hidden.
"""
from __future__ import annotations

from .adam_regression import AdamMLPRegression, adam_regression_families

_ROWS, _DATA_SEED = 1_400, 4


class SparseAdam(AdamMLPRegression):
    name = "sparse-adam"
    dataset_descriptor = (f"sklearn make_sparse_uncorrelated ({_ROWS} x 10, 4 informative, random_state {_DATA_SEED}), "
                          "standardised, fixed split")
    n_features = 10

    SCENARIOS = adam_regression_families(small_rows=(30, 50), rows=(350, 500), healthy_hidden=[[32, 32], [48, 24], [64]],
                                         memorised="distractors and noise are")

    def table(self):
        from sklearn.datasets import make_sparse_uncorrelated

        return make_sparse_uncorrelated(n_samples=_ROWS, n_features=self.n_features, random_state=_DATA_SEED)
