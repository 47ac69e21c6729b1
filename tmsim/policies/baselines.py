"""The non-LLM reference policies every leaderboard needs: constant, rules, plateau and random."""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from ..core.actions import Proposal
from ..core.hparams import is_rl
from ..core.menu import ACTION_TABLE, ACTIONS, LR_FACTOR
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

    On a reinforcement-learning run two rules come first: unsafe exploration (the training episodes' safety cost
    above ``UNSAFE_COST`` of its budget) -> ``noise_down``; exploration collapse (action noise below
    ``COLLAPSE_LOG_STD`` while the return stalls) -> ``noise_up``. The gap rule does not apply there (the loss is a
    return shortfall, and the training episodes explore).
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
        if s.unsafe:
            return Proposal(action="noise_down", reason=f"safety cost at {s.cost_ratio:.0%} of its budget")
        if s.collapse:
            return Proposal(action="noise_up", reason=f"action noise log-std {last.log_std:.2f} and the return stalls")
        if s.diverging:
            return Proposal(action="lr_down", reason="diverging")
        rising = (s.val_rise is not None and s.val_rise > 0.02) or (s.val_slope is not None and s.val_slope > 0)
        gap = None if is_rl(snapshot.hparams) else s.gap
        if gap is not None and gap > self.gap_threshold and rising:
            return Proposal(action=self.overfit_action, reason=f"train/val gap {s.gap:.2f} and val loss rising")
        if (self.stop_val_acc is not None and last.val_acc is not None and last.val_acc >= self.stop_val_acc
                and snapshot.epoch >= self.min_stop_epoch):
            return Proposal(action="stop", reason=f"val_acc {last.val_acc:.3f} is good enough")
        if s.val_slope is not None and s.val_slope > -self.slow_slope and (gap is None or gap <= self.gap_threshold):
            return Proposal(action="lr_up", reason=f"slow progress ({s.val_slope * 100:+.2f}%/epoch)")
        return Proposal(action="continue", reason="no rule fired")


@dataclass
class PlateauPolicy:
    """PyTorch's ``torch.optim.lr_scheduler.ReduceLROnPlateau`` itself, driven over the run's history.

    At every decision a real scheduler (mode ``min``; ``factor``, ``patience``, ``threshold``, ``threshold_mode``,
    ``cooldown``, ``min_lr``, ``eps`` as torch defines them) is built on a one-parameter optimizer at the run's first
    LR and stepped with the validation loss of every epoch from 1 to the decision epoch, as a training loop steps it
    after each epoch's evaluation. The semantics are torch's by construction (the best value is *not* reset after a
    reduction; the bad-epoch count is; the cooldown starts). Two rules tie the scheduler to a run that is managed only
    at decision epochs:

    - **A cut between decisions** is held by the scheduler until the next decision epoch, where the policy proposes
      the LR the scheduler holds then: ``lr_down`` when that is exactly one menu step (``factor`` 0.5, one cut),
      else ``set_lr`` with torch's value (two cuts in one segment give ``lr * factor**2``). So the run trains the
      rest of that segment at the old LR, and from the decision on at torch's.
    - **An LR change the policy did not make** (the history's ``lr`` column changes from one epoch to the next to a
      value other than the scheduler's, e.g. a recorded ``lr_up`` branch, or a clamp by the validator) is written
      into the optimizer, as a user setting ``param_group["lr"]`` by hand would; the scheduler's state is kept.

    The policy keeps no state between calls (the scheduler is rebuilt from the history each time), so it needs no
    run key and gives the same answer at a decision point however calls are ordered.

    ``menu_only = True`` keeps every proposal on the recorded menu (for a pool that must replay exactly, such as
    fidelity's): whenever the scheduler holds a lower LR it proposes one ``lr_down``, and the run's LR, which then
    differs from the scheduler's, is written into the optimizer by the second rule.
    """

    factor: float = 0.5
    patience: int = 2
    threshold: float = 1e-4
    threshold_mode: str = "rel"
    cooldown: int = 0
    min_lr: float = 0.0
    eps: float = 1e-8
    menu_only: bool = False
    policy_id: str = "plateau"
    version: str = "2"

    def __post_init__(self) -> None:
        if not 0 < self.factor < 1:
            raise TypeError("factor must be in (0, 1)")
        if self.threshold_mode not in ("rel", "abs"):
            raise TypeError("threshold_mode must be 'rel' or 'abs'")

    def scheduler_lr(self, snapshot: Snapshot) -> tuple[float, int]:
        """(the LR torch's scheduler holds after the decision epoch's validation loss, its bad-epoch count)."""
        return torch_plateau_lr(snapshot.history, self.factor, self.patience, self.threshold, self.threshold_mode,
                                self.cooldown, self.min_lr, self.eps, lr0=snapshot.hparams.lr,
                                lr_decisions={d.epoch for d in snapshot.decisions if d.action in _LR_ACTIONS})

    def decide(self, snapshot: Snapshot) -> Proposal:
        new, bad = self.scheduler_lr(snapshot)
        lr = snapshot.hparams.lr
        if new < lr * (1 - 1e-12):  # the scheduler cut the LR since the run last changed it
            why = f"ReduceLROnPlateau holds lr {new:.4g} ({bad} bad epoch(s) since its last cut, patience {self.patience})"
            if self.menu_only or abs(new * LR_FACTOR - lr) <= 1e-12 * lr:
                return Proposal(action="lr_down", reason=why)
            return Proposal(action="set_lr", value=new, reason=why)
        return Proposal(action="continue", reason=f"{bad} bad epoch(s), patience {self.patience}")


#: Menu and value actions that change the learning rate (``PlateauPolicy`` reads its own past cuts by them).
_LR_ACTIONS = frozenset(a for a, entry in ACTION_TABLE.items() if entry.knob == "lr")


def torch_plateau_lr(history, factor: float = 0.5, patience: int = 2, threshold: float = 1e-4,
                     threshold_mode: str = "rel", cooldown: int = 0, min_lr: float = 0.0, eps: float = 1e-8,
                     lr0: float | None = None, lr_decisions: set[int] | frozenset[int] = frozenset()) -> tuple[float, int]:
    """Drive ``torch.optim.lr_scheduler.ReduceLROnPlateau`` over ``history`` (``EpochView``s from epoch 0) as
    ``PlateauPolicy`` documents; returns the LR the scheduler's optimizer holds at the end and its bad-epoch count.
    ``lr0`` is used when the history records no LR. ``lr_decisions``: the decision epochs at which the run took an
    action on the LR; the LR recorded for the epoch after one is what the run trained with after it, so where it is
    not the scheduler's it was set from outside and is written in, even when the column did not change (set back by
    hand to the value before the cut)."""
    import torch

    rows = [h for h in history if h.epoch > 0]
    first = next((h.lr for h in history if h.lr is not None), lr0)
    if first is None:
        raise ValueError("the history records no learning rate")
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=first)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=factor, patience=patience,
                                                       threshold=threshold, threshold_mode=threshold_mode,
                                                       cooldown=cooldown, min_lr=min_lr, eps=eps)
    group = opt.param_groups[0]
    prev = first
    for h in rows:
        if h.lr is not None and h.epoch - 1 in lr_decisions and h.lr != group["lr"]:
            group["lr"] = h.lr  # the LR action's outcome is the recorded LR, whatever the scheduler held
            prev = h.lr
        elif h.lr is not None and h.lr != prev:
            if h.lr != group["lr"]:
                group["lr"] = h.lr  # a change the scheduler did not make: set by hand, the scheduler's state kept
            prev = h.lr
        if h.val_loss is not None:
            # torch treats a non-finite loss as it does any other (a NaN is never an improvement)
            sched.step(float(h.val_loss))
    return float(group["lr"]), int(sched.num_bad_epochs)


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
