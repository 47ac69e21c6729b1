"""Hidden causes: what makes a run fail without showing in any hyperparameter a policy sees.

In library v4 each scenario family had its own learning-rate range, so the recipe alone told a manager what was
wrong and a lookup table that read no telemetry came close to the oracle. The families built here draw their
hyperparameters (learning rate, weight decay, dropout, batch size, momentum or betas) from *one* range shared by the
whole task; what differs between an overfitting, a diverging, a plateauing and a healthy run is a cause a snapshot
does not carry:

- ``n_train`` and ``hidden``: the training-set size and the model's width (fixed settings of the member);
- ``label_noise`` (with ``noise_onset``): from the epoch ``noise_onset`` on (0: from the start), the run trains on a
  copy of its training split whose labels are corrupted: a share ``label_noise`` of the class labels moved to
  another class, or Gaussian noise of standard deviation ``label_noise`` added to a standardised regression target
  (a bad data batch, a labelling vendor that changed). The training loss is measured on the labels the run trains
  on, as a user's own telemetry would be;
- ``loss_scale`` (with ``scale_onset``): from the epoch ``scale_onset`` on, the objective the optimizer minimises is
  the loss times ``loss_scale`` (a ``sum`` reduction where ``mean`` was meant, a loss weight set in a config file);
  the reported losses are unscaled. With SGD this multiplies the effective learning rate; Adam is nearly
  invariant to it, so the Adam tasks use ``input_scale`` instead;
- ``input_scale``: every split's features are multiplied by it (a pipeline that forgot to standardise, or
  standardised twice): a large scale makes the first layer's steps large for Adam and SGD alike, a small one leaves
  it learning far too slowly.

The causes are recorded with the member's other settings (``runs.settings_json``), so analyses can group by them;
no snapshot field carries them (``tests/test_hidden_causes.py`` proves it). Onsets are drawn per seed, so whether
and when a run needs help depends on what its telemetry shows at the decision, not on its recipe.

Example
-------
>>> import torch
>>> data = {"train": (torch.ones(4, 2), torch.tensor([0, 1, 0, 1])), "val": (torch.ones(2, 2), torch.tensor([0, 1]))}
>>> d = prepare(data, {"input_scale": 10.0, "label_noise": 1.0, "noise_onset": 3})
>>> float(d["val"][0][0, 0]), train_split(d, {"noise_onset": 3}, 2)[1].tolist(), bool((d["train_noisy"][1] != d["train"][1]).all())
(10.0, [0, 1, 0, 1], True)
"""
from __future__ import annotations

from typing import Any

import torch

from ..core.hparams import Hyperparams

#: The settings keys of hidden causes (never in a snapshot).
HIDDEN_KEYS = ("n_train", "hidden", "label_noise", "noise_onset", "loss_scale", "scale_onset", "input_scale")


def prepare(data: dict[str, tuple[torch.Tensor, torch.Tensor]], settings: dict[str, Any]
            ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The task's splits with the member's data-side hidden causes applied: ``input_scale`` on every split's
    features, and a corrupted copy of the training split (``"train_noisy"``) when ``label_noise`` is set. The
    corruption is drawn from a fixed generator, so every fork and replicate of a run sees the same labels."""
    out = dict(data)
    scale = settings.get("input_scale")
    if scale is not None and scale != 1:
        out = {k: (x * float(scale), y) for k, (x, y) in out.items()}
    q = settings.get("label_noise")
    if q:
        x, y = out["train"]
        g = torch.Generator().manual_seed(int(settings.get("noise_seed", 0)))
        if y.dtype == torch.long:
            classes = int(max(int(t[1].max()) for t in out.values())) + 1
            flip = torch.rand(len(y), generator=g) < float(q)
            shift = torch.randint(1, classes, (len(y),), generator=g)
            noisy = torch.where(flip, (y + shift) % classes, y)
        else:
            noisy = y + float(q) * torch.randn(y.shape, generator=g)
        out["train_noisy"] = (x, noisy)
    return out


def train_split(data: dict[str, tuple[torch.Tensor, torch.Tensor]], settings: dict[str, Any], epoch: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The training split in force at ``epoch`` (1 = the first epoch trained): the corrupted copy from
    ``noise_onset`` on, the clean one before."""
    if "train_noisy" in data and epoch >= int(settings.get("noise_onset", 0)):
        return data["train_noisy"]
    return data["train"]


def loss_scale(settings: dict[str, Any], epoch: int) -> float | None:
    """The factor on the training objective at ``epoch`` (None: the loss as it is)."""
    c = settings.get("loss_scale")
    if c is None or c == 1 or epoch < int(settings.get("scale_onset", 0)):
        return None
    return float(c)


def overlapping_families(centre: Hyperparams, shared: dict[str, tuple], families: dict[str, tuple[str, dict, dict]],
                         epochs: int = 20, decide_every: int = 5) -> dict[str, "Scenario"]:
    """Scenario families that share one hyperparameter range (``shared``: knob or settings key -> range, as in
    ``Scenario.family``) and differ only in hidden causes. ``families`` maps a name to ``(description, centre
    settings, hidden-cause ranges)``; ``centre`` is every family's centre hyperparameters."""
    from .base import Scenario

    clash = [k for _, _, fam in families.values() for k in fam if k in shared]
    if clash:
        raise ValueError(f"hidden-cause ranges may not redefine a shared range: {sorted(set(clash))}")
    return {name: Scenario(name, centre, epochs, decide_every, desc, dict(settings), {**shared, **fam})
            for name, (desc, settings, fam) in families.items()}
