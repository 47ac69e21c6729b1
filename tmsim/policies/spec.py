"""Policy specs (``policies/*.toml``): a name, a kind and its settings.

A spec names a kind and its settings::

    name = "rules"          # the id shown on leaderboards
    kind = "rules"          # a registered kind (tmsim.policies.kind_names()) or "python"
    version = "1"
    [settings]
    gap_threshold = 0.5

``kind = "python"`` loads ``target = "package.module:Factory"`` and calls ``Factory(**settings)``.

``name`` becomes a file name (the promotion record ``eval/promotions/NAME.json``, audit files), so it must be a
safe single path component (``tmsim.core.names.safe_name``): ``name = "../escaped"`` is a field error.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..core.config import load_toml_model
from ..core.names import safe_name


class PolicySpec(BaseModel):
    """A policy spec as read from TOML; unknown top-level keys are an error (typos should not pass silently)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    kind: str
    version: str = "1"
    description: str = ""
    target: str | None = None
    settings: dict[str, Any] = Field(default_factory=dict)
    #: what the policy was trained or tuned on, e.g. ``{seeds = "even"}``: a leaderboard marks the roots it knows
    trained_on: dict[str, Any] | None = None
    path: Path | None = None

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        return safe_name(v, "policy name")

    def resolve_path(self, value: str) -> Path | None:
        """The file or directory a path-valued setting names, or None when it names none (a hub id).

        Looked up relative to the spec's directory, then its parent (the repository root for specs in
        ``policies/``), then as given; an absolute path as it is. The spec's own location comes first, so the
        same spec names the same files from any working directory."""
        p = Path(value)
        if p.is_absolute():
            return p if p.exists() else None
        bases = [self.path.parent, self.path.parent.parent] if self.path is not None else []
        for cand in [b / p for b in bases] + [p]:
            if cand.exists():
                return cand
        return None

    def digest(self) -> str:
        """SHA-256 of the spec file's bytes (or of the spec's JSON when it has no file)."""
        data = self.path.read_bytes() if self.path else self.model_dump_json(exclude={"path"}).encode()
        return hashlib.sha256(data).hexdigest()


def load_spec(path: str | Path) -> PolicySpec:
    """Read and check a spec file; errors name the file and the field."""
    from .kinds import KINDS

    path = Path(path)
    spec = load_toml_model(path, PolicySpec, "policy spec")
    if spec.kind != "python" and spec.kind not in KINDS:
        raise ValueError(f"{path}: field 'kind': unknown kind {spec.kind!r}; known: {', '.join(KINDS.names() + ['python'])}")
    if spec.kind == "python" and not spec.target:
        raise ValueError(f"{path}: field 'target' is required for kind = \"python\" (e.g. \"mypkg.mod:MyPolicy\")")
    return spec


def find_specs(arg: str | Path) -> list[PolicySpec]:
    """A spec file, or every ``*.toml`` in a directory (sorted)."""
    p = Path(arg)
    if p.is_dir():
        files = sorted(p.glob("*.toml"))
        if not files:
            raise ValueError(f"{p}: no policy specs (*.toml) in this directory")
        return [load_spec(f) for f in files]
    return [load_spec(p)]
