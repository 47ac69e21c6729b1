"""Optuna's pruners as reference stop policies (``kind = "optuna"``): median, successive halving, Hyperband,
threshold and patient, run by optuna's own code.

A pruner answers one question, "stop this trial now?", from the trial's intermediate values and, for most
pruners, those of the *other* trials of its study. Here a run under evaluation is one running trial that reports
its validation loss at every epoch (step = epoch), and its study is built fairly from the library the command runs
on:

- **The study.** Every recorded do-nothing run (each tree's root run, every replicate) of the *same task* is a
  completed trial, in run-id order: its recorded validation loss per epoch are its intermediate values and its
  final validation loss (the outcome rule: a diverged run scores the divergence penalty, and reports it in place of
  a non-finite value) its value. Only *other seeds* are in it: the root under evaluation is recognised by its first
  segment (epochs 0 up to the first decision, which a root's replicates share), and every run of the task with that
  root's seed (any scenario) is left out, so a run is never compared with itself or its replicates. A run whose first
  segment is not in the library (a live run) gets every recorded run of its task. ``SuccessiveHalvingPruner`` and
  ``HyperbandPruner`` record in the study which rungs each trial passed; for them each reference trial is run
  through the pruner epoch by epoch, its answers ignored (it was trained to the end), so the study holds what optuna
  itself writes. The threshold and patient pruners look only at the trial itself: their study holds no reference
  trials.
- **One trial per run.** Each run (``Snapshot.run_key``) gets one running trial, kept between decisions, and runs
  under evaluation never see each other: successive halving and Hyperband give each run its own copy of its study
  (their rung records would otherwise compete); the median pruner reads only completed trials, so the runs' trials
  share the reference study. The study of the runs of one seed is named after the task and that seed, so Hyperband
  (which picks a trial's bracket from the study name and trial number) spreads the seeds over its brackets. At a decision epoch the trial reports every
  epoch since the last decision, asking ``should_prune()`` after each, as an optuna training loop does; if the
  pruner answers yes at any of them, the policy proposes ``stop`` (a prune between decisions is acted on at the next
  decision epoch, the only time a manager may act). A snapshot without a run key is judged from a fresh trial.
- **Settings.** ``pruner``: ``median``, ``successive_halving``, ``hyperband``, ``threshold`` or ``patient``;
  ``options``: keyword arguments of the optuna pruner (defaults are optuna's, except ``min_resource = 1`` for
  successive halving and Hyperband, and Hyperband's ``max_resource``, the task's run length); ``upper_factor`` /
  ``lower_factor`` (threshold only): the bounds as multiples of the run's own epoch-0 validation loss, since one
  absolute threshold cannot fit every task (default ``upper_factor = 1.0``: prune a run whose validation loss rises
  above where it started); ``patience`` (patient only, default 3).

optuna (pinned, 5.0.0) is a base dependency of tmsim, so every install runs the bundled ``policies/optuna-*.toml``
specs. An install without it all the same (``pip install --no-deps``) gets ``MissingExtraError`` when building the
policy, naming ``pip install 'tmsim[optuna]'`` (the extra is kept for that), and the leaderboard skips the policy and
says so.

Example
-------
>>> from tmsim.policies import PolicySpec, make_policy
>>> from tmsim.traces import load_library
>>> pol = make_policy(PolicySpec(name="median", kind="optuna", settings={"pruner": "median"}),
...                   load_library("traces"))                                               # doctest: +SKIP
"""
from __future__ import annotations

import math
import warnings
from collections import OrderedDict, defaultdict
from dataclasses import dataclass
from typing import Any

from ..core.actions import Proposal
from ..core.outcome import divergence_penalty
from ..core.snapshot import Snapshot

#: The pruners this kind offers, by setting value.
PRUNERS = ("median", "successive_halving", "hyperband", "threshold", "patient")
#: Pruners that write to the study (rung records): their reference trials are run through the pruner.
_WRITES_STUDY = {"successive_halving", "hyperband"}
#: Pruners that read only the trial itself: their study holds no reference trials.
_SELF_ONLY = {"threshold", "patient"}
#: Runs whose trial is kept at once (the oldest are dropped beyond this; a dropped run is rebuilt from its history).
MAX_RUNS = 4096

EXTRA_HINT = "pip install 'tmsim[optuna]'"


class MissingExtraError(ValueError):
    """A policy needs a dependency that is not installed; the message names the extra that installs it."""


def _optuna():
    try:
        import optuna
    except ImportError:
        raise MissingExtraError(f"the optuna pruner policies need optuna, a dependency of tmsim missing from this "
                                f"install: {EXTRA_HINT}") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


@dataclass
class _Ref:
    group: tuple
    values: dict[int, float]
    final: float


@dataclass
class _Run:
    task: str
    study: Any
    trial: Any
    last_step: int


class OptunaPrunerPolicy:
    """One of optuna's pruners as a stop policy (see the module docs)."""

    needs_library = True

    def __init__(self, library, pruner: str = "median", options: dict | None = None,
                 upper_factor: float | None = None, lower_factor: float | None = None, patience: int = 3,
                 policy_id: str | None = None, version: str = "1"):
        from ..traces.index import TreeIndex

        if pruner not in PRUNERS:
            raise TypeError(f"pruner must be one of {', '.join(PRUNERS)}, not {pruner!r}")
        self.optuna = _optuna()
        self.pruner, self.options = pruner, dict(options or {})
        if pruner == "threshold" and upper_factor is None and lower_factor is None:
            upper_factor = 1.0
        self.upper_factor, self.lower_factor, self.patience = upper_factor, lower_factor, patience
        self.policy_id, self.version = policy_id or f"optuna-{pruner}", version
        self.index = library if isinstance(library, TreeIndex) else TreeIndex(library)
        self._refs: dict[str, list[_Ref]] | None = None
        self._by_first: dict[tuple, set] = defaultdict(set)  # first segment -> the root groups that recorded it
        self._max_epochs: dict[str, int] = {}
        self._base: dict[tuple, Any] = {}  # (task, excluded seeds) -> the reference study
        self._runs: OrderedDict[str, _Run] = OrderedDict()
        self._make_pruner(v0=1.0, max_epochs=20)  # bad options fail here, when the policy is built

    # --- the study -----------------------------------------------------------------------------------------------
    def _make_pruner(self, v0: float, max_epochs: int):
        P, o = self.optuna.pruners, dict(self.options)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # optuna's ExperimentalWarning (PatientPruner)
            try:
                if self.pruner == "median":
                    return P.MedianPruner(**o)
                if self.pruner == "successive_halving":
                    return P.SuccessiveHalvingPruner(**{"min_resource": 1, **o})
                if self.pruner == "hyperband":
                    return P.HyperbandPruner(**{"min_resource": 1, "max_resource": max_epochs, **o})
                if self.pruner == "threshold":
                    lo = None if self.lower_factor is None else self.lower_factor * v0
                    up = None if self.upper_factor is None else self.upper_factor * v0
                    return P.ThresholdPruner(lower=lo, upper=up, **o)
                return P.PatientPruner(None, patience=self.patience, **o)
            except (TypeError, ValueError) as exc:
                raise TypeError(f"options for the {self.pruner} pruner: {exc}") from None

    @staticmethod
    def _first(rows, every: int) -> tuple:
        return tuple((r.epoch, r.val_loss, r.train_loss) for r in rows if r.epoch <= every)

    def _references(self) -> dict[str, list[_Ref]]:
        """Per task, the library's recorded do-nothing runs as completed trials (read once)."""
        if self._refs is None:
            from ..core.snapshot import EpochView

            refs: dict[str, list[_Ref]] = defaultdict(list)
            for rid in sorted(self.index.roots):
                m = self.index.meta[rid]
                rows = self.index[rid]
                views = [EpochView.from_row(rows[e]) for e in sorted(rows)]
                self._by_first[(m["task"], self._first(views, m["decide_every"]))].add(m["group"])
                self._max_epochs[m["task"]] = max(self._max_epochs.get(m["task"], 0), m["max_epochs"])
                v0 = views[0].val_loss if views and views[0].val_loss is not None else math.nan
                pen = divergence_penalty(v0)
                values = {v.epoch: (v.val_loss if math.isfinite(v.val_loss) else pen)
                          for v in views if v.epoch > 0 and v.val_loss is not None}
                refs[m["task"]].append(_Ref(m["group"], values, self.index.final_val_loss(rid)))
            self._refs = dict(refs)
        return self._refs

    def _study(self, task: str, exclude: frozenset, v0: float):
        """A fresh study for one run: a copy of the reference study of ``task`` without the seeds ``exclude``."""
        optuna = self.optuna
        max_epochs = self._max_epochs.get(task, 0) or 1
        name = f"tmsim-{task}-without-seeds-{'-'.join(map(str, sorted(exclude)))}"
        if self.pruner in _SELF_ONLY:
            return optuna.create_study(direction="minimize", study_name=name, pruner=self._make_pruner(v0, max_epochs),
                                       sampler=optuna.samplers.RandomSampler(seed=0))
        key = (task, exclude)
        base = self._base.get(key)
        if base is None:
            base = optuna.create_study(direction="minimize", study_name=name, pruner=self._make_pruner(v0, max_epochs),
                                       sampler=optuna.samplers.RandomSampler(seed=0))
            refs = [r for r in self._references().get(task, []) if r.group[2] not in exclude]
            if self.pruner in _WRITES_STUDY:
                for r in refs:
                    t = base.ask()
                    for step in sorted(r.values):
                        t.report(r.values[step], step)
                        t.should_prune()  # the answer is ignored: the reference was trained to the end
                    base.tell(t, r.final)
            else:
                base.add_trials([optuna.trial.create_trial(state=optuna.trial.TrialState.COMPLETE, value=r.final,
                                                           intermediate_values=r.values) for r in refs])
            self._base[key] = base
        if self.pruner not in _WRITES_STUDY:
            return base  # it reads only completed trials: a run's own (running) trial never counts for another
        study = optuna.create_study(direction="minimize", study_name=name, pruner=self._make_pruner(v0, max_epochs),
                                    sampler=optuna.samplers.RandomSampler(seed=0))
        study.add_trials(base.get_trials(deepcopy=False))
        return study

    def _new_run(self, snapshot: Snapshot) -> _Run:
        refs = self._references()  # noqa: F841 -- fills the first-segment table
        first = self._first(snapshot.history, snapshot.decide_every)
        exclude = frozenset(g[2] for g in self._by_first.get((snapshot.task, first), ()))  # its seed
        v0 = snapshot.history[0].val_loss if snapshot.history[0].val_loss is not None else math.nan
        study = self._study(snapshot.task, exclude, v0)
        return _Run(snapshot.task, study, study.ask(), 0)

    # --- deciding ------------------------------------------------------------------------------------------------
    def decide(self, snapshot: Snapshot) -> Proposal:
        key = snapshot.run_key
        run = self._runs.pop(key, None) if key is not None else None
        if run is None or run.task != snapshot.task or run.last_step >= snapshot.epoch:
            run = self._new_run(snapshot)
        pruned = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for h in snapshot.history:
                if h.epoch <= run.last_step or h.val_loss is None:
                    continue
                value = h.val_loss if math.isfinite(h.val_loss) else math.nan
                run.trial.report(value, h.epoch)
                run.last_step = h.epoch
                if run.trial.should_prune():
                    pruned = h.epoch
                    break
        if pruned is not None:
            return Proposal(action="stop", reason=f"optuna {self.pruner} pruner prunes the trial at epoch {pruned}")
        if key is not None and snapshot.epoch + snapshot.decide_every < snapshot.max_epochs:
            self._runs[key] = run  # more decisions to come in this run
            while len(self._runs) > MAX_RUNS:
                self._runs.popitem(last=False)
        return Proposal(action="continue", reason=f"optuna {self.pruner} pruner keeps the trial")
