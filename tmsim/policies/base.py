"""The ``Policy`` protocol and policy specs (``policies/*.toml``).

A policy is anything with ``decide(snapshot) -> proposal``. The proposal may be a ``Proposal``, a dict, JSON text
or a bare action name: the validator (``tmsim.actions.validate``) judges it either way. ``decide_batch`` is
optional; ``decide_batch(policy, snapshots)`` falls back to one call per snapshot.

A spec names a kind and its settings::

    name = "rules"          # the id shown on leaderboards
    kind = "rules"          # constant | rules | plateau | random | sequence | oracle | python
    version = "1"
    [settings]
    gap_threshold = 0.5

``kind = "python"`` loads ``target = "package.module:Factory"`` and calls ``Factory(**settings)``.
"""
from __future__ import annotations

import hashlib
import importlib
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from ..config import load_toml_model
from ..snapshot import Snapshot


@runtime_checkable
class Policy(Protocol):
    """The whole contract: an id, a version, and ``decide``."""

    policy_id: str
    version: str

    def decide(self, snapshot: Snapshot) -> Any: ...


def decide_batch(policy: Policy, snapshots: list[Snapshot]) -> list[Any]:
    """The policy's batched form if it has one, else one ``decide`` per snapshot."""
    fn = getattr(policy, "decide_batch", None)
    return list(fn(snapshots)) if fn is not None else [policy.decide(s) for s in snapshots]


class PolicySpec(BaseModel):
    """A policy spec as read from TOML; unknown top-level keys are an error (typos should not pass silently)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    kind: str
    version: str = "1"
    description: str = ""
    target: str | None = None
    settings: dict[str, Any] = Field(default_factory=dict)
    path: Path | None = None

    def digest(self) -> str:
        """SHA-256 of the spec file's bytes (or of the spec's JSON when it has no file)."""
        data = self.path.read_bytes() if self.path else self.model_dump_json(exclude={"path"}).encode()
        return hashlib.sha256(data).hexdigest()


KINDS = ("constant", "rules", "plateau", "random", "sequence", "oracle", "qwen", "python")


def load_spec(path: str | Path) -> PolicySpec:
    """Read and check a spec file; errors name the file and the field."""
    path = Path(path)
    spec = load_toml_model(path, PolicySpec, "policy spec")
    if spec.kind not in KINDS:
        raise ValueError(f"{path}: field 'kind': unknown kind {spec.kind!r}; known: {', '.join(KINDS)}")
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


def make_policy(spec: PolicySpec, library=None) -> Policy:
    """Instantiate the policy a spec describes. ``library`` (a ``tmsim.trace.Library``) is needed by ``oracle``."""
    from . import baselines, oracle

    s = dict(spec.settings)
    try:
        if spec.kind == "constant":
            pol = baselines.ConstantPolicy(**s)
        elif spec.kind == "rules":
            pol = baselines.RulesPolicy(**s)
        elif spec.kind == "plateau":
            pol = baselines.PlateauPolicy(**s)
        elif spec.kind == "random":
            pol = baselines.RandomPolicy(**s)
        elif spec.kind == "sequence":
            pol = baselines.SequencePolicy(**s)
        elif spec.kind == "qwen":
            from ..llm.policy import QwenPolicy

            for key in ("model", "adapter"):
                if isinstance(s.get(key), str):
                    s[key] = _resolve_path(s[key], spec.path)
            pol = QwenPolicy(**s)
        elif spec.kind == "oracle":
            if library is None:
                raise ValueError("the oracle needs a trace library")
            pol = oracle.OraclePolicy(library, **s)
        else:
            pol = _import_target(spec.target)(**s)
    except TypeError as exc:
        where = spec.path or spec.name
        raise ValueError(f"{where}: field 'settings': {exc}") from None
    pol.policy_id = spec.name
    pol.version = spec.version
    if not isinstance(pol, Policy):
        raise ValueError(f"{spec.path or spec.name}: {type(pol).__name__} has no decide(snapshot) method")
    return pol


def _resolve_path(value: str, spec_path: Path | None) -> str:
    """A model or adapter path as written in a spec: as given if it exists, else relative to the spec's directory
    or to its parent (the repository root for specs in ``policies/``); otherwise unchanged (a hub id)."""
    if Path(value).exists() or spec_path is None:
        return value
    for base in (spec_path.parent, spec_path.parent.parent):
        if (base / value).exists():
            return str(base / value)
    return value


def _import_target(target: str):
    mod, _, attr = target.partition(":")
    if not mod or not attr:
        raise ValueError(f"target {target!r}: expected 'package.module:Name'")
    import os
    import sys

    if os.getcwd() not in sys.path:  # like `python -m`: a policy module beside the user's files imports
        sys.path.insert(0, os.getcwd())
    try:
        obj = importlib.import_module(mod)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"target {target!r} cannot be imported: {exc}") from None
    return obj
