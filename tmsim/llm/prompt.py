"""The schema-conditioned prompt: the allowed actions with their exact effects, then the snapshot table."""
from __future__ import annotations

from ..menu import AUX_FACTOR, DROPOUT_STEP, LR_FACTOR, WD_FACTOR

MEANING = {
    "continue": "change nothing",
    "lr_down": f"divide the learning rate by {LR_FACTOR:g}",
    "lr_up": f"multiply the learning rate by {LR_FACTOR:g}",
    "weight_decay_up": f"multiply weight decay by {WD_FACTOR:g} (or start it)",
    "weight_decay_down": f"divide weight decay by {WD_FACTOR:g}",
    "dropout_up": f"raise dropout by {DROPOUT_STEP:g}",
    "dropout_down": f"lower dropout by {DROPOUT_STEP:g}",
    "aux_weight_up": f"multiply the auxiliary loss weight by {AUX_FACTOR:g}",
    "aux_weight_down": f"divide the auxiliary loss weight by {AUX_FACTOR:g}",
    "stop": "end training now",
}


def system_prompt(offered: tuple[str, ...]) -> str:
    acts = "\n".join(f"- {a}: {MEANING.get(a, a)}" for a in offered)
    return ("You manage a neural network training run. Read the telemetry and reply with exactly one action name "
            f"from this list, nothing else:\n{acts}")


def messages(snapshot) -> list[dict[str, str]]:
    return [{"role": "system", "content": system_prompt(snapshot.offered)},
            {"role": "user", "content": snapshot.to_text()}]
