"""The discrete action menu and what each action does to the hyperparameters in force.

The menu is shared by the trace-tree recorder (which trains every offered action at a decision epoch) and by the
policy side (which may only choose among offered actions). An action is *offered* only when it would change
something: ``dropout_up`` at the dropout ceiling is not on the menu.

Example
-------
>>> from tmsim.tasks import Hyperparams
>>> apply_action(Hyperparams(lr=0.1), "lr_down").lr
0.05
>>> offered_actions(Hyperparams(lr=0.1), losses=1)[:3]
('continue', 'lr_down', 'lr_up')
"""
from __future__ import annotations

from .tasks.base import Hyperparams

#: Multipliers and steps of the discrete actions. Exposed so docs, prompts and tests share one source.
LR_FACTOR = 2.0
WD_FACTOR = 10.0
WD_FLOOR = 5e-4  # weight_decay_up from zero sets this value
DROPOUT_STEP = 0.1
DROPOUT_MAX = 0.5
AUX_FACTOR = 4.0

#: Every action name tmsim knows, in menu order.
ACTIONS = (
    "continue",
    "lr_down",
    "lr_up",
    "weight_decay_up",
    "weight_decay_down",
    "dropout_up",
    "dropout_down",
    "aux_weight_up",
    "aux_weight_down",
    "stop",
)

#: The actions the recorder trains at every decision epoch (the do-nothing path is the run itself).
RECORD_MENU = ("lr_down", "lr_up", "weight_decay_up", "dropout_up", "stop")
RECORD_MENU_MULTILOSS = RECORD_MENU[:-1] + ("aux_weight_up", "aux_weight_down", "stop")


def apply_action(hp: Hyperparams, action: str) -> Hyperparams:
    """The hyperparameters after ``action``; ``continue`` and ``stop`` leave them unchanged."""
    if action in ("continue", "stop"):
        return hp
    if action == "lr_down":
        return hp.with_(lr=hp.lr / LR_FACTOR)
    if action == "lr_up":
        return hp.with_(lr=hp.lr * LR_FACTOR)
    if action == "weight_decay_up":
        return hp.with_(weight_decay=hp.weight_decay * WD_FACTOR if hp.weight_decay > 0 else WD_FLOOR)
    if action == "weight_decay_down":
        wd = hp.weight_decay / WD_FACTOR
        return hp.with_(weight_decay=0.0 if wd < WD_FLOOR else wd)
    if action == "dropout_up":
        return hp.with_(dropout=max(hp.dropout, round(min(hp.dropout + DROPOUT_STEP, DROPOUT_MAX), 6)))
    if action == "dropout_down":
        return hp.with_(dropout=min(hp.dropout, round(max(hp.dropout - DROPOUT_STEP, 0.0), 6)))
    if action in ("aux_weight_up", "aux_weight_down"):
        if hp.aux_loss_weight is None:
            return hp
        f = AUX_FACTOR if action == "aux_weight_up" else 1 / AUX_FACTOR
        return hp.with_(aux_loss_weight=hp.aux_loss_weight * f)
    raise ValueError(f"unknown action {action!r}; known: {', '.join(ACTIONS)}")


def offered_actions(hp: Hyperparams, losses: int, candidates: tuple[str, ...] = ACTIONS) -> tuple[str, ...]:
    """The actions of ``candidates`` that would change something for a run with ``hp`` and ``losses`` losses."""
    out = []
    for a in candidates:
        if a in ("continue", "stop"):
            out.append(a)
        elif a.startswith("aux_") and losses < 2:
            continue
        elif apply_action(hp, a) != hp:
            out.append(a)
    return tuple(out)
