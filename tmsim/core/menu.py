"""The one action table: every action tmsim knows, the knob it turns, what it does, how a prompt describes it, and
when it is offered.

The trace-tree recorder trains the actions of ``record_menu``; the validator applies ``apply_action``; prompts
describe actions with ``Action.meaning``; ``set_*`` actions take a continuous value for their knob. An action is
*offered* only when it would change something: ``dropout_up`` at the dropout ceiling is not on the menu, and the
loss-weight actions need a run with two losses.

Example
-------
>>> from tmsim.core import Hyperparams
>>> apply_action(Hyperparams(lr=0.1), "lr_down").lr
0.05
>>> changing_actions(Hyperparams(lr=0.1), losses=1)[:3]
('continue', 'lr_down', 'lr_up')
>>> ACTION_TABLE["weight_decay_up"].knob
'weight_decay'
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .hparams import RL_KNOBS, Hyperparams, run_knobs

#: Multipliers and steps of the discrete actions. Exposed so docs, prompts and tests share one source.
LR_FACTOR = 2.0
WD_FACTOR = 10.0
WD_FLOOR = 5e-4  # weight_decay_up from zero sets this value
DROPOUT_STEP = 0.1
DROPOUT_MAX = 0.5
AUX_FACTOR = 4.0
ENT_FACTOR = 4.0
ENT_FLOOR = 1e-3  # ent_coef_up from zero sets this value
NOISE_STEP = 0.5  # log-std shift of noise_up / noise_down (x1.65 / /1.65 on the action noise's standard deviation)
CLIP_FACTOR = 2.0


def _wd_down(hp: Hyperparams) -> Hyperparams:
    wd = hp.weight_decay / WD_FACTOR
    return hp.with_(weight_decay=0.0 if wd < WD_FLOOR else wd)


def _aux(factor: float) -> Callable[[Hyperparams], Hyperparams]:
    def effect(hp: Hyperparams) -> Hyperparams:
        return hp if hp.aux_loss_weight is None else hp.with_(aux_loss_weight=hp.aux_loss_weight * factor)
    return effect


def _ent(up: bool) -> Callable[[Hyperparams], Hyperparams]:
    def effect(hp: Hyperparams) -> Hyperparams:
        if hp.ent_coef is None:
            return hp
        if up:
            return hp.with_(ent_coef=hp.ent_coef * ENT_FACTOR if hp.ent_coef > 0 else ENT_FLOOR)
        e = hp.ent_coef / ENT_FACTOR
        return hp.with_(ent_coef=0.0 if e < ENT_FLOOR else e)
    return effect


def _shift(knob: str, step: float) -> Callable[[Hyperparams], Hyperparams]:
    def effect(hp: Hyperparams) -> Hyperparams:
        v = getattr(hp, knob)
        return hp if v is None else hp.with_(**{knob: v + step})
    return effect


def _scale(knob: str, factor: float) -> Callable[[Hyperparams], Hyperparams]:
    def effect(hp: Hyperparams) -> Hyperparams:
        v = getattr(hp, knob)
        return hp if v is None else hp.with_(**{knob: v * factor})
    return effect


@dataclass(frozen=True)
class Action:
    """One row of the action table.

    ``knob``: the knob it changes (None for ``continue``/``stop``); ``effect``: the hyperparameters after it (None for
    ``set_*`` actions, whose value comes with the proposal); ``meaning``: how a prompt describes it; ``min_losses``:
    offered only to runs with at least this many losses; ``recorded``: trained by the recorder at every decision
    (``"all"``, ``"multi"`` for multi-loss tasks only, or ``""``).
    """

    name: str
    knob: str | None
    effect: Callable[[Hyperparams], Hyperparams] | None
    meaning: str
    min_losses: int = 1
    recorded: str = ""  # "all", "multi" (multi-loss runs), "rl" (reinforcement-learning runs) or ""

    @property
    def is_set(self) -> bool:
        return self.effect is None and self.knob is not None


_TABLE = (
    Action("continue", None, lambda hp: hp, "change nothing"),
    Action("lr_down", "lr", lambda hp: hp.with_(lr=hp.lr / LR_FACTOR), f"divide the learning rate by {LR_FACTOR:g}",
           recorded="all"),
    Action("lr_up", "lr", lambda hp: hp.with_(lr=hp.lr * LR_FACTOR), f"multiply the learning rate by {LR_FACTOR:g}",
           recorded="all"),
    Action("weight_decay_up", "weight_decay",
           lambda hp: hp.with_(weight_decay=hp.weight_decay * WD_FACTOR if hp.weight_decay > 0 else WD_FLOOR),
           f"multiply weight decay by {WD_FACTOR:g} (or start it)", recorded="all"),
    Action("weight_decay_down", "weight_decay", _wd_down, f"divide weight decay by {WD_FACTOR:g}"),
    Action("dropout_up", "dropout",
           lambda hp: hp.with_(dropout=max(hp.dropout, round(min(hp.dropout + DROPOUT_STEP, DROPOUT_MAX), 6))),
           f"raise dropout by {DROPOUT_STEP:g}", recorded="all"),
    Action("dropout_down", "dropout",
           lambda hp: hp.with_(dropout=min(hp.dropout, round(max(hp.dropout - DROPOUT_STEP, 0.0), 6))),
           f"lower dropout by {DROPOUT_STEP:g}"),
    Action("aux_weight_up", "aux_loss_weight", _aux(AUX_FACTOR),
           f"multiply the auxiliary loss weight by {AUX_FACTOR:g}", min_losses=2, recorded="multi"),
    Action("aux_weight_down", "aux_loss_weight", _aux(1 / AUX_FACTOR),
           f"divide the auxiliary loss weight by {AUX_FACTOR:g}", min_losses=2, recorded="multi"),
    Action("ent_coef_up", "ent_coef", _ent(True),
           f"multiply the entropy bonus coefficient by {ENT_FACTOR:g} (or start it): more exploration", recorded="rl"),
    Action("ent_coef_down", "ent_coef", _ent(False),
           f"divide the entropy bonus coefficient by {ENT_FACTOR:g}: less exploration"),
    Action("noise_up", "log_std", _shift("log_std", NOISE_STEP),
           f"raise the log-std of the action noise by {NOISE_STEP:g}: wider exploration", recorded="rl"),
    Action("noise_down", "log_std", _shift("log_std", -NOISE_STEP),
           f"lower the log-std of the action noise by {NOISE_STEP:g}: narrower, safer exploration", recorded="rl"),
    Action("clip_range_up", "clip_range", _scale("clip_range", CLIP_FACTOR),
           f"multiply PPO's clip range by {CLIP_FACTOR:g}: larger policy updates"),
    Action("clip_range_down", "clip_range", _scale("clip_range", 1 / CLIP_FACTOR),
           f"divide PPO's clip range by {CLIP_FACTOR:g}: smaller, more conservative policy updates"),
    Action("stop", None, lambda hp: hp, "end training now", recorded="all"),
    Action("set_lr", "lr", None, "set the learning rate to the given value"),
    Action("set_weight_decay", "weight_decay", None, "set weight decay to the given value"),
    Action("set_dropout", "dropout", None, "set dropout to the given value"),
    Action("set_aux_loss_weight", "aux_loss_weight", None, "set the auxiliary loss weight to the given value",
           min_losses=2),
    Action("set_ent_coef", "ent_coef", None, "set the entropy bonus coefficient to the given value"),
    Action("set_log_std", "log_std", None, "set the log-std of the action noise to the given value"),
    Action("set_clip_range", "clip_range", None, "set PPO's clip range to the given value"),
)

#: The action table, by name, in menu order.
ACTION_TABLE: dict[str, Action] = {a.name: a for a in _TABLE}
#: The discrete menu actions, in menu order.
ACTIONS = tuple(a.name for a in _TABLE if not a.is_set)
#: Continuous actions: set a knob to ``value``.
SET_ACTIONS = {a.name: a.knob for a in _TABLE if a.is_set}
ALL_ACTIONS = ACTIONS + tuple(SET_ACTIONS)


def record_menu(losses: int = 1, rl: bool = False) -> tuple[str, ...]:
    """The actions the recorder trains at every decision epoch (the do-nothing path is the run itself); ``stop``
    comes last. A reinforcement-learning run (``rl``) records the LR and exploration actions (``recorded="rl"``)
    instead of weight decay and dropout."""
    if rl:
        acts = [a.name for a in _TABLE if a.recorded == "rl" or (a.recorded == "all" and a.knob in (None,) + RL_KNOBS)]
    else:
        acts = [a.name for a in _TABLE if a.recorded == "all" or (a.recorded == "multi" and losses >= 2)]
    acts.remove("stop")
    return tuple(acts) + ("stop",)


RECORD_MENU = record_menu(1)
RECORD_MENU_MULTILOSS = record_menu(2)


def apply_action(hp: Hyperparams, action: str) -> Hyperparams:
    """The hyperparameters after a menu ``action``; ``continue`` and ``stop`` leave them unchanged."""
    a = ACTION_TABLE.get(action)
    if a is None or a.effect is None:
        raise ValueError(f"unknown action {action!r}; known: {', '.join(ACTIONS)}")
    return a.effect(hp)


def changing_actions(hp: Hyperparams, losses: int, candidates: tuple[str, ...] = ACTIONS) -> tuple[str, ...]:
    """The actions of ``candidates`` that would change something for a run with ``hp`` and ``losses`` losses."""
    out = []
    knobs = run_knobs(hp)
    for name in candidates:
        a = ACTION_TABLE[name]
        if a.knob is None:
            out.append(name)
        elif losses < a.min_losses or a.knob not in knobs:
            continue
        elif apply_action(hp, name) != hp:
            out.append(name)
    return tuple(out)
