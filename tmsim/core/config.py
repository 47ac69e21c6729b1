"""Reading TOML files into pydantic models, with one-line errors that name the file and the field."""
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
    try:
        return model(**data, path=path)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ValueError(f"{path}: field {'.'.join(map(str, err['loc']))!r}: {err['msg']}") from None
