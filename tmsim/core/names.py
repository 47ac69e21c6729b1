"""Names that become file names (policy names, run ids, task names), sanitised so that no name can escape the
directory it is written to.

Example
-------
>>> safe_name("rules-v2")
'rules-v2'
>>> safe_name("../escaped")
Traceback (most recent call last):
...
ValueError: name '../escaped' cannot be used in a file name: use letters, digits, '.', '_' and '-' (not starting with '.')
>>> safe_filename("live:digits-mlp:abc/..")
'live_digits-mlp_abc_..'
"""
from __future__ import annotations

import re

_SAFE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")


def safe_name(name: str, what: str = "name") -> str:
    """``name`` unchanged if it is safe as a single path component, else a ``ValueError`` naming it."""
    if not isinstance(name, str) or not _SAFE.fullmatch(name):
        raise ValueError(f"{what} {name!r} cannot be used in a file name: use letters, digits, '.', '_' and '-' "
                         "(not starting with '.')")
    return name


def safe_filename(text: str) -> str:
    """A safe single path component made from any text (unsafe characters become ``_``; never starts with '.')."""
    out = re.sub(r"[^A-Za-z0-9._-]", "_", str(text))[:128] or "_"
    return "_" + out[1:] if out.startswith(".") else out
