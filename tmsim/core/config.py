"""Reading TOML files into pydantic models, with one-line errors that name the file and the field; the repository a
file lies in."""
from __future__ import annotations

import tomllib
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


def load_toml_model(path: str | Path, model: type[M], what: str) -> M:
    """Parse ``path`` as TOML and validate it as ``model`` (which has a ``path`` field); ``what`` names the kind
    of file in the not-found message (``"suite"``, ``"policy spec"``, ``"recipe"``)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: {what} not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML ({exc})") from None
    if "path" in data:  # the model's ``path`` is where the file was read from, never a key of the file
        raise ValueError(f"{path}: field 'path': not allowed in a {what} file (it is set from the file's location)")
    try:
        return model(**data, path=path)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ValueError(f"{path}: field {'.'.join(map(str, err['loc']))!r}: {err['msg']}") from None


def repo_root(start: Path) -> Path | None:
    """The repository a file lies in: the nearest directory from ``start`` up with ``.git`` or ``pyproject.toml``."""
    for d in [start, *start.parents]:
        if (d / ".git").exists() or (d / "pyproject.toml").exists():
            return d
    return None


#: Environment variable naming the promotions directory (records written by ``tmsim promote``, read by the live hook).
PROMOTIONS_ENV = "TMSIM_PROMOTIONS"


def default_promotions(cwd: Path | None = None) -> Path:
    """Where promotion records live when no directory is given: ``$TMSIM_PROMOTIONS``, else ``eval/promotions`` in
    the repository of the working directory (the user's working tree, never the installed package), else under the
    working directory itself."""
    import os

    env = os.environ.get(PROMOTIONS_ENV)
    if env:
        return Path(env)
    here = (cwd or Path.cwd()).resolve()
    return (repo_root(here) or here) / "eval" / "promotions"
