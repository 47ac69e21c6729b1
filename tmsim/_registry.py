"""A small registry of named extension points (tasks, policy kinds), in the manner of Gymnasium's ``register``.

An entry is a ``"package.module:Name"`` string (imported when first used) or the object itself. Three ways in:
``register(name, entry)`` in code, a plugin's entry point in the registry's group (``[project.entry-points."tmsim.tasks"]``),
or a ``"package.module:Name"`` given wherever a name is accepted. A name that is none of these is an error that
lists the known names.
"""
from __future__ import annotations

import importlib
import os
import sys
from typing import Any


def import_target(target: str, what: str = "target") -> Any:
    """The object ``"package.module:Name"`` names (``Name`` may be dotted). The working directory is importable, as
    with ``python -m``, so a module beside the user's files is found."""
    mod, _, attr = target.partition(":")
    if not mod or not attr:
        raise ValueError(f"{what} {target!r}: expected 'package.module:Name'")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj = importlib.import_module(mod)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"{what} {target!r} cannot be imported: {exc}") from None
    return obj


class Registry:
    """Names to entries for one extension point; ``group`` is its entry-point group."""

    def __init__(self, what: str, group: str):
        self.what, self.group = what, group
        self._entries: dict[str, Any] = {}
        self._plugins_loaded = False

    def register(self, name: str, entry: Any, *, overwrite: bool = False) -> None:
        """Register ``entry`` (an object or a ``"package.module:Name"`` string) as ``name``."""
        if not name or not isinstance(name, str):
            raise ValueError(f"{self.what} name must be a non-empty string")
        if name in self._entries and not overwrite and self._entries[name] != entry:
            raise ValueError(f"{self.what} {name!r} is already registered (pass overwrite=True to replace it)")
        self._entries[name] = entry

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        from importlib.metadata import entry_points

        for ep in entry_points(group=self.group):
            self._entries.setdefault(ep.name, ep.value)

    def names(self) -> list[str]:
        self._load_plugins()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        self._load_plugins()
        return name in self._entries

    def resolve(self, name: str) -> Any:
        """The object registered as ``name``, or the one a ``"package.module:Name"`` string names."""
        self._load_plugins()
        if name in self._entries:
            entry = self._entries[name]
            return import_target(entry, f"{self.what} {name!r}") if isinstance(entry, str) else entry
        if ":" in name:
            return import_target(name, self.what)
        raise ValueError(f"unknown {self.what} {name!r}; known: {', '.join(self.names())} "
                         f"(or give 'package.module:Name', or register one under the entry-point group {self.group!r})")

    def refs(self) -> dict[str, str]:
        """Every entry as an importable ``"package.module:Name"`` string (what another process needs to rebuild the
        registry); objects defined in ``__main__`` cannot be named and are left out."""
        out = {}
        for name, entry in self._entries.items():
            if isinstance(entry, str):
                out[name] = entry
            elif getattr(entry, "__module__", "__main__") != "__main__":
                out[name] = f"{entry.__module__}:{entry.__qualname__}"
        return out
