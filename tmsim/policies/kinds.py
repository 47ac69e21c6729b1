"""Policy kinds: a registry from a kind name to a factory, ``make_policy`` to build the policy a spec describes.

Built-in kinds are registered here by import path (the LLM kind is one entry like any other, imported only when a
spec uses it). Users add kinds with ``register_kind("mykind", "mypkg.policies:Factory")``, or with an entry point in
the group ``tmsim.policies``; ``kind = "python"`` with ``target = "package.module:Factory"`` needs no registration.

Example
-------
>>> from tmsim.policies import PolicySpec, kind_names, make_policy
>>> "rules" in kind_names()
True
>>> make_policy(PolicySpec(name="careful", kind="rules", settings={"gap_threshold": 0.3})).policy_id
'careful'
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .._registry import Registry, import_target
from .protocol import Policy
from .spec import PolicySpec

KINDS = Registry("policy kind", "tmsim.policies")
for _kind, _ref in (("constant", "tmsim.policies.baselines:ConstantPolicy"), ("rules", "tmsim.policies.baselines:RulesPolicy"),
                    ("plateau", "tmsim.policies.baselines:PlateauPolicy"), ("random", "tmsim.policies.baselines:RandomPolicy"),
                    ("sequence", "tmsim.policies.baselines:SequencePolicy"), ("oracle", "tmsim.policies.oracle:OraclePolicy"),
                    ("qwen", "tmsim.policies.llm.policy:QwenPolicy")):
    KINDS.register(_kind, _ref)


def register_kind(name: str, factory: Any, *, overwrite: bool = False) -> None:
    """Register a policy factory (a callable taking the spec's settings, or a ``"package.module:Factory"`` string)
    as the kind ``name``."""
    if name == "python":
        raise ValueError("'python' is reserved: it names a factory by the spec's 'target'")
    KINDS.register(name, factory, overwrite=overwrite)


def kind_names() -> list[str]:
    """Every policy kind a spec may name."""
    return KINDS.names() + ["python"]


def make_policy(spec: PolicySpec, library=None) -> Policy:
    """Instantiate the policy a spec describes. ``library`` (a ``TreeIndex`` or a ``Library``) is given to factories
    that declare ``needs_library`` (the oracle)."""
    factory = import_target(spec.target, "target") if spec.kind == "python" else KINDS.resolve(spec.kind)
    s = dict(spec.settings)
    for key in getattr(factory, "path_settings", ()):
        if isinstance(s.get(key), str):
            s[key] = _resolve_path(s[key], spec.path)
    where = spec.path or spec.name
    if getattr(factory, "needs_library", False):
        if library is None:
            raise ValueError(f"{where}: the {spec.kind} policy needs a trace library")
        from ..traces.index import TreeIndex

        s["library"] = library if isinstance(library, TreeIndex) else TreeIndex(library)
    try:
        pol = factory(**s)
    except TypeError as exc:
        raise ValueError(f"{where}: field 'settings': {exc}") from None
    pol.policy_id = spec.name
    pol.version = spec.version
    if not isinstance(pol, Policy):
        raise ValueError(f"{where}: {type(pol).__name__} has no decide(snapshot) method")
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
