"""``digits-cnn``: a small convolutional network on scikit-learn's bundled 8x8 digits, read as 1x8x8 images, trained
with Adam.

- **Data**: the fixed split of ``digits-mlp`` (``digits_split``: 400 validation and 400 test images, a
  scenario-sized training set), pixels in [0, 1] reshaped to one-channel 8x8 images.
- **Model** (``SmallCNN``): two 3x3 convolutions (``c1`` then ``c2`` channels, ReLU), a 2x2 max-pool to 4x4 (the
  ``pool`` setting; without it the head sees all 8x8 positions and has four times the weights), then a fully
  connected head of ``hidden`` units with an ``nn.Dropout`` before each linear layer, so the ``dropout`` knob acts
  on the head.
- **Optimizer**: ``torch.optim.Adam`` with the scenario's ``betas``. Its ``weight_decay`` is the classic L2 term
  added to the gradient (not AdamW's decoupled decay), so Adam rescales it like any other gradient.
- **Loss**: cross-entropy; accuracy is reported. The run's seed drives weight initialisation, data order and
  dropout masks.

Scenario families (each seed draws its own member; the ranges keep the failure mode):

- ``overfit``: an unpooled CNN with a wide head on 50-90 images, Adam lr 2e-3-4e-3 with a short second-moment
  memory (beta2 0.95-0.98) and 25 steps an epoch: the training set is memorised by about epoch 4 and validation
  loss climbs steadily from there as the logits keep growing. Stopping at the decision epoch or raising weight
  decay helps (lowering the LR only slows the climb a little).
- ``diverge``: Adam lr 0.025-0.05, about ten times too high: the loss jumps about, and some runs fall to chance
  with dead units and never recover. Halving the LR helps, doubling it hurts.
- ``plateau``: Adam lr 1e-4-2e-4, about twenty times too low: the loss creeps down and the run ends under-trained
  (validation accuracy 65-90%). Doubling the LR helps a lot.
- ``healthy``: Adam lr 2.5e-3-4e-3 on 750-950 images with some L2 and dropout: the run converges, and no single
  intervention gains more than the run's own noise.

An epoch is one shuffled pass over the training split, or a fixed number of steps (``steps_per_epoch``) drawn from
as many passes as that takes.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Classification, Hyperparams, Scenario, adam
from .digits import digits_split


class SmallCNN(nn.Module):
    """``conv3x3(1->c1)``, ReLU, ``conv3x3(c1->c2)``, ReLU, [2x2 max-pool], dropout, ``linear(-> hidden)``, ReLU,
    dropout, ``linear(hidden -> 10)``."""

    def __init__(self, c1: int, c2: int, hidden: int, dropout: float, pool: bool = True):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2) if pool else nn.Identity(),
        )
        side = 4 if pool else 8
        self.head = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(c2 * side * side, hidden), nn.ReLU(),
            nn.Dropout(dropout), nn.Linear(hidden, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class DigitsCNN(Classification):
    """A small CNN on the 8x8 digits as images, trained with Adam (see the module docs for the scenarios).

    Example
    -------
    >>> from tmsim.tasks.digits_cnn import DigitsCNN
    >>> task = DigitsCNN()
    >>> state = task.build("healthy", seed=0)
    >>> task.optimizer_info(state)[0]
    'adam'
    >>> tuple(task.data(state.scenario)["train"][0].shape[1:])
    (1, 8, 8)
    """

    name = "digits-cnn"
    model_descriptor = "CNN: two 3x3 conv layers + MLP head"
    dataset_descriptor = "sklearn digits as 1x8x8 images, fixed split"

    SCENARIOS = {
        s.name: s
        for s in [
            Scenario("overfit", Hyperparams(lr=3e-3), 20, 5,
                     "unpooled CNN with a wide head on 70 images, Adam lr 3e-3 beta2 0.95: the training set is "
                     "memorised within a few epochs and validation loss climbs from there",
                     {"c1": 8, "c2": 24, "hidden": 256, "pool": False, "n_train": 70, "batch_size": 8,
                      "steps_per_epoch": 25, "betas": (0.9, 0.95)},
                     {"lr": ("log", 2e-3, 4e-3), "c1": ("choice", [8, 12]), "c2": ("choice", [16, 24]),
                      "hidden": ("choice", [192, 256, 320]), "n_train": ("int", 50, 90),
                      "betas": ("choice", [(0.9, 0.95), (0.9, 0.98)])}),
            Scenario("diverge", Hyperparams(lr=0.035), 20, 5,
                     "Adam LR about ten times too high: the loss jumps about, some runs fall to chance and stay there",
                     {"c1": 8, "c2": 16, "hidden": 64, "n_train": 500, "batch_size": 32, "betas": (0.9, 0.999)},
                     {"lr": ("log", 0.025, 0.05), "c1": ("choice", [8, 12]), "c2": ("choice", [16, 24]),
                      "hidden": ("choice", [48, 64, 96]), "n_train": ("int", 400, 600),
                      "batch_size": ("choice", [24, 32]),
                      "betas": ("choice", [(0.9, 0.999), (0.9, 0.99)])}),
            Scenario("plateau", Hyperparams(lr=1.4e-4), 20, 5,
                     "Adam LR about twenty times too low: the loss creeps down and the run ends under-trained",
                     {"c1": 8, "c2": 16, "hidden": 64, "n_train": 500, "batch_size": 32, "betas": (0.9, 0.999)},
                     {"lr": ("log", 1e-4, 2e-4), "c1": ("choice", [8, 12]), "c2": ("choice", [16, 24]),
                      "hidden": ("choice", [48, 64, 96]), "n_train": ("int", 400, 600),
                      "batch_size": ("choice", [24, 32]),
                      "betas": ("choice", [(0.9, 0.999), (0.9, 0.99)])}),
            Scenario("healthy", Hyperparams(lr=3e-3, weight_decay=7e-4, dropout=0.25), 20, 5,
                     "a sensible recipe on 850 images with some L2 and dropout: the best move is to leave it alone",
                     {"c1": 12, "c2": 24, "hidden": 96, "n_train": 850, "batch_size": 32, "betas": (0.9, 0.999)},
                     {"lr": ("log", 2.5e-3, 4e-3), "weight_decay": ("log", 5e-4, 1e-3),
                      "dropout": ("uniform", 0.2, 0.3),
                      "c1": ("choice", [12, 16]), "c2": ("choice", [24, 32]), "hidden": ("choice", [64, 96, 128]),
                      "n_train": ("int", 750, 950), "batch_size": ("choice", [32, 48])}),
        ]
    }

    def make_optimizer(self, model: nn.Module, scenario: Scenario, hp: Hyperparams) -> torch.optim.Optimizer:
        return adam(model, scenario, hp)

    def epoch_order(self, n: int, bs: int, steps: int | None, gen: torch.Generator) -> list[torch.Tensor]:
        """Minibatches of shuffled passes over the training split, chained until the epoch has ``steps`` of them
        (without ``steps``, one pass). On a few dozen images one pass is only a handful of steps, so the
        ``overfit`` family sets an epoch to several passes' worth."""
        order = super().epoch_order(n, bs, None, gen)
        while steps and len(order) < steps:
            order += super().epoch_order(n, bs, None, gen)
        return order[:steps] if steps else order

    def data(self, scenario: Scenario) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return {k: (x.reshape(-1, 1, 8, 8), y) for k, (x, y) in digits_split(scenario.settings["n_train"]).items()}

    def make_model(self, scenario: Scenario, hp: Hyperparams) -> nn.Module:
        s = scenario.settings
        return SmallCNN(s["c1"], s["c2"], s["hidden"], hp.dropout, s.get("pool", True))
