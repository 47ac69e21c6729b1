"""A learned baseline: a gradient-boosted classifier on the snapshot's numbers.

It learns the same labels as the fine-tuned LLM manager (``tmsim.policies.llm.finetune.build_dataset``): at every
recorded node of the training split, the action with the best expected final validation loss over replicates (the
oracle's choice), each example weighted by its advantage over doing nothing. Its inputs are only what a snapshot
shows as numbers: where the run is (epoch share), the hyperparameters (log scales), the computed signals, the last
epoch's losses, accuracies, gradient norm and update ratio relative to the run's start, and how many decisions were
taken. The task's name is *not* a feature, so a held-out task is judged from its telemetry alone.

Ablations (``inputs``): ``"all"`` (the default), ``"blind"`` (only what a recipe reader sees: the epoch share,
the knobs in force and the decisions taken, ``RECIPE_FEATURES``) and ``"telemetry"`` (only the curves and the
signals computed from them, ``TELEMETRY_FEATURES``), each learned on the same labels and split, so the rows
``gbm-blind``, ``gbm-telemetry`` and ``gbm`` say how much of the learned baseline's score comes from reading the run.

The model is scikit-learn's ``HistGradientBoostingClassifier`` with a fixed ``random_state`` (no subsampling), fitted
when the policy is built from the library's training split (``train_seeds``: even, odd or a list of seeds;
``holdout_tasks``: tasks never seen), so the same library gives the same model. At a decision it takes the most
probable *offered* action. The trees' settings are the defaults below: on two folds of the even seeds
(``eval/select_gbm.py``, ``eval/results/gbm-validation.json``) no other setting beat them on both folds, and the odd
seeds the boards score were never read for the choice.

A spec::

    name = "gbm"
    kind = "gbm"
    trained_on = { seeds = "even", holdout_tasks = ["friedman-mlp"] }
    [settings]
    train_seeds = "even"
    holdout_tasks = ["friedman-mlp"]
"""
from __future__ import annotations

import math

import numpy as np

from ..core.actions import Proposal
from ..core.snapshot import Snapshot

FEATURES = ("epoch_share", "log_lr", "log_wd", "dropout", "log_aux", "losses", "gap", "gap_trend", "train_slope",
            "val_slope", "val_rise", "progress", "epochs_since_best", "overfitting", "diverging", "plateau",
            "val_vs_first", "train_vs_val", "train_acc", "val_acc", "log_grad_norm", "log_update_ratio", "decisions",
            # RL runs (0 or log(1e-5) for supervised runs: constant columns, which no tree splits on)
            "log_std", "log_ent_coef", "cost_ratio", "collapse", "unsafe")
#: What a recipe reader sees (``inputs = "blind"``): where the run is, the knobs in force, the decisions taken.
RECIPE_FEATURES = ("epoch_share", "log_lr", "log_wd", "dropout", "log_aux", "losses", "decisions", "log_std",
                   "log_ent_coef")
#: What only the run's curves show (``inputs = "telemetry"``): everything else.
TELEMETRY_FEATURES = tuple(f for f in FEATURES if f not in RECIPE_FEATURES)
FEATURE_SETS = {"all": FEATURES, "blind": RECIPE_FEATURES, "telemetry": TELEMETRY_FEATURES}


def _num(x) -> float:
    return float(x) if x is not None and math.isfinite(float(x)) else math.nan


def _log(x) -> float:
    return math.log(x) if x is not None and math.isfinite(x) and x > 0 else math.nan


def features(s: Snapshot) -> list[float]:
    """The numeric feature vector of a snapshot (``FEATURES`` order; NaN where a value is undefined)."""
    hp, sig, last, first = s.hparams, s.signals, s.history[-1], s.history[0]
    return [s.epoch / max(s.max_epochs, 1), _log(hp.lr), math.log(hp.weight_decay + 1e-5), hp.dropout,
            _log(hp.aux_loss_weight) if hp.aux_loss_weight else 0.0, float(s.losses),
            _num(sig.gap), _num(sig.gap_trend), _num(sig.train_slope), _num(sig.val_slope), _num(sig.val_rise),
            _num(sig.progress), _num(sig.epochs_since_best), float(sig.overfitting), float(sig.diverging),
            float(sig.plateau), _log(last.val_loss / first.val_loss) if last.val_loss and first.val_loss else math.nan,
            _log(last.train_loss / last.val_loss) if last.train_loss and last.val_loss else math.nan,
            _num(last.train_acc), _num(last.val_acc), _log(last.grad_norm), _log(last.update_ratio),
            float(len(s.decisions)),
            hp.log_std or 0.0, math.log((hp.ent_coef or 0.0) + 1e-5), _num(sig.cost_ratio or 0.0),
            float(sig.collapse), float(sig.unsafe)]


class GBMPolicy:
    """See the module docs. ``library`` is given by ``make_policy`` (``needs_library``)."""

    needs_library = True

    def __init__(self, library, train_seeds: str | list[int] = "even", holdout_tasks: list[str] | None = None,
                 max_iter: int = 200, learning_rate: float = 0.05, max_leaf_nodes: int = 15,
                 min_samples_leaf: int = 20, l2_regularization: float = 0.0,
                 random_state: int = 0, policy_id: str = "gbm", version: str = "1", inputs: str = "all"):
        from sklearn.ensemble import HistGradientBoostingClassifier

        from .llm.finetune import build_dataset

        if inputs not in FEATURE_SETS:
            raise TypeError(f"inputs must be one of {sorted(FEATURE_SETS)}, not {inputs!r}")
        self.policy_id, self.version, self.inputs = policy_id, version, inputs
        self.columns = np.array([f in FEATURE_SETS[inputs] for f in FEATURES])
        self.trained_on = {"seeds": train_seeds, "holdout_tasks": list(holdout_tasks or [])}
        train, _ = build_dataset(library, train_seeds, None, True, holdout_tasks=holdout_tasks)
        if not train:
            raise ValueError("the training split holds no recorded node with alternatives")
        X = np.array([features(e.snapshot) for e in train], dtype=float)
        X[:, ~self.columns] = np.nan  # features outside the chosen set: left out below, as undefined ones are
        # a feature undefined on every training node (accuracy on regression or RL runs, grad norm on RL runs) is
        # left out: it says nothing, and scikit-learn's binning cannot take a column without a value
        self.keep = ~np.isnan(X).all(axis=0)
        X = X[:, self.keep]
        y = np.array([e.target for e in train])
        w = np.array([e.weight for e in train], dtype=float)
        self.model = HistGradientBoostingClassifier(max_iter=max_iter, learning_rate=learning_rate,
                                                    max_leaf_nodes=max_leaf_nodes, min_samples_leaf=min_samples_leaf,
                                                    l2_regularization=l2_regularization,
                                                    random_state=random_state, early_stopping=False)
        self.model.fit(X, y, sample_weight=w)
        self.classes = list(self.model.classes_)
        self.train_examples = len(train)

    def decide(self, snapshot: Snapshot) -> Proposal:
        return self.decide_batch([snapshot])[0]

    def decide_batch(self, snapshots: list[Snapshot]) -> list[Proposal]:
        if not snapshots:
            return []
        proba = self.model.predict_proba(np.array([features(s) for s in snapshots], dtype=float)[:, self.keep])
        out = []
        for s, p in zip(snapshots, proba):
            offered = set(s.offered) or {"continue"}
            ranked = sorted((c for c in range(len(self.classes)) if self.classes[c] in offered), key=lambda c: -p[c])
            if not ranked:
                out.append(Proposal(action="continue", reason="no offered action among the learned classes"))
                continue
            c = ranked[0]
            out.append(Proposal(action=self.classes[c], reason=f"gradient boosting: p={p[c]:.2f}"))
        return out
