"""Reading and turning the knobs of a real run: the optimizer's param groups, the LR scheduler's own state, the
model's dropout modules. The live hook reads what it steers from these objects (never from a hand-written mirror),
applies validated actions to them, and reads them back for the trace. The Trainer recorder
(``tmsim record --trainer``) applies its branches' actions with the same functions.

**Learning rate.** An LR change is a factor ``f`` applied to every param group *and* to every number a scheduler keeps
that it computes LRs from, so the change survives the schedule: ``base_lrs`` (every scheduler that has them, children
of ``SequentialLR``/``ChainedScheduler`` included), ``eta_min`` (``CosineAnnealingLR``, ``CosineAnnealingWarmRestarts``),
``max_lrs`` (``CyclicLR``), the groups' ``initial_lr``/``max_lr``/``min_lr`` (``OneCycleLR`` keeps its cycle there),
``min_lrs`` (``ReduceLROnPlateau``) and ``_last_lr`` (what ``get_last_lr()`` reports, and what trainers log). Each of
these schedules is linear in those numbers, so a run with the change follows its no-change twin times ``f`` from the
change on. A scheduler of another class (a subclass of none of torch's) keeps state tmsim cannot know, so the hook
refuses it at start (``UnsupportedScheduler``) rather than let it undo changes silently.

**Weight decay.** Groups at zero weight decay stay at zero (the HF ``Trainer``'s bias/norm group, embeddings a user
excluded): a change is a factor on the groups that decay. Only when no group decays yet does ``weight_decay_up`` start
decay, on the groups holding a matrix (a parameter with ``ndim >= 2``), as the recorded tasks and HF's decay group do.

**Dropout.** ``p`` of every ``nn.Dropout`` (and subclasses) and every float ``attention_dropout`` attribute (read at
forward time by Qwen-style attention). The nominal dropout is the largest of them; a change shifts each by the same
amount (clamped at 0), so modules keep their offsets.

Example
-------
>>> import torch
>>> from torch import nn
>>> m = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.1))
>>> opt = torch.optim.SGD(m.parameters(), lr=0.1)
>>> sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10)
>>> scale_lr(opt, sched, 0.5); opt.param_groups[0]["lr"], sched.base_lrs
(0.05, [0.05])
>>> read_knobs(opt, sched, m)
{'lr': 0.05, 'weight_decay': 0.0, 'dropout': 0.1}
"""
from __future__ import annotations

from typing import Any


class UnsupportedScheduler(ValueError):
    """A scheduler whose state tmsim does not know how to scale: an LR change could be undone by it."""


#: torch's schedulers the hook knows, by class name (each handled by ``scale_lr``).
KNOWN_SCHEDULERS = ("LambdaLR", "MultiplicativeLR", "StepLR", "MultiStepLR", "ConstantLR", "LinearLR", "ExponentialLR",
                    "SequentialLR", "CosineAnnealingLR", "ChainedScheduler", "ReduceLROnPlateau", "CyclicLR",
                    "CosineAnnealingWarmRestarts", "OneCycleLR", "PolynomialLR")


def _known_classes() -> tuple[type, ...]:
    from torch.optim import lr_scheduler

    return tuple(getattr(lr_scheduler, n) for n in KNOWN_SCHEDULERS if hasattr(lr_scheduler, n))


def check_scheduler(scheduler: Any) -> None:
    """Raise ``UnsupportedScheduler`` (naming the class) unless every scheduler in ``scheduler`` (children too) is one
    of torch's, or a subclass of one."""
    if scheduler is None:
        return
    known = _known_classes()
    for s in _tree(scheduler):
        if not isinstance(s, known):
            raise UnsupportedScheduler(
                f"the LR scheduler {type(s).__module__}.{type(s).__qualname__} is not one of torch.optim.lr_scheduler's "
                f"({', '.join(KNOWN_SCHEDULERS)}) nor a subclass of one: it may recompute the LR from state tmsim cannot "
                "scale, undoing every LR change. Use one of those, or attach no scheduler and step the LR yourself")


def _tree(scheduler: Any) -> list[Any]:
    out = [scheduler]
    for child in getattr(scheduler, "_schedulers", None) or ():
        out.extend(_tree(child))
    return out


def _scaled(v: Any, f: float) -> Any:
    """``v * f``; a tensor LR (``capturable`` optimizers) is scaled in place, so the optimizer keeps its tensor."""
    if hasattr(v, "mul_"):
        v.mul_(f)
        return v
    return v * f


def scale_lr(optimizer: Any, scheduler: Any, f: float) -> None:
    """Multiply the LR of every param group and every LR the scheduler computes from by ``f`` (module docs)."""
    for g in optimizer.param_groups:
        for key in ("lr", "initial_lr", "max_lr", "min_lr"):  # the last two: OneCycleLR's cycle
            if key in g and g[key] is not None:
                g[key] = _scaled(g[key], f)
    if scheduler is None:
        return
    for s in _tree(scheduler):
        for name in ("base_lrs", "max_lrs", "min_lrs", "_last_lr"):
            vals = getattr(s, name, None)
            if isinstance(vals, (list, tuple)):
                setattr(s, name, [_scaled(v, f) for v in vals])
        for name in ("eta_min", "default_min_lr"):
            v = getattr(s, name, None)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                setattr(s, name, v * f)


def _float(v: Any) -> float:
    return float(v.item()) if hasattr(v, "item") else float(v)


def nominal_lr(optimizer: Any, scheduler: Any) -> float:
    """The run's LR as a policy sees it: the first group's schedule base (``base_lrs[0]``) when the scheduler has one,
    else the first group's current LR (``ReduceLROnPlateau`` and no scheduler)."""
    base = getattr(scheduler, "base_lrs", None) if scheduler is not None else None
    if isinstance(base, (list, tuple)) and base:
        return _float(base[0])
    return _float(optimizer.param_groups[0]["lr"])


def _has_matrix(group: dict) -> bool:
    return any(getattr(p, "ndim", 2) >= 2 for p in group["params"])


def decay_targets(optimizer: Any) -> list[int]:
    """Indices of the groups a weight-decay change acts on: those that decay, or (none does) those holding a matrix."""
    groups = optimizer.param_groups
    decaying = [i for i, g in enumerate(groups) if float(g.get("weight_decay", 0.0) or 0.0) > 0]
    if decaying:
        return decaying
    return [i for i, g in enumerate(groups) if "weight_decay" in g and _has_matrix(g)]


def nominal_weight_decay(optimizer: Any) -> float:
    return max((float(g.get("weight_decay", 0.0) or 0.0) for g in optimizer.param_groups), default=0.0)


def set_weight_decay(optimizer: Any, new: float) -> list[tuple[float, float]]:
    """Move the nominal weight decay to ``new`` (module docs); returns (before, after) per group acted on."""
    old = nominal_weight_decay(optimizer)
    changed = []
    for i in decay_targets(optimizer):
        g = optimizer.param_groups[i]
        before = float(g.get("weight_decay", 0.0) or 0.0)
        after = before * (new / old) if old > 0 else new
        g["weight_decay"] = after
        changed.append((before, after))
    return changed


def dropout_sites(model: Any) -> list[tuple[Any, str]]:
    """(object, attribute) of every dropout probability in ``model``: ``nn.Dropout*.p`` and float ``attention_dropout``."""
    if model is None:
        return []
    from torch import nn

    sites = []
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            sites.append((m, "p"))
        ad = getattr(m, "attention_dropout", None)
        if isinstance(ad, float) and not isinstance(ad, bool):
            sites.append((m, "attention_dropout"))
    return sites


def nominal_dropout(model: Any) -> float | None:
    """The largest dropout probability in ``model``; None when it has none to turn."""
    sites = dropout_sites(model)
    return max(float(getattr(m, a)) for m, a in sites) if sites else None


def shift_dropout(model: Any, new: float) -> list[tuple[float, float]]:
    """Shift every dropout probability so the largest becomes ``new``; returns (before, after) per site."""
    old = nominal_dropout(model)
    if old is None:
        return []
    delta = new - old
    out = []
    for m, a in dropout_sites(model):
        before = float(getattr(m, a))
        after = round(min(max(before + delta, 0.0), 0.99), 9)
        setattr(m, a, after)
        out.append((before, after))
    return out


def read_knobs(optimizer: Any, scheduler: Any, model: Any) -> dict[str, float]:
    """The knobs the objects hold now (only those that are attached): ``lr``, ``weight_decay``, ``dropout``."""
    out: dict[str, float] = {}
    if optimizer is not None:
        out["lr"] = nominal_lr(optimizer, scheduler)
        out["weight_decay"] = nominal_weight_decay(optimizer)
    d = nominal_dropout(model)
    if d is not None:
        out["dropout"] = d
    return out


def apply_knobs(optimizer: Any, scheduler: Any, model: Any, old: Any, new: Any) -> None:
    """Turn the attached objects from the knob values ``old`` to ``new`` (``Hyperparams``): the LR by the factor
    ``new.lr / old.lr`` (``scale_lr``), weight decay to ``new.weight_decay`` (``set_weight_decay``), dropout to
    ``new.dropout`` (``shift_dropout``); a knob whose value does not change is left alone. The live hook and the
    Trainer recorder apply every action through this one function."""
    if new.lr != old.lr:
        scale_lr(optimizer, scheduler, new.lr / old.lr)
    if new.weight_decay != old.weight_decay:
        set_weight_decay(optimizer, new.weight_decay)
    if new.dropout != old.dropout:
        shift_dropout(model, new.dropout)
