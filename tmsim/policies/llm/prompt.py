"""The prompts a language-model manager reads.

Two styles, both rendered with the model's own chat template:

- ``"manager"`` (default): what a person would write for a colleague asked to steer the run. The system message
  says what the job is, how to read each computed signal, what every allowed action does (from the one action
  table, ``tmsim.core.menu``), the bounds every change must respect, and the reply format. The user message is the
  snapshot itself (``Snapshot.to_text``: the recent epochs as a table, the hyperparameters, the signals, the past
  decisions and their effect, the allowed actions).
- ``"terse"``: the action list with effects and the snapshot, nothing else (the prompt the offline scratch model
  was trained with).
- ``"compact"``: one line naming the allowed actions, and the snapshot with only its last epoch (the signals still
  summarise the recent window). For a fine-tuned model, which learns what the names mean from the labels: about a
  third of the manager prompt's tokens, so CPU fine-tuning and inference cost a third.

``reply`` is ``"action"`` (the answer is one action name: candidate scoring) or ``"json"`` (a JSON object with
``action``, an optional ``value`` for ``set_lr``, and a one-sentence ``reason``: schema-constrained generation).

>>> from tmsim.core.actions import Bounds
>>> "set_lr" in system_prompt(("continue", "lr_down"), reply="json", lr=0.1, bounds=Bounds())
True
"""
from __future__ import annotations

from ...core.actions import Bounds
from ...core.hparams import is_rl
from ...core.menu import ACTION_TABLE

SIGNALS = ("Signals: gap = val loss / train loss - 1 (large and growing: overfitting); slopes = change per epoch "
           "(near 0: plateau; val slope > 0: getting worse); val above best = distance from the best val loss.")

RL_SIGNALS = ("Signals: the loss is the shortfall of the evaluation return from a perfect return (lower is better); "
              "slopes = change per evaluation (near 0: stalled); exploration collapse = action noise very narrow while "
              "the return stalls; unsafe exploration = the training episodes' safety cost (control effort) near or "
              "over its budget, where the run is stopped.")

#: epochs of history the manager prompt shows (the signals summarise the longer window)
WINDOW = 3
_WINDOWS = {"manager": WINDOW, "compact": 1, "terse": 5}


def _bounds_text(lr: float | None, bounds: Bounds, rl: bool = False) -> str:
    parts = [f"Limits (changes outside are clipped or refused): lr changes at most {bounds.max_factor:g}x per decision"]
    if rl:
        parts += [f"action-noise log-std moves at most {bounds.max_log_std_step:g} per decision, within "
                  f"[{bounds.log_std_min:g}, {bounds.log_std_max:g}]",
                  f"entropy coefficient within [{bounds.ent_coef_min:g}, {bounds.ent_coef_max:g}]"]
    else:
        parts.append(f"dropout within [{bounds.dropout_min:g}, {bounds.dropout_max:g}]")
    if bounds.max_interventions is not None:
        parts.append(f"at most {bounds.max_interventions} changes per run")
    if lr is not None:
        lo, hi = max(bounds.lr_min, lr / bounds.max_factor), min(bounds.lr_max, lr * bounds.max_factor)
        parts.append(f"a new lr must lie in [{lo:.3g}, {hi:.3g}]")
    return "; ".join(parts) + "."


def system_prompt(offered: tuple[str, ...], style: str = "manager", reply: str = "action", lr: float | None = None,
                  bounds: Bounds | None = None, rl: bool = False) -> str:
    offered = tuple(offered) or ("continue",)
    acts = "\n".join(f"- {a}: {ACTION_TABLE[a].meaning if a in ACTION_TABLE else a}" for a in offered)
    if style == "terse":
        return ("You manage a neural network training run. Read the telemetry and reply with exactly one action name "
                f"from this list, nothing else:\n{acts}")
    if style == "compact":
        return "Training manager. Reply with one action: " + ", ".join(offered) + "."
    bounds = bounds or Bounds()
    if reply == "json":
        acts += f"\n- set_lr: {ACTION_TABLE['set_lr'].meaning} (give it as \"value\")"
        fmt = ('Reply with JSON only: {"action": an action above, "value": the new lr for set_lr else null, '
               '"reason": one short sentence}.')
    else:
        fmt = "Reply with the name of one action from the list, nothing else."
    if rl:
        return ("You manage a reinforcement-learning run (PPO). Read its telemetry and choose the action that gives "
                "the highest final evaluation return without breaking the safety budget. Change something only when "
                "the numbers call for it.\n"
                f"{RL_SIGNALS}\n"
                f"Actions:\n{acts}\n"
                f"{_bounds_text(lr, bounds, rl=True)}\n{fmt}")
    return ("You manage a neural network training run. Read its telemetry and choose the action that gives the "
            "lowest final validation loss. Change something only when the numbers call for it.\n"
            f"{SIGNALS}\n"
            f"Actions:\n{acts}\n"
            f"{_bounds_text(lr, bounds)}\n{fmt}")


def messages(snapshot, style: str = "manager", reply: str = "action", bounds: Bounds | None = None) -> list[dict[str, str]]:
    """The chat messages for one snapshot (see the module docs)."""
    hp = getattr(snapshot, "hparams", None)
    lr = getattr(hp, "lr", None)
    rl = is_rl(hp)
    return [{"role": "system", "content": system_prompt(snapshot.offered, style, reply, lr, bounds, rl=rl)},
            {"role": "user", "content": snapshot.to_text(_WINDOWS.get(style, 5))}]


def content_free_snapshot_text() -> str:
    """The user message of the content-free prompt used to calibrate candidate scores: the same layout with no
    numbers (the model's prior over the action names, which calibration divides out)."""
    return ("task N/A | epoch N/A | decisions every N/A epochs\nhyperparameters: N/A\n"
            "epoch  train_loss  val_loss  train_acc  val_acc  grad_norm  update_ratio\nN/A\nsignals: N/A")
