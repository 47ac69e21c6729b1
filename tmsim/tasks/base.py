"""The ``Task`` interface: a real training run, small enough to fork.

A task builds a model and optimizer from hyperparameters and a seed, trains one epoch, evaluates, takes a
hyperparameter change, and saves/restores its full state (model, optimizer, data-order RNG and torch's global RNG,
which dropout draws from). That is everything the trace-tree recorder needs to fork a run at a decision epoch and
train each menu action from the *same* state.

Every task here trains a PyTorch model with a plain loop a reader can follow top to bottom (``TorchTask.train_epoch``);
subclasses only provide data, a model and a loss.

Example
-------
>>> from tmsim.tasks import get_task
>>> task = get_task("digits-mlp")
>>> state = task.build("healthy", seed=0)
>>> row = task.train_epoch(state)
>>> sorted(row)[:3]
['grad_norm', 'samples_seen', 'step']
"""
from __future__ import annotations

import io
import time
import math
import random
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..core.hparams import Hyperparams
from ..core.menu import record_menu
from . import hidden


@dataclass(frozen=True)
class Scenario:
    """A *family* of recipes that induce one failure a manager must fix (or a healthy run to leave alone).

    ``hparams`` and ``settings`` (task-specific fixed settings: model width, training-set size, batch size, momentum
    or betas, ...) are the family's centre; ``family`` says how each seed draws its own member: a knob name (``lr``,
    ``weight_decay``, ``dropout``, ``aux_loss_weight``) or a settings key mapped to ``("log", lo, hi)``,
    ``("uniform", lo, hi)``, ``("int", lo, hi)`` or ``("choice", [options])``. ``draw(task, seed)`` gives the member
    for a seed, deterministically, so a scenario is the label of a family rather than one recipe a model could
    memorise. The ranges keep the failure mode; ``epochs`` and ``decide_every`` are the same for every member.
    """

    name: str
    hparams: Hyperparams
    epochs: int
    decide_every: int
    description: str
    settings: dict[str, Any] = field(default_factory=dict)
    family: dict[str, tuple] = field(default_factory=dict)
    seed: int | None = None  # the seed this member was drawn for (None: the family's centre)

    def draw(self, task: str, seed: int) -> "Scenario":
        """The member of the family for ``seed`` (the same on every machine and every call)."""
        if not self.family:
            return replace(self, seed=seed)
        rng = random.Random(f"{task}/{self.name}/{seed}")
        hp, settings = self.hparams.to_dict(), dict(self.settings)
        for key in sorted(self.family):
            value = _draw(rng, self.family[key], f"{task}/{self.name}: family {key!r}")
            if key in hp:
                hp[key] = value
            else:
                settings[key] = value
        return replace(self, hparams=Hyperparams(**hp), settings=settings, seed=seed)


def _draw(rng: random.Random, spec: tuple, where: str) -> Any:
    kind, *args = spec
    if kind == "log":  # drawn values keep 4 significant digits: readable in traces and prompts
        lo, hi = args
        return float(f"{math.exp(rng.uniform(math.log(lo), math.log(hi))):.4g}")
    if kind == "uniform":
        lo, hi = args
        return float(f"{rng.uniform(lo, hi):.4g}")
    if kind == "int":
        lo, hi = args
        return rng.randint(int(lo), int(hi))
    if kind == "choice":
        (options,) = args
        return options[rng.randrange(len(options))]
    raise ValueError(f"{where}: unknown range kind {kind!r} (log, uniform, int, choice)")


@dataclass
class TrainState:
    """Everything that evolves during training; ``Task.save``/``Task.restore`` round-trip it exactly."""

    scenario: Scenario
    seed: int
    hparams: Hyperparams
    model: nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator  # data order
    epoch: int = 0
    samples_seen: int = 0
    steps: int = 0  # optimizer steps taken so far


#: Metric columns every task reports at every epoch (``None`` where undefined).
METRICS = ("train_loss", "val_loss", "test_loss", "train_acc", "val_acc", "test_acc")


class TorchTask:
    """Base class for tasks trained with a plain PyTorch loop.

    Subclasses set ``name``, ``losses`` (loss names; more than one means loss weights are a knob), ``SCENARIOS``, and
    implement ``data``, ``make_model``, ``batch_loss`` and ``evaluate_split``.
    """

    name: str = ""
    losses: tuple[str, ...] = ("loss",)
    #: GPUs one tree of this task trains on; the Ray executor requests them per tree (``tmsim record --executor ray``).
    gpus: float = 0
    model_descriptor: str = ""
    dataset_descriptor: str = ""
    SCENARIOS: dict[str, Scenario] = {}

    # --- what subclasses provide -------------------------------------------------------------------------------
    def data(self, scenario: Scenario) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``{"train": (X, Y), "val": (X, Y), "test": (X, Y)}``; fixed across seeds (seed drives init and order)."""
        raise NotImplementedError

    def make_model(self, scenario: Scenario, hp: Hyperparams) -> nn.Module:
        raise NotImplementedError

    def batch_loss(self, model: nn.Module, xb: torch.Tensor, yb: torch.Tensor, hp: Hyperparams) -> torch.Tensor:
        """The weighted training loss of one minibatch (what the optimizer minimises)."""
        raise NotImplementedError

    def evaluate_split(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, hp: Hyperparams) -> tuple[float, float | None]:
        """(objective loss, accuracy or None) on a whole split, in eval mode, without gradients."""
        raise NotImplementedError

    def reseed(self, state: TrainState, noise_seed: int) -> None:
        """Draw the run's noise from here on (data order, dropout masks) from ``noise_seed``: how the recorder makes
        replicates of a tree that differ only after the fork."""
        state.generator.manual_seed(noise_seed)
        torch.manual_seed(noise_seed)

    def optimizer_info(self, state: TrainState) -> tuple[str, dict[str, Any]]:
        """(family, settings) of the run's optimizer, as recorded in ``runs`` (e.g. ``("sgd", {"momentum": 0.9})``)."""
        opt = state.optimizer
        keep = ("momentum", "nesterov", "dampening", "betas", "eps", "amsgrad")
        return type(opt).__name__.lower(), {k: opt.defaults[k] for k in keep if k in opt.defaults}

    def make_optimizer(self, model: nn.Module, scenario: Scenario, hp: Hyperparams) -> torch.optim.Optimizer:
        momentum = scenario.settings.get("momentum", 0.9)
        return torch.optim.SGD(model.parameters(), lr=hp.lr, momentum=momentum, weight_decay=hp.weight_decay)

    # --- the interface the recorder and the live hook use ------------------------------------------------------
    def record_menu(self) -> tuple[str, ...]:
        """The actions the recorder trains at every decision point (RL tasks: the exploration menu)."""
        return record_menu(len(self.losses))

    def breach(self, train: dict[str, Any] | None) -> bool:
        """Whether an epoch's training telemetry breaks the task's safety limit, which stops the run as diverged
        (RL tasks: the safety budget; supervised tasks have none)."""
        return False

    def scenarios(self) -> dict[str, Scenario]:
        return dict(self.SCENARIOS)

    def scenario(self, name: str, seed: int | None = None) -> Scenario:
        """The scenario family ``name``; with ``seed``, that seed's member of the family."""
        try:
            sc = self.SCENARIOS[name]
        except KeyError:
            raise ValueError(f"task {self.name!r} has no scenario {name!r}; known: {sorted(self.SCENARIOS)}") from None
        return sc if seed is None else sc.draw(self.name, seed)

    def _data(self, scenario: Scenario) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        # Data is deterministic per scenario; cache it so forks do not rebuild it.
        cache = self.__dict__.setdefault("_data_cache", {})
        key = (scenario.name, repr(sorted(scenario.settings.items())))  # members of a family may differ in data
        if key not in cache:
            cache[key] = hidden.prepare(self.data(scenario), scenario.settings)
        return cache[key]

    def n_params(self, state: TrainState) -> int:
        return sum(p.numel() for p in state.model.parameters())

    def build(self, scenario: str | Scenario, seed: int, hparams: Hyperparams | None = None) -> TrainState:
        """A fresh run: model initialised from ``seed``, data order from ``seed``. A scenario given by name is the
        family's member for ``seed``."""
        sc = self.scenario(scenario, seed) if isinstance(scenario, str) else scenario
        hp = hparams or sc.hparams
        torch.manual_seed(seed)
        model = self.make_model(sc, hp)
        opt = self.make_optimizer(model, sc, hp)
        gen = torch.Generator().manual_seed(seed)
        return TrainState(sc, seed, hp, model, opt, gen)

    def apply(self, state: TrainState, hp: Hyperparams) -> None:
        """Put ``hp`` in force: optimizer param groups, dropout modules, loss weights (read by ``batch_loss``)."""
        for group in state.optimizer.param_groups:
            group["lr"] = hp.lr
            group["weight_decay"] = hp.weight_decay
        for m in state.model.modules():
            if isinstance(m, nn.Dropout):
                m.p = hp.dropout
        state.hparams = hp

    def train_epoch(self, state: TrainState, on_step: "Callable[[], None] | None" = None) -> dict[str, Any]:
        """One pass over the training split; returns the epoch's training telemetry.

        ``grad_norm`` is the mean total gradient norm over the epoch's steps; ``update_ratio`` is
        ``||w_end - w_start|| / ||w_start||`` over the epoch (how far the weights moved, relative to their size).
        ``on_step`` is called after every optimizer step (the live hook's step boundary).
        """
        settings = state.scenario.settings
        x, y = hidden.train_split(self._data(state.scenario), settings, state.epoch + 1)
        scale = hidden.loss_scale(settings, state.epoch + 1)
        bs = settings.get("batch_size", 32)
        steps = settings.get("steps_per_epoch")
        model, opt, hp = state.model, state.optimizer, state.hparams
        model.train()
        w0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()
        order = self.epoch_order(len(x), bs, steps, state.generator)
        t0 = time.perf_counter()
        grad_norms, n = [], 0
        for idx in order:
            xb, yb = self.batch(x, y, idx, state)
            opt.zero_grad(set_to_none=True)
            loss = self.batch_loss(model, xb, yb, hp)
            if scale is not None:  # a hidden loss scale (tmsim.tasks.hidden): the optimizer sees it, the metrics do not
                loss = loss * scale
            loss.backward()
            gn = torch.linalg.vector_norm(torch.stack([p.grad.detach().norm() for p in model.parameters() if p.grad is not None]))
            grad_norms.append(float(gn))
            opt.step()
            state.steps += 1
            n += len(idx)
            if on_step is not None:
                on_step()
        elapsed = time.perf_counter() - t0
        w1 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        w0n = float(w0.norm())
        state.epoch += 1
        state.samples_seen += n
        return {
            "grad_norm": float(sum(grad_norms) / max(len(grad_norms), 1)),
            "update_ratio": float((w1 - w0).norm()) / w0n if w0n > 0 else float("nan"),
            "samples_seen": state.samples_seen,
            "step": state.steps,
            "step_time_s": elapsed / max(len(order), 1),
        }

    def epoch_order(self, n: int, bs: int, steps: int | None, gen: torch.Generator) -> list[torch.Tensor]:
        """Minibatch indices for one epoch, drawn from the run's own generator (so a fork replays the same order)."""
        perm = torch.randperm(n, generator=gen)
        batches = [perm[i : i + bs] for i in range(0, n - bs + 1, bs)] or [perm]
        return batches[:steps] if steps else batches

    def batch(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, state: TrainState) -> tuple[torch.Tensor, torch.Tensor]:
        return x[idx], y[idx]

    def evaluate(self, state: TrainState) -> dict[str, float | None]:
        """Objective loss and accuracy on train, val and test (test is recorded but never shown to a policy)."""
        data = self._data(state.scenario)
        state.model.eval()
        out: dict[str, float | None] = {}
        with torch.no_grad():
            for split in ("train", "val", "test"):
                # the training loss is measured on the labels the run last trained on (hidden label noise included)
                x, y = hidden.train_split(data, state.scenario.settings, state.epoch) if split == "train" else data[split]
                x, y = self.eval_subset(x, y, split, state.scenario)
                loss, acc = self.evaluate_split(state.model, x, y, state.hparams)
                out[f"{split}_loss"] = loss
                out[f"{split}_acc"] = acc
        state.model.train()
        return out

    def eval_subset(self, x: torch.Tensor, y: torch.Tensor, split: str, scenario: Scenario) -> tuple[torch.Tensor, torch.Tensor]:
        return x, y

    # --- fork support ------------------------------------------------------------------------------------------
    def save(self, state: TrainState) -> bytes:
        """Serialise the full training state, RNGs included, to bytes (loaded back with ``weights_only=True``)."""
        buf = io.BytesIO()
        torch.save(
            {
                "model": state.model.state_dict(),
                "optimizer": state.optimizer.state_dict(),
                "generator": state.generator.get_state(),
                "torch_rng": torch.get_rng_state(),
                "hparams": state.hparams.to_dict(),
                "seed": state.seed,
                "epoch": state.epoch,
                "samples_seen": state.samples_seen,
                "steps": state.steps,
                "scenario": state.scenario.name,
            },
            buf,
        )
        return buf.getvalue()

    def restore(self, blob: bytes) -> TrainState:
        """Rebuild a ``TrainState`` from ``save``'s bytes; the restored run continues bit-for-bit like the original."""
        d = torch.load(io.BytesIO(blob), weights_only=True)
        sc = self.scenario(d["scenario"], d["seed"])
        hp = Hyperparams(**d["hparams"])
        state = self.build(sc, d["seed"], hp)
        state.model.load_state_dict(d["model"])
        state.optimizer.load_state_dict(d["optimizer"])
        self.apply(state, hp)
        state.generator.set_state(d["generator"])
        torch.set_rng_state(d["torch_rng"])
        state.epoch, state.samples_seen, state.steps = d["epoch"], d["samples_seen"], d.get("steps", 0)
        return state


def adam(model: nn.Module, scenario: Scenario, hp: Hyperparams, decoupled: bool = False) -> torch.optim.Optimizer:
    """``torch.optim.Adam`` (weight decay as a coupled L2 term) or, with ``decoupled``, ``AdamW``, with the
    scenario member's ``betas`` (default ``(0.9, 0.999)``)."""
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    return cls(model.parameters(), lr=hp.lr, weight_decay=hp.weight_decay,
               betas=tuple(scenario.settings.get("betas", (0.9, 0.999))))


class MSERegression(TorchTask):
    """A regression task: MSE on a standardised target is the loss and ``val_loss``; there is no accuracy."""

    losses = ("mse",)

    def batch_loss(self, model, xb, yb, hp):
        return F.mse_loss(model(xb), yb)

    def evaluate_split(self, model, x, y, hp):
        return float(F.mse_loss(model(x), y)), None


class Classification(TorchTask):
    """A classification task: cross-entropy on the model's logits is the loss and ``val_loss``; ``val_acc`` is the
    accuracy."""

    losses = ("cross_entropy",)

    def batch_loss(self, model, xb, yb, hp):
        return F.cross_entropy(model(xb), yb)

    def evaluate_split(self, model, x, y, hp):
        logits = model(x)
        return float(F.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())
