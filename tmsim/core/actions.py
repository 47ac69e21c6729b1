"""The action schema, the per-run ``Bounds``, and the validator that stands between any policy and a run.

``validate(raw, snapshot, bounds)`` never raises on policy output. Whatever the policy returned (a ``Proposal``, a
dict, JSON text, a bare action name, garbage, ``None``, NaN, an exception, a timeout), it returns the
``ValidatedAction`` to apply and the list of named violations. An output that cannot be applied safely becomes the
safe fallback, ``continue``; a value beyond a bound or a too-large change is clamped. The same validator runs in
the simulator, in ``tmsim policy check`` and in the live hook, so a policy is judged by one set of rules.

Violation names (each counted separately): ``policy_exception``, ``timeout``, ``empty_output``, ``unparseable``,
``unknown_action``, ``missing_value``, ``non_finite_value``, ``invalid_value``, ``no_effect``, ``stop_too_early``,
``budget_exhausted``, ``cooldown``, ``change_too_large`` (clamped), ``out_of_bounds`` (clamped).
``FATAL`` lists those that replace the proposal by the fallback.

A value is *invalid* (never clamped into a move) when it cannot be meant: zero or negative for a knob measured by
factors (``lr``, ``aux_loss_weight``), negative for ``weight_decay``, outside [0, 1) for ``dropout``, or more than
``INVALID_ORDERS`` orders of magnitude outside the absolute range (``set_lr 1e-300``). Only a value near the range is
clamped to it (``out_of_bounds``).

Example
-------
>>> from tmsim.core import Bounds, EpochView, Hyperparams, Snapshot, validate
>>> snap = Snapshot.build("r", "digits-mlp", [EpochView(epoch=5, val_loss=1.0, train_loss=0.5)],
...                       Hyperparams(lr=0.2), max_epochs=20, decide_every=5)
>>> act, violations = validate('{"action": "set_lr", "value": 5}', snap, Bounds())
>>> act.hparams.lr, violations
(0.8, ['change_too_large'])
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import math
import operator
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .hparams import KNOBS, RL_KNOBS, Hyperparams, run_knobs
from .menu import ACTION_TABLE, ACTIONS, ALL_ACTIONS, SET_ACTIONS, apply_action
from .snapshot import Snapshot
VIOLATIONS = ("policy_exception", "timeout", "empty_output", "unparseable", "unknown_action", "missing_value",
              "non_finite_value", "invalid_value", "no_effect", "stop_too_early", "budget_exhausted", "cooldown",
              "change_too_large", "out_of_bounds")
#: Violations after which the proposal is replaced by the safe fallback (``continue``). The two clamp kinds
#: normally clamp; they too end in the fallback when no move inside both limits exists.
FATAL = frozenset(VIOLATIONS) - {"change_too_large", "out_of_bounds"}
#: A value further than this many orders of magnitude outside a knob's absolute range is invalid, not clamped.
INVALID_ORDERS = 2
#: Longest ``reason`` kept from a proposal (characters); the rest is cut.
REASON_LIMIT = 1000


class Proposal(BaseModel):
    """What a policy proposes: a menu action, or a ``set_*`` action with a ``value``; ``reason`` is free text."""

    model_config = ConfigDict(extra="ignore")
    action: str = Field(max_length=64)
    value: float | None = None
    reason: str | None = None

    @field_validator("reason")
    @classmethod
    def _cap_reason(cls, v: str | None) -> str | None:
        return v if v is None or len(v) <= REASON_LIMIT else v[:REASON_LIMIT] + "..."


class Bounds(BaseModel):
    """Limits that hold for every action applied to a run.

    Absolute ranges per knob; ``max_factor`` caps the relative change of ``lr`` and ``aux_loss_weight`` per decision
    (``weight_decay`` is capped at ``max_factor * 5`` times, or ``weight_decay_step`` from zero). The defaults admit
    every menu action (the largest step, ``aux_weight_up``, is x4), so a recorded branch is always reachable; ``max_dropout_step``
    the absolute change of dropout; ``cooldown_epochs`` the gap between two changes of the same knob;
    ``min_stop_epoch`` the first epoch a stop is allowed; for RL runs ``ent_coef`` moves like ``weight_decay`` (by
    ``max_factor``, or to ``ent_coef_step`` from zero), ``log_std`` by at most ``max_log_std_step`` and ``clip_range``
    by ``max_factor``; ``max_interventions`` the changes allowed per run (None:
    no limit).
    """

    model_config = ConfigDict(extra="forbid")
    lr_min: float = Field(1e-6, gt=0)
    lr_max: float = Field(10.0, gt=0)
    weight_decay_min: float = Field(0.0, ge=0)
    weight_decay_max: float = Field(10.0, ge=0)
    weight_decay_step: float = Field(5e-4, ge=0)
    dropout_min: float = Field(0.0, ge=0, le=1)
    dropout_max: float = Field(0.5, ge=0, lt=1)
    aux_loss_weight_min: float = Field(1e-3, gt=0)
    aux_loss_weight_max: float = Field(1e3, gt=0)
    ent_coef_min: float = Field(0.0, ge=0)
    ent_coef_max: float = Field(1.0, ge=0)
    ent_coef_step: float = Field(1e-3, ge=0)
    log_std_min: float = Field(-5.0)
    log_std_max: float = Field(1.5)
    max_log_std_step: float = Field(0.5, ge=0)
    clip_range_min: float = Field(0.02, gt=0)
    clip_range_max: float = Field(0.8, gt=0)
    max_factor: float = Field(4.0, ge=1)
    max_dropout_step: float = Field(0.1, ge=0)
    cooldown_epochs: int = Field(0, ge=0)
    min_stop_epoch: int = Field(1, ge=0)
    max_interventions: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _ranges(self) -> "Bounds":
        for k in KNOBS:
            if getattr(self, f"{k}_min") > getattr(self, f"{k}_max"):
                raise ValueError(f"bounds: {k}_min is greater than {k}_max")
        return self

    def range(self, knob: str) -> tuple[float, float]:
        return getattr(self, f"{knob}_min"), getattr(self, f"{knob}_max")


@dataclass(frozen=True)
class ValidatedAction:
    """The action actually applied: its name, the hyperparameters after it, whether training stops, and whether it
    came from the policy (possibly clamped) or is the safe fallback."""

    action: str
    hparams: Hyperparams
    stop: bool = False
    source: str = "policy"
    changed: tuple[str, ...] = field(default=())

    @property
    def intervenes(self) -> bool:
        return self.stop or bool(self.changed)

    def to_json(self) -> str:
        hp = self.hparams
        rl = {k: getattr(hp, k) for k in RL_KNOBS[1:] if getattr(hp, k) is not None}
        return json.dumps({"action": self.action, "stop": self.stop, "changed": list(self.changed), "lr": hp.lr,
                           "weight_decay": hp.weight_decay, "dropout": hp.dropout,
                           "aux_loss_weight": hp.aux_loss_weight, **rl}, sort_keys=True, separators=(",", ":"))


class PolicyFailure:
    """Stands in for a policy's output when the call failed or its output could not be used (``kind``: the
    violation, e.g. policy_exception, timeout or unparseable)."""

    def __init__(self, kind: str, detail: str = ""):
        self.kind, self.detail = kind, detail

    def __repr__(self) -> str:
        return f"<{self.kind}: {self.detail}>"


@dataclass(frozen=True)
class Answer:
    """A policy's output after the guarded call: ``value`` is a plain ``Proposal`` or a ``PolicyFailure``; ``text``
    the raw output as audit text (capped). Both are made where the policy's own objects are touched (the guarded
    thread or the policy's process), so the harness never runs policy code (a ``repr`` that hangs, a ``.get`` that
    raises) itself."""

    value: Any
    text: str


def action_json_schema(offered: tuple[str, ...] | None = None) -> dict[str, Any]:
    """JSON Schema of a proposal; with ``offered``, the ``action`` enum lists only those actions."""
    schema = Proposal.model_json_schema()
    schema["properties"]["action"]["enum"] = list(offered or ALL_ACTIONS)
    return schema


def parse_proposal(raw: Any) -> tuple[Proposal | None, str | None]:
    """(proposal, None) or (None, violation name). Accepts Proposal, dict, JSON text or a bare action name.

    A ``Proposal`` is rebuilt from its fields, so the result is always a validated, plain ``Proposal`` (never the
    policy's own object, which may be a subclass or built without validation)."""
    if isinstance(raw, Answer):
        return parse_proposal(raw.value)
    if isinstance(raw, PolicyFailure):
        return None, raw.kind
    if raw is None:
        return None, "empty_output"
    if isinstance(raw, Proposal):
        if type(raw) is Proposal and _plain(raw):
            return raw, None
        raw = {"action": raw.action, "value": raw.value, "reason": raw.reason}
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None, "unparseable"
    if isinstance(raw, str):
        text = raw.strip()
        if not text:
            return None, "empty_output"
        if text in ALL_ACTIONS:
            return Proposal(action=text), None
        try:
            raw = json.loads(text)
        except (ValueError, RecursionError):
            return None, "unparseable"
    if isinstance(raw, dict):
        action = raw.get("action")
        if not isinstance(action, str):
            return None, "unparseable"
        value = raw.get("value")
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                return None, "unparseable"
            try:
                value = float(value)
            except (ValueError, OverflowError):
                return None, "unparseable"
        reason = raw.get("reason")
        try:
            return Proposal(action=action, value=value, reason=reason if isinstance(reason, str) else None), None
        except ValidationError:
            return None, "unparseable"
    return None, "unparseable"


def _plain(p: Proposal) -> bool:
    """A ``Proposal`` whose fields have the declared types (``model_construct`` skips validation)."""
    return (type(p.action) is str and len(p.action) <= 64 and (p.value is None or type(p.value) in (float, int))
            and (p.reason is None or (type(p.reason) is str and len(p.reason) <= REASON_LIMIT + 3)))


def _last_change_epoch(snapshot: Snapshot, knob: str) -> int | None:
    """The last epoch at which ``knob`` changed in the run's history (None if never)."""
    last = None
    prev = None
    for h in snapshot.history:
        v = getattr(h, knob)
        if prev is not None and v is not None and v != prev:
            last = h.epoch - 1  # the change was applied at the end of the previous epoch
        if v is not None:
            prev = v
    return last


def validate(raw: Any, snapshot: Snapshot, bounds: Bounds) -> tuple[ValidatedAction, list[str]]:
    """Turn any policy output into a safe ``ValidatedAction`` plus the violations found. Never raises.

    A plain menu action (a ``Proposal`` with no value, as ``answer`` makes them) is validated once per distinct
    case (see ``_menu_case``): a simulator validates the same few cases at thousands of decisions."""
    try:
        action = _menu_action(raw)
        case = _case_or_none(snapshot, bounds) if action is not None else None
        if case is None:
            return _validate(raw, snapshot, bounds)
        act, violations = _menu_validated(case, action, raw, snapshot, bounds)
        return act, list(violations)
    except Exception:  # whatever went wrong, an unvalidated update is never the answer
        return _fallback(snapshot), ["unparseable"]


_MENU = frozenset(ACTIONS)
_ALL = frozenset(ALL_ACTIONS)
_MEMO_LIMIT = 100_000
#: case -> {menu action: (the ValidatedAction, its violations)} (see ``validate``)
_VALIDATED: dict[tuple, dict[str, tuple[ValidatedAction, tuple[str, ...]]]] = {}
#: the values of a ``Bounds`` -> a number standing for them in cases (never reused)
_BOUNDS_IDS: dict[tuple, int] = {}
_NEXT_BOUNDS_ID = itertools.count()


def _menu_validated(case: tuple, action: str, proposal: Any, snapshot: Snapshot,
                    bounds: Bounds) -> tuple[ValidatedAction, tuple[str, ...]]:
    """``_validate(proposal, snapshot, bounds)`` of the plain menu ``proposal`` for ``action`` in ``case``,
    remembered. A clamped move holds values of the bounds (whose -0.0 and 0.0 are one case): it is not remembered."""
    memo = _VALIDATED.get(case)
    if memo is None:
        if len(_VALIDATED) > _MEMO_LIMIT:
            _VALIDATED.clear()
        memo = _VALIDATED[case] = {}
    hit = memo.get(action)
    if hit is None:
        act, violations = _validate(proposal, snapshot, bounds)
        hit = (act, tuple(violations))
        if not violations or act.source == "fallback":
            memo[action] = hit
    return hit


def _menu_action(raw: Any) -> str | None:
    """The action of ``raw`` when it is a plain menu proposal without a value (bare or in an ``Answer``), else None."""
    if type(raw) is Answer:
        raw = raw.value
    if type(raw) is Proposal and raw.value is None and type(raw.action) is str and raw.action in _MENU and _plain(raw):
        return raw.action
    return None


def _exact_knobs(values: tuple) -> bool:
    """Whether equal knob values (``Hyperparams`` fields, in order) mean the same floating-point values: every one a
    float or None, none NaN or -0.0 (so a result computed for one snapshot is, to the bit, the result for another
    with equal knobs)."""
    for v in values:
        if v is not None and (type(v) is not float or v != v or (v == 0.0 and math.copysign(1.0, v) < 0)):
            return False
    return True


def _menu_case(snapshot: Snapshot, bounds: Bounds, values: tuple | None = None) -> tuple | None:
    """Everything the validation of a menu action at ``snapshot`` depends on: the hyperparameters' values, whether a
    stop is allowed yet, whether budget is left, which knobs are cooling down, and the bounds (None when the
    hyperparameters are not a plain ``Hyperparams`` of ``_exact_knobs`` or the bounds not a plain ``Bounds``).
    ``values``: the bounds' field values, where the caller has them already."""
    hp = snapshot.hparams
    if type(hp) is not Hyperparams or type(bounds) is not Bounds:
        return None
    knobs = _HP_VALUES(hp)
    if not _exact_knobs(knobs):
        return None
    cooling = ()
    if bounds.cooldown_epochs:
        cooling = tuple(snapshot.epoch - c < bounds.cooldown_epochs if c is not None else False
                        for c in (_last_change_epoch(snapshot, k) for k in KNOBS))
    if values is None:
        values = tuple(bounds.__dict__.values())
    bid = _BOUNDS_IDS.get(values)
    if bid is None:
        if len(_BOUNDS_IDS) > _MEMO_LIMIT:
            _BOUNDS_IDS.clear()
        bid = _BOUNDS_IDS[values] = next(_NEXT_BOUNDS_ID)
    return (knobs, snapshot.epoch >= bounds.min_stop_epoch, _budget_left(snapshot, bounds) > 0, cooling, bid)


def _fallback(snapshot: Snapshot) -> ValidatedAction:
    return ValidatedAction("continue", snapshot.hparams, False, "fallback")


def _validate(raw: Any, snapshot: Snapshot, bounds: Bounds) -> tuple[ValidatedAction, list[str]]:
    hp = snapshot.hparams
    proposal, problem = parse_proposal(raw)
    if problem:
        return _fallback(snapshot), [problem]
    action = proposal.action
    if action not in _ALL:
        return _fallback(snapshot), ["unknown_action"]
    if action == "continue":
        return ValidatedAction("continue", hp, False, "policy"), []
    if action == "stop":
        if snapshot.epoch < bounds.min_stop_epoch:
            return _fallback(snapshot), ["stop_too_early"]
        if _budget_left(snapshot, bounds) <= 0:
            return _fallback(snapshot), ["budget_exhausted"]
        return ValidatedAction("stop", hp, True, "policy"), []
    violations: list[str] = []
    if action in SET_ACTIONS:
        knob = SET_ACTIONS[action]
        if proposal.value is None:
            return _fallback(snapshot), ["missing_value"]
        if not math.isfinite(proposal.value):
            return _fallback(snapshot), ["non_finite_value"]
        if not _sensible(knob, proposal.value, bounds):
            return _fallback(snapshot), ["invalid_value"]
        if getattr(hp, knob) is None:
            return _fallback(snapshot), ["no_effect"]
        target = hp.with_(**{knob: proposal.value})
    else:
        if proposal.value is not None and not math.isfinite(proposal.value):
            return _fallback(snapshot), ["non_finite_value"]
        target = apply_action(hp, action)
    changed = [k for k in KNOBS if getattr(target, k) != getattr(hp, k)]
    if not changed:
        return _fallback(snapshot), ["no_effect"]
    knobs = run_knobs(hp)
    if any(k not in knobs for k in changed):  # a knob this run lacks
        return _fallback(snapshot), ["no_effect"]
    if _budget_left(snapshot, bounds) <= 0:
        return _fallback(snapshot), ["budget_exhausted"]
    if bounds.cooldown_epochs:
        for k in changed:
            last = _last_change_epoch(snapshot, k)
            if last is not None and snapshot.epoch - last < bounds.cooldown_epochs:
                return _fallback(snapshot), ["cooldown"]
    values = {}
    for k in changed:
        old, want = getattr(hp, k), getattr(target, k)
        # The value may move within the per-decision step AND the absolute range; when they do not overlap
        # (a run already outside the range, a zero step) nothing can be applied safely.
        slo, shi = _step_limits(k, old, bounds)
        amin, amax = _range(bounds, k)
        lo, hi = max(slo, amin), min(shi, amax)
        if lo > hi:
            return _fallback(snapshot), violations + ["out_of_bounds"]
        # a move of exactly the step limit is within it, whatever floating-point rounding did to the sum
        tol = STEP_SLACK * max(abs(old), abs(want), 1e-3)
        within_step = slo - tol <= want <= shi + tol
        new = want if within_step and amin <= want <= amax else min(max(want, lo), hi)
        if not within_step:
            violations.append("change_too_large")
        if not amin <= want <= amax:
            violations.append("out_of_bounds")
        # A clamp must never turn a proposal into a move the other way (or none at all).
        if new == old or (new - old) * (want - old) < 0:
            return _fallback(snapshot), violations + ["no_effect"]
        values[k] = new
    if type(hp) is type(target) is Hyperparams and all(
            values[f] is getattr(target, f) if f in values else getattr(target, f) is getattr(hp, f) for f in _HP_FIELDS):
        applied = target  # it holds the very objects hp.with_(**values) would: the same hyperparameters, made once
    else:
        applied = hp.with_(**values)
    assert all(_range(bounds, k)[0] <= getattr(applied, k) <= _range(bounds, k)[1] for k in changed)
    if violations:
        violations = sorted(set(violations), key=violations.index)
    return ValidatedAction(action, applied, False, "policy", tuple(changed)), violations


_RANGE_NAMES = {k: (f"{k}_min", f"{k}_max") for k in KNOBS}
_HP_FIELDS = tuple(f.name for f in dataclasses.fields(Hyperparams))
#: The values of a ``Hyperparams``' fields, in order (a tuple)
_HP_VALUES = operator.attrgetter(*_HP_FIELDS)


def _range(bounds: Bounds, knob: str) -> tuple[float, float]:
    """``bounds.range(knob)``, read directly from a plain ``Bounds``."""
    if type(bounds) is Bounds:
        lo, hi = _RANGE_NAMES[knob]
        return getattr(bounds, lo), getattr(bounds, hi)
    return bounds.range(knob)


def _sensible(knob: str, value: float, bounds: Bounds) -> bool:
    """Whether ``value`` can be meant for ``knob`` (see the module docs); a sensible value may still be clamped."""
    lo, hi = bounds.range(knob)
    f = 10.0 ** INVALID_ORDERS
    if knob in ("lr", "aux_loss_weight"):
        return value > 0 and lo / f <= value <= hi * f
    if knob == "dropout":
        return 0 <= value < 1
    if knob == "log_std":
        return lo - 10 <= value <= hi + 10
    if knob == "clip_range":
        return 0 < value <= 1
    if knob == "ent_coef":
        return 0 <= value <= max(hi, bounds.ent_coef_step) * f
    return value >= 0 and value <= max(hi, bounds.weight_decay_step) * f


def _budget_left(snapshot: Snapshot, bounds: Bounds) -> float:
    """Interventions still allowed: the snapshot's own count, else the bound minus the past interventions."""
    if bounds.max_interventions is None:
        return math.inf
    if snapshot.interventions_left is not None:
        return min(snapshot.interventions_left, bounds.max_interventions)
    return bounds.max_interventions - sum(d.action != "continue" for d in snapshot.decisions)


#: Relative slack of the step limits: a move of exactly the limit must not fail on floating-point rounding
#: (``0.0734 + 0.1`` is not ``0.1734`` in binary).
STEP_SLACK = 1e-12


def _step_limits(knob: str, old: float, bounds: Bounds) -> tuple[float, float]:
    """The range a knob may move to in one decision, from ``old``."""
    if knob == "dropout":
        lo, hi = old - bounds.max_dropout_step, old + bounds.max_dropout_step
    elif knob == "log_std":
        lo, hi = old - bounds.max_log_std_step, old + bounds.max_log_std_step
    elif knob == "ent_coef":
        lo, hi = old / bounds.max_factor, max(old * bounds.max_factor, bounds.ent_coef_step)
    elif knob == "weight_decay":
        f = bounds.max_factor * 5
        lo, hi = old / f, max(old * f, bounds.weight_decay_step)
    else:
        lo, hi = old / bounds.max_factor, old * bounds.max_factor
    return lo, hi


_OFFERED: dict[tuple, tuple[str, ...]] = {}
#: (menu action, its knob's value, budget left, knob cooling down, bounds) -> offered (see ``_offered``)
_VERDICTS: dict[tuple, bool] = {}


def offered_actions(snapshot: Snapshot, bounds: Bounds, candidates: tuple[str, ...] = ACTIONS) -> tuple[str, ...]:
    """The menu actions that the validator would apply as they are (no fallback, no clamp) at this snapshot.

    What decides it is few things (the hyperparameters, the losses, whether a stop is allowed yet, whether budget is
    left, which knobs are cooling down, the bounds): answers are remembered by those, so building many snapshots
    (a simulator's cold pass) validates each distinct case once."""
    case = _case_or_none(snapshot, bounds)
    if case is not None:
        key = (case, snapshot.losses, candidates)
    else:
        cooling = tuple(_last_change_epoch(snapshot, k) for k in KNOBS) if bounds.cooldown_epochs else ()
        key = (snapshot.hparams, snapshot.losses, snapshot.epoch >= bounds.min_stop_epoch,
               _budget_left(snapshot, bounds) > 0,
               tuple(snapshot.epoch - c < bounds.cooldown_epochs if c is not None else False for c in cooling),
               tuple(bounds.__dict__.values()), candidates)
    hit = _OFFERED.get(key)
    if hit is None:
        if len(_OFFERED) > _MEMO_LIMIT:
            _OFFERED.clear()
        hit = _OFFERED[key] = _offered(snapshot, bounds, candidates, case)
    return hit


def clear_offered_cache() -> None:
    """Forget the remembered ``offered_actions`` answers and validated menu actions (a benchmark's cold pass starts
    from nothing)."""
    _OFFERED.clear()
    _VALIDATED.clear()
    _VERDICTS.clear()
    _BOUNDS_IDS.clear()


_MENU_PROPOSALS: dict[str, Proposal] = {}
#: The knob of each menu action that turns one (``lr_down``: ``lr``). A menu action's effect reads and changes its
#: own knob only (``menu.Action.knob``), which ``_offered`` relies on.
_MENU_KNOB = {a: ACTION_TABLE[a].knob for a in ACTIONS if ACTION_TABLE[a].knob is not None}


#: The key under which a snapshot keeps its menu case (``_case_or_none``) in its ``__dict__``, beside the bounds'
#: values it was computed for: the simulator asks for it twice per decision (the offered menu, then the answer).
_CASE_MEMO = "_tmsim_menu_case"


def _case_or_none(snapshot: Snapshot, bounds: Bounds) -> tuple | None:
    """``_menu_case(snapshot, bounds)``, None where it cannot be read. A plain ``Snapshot`` (immutable: frozen
    fields, immutable history) keeps the answer for the bounds' values it was computed with, as it keeps its hash."""
    plain = type(snapshot) is Snapshot and type(bounds) is Bounds
    if plain:
        memo = snapshot.__dict__.get(_CASE_MEMO)
        values = tuple(bounds.__dict__.values())
        if memo is not None and memo[0] == values and memo[1] is snapshot.hparams:
            return memo[2]
    try:
        case = _menu_case(snapshot, bounds, values if plain else None)
    except Exception:  # a snapshot the validator cannot read: validated the plain way, where it becomes the fallback
        return None
    if plain:
        snapshot.__dict__[_CASE_MEMO] = (values, snapshot.hparams, case)
    return case


def _offered(snapshot: Snapshot, bounds: Bounds, candidates: tuple[str, ...], case: tuple | None = None) -> tuple[str, ...]:
    """The offered menu (see ``offered_actions``). With a ``case`` (``_menu_case``), an action that turns a knob the
    run lacks is never offered (its effect changes nothing, or a knob outside ``run_knobs``, or fails); whether an
    action that turns a knob is offered depends only on that knob's value, the budget, whether the knob is cooling
    down and the bounds, and whether ``continue`` or ``stop`` is on whether a stop is allowed yet and budget is left
    (see ``_validate``): each such verdict is validated once."""
    out = []
    hp = snapshot.hparams
    knobs = run_knobs(hp) if case is not None else ()
    for a in candidates:
        if a.startswith("aux_") and snapshot.losses < 2:
            continue
        proposal = _MENU_PROPOSALS.get(a) or _MENU_PROPOSALS.setdefault(a, Proposal(action=a))
        if case is None or a not in _MENU:
            act, violations = validate(proposal, snapshot, bounds)
            if not violations and act.source == "policy":
                out.append(a)
            continue
        knob = _MENU_KNOB.get(a)
        if knob is None:  # continue or stop: what a stop depends on is whether it is allowed yet and budget is left
            vkey = (a, case[1], case[2], case[4])
        elif knob not in knobs:
            continue
        else:
            cooling = case[3][KNOBS.index(knob)] if case[3] else False
            vkey = (a, getattr(hp, knob), case[2], cooling, case[4])
        ok = _VERDICTS.get(vkey)
        if ok is None:
            try:
                act, violations = _menu_validated(case, a, proposal, snapshot, bounds)
                ok = not violations and act.source == "policy"
            except Exception:  # as ``validate`` has it: the fallback
                ok = False
            if len(_VERDICTS) > _MEMO_LIMIT:
                _VERDICTS.clear()
            _VERDICTS[vkey] = ok
        if ok:
            out.append(a)
    return tuple(out)
