"""The schema-conditioned prompt: the allowed actions with their exact effects, then the snapshot table."""
from __future__ import annotations

from ...core.menu import ACTION_TABLE


def system_prompt(offered: tuple[str, ...]) -> str:
    acts = "\n".join(f"- {a}: {ACTION_TABLE[a].meaning if a in ACTION_TABLE else a}" for a in offered)
    return ("You manage a neural network training run. Read the telemetry and reply with exactly one action name "
            f"from this list, nothing else:\n{acts}")


def messages(snapshot) -> list[dict[str, str]]:
    return [{"role": "system", "content": system_prompt(snapshot.offered)},
            {"role": "user", "content": snapshot.to_text()}]
