"""The non-LLM reference policies every leaderboard needs: constant, rules, plateau and random."""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from ..core.actions import Proposal
from ..core.menu import ACTIONS, LR_FACTOR
from ..core.snapshot import Snapshot


@dataclass
class ConstantPolicy:
    """Never intervene: the do-nothing baseline every score is measured against."""

    policy_id: str = "constant"
    version: str = "1"

    def decide(self, snapshot: Snapshot) -> Proposal:
        return Proposal(action="continue", reason="never intervene")

    def decide_batch(self, snapshots: list[Snapshot]) -> list[Proposal]:
        return [self.decide(s) for s in snapshots]


@dataclass
class RulesPolicy:
    """The classic fallback rules, checked in order:

    1. diverging (non-finite loss, or val loss ``DIVERGE_RISE`` above its best) -> ``lr_down``;
    2. big train/val gap (``gap > gap_threshold``) while val loss is above its best or rising -> ``lr_down``
       (or ``overfit_action``);
    3. good enough (``val_acc >= stop_val_acc``, when set, from ``min_stop_epoch``) -> ``stop``;
    4. slow progress (val loss falling less than ``slow_slope`` an epoch, in log terms, and no big gap) -> ``lr_up``;
    5. otherwise ``continue``.
    """

    gap_threshold: float = 0.5
    slow_slope: float = 0.01
    stop_val_acc: float | None = None
    min_stop_epoch: int = 10
    overfit_action: str = "lr_down"
    policy_id: str = "rules"
    version: str = "1"

    def decide(self, snapshot: Snapshot) -> Proposal:
        s = snapshot.signals
        last = snapshot.history[-1]
        if s.diverging:
            return Proposal(action="lr_down", reason="diverging")
        rising = (s.val_rise is not None and s.val_rise > 0.02) or (s.val_slope is not None and s.val_slope > 0)
        if s.gap is not None and s.gap > self.gap_threshold and rising:
            return Proposal(action=self.overfit_action, reason=f"train/val gap {s.gap:.2f} and val loss rising")
        if (self.stop_val_acc is not None and last.val_acc is not None and last.val_acc >= self.stop_val_acc
                and snapshot.epoch >= self.min_stop_epoch):
            return Proposal(action="stop", reason=f"val_acc {last.val_acc:.3f} is good enough")
        if s.val_slope is not None and s.val_slope > -self.slow_slope and (s.gap is None or s.gap <= self.gap_threshold):
            return Proposal(action="lr_up", reason=f"slow progress ({s.val_slope * 100:+.2f}%/epoch)")
        return Proposal(action="continue", reason="no rule fired")


@dataclass
class PlateauPolicy:
    """PyTorch ``ReduceLROnPlateau`` semantics (mode ``min``, relative or absolute threshold, patience, cooldown,
    ``min_lr``), replayed over the run's validation-loss history and acted on at decision epochs.

    The scheduler state is reconstructed from the history, so the policy is stateless between calls: the best
    value and the count of bad epochs restart after every LR reduction, which also starts the cooldown.
    A reduction by ``factor`` is proposed as ``lr_down`` when ``factor`` is the menu's own step, else ``set_lr``.
    """

    factor: float = 0.5
    patience: int = 2
    threshold: float = 1e-4
    threshold_mode: str = "rel"
    cooldown: int = 0
    min_lr: float = 0.0
    eps: float = 1e-8
    policy_id: str = "plateau"
    version: str = "1"

    def __post_init__(self) -> None:
        if not 0 < self.factor < 1:
            raise TypeError("factor must be in (0, 1)")
        if self.threshold_mode not in ("rel", "abs"):
            raise TypeError("threshold_mode must be 'rel' or 'abs'")

    def _better(self, a: float, best: float) -> bool:
        if self.threshold_mode == "rel":
            return a < best * (1 - self.threshold)
        return a < best - self.threshold

    def decide(self, snapshot: Snapshot) -> Proposal:
        best, bad, cool, prev_lr = float("inf"), 0, 0, None
        for h in snapshot.history:
            if h.epoch == 0 or h.val_loss is None:
                continue
            if prev_lr is not None and h.lr is not None and h.lr < prev_lr:
                cool, bad = self.cooldown, 0  # a reduction happened before this epoch
            prev_lr = h.lr
            if self._better(h.val_loss, best):
                best, bad = h.val_loss, 0
            else:
                bad += 1
            if cool > 0:
                cool -= 1
                bad = 0
        lr = snapshot.hparams.lr
        if bad > self.patience:
            new = max(lr * self.factor, self.min_lr)
            if lr - new > self.eps:
                if abs(self.factor - 1 / LR_FACTOR) < 1e-12 and new == lr * self.factor:
                    return Proposal(action="lr_down", reason=f"{bad} epochs without improvement")
                return Proposal(action="set_lr", value=new, reason=f"{bad} epochs without improvement")
        return Proposal(action="continue", reason=f"{bad} bad epoch(s), patience {self.patience}")


@dataclass
class RandomPolicy:
    """A uniformly random action among those offered (the whole menu when none are listed).

    Seeded and order-independent: the draw depends only on ``seed`` and the snapshot's hash, so the same decision
    point always gets the same action however rollouts are scheduled.
    """

    seed: int = 0
    p_continue: float | None = None
    actions: list[str] | None = None  # restrict the draw to these actions (e.g. the recorded menu)
    policy_id: str = "random"
    version: str = "1"

    def decide(self, snapshot: Snapshot) -> Proposal:
        h = hashlib.sha256(f"{self.seed}:{snapshot.hash}".encode()).digest()
        rng = random.Random(int.from_bytes(h[:8], "big"))
        menu = list(snapshot.offered or ACTIONS)
        if self.actions is not None:
            menu = [a for a in menu if a in self.actions] or ["continue"]
        if self.p_continue is not None:
            if rng.random() < self.p_continue or menu == ["continue"]:
                return Proposal(action="continue")
            menu = [a for a in menu if a != "continue"]
        return Proposal(action=rng.choice(menu))


@dataclass
class SequencePolicy:
    """A fixed action per decision: ``actions[i]`` at the i-th decision epoch (``continue`` after the list ends).

    A simple, fully transparent policy family: the fidelity pool uses many of them to check that the simulator
    ranks interventions the way the real recordings do.
    """

    actions: list[str]
    policy_id: str = "sequence"
    version: str = "1"

    def decide(self, snapshot: Snapshot) -> Proposal:
        i = snapshot.epoch // snapshot.decide_every - 1
        return Proposal(action=self.actions[i] if 0 <= i < len(self.actions) else "continue")
