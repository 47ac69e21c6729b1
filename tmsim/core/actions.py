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

import json
import math
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .hparams import KNOBS, RL_KNOBS, Hyperparams, run_knobs
from .menu import ACTIONS, ALL_ACTIONS, SET_ACTIONS, apply_action
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
    """Turn any policy output into a safe ``ValidatedAction`` plus the violations found. Never raises."""
    try:
        return _validate(raw, snapshot, bounds)
    except Exception:  # whatever went wrong, an unvalidated update is never the answer
        return _fallback(snapshot), ["unparseable"]


def _fallback(snapshot: Snapshot) -> ValidatedAction:
    return ValidatedAction("continue", snapshot.hparams, False, "fallback")


def _validate(raw: Any, snapshot: Snapshot, bounds: Bounds) -> tuple[ValidatedAction, list[str]]:
    hp = snapshot.hparams
    proposal, problem = parse_proposal(raw)
    if problem:
        return _fallback(snapshot), [problem]
    action = proposal.action
    if action not in ALL_ACTIONS:
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
    if not changed or any(k not in run_knobs(hp) for k in changed):  # nothing changes, or a knob this run lacks
        return _fallback(snapshot), ["no_effect"]
    if _budget_left(snapshot, bounds) <= 0:
        return _fallback(snapshot), ["budget_exhausted"]
    for k in changed:
        last = _last_change_epoch(snapshot, k)
        if bounds.cooldown_epochs and last is not None and snapshot.epoch - last < bounds.cooldown_epochs:
            return _fallback(snapshot), ["cooldown"]
    values = {}
    for k in changed:
        old, want = getattr(hp, k), getattr(target, k)
        # The value may move within the per-decision step AND the absolute range; when they do not overlap
        # (a run already outside the range, a zero step) nothing can be applied safely.
        slo, shi = _step_limits(k, old, bounds)
        amin, amax = bounds.range(k)
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
    applied = hp.with_(**values)
    assert all(bounds.range(k)[0] <= getattr(applied, k) <= bounds.range(k)[1] for k in changed)
    return ValidatedAction(action, applied, False, "policy", tuple(changed)), sorted(set(violations), key=violations.index)


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


def offered_actions(snapshot: Snapshot, bounds: Bounds, candidates: tuple[str, ...] = ACTIONS) -> tuple[str, ...]:
    """The menu actions that the validator would apply as they are (no fallback, no clamp) at this snapshot.

    What decides it is few things (the hyperparameters, the losses, whether a stop is allowed yet, whether budget is
    left, which knobs are cooling down, the bounds): answers are remembered by those, so building many snapshots
    (a simulator's cold pass) validates each distinct case once."""
    cooling = tuple(_last_change_epoch(snapshot, k) for k in KNOBS) if bounds.cooldown_epochs else ()
    key = (snapshot.hparams, snapshot.losses, snapshot.epoch >= bounds.min_stop_epoch, _budget_left(snapshot, bounds) > 0,
           tuple(snapshot.epoch - c < bounds.cooldown_epochs if c is not None else False for c in cooling),
           tuple(bounds.__dict__.values()), candidates)
    hit = _OFFERED.get(key)
    if hit is None:
        if len(_OFFERED) > 100_000:
            _OFFERED.clear()
        hit = _OFFERED[key] = _offered(snapshot, bounds, candidates)
    return hit


def clear_offered_cache() -> None:
    """Forget the remembered ``offered_actions`` answers (a benchmark's cold pass starts from nothing)."""
    _OFFERED.clear()


_MENU_PROPOSALS: dict[str, Proposal] = {}


def _offered(snapshot: Snapshot, bounds: Bounds, candidates: tuple[str, ...]) -> tuple[str, ...]:
    out = []
    for a in candidates:
        if a.startswith("aux_") and snapshot.losses < 2:
            continue
        proposal = _MENU_PROPOSALS.get(a) or _MENU_PROPOSALS.setdefault(a, Proposal(action=a))
        act, violations = validate(proposal, snapshot, bounds)
        if not violations and act.source == "policy":
            out.append(a)
    return tuple(out)
