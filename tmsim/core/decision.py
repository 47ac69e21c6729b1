"""One decision, the same everywhere: the snapshot built at a decision epoch, the guarded policy call, and the audit
row. The simulator, ``tmsim policy check`` and the live hook all use these, so a policy is asked the same question,
under the same guard, and audited the same way offline and live.

Example
-------
>>> from tmsim.core import Bounds, Hyperparams, RunInfo, build_snapshot, call_policy
>>> run = RunInfo("demo", "digits-mlp", decide_every=5, max_epochs=20)
>>> hist = [{"epoch": e, "val_loss": 1.0 / (e + 1), "train_loss": 1.0 / (e + 1), "lr": 0.1} for e in range(6)]
>>> snap = build_snapshot(run, hist, {}, 5, Bounds())
>>> snap.epoch, snap.offered[:2]
(5, ('continue', 'lr_down'))
>>> call_policy(lambda s: 1 / 0, snap, timeout=1.0)[0].value
<policy_exception: ZeroDivisionError: division by zero>
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import operator
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from .actions import Answer, Bounds, PolicyFailure, Proposal, ValidatedAction, offered_actions, parse_proposal
from .hparams import KNOBS, Hyperparams
from .snapshot import EpochView, PastDecision, Snapshot, as_views

_EPOCH = operator.attrgetter("epoch")
_VAL_LOSS = operator.attrgetter("val_loss")

#: Longest raw output kept in an audit row (characters).
RAW_OUTPUT_LIMIT = 2000
#: Seconds a policy may take per decision when the caller sets no timeout.
DEFAULT_TIMEOUT = 30.0


#: Salt of the run keys this process hands out: a key cannot be recomputed from a run id (which names the scenario).
_RUN_KEY_SALT = secrets.token_hex(16)


def run_key(*parts: object) -> str:
    """A run key for policies (``Snapshot.run_key``): 16 hex digits of a salted SHA-256 of ``parts``. The salt is
    drawn once per process, so the key reveals nothing of ``parts`` (a run id names the task, scenario and seed) and
    differs between commands."""
    text = "\x00".join(str(p) for p in (_RUN_KEY_SALT, *parts))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=1 << 16)
def _id_run_key(run_id: str) -> str:
    """``run_key(run_id)``, the default key of a run's snapshots, remembered (it is the same all process long)."""
    return run_key(run_id)


def hparams_of_view(view: EpochView) -> Hyperparams:
    """``Hyperparams.from_row(view._asdict())``: the knobs recorded in an epoch view (absent ones take their
    defaults), read without making the row."""
    if _KNOB_FIELDS_MATCH:
        wd, dropout = view.weight_decay, view.dropout
        return Hyperparams(view.lr, 0.0 if wd is None else wd, 0.0 if dropout is None else dropout,
                           view.aux_loss_weight, view.ent_coef, view.log_std, view.clip_range)
    return Hyperparams.from_row(view._asdict())


#: Whether the knobs are the ones ``hparams_of_view`` reads directly (else it takes the general path).
_KNOB_FIELDS_MATCH = (KNOBS == ("lr", "weight_decay", "dropout", "aux_loss_weight", "ent_coef", "log_std", "clip_range")
                      and tuple(f.name for f in dataclasses.fields(Hyperparams)) == KNOBS
                      and Hyperparams.from_row({}, prefix="") == Hyperparams(None, 0.0, 0.0, None, None, None, None))


@dataclass(frozen=True)
class RunInfo:
    """What a snapshot needs to know about the run it comes from (not its scenario: a policy must read signals).
    ``run_key`` is the key its snapshots carry (default: ``run_key(run_id)``, one per run id)."""

    run_id: str
    task: str
    decide_every: int
    max_epochs: int
    losses: int = 1
    run_key: str | None = None


def build_snapshot(run: RunInfo, hist: Sequence[Mapping[str, Any]], chain: Mapping[int, str], d: int,
                   bounds: Bounds) -> Snapshot:
    """The snapshot at decision epoch ``d``: ``hist`` holds the epoch rows up to ``d`` (trace columns, or
    ``EpochView``s made from them; the last one is epoch ``d``), ``chain`` the actions taken at earlier decision epochs
    ({epoch: action}, absent = continue)."""
    hist = as_views(hist)
    last = hist[-1]
    if last.epoch != d:
        raise ValueError(f"{run.run_id}: the history ends at epoch {last.epoch}, not at the decision epoch {d}")
    hp = hparams_of_view(last)
    every = run.decide_every
    past = []
    epochs = range(every, d, every)
    if epochs:
        # the usual history holds epochs 0..d in order: an epoch's validation loss is at its own position
        if len(hist) == d + 1 and list(map(_EPOCH, hist)) == list(range(d + 1)):
            val = list(map(_VAL_LOSS, hist)).__getitem__  # every decision epoch and the next are in 0..d
        else:
            val = {h.epoch: h.val_loss for h in hist}.get
        for e in epochs:
            nxt = min(e + every, d)
            ve, vn = val(e), val(nxt)
            change = vn / ve - 1 if ve and vn is not None else None
            past.append(PastDecision(e, chain.get(e, "continue"), change))
    used = sum(1 for p in past if p.action != "continue")
    left = None if bounds.max_interventions is None else max(bounds.max_interventions - used, 0)
    snap = Snapshot.build(run.run_id, run.task, hist, hp, run.max_epochs, every, past, left, run.losses,
                          run_key=run.run_key or _id_run_key(run.run_id))
    # the snapshot was just made here and nothing has seen it: set its menu in place rather than copy it whole
    object.__setattr__(snap, "offered", offered_actions(snap, bounds))
    return snap


def answer(out: Any) -> Answer:
    """Turn whatever a policy returned into a plain ``Answer`` (a clean ``Proposal`` or a ``PolicyFailure``, and the
    audit text). Run it where the policy's objects may be touched: it calls their ``repr``, ``.get`` and properties.
    A policy cannot pass itself off as the harness: an ``Answer`` or ``PolicyFailure`` it returns is unparseable."""
    try:
        if isinstance(out, (Answer, PolicyFailure)):
            return Answer(PolicyFailure("unparseable", "a policy returned a harness object"), "<harness object>")
        text = raw_text(out)
        proposal, problem = parse_proposal(out)
        return Answer(proposal if proposal is not None else PolicyFailure(problem or "unparseable"), text)
    except BaseException as exc:  # noqa: BLE001 -- whatever the output does, it is the policy's failure
        return Answer(PolicyFailure("unparseable", f"{type(exc).__name__} while reading the output"),
                      "<unreadable output>")


def failure(kind: str, exc: BaseException | None = None, detail: str = "") -> Answer:
    """The ``Answer`` that stands for a failed call (``kind``: policy_exception or timeout)."""
    if exc is not None:
        try:
            detail = f"{type(exc).__name__}: {exc}"[:500]
        except BaseException:  # noqa: BLE001 -- an exception whose str() fails
            detail = type(exc).__name__
    return Answer(PolicyFailure(kind, detail), f"<{kind}: {detail}>"[:RAW_OUTPUT_LIMIT])


def guarded(decide: Callable[[Snapshot], Any], snap: Snapshot) -> Answer:
    """One call on a private copy of the snapshot (what the policy does to it changes nothing the harness sees),
    its output made plain, its failure (any exception, ``SystemExit`` included) made data."""
    try:
        return answer(decide(snap.private_copy()))
    except BaseException as exc:  # noqa: BLE001 -- SystemExit and KeyboardInterrupt raised by a policy included
        return failure("policy_exception", exc)


def _in_thread(work: Callable[[], Any], timeout: float) -> bool:
    """Run ``work()`` in a daemon thread; False when it is still running after ``timeout`` (it is abandoned)."""
    th = threading.Thread(target=work, daemon=True, name="tmsim-policy-call")
    th.start()
    th.join(timeout)
    return not th.is_alive()


def call_policy(decide: Callable[[Snapshot], Any], snap: Snapshot,
                timeout: float | None = DEFAULT_TIMEOUT) -> tuple[Answer, float]:
    """(answer, latency in ms) of ``decide(snap)``. The call runs in a daemon thread on a copy of the snapshot and is
    abandoned after ``timeout`` seconds (None: ``DEFAULT_TIMEOUT``). Never raises, whatever the policy does."""
    limit = timeout or DEFAULT_TIMEOUT
    box: list[Answer] = []
    t0 = time.perf_counter()
    done = _in_thread(lambda: box.append(guarded(decide, snap)), limit)
    ms = (time.perf_counter() - t0) * 1000
    if not done or not box:
        return failure("timeout", detail=f"no answer within {limit} s"), ms
    return box[0], ms


#: Classes of the harness's own that guard a policy themselves (``IsolatedPolicy``: the policy runs in another
#: process and answers come back plain). Only these are asked through ``call_batch``; a policy's own ``call_batch``
#: method is policy code like any other and is never trusted.
_GUARDING: tuple[type, ...] = ()


def register_guarding(cls: type) -> type:
    """Mark ``cls`` (a harness class, such as ``tmsim.policies.isolated.IsolatedPolicy``) as guarding its policy."""
    global _GUARDING
    if cls not in _GUARDING:
        _GUARDING = (*_GUARDING, cls)
    return cls


def _guarded_batch(policy, snaps: list[Snapshot], limit: float) -> tuple[list[Answer], list[float]]:
    """``policy.call_batch`` of a guarding class, its result checked: anything but one ``Answer`` and one latency per
    snapshot is a failure of every decision, never an exception."""
    t0 = time.perf_counter()
    try:
        answers, latencies = policy.call_batch(snaps, limit)
        answers, latencies = list(answers), [float(m) for m in latencies]
        if len(answers) == len(latencies) == len(snaps) and all(type(a) is Answer for a in answers):
            return answers, latencies
        detail = "malformed batch answer"
    except BaseException as exc:  # noqa: BLE001 -- the guard itself failed: every decision falls back
        detail = f"{type(exc).__name__} in the policy guard"
    ms = (time.perf_counter() - t0) * 1000 / max(len(snaps), 1)
    return [failure("policy_exception", detail=detail) for _ in snaps], [ms] * len(snaps)


def policy_identity(policy, timeout: float = 2.0) -> tuple[str, str]:
    """(policy_id, version) of ``policy`` as plain strings, read once under a guard: an attribute that raises, hangs
    or is not a plain string gives the type's name (or ``"policy"``) and ``""`` rather than reaching the caller.

    >>> class Odd:
    ...     @property
    ...     def policy_id(self): raise RuntimeError
    >>> policy_identity(Odd())
    ('Odd', '')
    """
    box: list[tuple[str, str]] = []

    def read() -> None:
        try:
            name = type(policy).__name__
            name = name if type(name) is str else "policy"
        except BaseException:  # noqa: BLE001
            name = "policy"
        try:
            pid = getattr(policy, "policy_id", None)
            pid = pid[:200] if type(pid) is str and pid else name
        except BaseException:  # noqa: BLE001
            pid = name
        try:
            ver = getattr(policy, "version", "")
            ver = str(ver)[:100] if type(ver) in (str, int, float) else ""
        except BaseException:  # noqa: BLE001
            ver = ""
        box.append((pid, ver))

    if not _in_thread(read, timeout) or not box:
        return "policy", ""
    return box[0]


def call_policy_batch(policy, snaps: list[Snapshot],
                      timeout: float | None = DEFAULT_TIMEOUT) -> tuple[list[Answer], list[float]]:
    """Answers and per-decision latencies for ``snaps``, in one guarded thread with a budget of ``timeout`` seconds
    (None: ``DEFAULT_TIMEOUT``) per decision. The policy's optional ``decide_batch`` is tried first (its latency is
    shared equally); a batch that fails or returns the wrong count is retried one call at a time, so one failing call
    never sinks the batch. Decisions not answered within the budget are timeouts. A policy that guards itself (one
    running in its own process, of a class registered with ``register_guarding``) is asked through its
    ``call_batch``, and what that returns is checked."""
    limit = timeout or DEFAULT_TIMEOUT
    if isinstance(policy, _GUARDING):
        return _guarded_batch(policy, snaps, limit)
    results: list[tuple[Answer, float]] = []

    def work() -> None:
        try:  # a property or __getattr__ of the policy's may raise: that is its failure, not a timeout
            fn = getattr(policy, "decide_batch", None)
        except BaseException:  # noqa: BLE001
            fn = None
        if fn is not None and len(snaps) > 1:
            t0 = time.perf_counter()
            try:
                raws = list(fn([s.private_copy() for s in snaps]))
                if len(raws) == len(snaps):
                    ms = (time.perf_counter() - t0) * 1000 / len(snaps)
                    results.extend((answer(r), ms) for r in raws)
                    return
            except BaseException:  # noqa: BLE001 -- isolate the failure below, one call at a time
                pass
        for s in snaps:
            t0 = time.perf_counter()
            ans = guarded(lambda snap: policy.decide(snap), s)  # the lookup of decide is guarded too
            results.append((ans, (time.perf_counter() - t0) * 1000))

    t0 = time.perf_counter()
    _in_thread(work, limit * max(len(snaps), 1))
    done = list(results)[: len(snaps)]
    if len(done) < len(snaps):
        ms = (time.perf_counter() - t0) * 1000
        done += [(failure("timeout", detail=f"no answer within {limit} s per decision"), ms)] * (len(snaps) - len(done))
    return [a for a, _ in done], [m for _, m in done]


def raw_text(raw: Any) -> str:
    """A policy's raw output as audit text (at most ``RAW_OUTPUT_LIMIT`` characters; never raises)."""
    if isinstance(raw, Answer):
        return raw.text
    if isinstance(raw, Proposal):
        try:
            return raw.model_dump_json()[:RAW_OUTPUT_LIMIT]
        except Exception:  # noqa: BLE001 -- a proposal built without validation
            pass
    try:
        text = raw if isinstance(raw, str) else repr(raw)
        return str(text[:RAW_OUTPUT_LIMIT])
    except Exception as exc:  # noqa: BLE001 -- a policy may return an object whose repr raises
        return f"<unprintable {type(raw).__name__}: {type(exc).__name__}>"


def decision_row(policy, snap: Snapshot, raw: Any, ms: float, act: ValidatedAction | None, violations: list[str],
                 action: str | None = None, source: str | None = None, staleness_steps: int | None = None,
                 step: int | None = None) -> dict:
    """One ``decisions`` row (audit trail): the raw output, the parsed proposal, what was applied and why.
    ``action``/``source`` override the validated action's when the answer was not applied (a stale one)."""
    try:
        proposal, _ = parse_proposal(raw)
        proposal_json = proposal.model_dump_json() if proposal else None
    except Exception:  # noqa: BLE001 -- an output that was not made plain by the guarded call
        proposal_json = None
    return dict(
        run_id=snap.run_id, task=snap.task, epoch=snap.epoch, step=step, policy_id=getattr(policy, "policy_id", "policy"),
        policy_version=str(getattr(policy, "version", "")), snapshot_hash=snap.hash, raw_output=raw_text(raw),
        proposal_json=proposal_json, action=action or act.action,
        action_json=act.to_json() if act else None, violations=list(violations), source=source or act.source,
        latency_ms=ms, staleness_steps=staleness_steps)
