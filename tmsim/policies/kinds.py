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

import weakref
from typing import Any

from .._registry import Registry, import_target
from .protocol import Policy
from .spec import PolicySpec

KINDS = Registry("policy kind", "tmsim.policies")
for _kind, _ref in (("constant", "tmsim.policies.baselines:ConstantPolicy"), ("rules", "tmsim.policies.baselines:RulesPolicy"),
                    ("plateau", "tmsim.policies.baselines:PlateauPolicy"), ("random", "tmsim.policies.baselines:RandomPolicy"),
                    ("sequence", "tmsim.policies.baselines:SequencePolicy"), ("oracle", "tmsim.policies.oracle:OraclePolicy"),
                    ("lookup", "tmsim.policies.lookup:LookupPolicy"), ("optuna", "tmsim.policies.pruners:OptunaPrunerPolicy"),
                    ("llm", "tmsim.policies.llm.policy:LLMPolicy"), ("openai", "tmsim.policies.llm.openai:OpenAIPolicy"),
                    ("gbm", "tmsim.policies.gbm:GBMPolicy")):
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


#: The kinds tmsim ships; any other kind (``python``, plugins) is untrusted code and runs in its own process.
BUILTIN_KINDS = frozenset({"constant", "rules", "plateau", "random", "sequence", "oracle", "lookup", "optuna", "llm", "openai",
                           "gbm"})


def make_policy(spec: PolicySpec, library=None, isolate: bool | None = None) -> Policy:
    """Instantiate the policy a spec describes. ``library`` (a ``TreeIndex`` or a ``Library``) is given to factories
    that declare ``needs_library`` (the oracle). ``isolate`` (default: for every kind tmsim does not ship) builds the
    policy in its own process instead (``tmsim.policies.isolated.IsolatedPolicy``)."""
    if isolate is None:
        isolate = spec.kind not in BUILTIN_KINDS
    if isolate:
        from .isolated import IsolatedPolicy

        root = getattr(library, "library", library)  # a TreeIndex's Library, or the Library itself
        iso = IsolatedPolicy(spec, getattr(root, "root", None))
        _remember(iso, spec)
        return iso
    factory = import_target(spec.target, "target") if spec.kind == "python" else KINDS.resolve(spec.kind)
    s = dict(spec.settings)
    for key in getattr(factory, "path_settings", ()):
        if isinstance(s.get(key), str):
            found = spec.resolve_path(s[key])
            s[key] = str(found) if found is not None else s[key]
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
    if spec.trained_on is not None:
        pol.trained_on = dict(spec.trained_on)
    if not isinstance(pol, Policy):
        raise ValueError(f"{where}: {type(pol).__name__} has no decide(snapshot) method")
    _remember(pol, spec)
    return pol


# Which spec built which policy object: the live hook runs a policy object under a spec's promotion only if
# ``make_policy`` built that very object from that spec (``built_from``). Keyed by ``id``; the stored reference
# (weak where the object allows it) guards against a reused id.
_BUILT: dict[int, tuple[Any, tuple]] = {}


def _spec_key(spec: PolicySpec) -> tuple:
    return (spec.name, spec.kind, spec.version, spec.digest(), str(spec.path.resolve()) if spec.path else None)


def _remember(pol: Policy, spec: PolicySpec) -> None:
    key = id(pol)
    try:
        ref: Any = weakref.ref(pol, lambda _r, k=key: _BUILT.pop(k, None))
    except TypeError:  # no __weakref__ slot: keep a strong reference (the object then lives as long as the process)
        ref = lambda p=pol: p  # noqa: E731
    _BUILT[key] = (ref, _spec_key(spec))


def built_from(policy: Any, spec: PolicySpec) -> bool:
    """Whether ``policy`` is an object that ``make_policy(spec)`` built from this spec (the same file content,
    name, kind and version). Setting ``policy_id`` on another object does not make it one.

    >>> from tmsim.policies import PolicySpec, RulesPolicy, make_policy
    >>> spec = PolicySpec(name="careful", kind="rules")
    >>> built_from(make_policy(spec), spec), built_from(RulesPolicy(), spec)
    (True, False)
    """
    entry = _BUILT.get(id(policy))
    if entry is None or entry[0]() is not policy:
        return False
    return entry[1] == _spec_key(spec)
