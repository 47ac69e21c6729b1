"""Extract the pinned English corpus for the ``text-lm`` task.

The corpus is the docstrings of a fixed list of Python standard-library modules. Docstrings change between
Python versions, so the extracted text is shipped (gzip-compressed) in ``tmsim/data/`` and this script only
documents how it was made; tmsim never re-extracts it at run time.

Usage: python scripts/build_corpus.py [--chars 120000] [--out tmsim/data/stdlib_docstrings.txt.gz]
"""
from __future__ import annotations

import argparse
import ast
import gzip
import sysconfig
from pathlib import Path

MODULES = [
    "argparse", "collections/__init__", "configparser", "csv", "dataclasses", "datetime", "decimal",
    "difflib", "email/message", "enum", "fractions", "functools", "gettext", "heapq", "inspect",
    "ipaddress", "json/__init__", "logging/__init__", "os", "pathlib", "pickle", "random", "shutil",
    "statistics", "string", "subprocess", "tarfile", "textwrap", "threading", "typing", "unittest/case",
    "urllib/parse", "uuid", "zipfile/__init__",
]


def docstrings(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc and len(doc) > 40:
                out.append(doc)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chars", type=int, default=120_000)
    ap.add_argument("--out", default="tmsim/data/stdlib_docstrings.txt.gz")
    args = ap.parse_args()
    root = Path(sysconfig.get_paths()["stdlib"])
    text = []
    for mod in MODULES:
        p = root / (mod + ".py")
        if not p.exists():
            p = root / mod / "__init__.py"
        if p.exists():
            text.extend(docstrings(p))
    corpus = "\n\n".join(text)
    # Keep printable ASCII plus newline: a small, fixed character vocabulary.
    corpus = "".join(c if (c == "\n" or 32 <= ord(c) < 127) else " " for c in corpus)[: args.chars]
    # mtime=0 keeps the compressed bytes reproducible.
    with open(args.out, "wb") as fh, gzip.GzipFile(fileobj=fh, mode="wb", mtime=0, filename="") as gz:
        gz.write(corpus.encode("ascii"))
    print(f"wrote {len(corpus)} characters to {args.out}")


if __name__ == "__main__":
    main()
