"""The promotion gate and promotion records.

A policy is promoted on a suite only when, through the simulator:

1. it beats ``constant``: the bootstrap 95% interval of its median val-loss change lies wholly below zero;
2. its unsafe rate (diverged, or more than the suite's threshold worse than doing nothing) is at most the suite's
   ``max_unsafe_rate``;
3. it has no violation of a kind the suite marks fatal;
4. it is not an upper bound (the oracle reads the recorded answers and cannot run live).

A passing policy gets a record in ``eval/promotions/NAME.json`` (``NAME`` is the spec's name, a safe file name).
The record holds a hash of every input that decides what the policy does or how it was judged:

- ``spec_sha256``: the spec file's bytes;
- ``weights_sha256``: each file or directory a path-valued setting names (``model``, ``adapter``, ``weights``,
  ``checkpoint``, ``path`` and any ``*_path``/``*_dir``/``*_file`` key), resolved as ``make_policy`` resolves them;
- ``source_sha256``: for ``kind = "python"`` (and kinds registered from outside tmsim) the source of the factory's
  module: the module file, or the whole package directory when the module is a package or lies in one (so a
  helper module beside it counts too);
- ``library_sha256``: the trace library; ``surrogate_sha256``: the surrogate file actually used;
- ``suite_sha256`` and ``suite_toml``: the suite's TOML content itself, with the ``gate`` and ``bounds`` read
  from it;
- the ``scores``, the date and the tmsim version.

Paths in a record (``spec_path``, ``suite_path``, ``source_path``, ``weight_paths``, ``surrogate_path``) are
written relative to the record's directory when they lie in the record's repository (absolute otherwise) and are
resolved relative to the record file, so a check answers the same from any working directory.

``check_record`` refuses a record unless every required field is there, the gate passes again on the record's own
scores under the gate settings of the record's suite content, that content matches the suite file, and every hash
matches the files now. The surrogate is provenance only: a cached surrogate can be refitted at any time (and a
refit file has other bytes), so its file is not required at check time.

**Signing.** When the environment variable ``TMSIM_PROMOTION_KEY`` is set (non-empty), ``write_record`` adds
``signature``: ``"hmac-sha256:HEX"``, an HMAC-SHA256 with that key over the record's canonical JSON (keys sorted,
``(",", ":")`` separators, ASCII, without the ``signature`` field), and ``check_record`` refuses a record whose
signature is missing or does not verify. Without a key, records are written unsigned and checked for consistency
only; a record that carries a signature which cannot be verified (no key) passes with a note saying so. Without a
key anyone who can write the record can also recompute its hashes; the key is what makes a record unforgeable.

This module imports nothing of the offline stack (simulator, leaderboard, DuckDB, scikit-learn), so the live hook
can check a record in a training process that has none of them loaded.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import importlib.util
import json
import logging
import math
import os
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .. import __version__
from ..core.actions import Bounds
from ..core.config import repo_root
from ..core.names import safe_name

if TYPE_CHECKING:  # the gate reads scores and suites; importing their module would pull in the simulator
    from .leaderboard import PolicyScore, Suite

log = logging.getLogger("tmsim.promote")

RECORD_FORMAT = "tmsim-promotion-3"
KEY_ENV = "TMSIM_PROMOTION_KEY"
WEIGHT_KEYS = ("model", "adapter", "weights", "checkpoint", "path")
WEIGHT_SUFFIXES = ("_path", "_dir", "_file")
SIGNATURE_PREFIX = "hmac-sha256:"

#: Fields every record must hold (with the JSON type each must have).
REQUIRED: dict[str, type | tuple[type, ...]] = {
    "format": str, "policy": str, "kind": str, "version": str, "spec_sha256": str, "weights_sha256": dict,
    "library_sha256": str, "surrogate_sha256": str, "suite": str, "suite_sha256": str, "suite_toml": str,
    "gate": dict, "bounds": dict, "scores": dict, "scope": dict, "date": str, "tmsim_version": str,
}
#: Keys of a record's ``scope``: where the gate's verdict was measured (``scope_of``).
SCOPE_KEYS = ("tasks", "scenarios", "decide_every", "max_epochs")
#: Score fields the gate reads (the rest of ``scores`` is kept for the reader).
SCORE_NUMBERS = ("val_loss_change_pct", "ci_low", "ci_high", "unsafe_rate")


class GateSettings(BaseModel):
    """A suite's ``[gate]`` table. The same fields and defaults as the leaderboard's ``Gate`` (kept here so that a
    record is checked without importing the simulator)."""

    model_config = ConfigDict(extra="forbid")
    max_unsafe_rate: float = Field(0.05, ge=0, le=1)
    unsafe_threshold: float = Field(0.10, ge=0)
    fatal_violations: list[str] = Field(default_factory=lambda: ["policy_exception", "timeout", "unparseable",
                                                                  "empty_output", "unknown_action", "non_finite_value",
                                                                  "invalid_value"])


# --- hashing ----------------------------------------------------------------------------------------------------
def _sha_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sha(path: Path, source_only: bool = False) -> str:
    """SHA-256 of a file's bytes, or of a directory: every file's relative path and content hash, in sorted order
    (``source_only`` leaves out ``__pycache__`` and compiled files, which Python rewrites on its own)."""
    h = hashlib.sha256()
    if path.is_dir():
        for p in sorted(path.rglob("*"), key=lambda q: q.relative_to(path).as_posix()):
            rel = p.relative_to(path)
            if source_only and ("__pycache__" in rel.parts or p.suffix in (".pyc", ".pyo")):
                continue
            if p.is_file():
                h.update(rel.as_posix().encode() + b"\0")
                h.update(hashlib.sha256(p.read_bytes()).digest())
        return h.hexdigest()
    return _sha_bytes(path.read_bytes())


def _weight_paths(spec) -> dict[str, Path | None]:
    """Path-valued settings of ``spec`` and the file or directory each names (None: names none, e.g. a hub id)."""
    out = {}
    for k, v in spec.settings.items():
        if isinstance(v, str) and (k in WEIGHT_KEYS or k.endswith(WEIGHT_SUFFIXES)):
            out[k] = spec.resolve_path(v)
    return out


def weight_hashes(spec) -> dict[str, str]:
    """Hashes of the files or directories a spec's settings point to (model, adapter, weights, ...), found as
    ``make_policy`` finds them: relative to the spec file first, so the answer does not depend on the working
    directory."""
    return {k: _sha(p) for k, p in _weight_paths(spec).items() if p is not None}


def _factory_module(spec) -> str | None:
    """The module whose code builds the policy, where that code is not tmsim's own: the ``target`` of
    ``kind = "python"``, or the entry of a kind registered from outside tmsim. None for tmsim's built-in kinds."""
    if spec.kind == "python":
        return (spec.target or "").partition(":")[0] or None
    from ..policies.kinds import KINDS

    if spec.kind not in KINDS:
        return None
    entry = KINDS._entries.get(spec.kind)
    mod = entry.partition(":")[0] if isinstance(entry, str) else getattr(entry, "__module__", None)
    if not mod or mod == "tmsim" or mod.startswith("tmsim."):
        return None
    return mod


def policy_source(spec) -> tuple[Path, str] | None:
    """``(path, sha256)`` of the source that builds ``spec``'s policy (see the module documentation), or None for a
    built-in kind. The module is located as the live hook will import it (the working directory is importable,
    as for ``import_target``), without running it; a module that is already imported is hashed from its file.
    A ``ValueError`` names the spec and the field when the module cannot be found or has no source file."""
    mod = _factory_module(spec)
    if mod is None:
        return None
    where = spec.path or spec.name
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        found = importlib.util.find_spec(mod)
    except (ImportError, ValueError) as exc:
        raise ValueError(f"{where}: field 'target': module {mod!r} cannot be found ({exc})") from None
    if found is None:
        raise ValueError(f"{where}: field 'target': module {mod!r} cannot be found")
    if found.submodule_search_locations:  # a package: its whole directory
        path = Path(list(found.submodule_search_locations)[0])
    elif found.origin and Path(found.origin).is_file():
        path = Path(found.origin)
        if "." in mod:  # a module inside a package: the package directory, so helpers beside it count too
            path = path.parent
    else:
        raise ValueError(f"{where}: field 'target': module {mod!r} has no source file to hash ({found.origin})")
    return path, _sha(path, source_only=True)


# --- the gate ---------------------------------------------------------------------------------------------------
def gate(score: "PolicyScore", suite: "Suite") -> tuple[bool, list[str]]:
    """(passed, reasons): every reason says which condition held or failed, with the figures. ``score`` needs
    ``policy``, ``upper_bound``, ``val_loss_change_pct``, ``ci_low``, ``ci_high``, ``unsafe_rate``,
    ``violations_by_kind`` (and optionally ``fatal_violations``, a count); ``suite`` needs ``gate``. A non-finite
    figure fails the condition it belongs to."""
    checks = _gate_checks(score, suite.gate)
    return all(ok for ok, _ in checks), [r for _, r in checks]


def _gate_checks(score, g) -> list[tuple[bool, str]]:
    """Each condition of the gate as (held, reason)."""
    if score.upper_bound:
        return [(False, f"{score.policy} is an upper bound that reads the recorded answers; it cannot be promoted")]
    if getattr(score, "failed", None):
        return [(False, f"{score.policy} could not be scored: {score.failed}")]
    out = []
    ci = f"median val-loss change {score.val_loss_change_pct:+.1f}%, 95% CI [{score.ci_low:+.1f}, {score.ci_high:+.1f}]"
    if score.ci_high < 0:
        out.append((True, f"beats constant: {ci} excludes zero"))
    else:
        out.append((False, f"does not beat constant: {ci} does not lie below zero"))
    if score.unsafe_rate <= g.max_unsafe_rate:
        out.append((True, f"unsafe rate {score.unsafe_rate:.1%} <= {g.max_unsafe_rate:.1%}"))
    else:
        out.append((False, f"unsafe rate {score.unsafe_rate:.1%} > {g.max_unsafe_rate:.1%} "
                           f"(diverged or >{g.unsafe_threshold:.0%} worse than doing nothing)"))
    fatal = {k: v for k, v in score.violations_by_kind.items() if k in g.fatal_violations and v}
    count = getattr(score, "fatal_violations", 0) or 0
    if fatal or count:
        out.append((False, f"fatal violations: {fatal or count}"))
    else:
        out.append((True, "no fatal violations"))
    return out


# --- writing ----------------------------------------------------------------------------------------------------
def record_path(promotions: Path, name: str) -> Path:
    """``PROMOTIONS/NAME.json``; ``name`` must be a safe file name (a ``ValueError`` otherwise)."""
    return Path(promotions) / f"{safe_name(name, 'policy name')}.json"


def _store_path(p: Path | None, record_dir: Path) -> str | None:
    """A path as a record stores it: relative to the record's directory when it lies in the record's repository,
    else absolute."""
    if p is None:
        return None
    p, record_dir = Path(os.path.abspath(p)), Path(os.path.abspath(record_dir))
    root = repo_root(record_dir)  # the repository the record lies in
    if root is not None and p.is_relative_to(root):
        return Path(os.path.relpath(p, record_dir)).as_posix()
    return str(p)


def _load_path(value: Any, record_file: Path) -> Path | None:
    """A path stored in a record, resolved relative to the record file (never the working directory)."""
    if not isinstance(value, str) or not value:
        return None
    p = Path(value)
    return p if p.is_absolute() else record_file.parent / p


def _key() -> bytes | None:
    k = os.environ.get(KEY_ENV)
    return k.encode() if k else None


def canonical_json(rec: dict) -> bytes:
    """The bytes a signature covers: the record without ``signature``, keys sorted, compact, ASCII."""
    body = {k: v for k, v in rec.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def sign(rec: dict, key: bytes) -> str:
    return SIGNATURE_PREFIX + hmac.new(key, canonical_json(rec), hashlib.sha256).hexdigest()


def scope_of(roots: list[dict]) -> dict:
    """The scope of a verdict from the metadata of the roots it was measured on (dicts with ``task``, ``scenario``,
    ``decide_every``, ``max_epochs``): the tasks, scenario families and decision cadences seen, and the range of run
    lengths. A live run outside it is refused unless the caller overrides, which its trace records.

    >>> scope_of([{"task": "t", "scenario": "overfit", "decide_every": 5, "max_epochs": 20}])
    {'tasks': ['t'], 'scenarios': ['overfit'], 'decide_every': [5], 'max_epochs': [20, 20]}
    """
    if not roots:
        raise ValueError("a scope needs at least one scored root")
    lengths = [int(r["max_epochs"]) for r in roots]
    return {"tasks": sorted({str(r["task"]) for r in roots}), "scenarios": sorted({str(r["scenario"]) for r in roots}),
            "decide_every": sorted({int(r["decide_every"]) for r in roots}), "max_epochs": [min(lengths), max(lengths)]}


def outside_scope(scope: dict, task: str, scenario: str, decide_every: int, max_epochs: int) -> list[str]:
    """Why a run (task, scenario family, decision cadence, length) lies outside a record's ``scope``; [] inside."""
    out = []
    if task not in scope["tasks"]:
        out.append(f"task {task!r} is not among the promoted tasks {scope['tasks']}")
    if scenario not in scope["scenarios"]:
        out.append(f"scenario {scenario!r} is not among the promoted scenario families {scope['scenarios']}")
    if decide_every not in scope["decide_every"]:
        out.append(f"a decision every {decide_every} epoch(s) is not a promoted cadence {scope['decide_every']}")
    lo, hi = scope["max_epochs"]
    if not lo <= max_epochs <= hi:
        out.append(f"a run of {max_epochs} epochs is outside the promoted lengths [{lo}, {hi}]")
    return out


def _check_scope(rec: dict, path: Path, P) -> None:
    sc = rec.get("scope")
    if not isinstance(sc, dict):
        return  # reported as missing or of the wrong type
    for k in SCOPE_KEYS:
        v = sc.get(k)
        if not isinstance(v, list) or not v:
            P(f"{path}: field 'scope.{k}' is missing or empty")
        elif k in ("tasks", "scenarios") and not all(isinstance(x, str) for x in v):
            P(f"{path}: field 'scope.{k}' must list names")
        elif k in ("decide_every", "max_epochs") and not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
            P(f"{path}: field 'scope.{k}' must list whole numbers")
    if isinstance(sc.get("max_epochs"), list) and len(sc["max_epochs"]) != 2:
        P(f"{path}: field 'scope.max_epochs' must be [shortest, longest]")


def write_record(spec, score: "PolicyScore", suite: "Suite", library_hash: str, surrogate_sha256: str,
                 promotions: Path, surrogate_path: str | Path | None = None, scope: dict | None = None) -> Path:
    """Write ``PROMOTIONS/NAME.json`` for a policy that passed the gate (see the module documentation for the
    fields); signed when ``TMSIM_PROMOTION_KEY`` is set. ``surrogate_sha256`` is the sha256 of the surrogate file
    the scores came from; ``scope`` (``scope_of`` the scored roots) where the verdict holds. A score that does not
    pass the gate is refused with a ``ValueError``."""
    ok, reasons = gate(score, suite)
    if not ok:
        raise ValueError(f"{spec.path or spec.name}: does not pass the gate of suite {suite.name!r}: "
                         + "; ".join(reasons))
    if not scope:
        raise ValueError(f"{spec.path or spec.name}: a promotion record needs the scope of the scored roots")
    path = record_path(promotions, spec.name)
    rdir = path.parent
    suite_toml = suite.path.read_text(encoding="utf-8") if suite.path else _suite_as_toml(suite)
    src = policy_source(spec)
    weights = _weight_paths(spec)
    rec = {
        "format": RECORD_FORMAT,
        "policy": spec.name, "kind": spec.kind, "version": spec.version, "target": spec.target,
        "spec_path": _store_path(spec.path, rdir), "spec_sha256": spec.digest(),
        "weights_sha256": {k: _sha(p) for k, p in weights.items() if p is not None},
        "weight_paths": {k: _store_path(p, rdir) for k, p in weights.items() if p is not None},
        "source_path": _store_path(src[0], rdir) if src else None, "source_sha256": src[1] if src else None,
        "library_sha256": library_hash,
        "surrogate_sha256": surrogate_sha256,
        "surrogate_path": _store_path(Path(surrogate_path), rdir) if surrogate_path else None,
        "suite": suite.name, "suite_path": _store_path(suite.path, rdir),
        "suite_sha256": _sha_bytes(suite_toml.encode("utf-8")), "suite_toml": suite_toml,
        "gate": json.loads(GateSettings(**_toml_table(suite_toml, "gate")).model_dump_json()),
        "bounds": json.loads(Bounds(**_toml_table(suite_toml, "bounds")).model_dump_json()),
        "scores": score.to_dict(), "scope": scope,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "tmsim_version": __version__,
    }
    key = _key()
    if key:
        rec["signature"] = sign(rec, key)
    rdir.mkdir(parents=True, exist_ok=True)
    tmp = rdir / f".{path.name}.tmp-{os.getpid()}"
    try:
        tmp.write_text(json.dumps(rec, indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _suite_as_toml(suite) -> str:
    """The TOML of a suite built in code (no file): the fields that decide which roots and which rules."""
    def val(v):
        return json.dumps(v)  # JSON scalars and arrays of strings/numbers are valid TOML

    lines = [f"{k} = {val(getattr(suite, k))}" for k in ("name", "description", "tasks", "scenarios", "seeds")]
    for table in ("bounds", "gate"):
        lines.append(f"[{table}]")
        lines += [f"{k} = {val(v)}" for k, v in getattr(suite, table).model_dump().items() if v is not None]
    return "\n".join(lines) + "\n"


def _toml_table(text: str, table: str) -> dict:
    t = tomllib.loads(text).get(table, {})
    return t if isinstance(t, dict) else {}


# --- checking ---------------------------------------------------------------------------------------------------
@dataclass
class RecordCheck:
    """The outcome of checking a promotion record: ``problems`` (each one line naming the record and the field;
    any problem refuses the record), ``notes`` (said but not refusing), the record itself when it could be read."""

    path: Path
    record: dict | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.record is not None and not self.problems


def check_record(spec, promotions: Path, library_hash: str | None = None) -> tuple[bool, list[str]]:
    """(ok, problems): does ``spec`` have a promotion record that passes the gate on its own scores and still
    matches every file it hashes? ``library_hash`` (when given) must match too. Notes (a signature that cannot be
    verified without a key) are logged as warnings; ``verify_record`` returns them."""
    res = verify_record(spec, promotions, library_hash)
    for n in res.notes:
        log.warning("tmsim promote: %s", n)
    return res.ok, res.problems


def promoted_bounds(spec, promotions: Path) -> Bounds | None:
    """The bounds of the suite ``spec`` was promoted on (from its checked record), or None when the record does
    not check. The live hook applies a promoted policy under these bounds."""
    res = verify_record(spec, promotions, None)
    return Bounds(**res.record["bounds"]) if res.ok else None


def _bounds_of(recorded: dict) -> dict | None:
    """A record's bounds with the fields added since it was written at their defaults (a knob added to tmsim later,
    such as the exploration knobs, keeps its default on a suite that does not set it); None if they are not bounds."""
    from ..core.actions import Bounds

    try:
        return json.loads(Bounds(**recorded).model_dump_json())
    except (ValidationError, TypeError):
        return None


def verify_record(spec, promotions: Path, library_hash: str | None = None) -> RecordCheck:
    """Check ``spec``'s promotion record in ``promotions`` (see the module documentation for what is checked)."""
    try:
        path = record_path(promotions, spec.name)
    except ValueError as exc:
        return RecordCheck(Path(promotions), None, [f"{spec.path or spec.name}: field 'name': {exc}"])
    res = RecordCheck(path)
    if not path.exists():
        res.problems.append(f"{spec.name}: no promotion record at {path} (run `tmsim promote {spec.path or spec.name}`)")
        return res
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:
        res.problems.append(f"{path}: not valid JSON ({exc})")
        return res
    if not isinstance(rec, dict):
        res.problems.append(f"{path}: not a JSON object")
        return res
    res.record = rec
    P = res.problems.append
    _check_signature(rec, path, res)
    for k, typ in REQUIRED.items():
        if k not in rec or rec[k] is None:
            P(f"{path}: field {k!r} is missing" + (" (a record from an older tmsim: run `tmsim promote` again)"
                                                   if k == "format" else ""))
        elif not isinstance(rec[k], typ):
            P(f"{path}: field {k!r} has the wrong type ({type(rec[k]).__name__})")
    if isinstance(rec.get("format"), str) and rec["format"] != RECORD_FORMAT:
        P(f"{path}: field 'format' is {rec['format']!r}, expected {RECORD_FORMAT!r} (run `tmsim promote` again)")
    for k, want in (("policy", spec.name), ("kind", spec.kind), ("version", spec.version)):
        if k in rec and rec[k] != want:
            P(f"{path}: field {k!r} is {rec[k]!r}, but the spec says {want!r}")
    if "spec_sha256" in rec and rec["spec_sha256"] != spec.digest():
        P(f"{path}: field 'spec_sha256' does not match {spec.path} (the spec changed since promotion)")
    _check_weights(spec, rec, path, P)
    _check_source(spec, rec, path, P)
    _check_scope(rec, path, P)
    gate_settings = _check_suite(rec, path, P, res.notes)
    if gate_settings is not None and isinstance(rec.get("scores"), dict):
        _check_scores(spec, rec["scores"], gate_settings, rec.get("suite"), path, P)
    if library_hash is not None and "library_sha256" in rec and rec["library_sha256"] != library_hash:
        P(f"{path}: field 'library_sha256' does not match the trace library")
    sur = rec.get("surrogate_sha256")
    if isinstance(sur, str) and not _is_hex64(sur):
        P(f"{path}: field 'surrogate_sha256' is not a sha256 digest")
    return res


def _is_hex64(s: str) -> bool:
    return len(s) == 64 and all(c in "0123456789abcdef" for c in s)


def _check_signature(rec: dict, path: Path, res: RecordCheck) -> None:
    key, sig = _key(), rec.get("signature")
    if key is None:
        if sig is not None:
            res.notes.append(f"{path}: field 'signature' not verified ({KEY_ENV} is not set)")
        return
    if sig is None:
        res.problems.append(f"{path}: field 'signature' is missing ({KEY_ENV} is set: only signed records are accepted)")
    elif not isinstance(sig, str) or not hmac.compare_digest(sig, sign(rec, key)):
        res.problems.append(f"{path}: field 'signature' does not verify with {KEY_ENV} "
                            "(the record changed after signing, or another key signed it)")


def _check_weights(spec, rec: dict, path: Path, P) -> None:
    stored = rec.get("weights_sha256")
    if not isinstance(stored, dict):
        return
    try:
        now = weight_hashes(spec)
    except OSError as exc:
        P(f"{path}: field 'weights_sha256': the files cannot be read ({exc})")
        return
    for k, v in stored.items():
        if k not in now:
            P(f"{path}: field 'weights_sha256.{k}': the file it names is not found")
        elif now[k] != v:
            P(f"{path}: field 'weights_sha256.{k}' does not match the file it names")
    for k in now:
        if k not in stored:
            P(f"{path}: field 'weights_sha256.{k}': weights '{k}' were not part of the promotion")


def _check_source(spec, rec: dict, path: Path, P) -> None:
    try:
        src = policy_source(spec)
    except (ValueError, OSError) as exc:
        P(f"{path}: field 'source_sha256': {exc}")
        return
    stored = rec.get("source_sha256")
    if src is None:
        if stored is not None:
            P(f"{path}: field 'source_sha256' is set, but kind {spec.kind!r} has no source outside tmsim")
        return
    if stored is None:
        P(f"{path}: field 'source_sha256' is missing (kind {spec.kind!r} runs code from {src[0]})")
    elif stored != src[1]:
        P(f"{path}: field 'source_sha256' does not match {src[0]} (the policy's code changed since promotion)")


def _check_suite(rec: dict, path: Path, P, notes: list[str]) -> GateSettings | None:
    """Checks the suite content the record holds against its hash, the suite file and the record's gate and bounds;
    returns the gate settings read from that content (None when they cannot be trusted)."""
    text, digest = rec.get("suite_toml"), rec.get("suite_sha256")
    if not isinstance(text, str) or not isinstance(digest, str):
        return None
    if _sha_bytes(text.encode("utf-8")) != digest:
        P(f"{path}: field 'suite_toml' does not match field 'suite_sha256'")
        return None
    file = _load_path(rec.get("suite_path"), path)
    if file is not None:
        if not file.is_file():
            P(f"{path}: field 'suite_path': the suite file {file} is not found")
        elif _sha(file) != digest:
            P(f"{path}: field 'suite_sha256' does not match {file} (the suite changed since promotion)")
    try:
        settings = GateSettings(**_toml_table(text, "gate"))
        bounds = Bounds(**_toml_table(text, "bounds"))
    except (tomllib.TOMLDecodeError, ValidationError, TypeError) as exc:
        P(f"{path}: field 'suite_toml': not a valid suite ({str(exc).splitlines()[0]})")
        return None
    ok = True
    if isinstance(rec.get("gate"), dict) and rec["gate"] != json.loads(settings.model_dump_json()):
        P(f"{path}: field 'gate' does not match the [gate] table of the suite")
        ok = False
    if isinstance(rec.get("bounds"), dict) and _bounds_of(rec["bounds"]) != json.loads(bounds.model_dump_json()):
        P(f"{path}: field 'bounds' does not match the [bounds] table of the suite")
    return settings if ok else None


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_scores(spec, scores: dict, settings: GateSettings, suite_name: Any, path: Path, P) -> None:
    """The gate again, on the scores the record holds, under the gate settings of the record's suite."""
    bad = False
    if scores.get("policy") != spec.name:
        P(f"{path}: field 'scores.policy' is {scores.get('policy')!r}, not {spec.name!r}")
        bad = True
    if not isinstance(scores.get("upper_bound"), bool):
        P(f"{path}: field 'scores.upper_bound' is missing or not true/false")
        bad = True
    for k in SCORE_NUMBERS:
        if not _number(scores.get(k)):
            P(f"{path}: field 'scores.{k}' is missing or not a finite number")
            bad = True
    by_kind = scores.get("violations_by_kind")
    if not isinstance(by_kind, dict) or not all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
                                                and v >= 0 for k, v in by_kind.items()):
        P(f"{path}: field 'scores.violations_by_kind' is missing or not a map of counts")
        bad = True
    fatal = scores.get("fatal_violations", 0)
    if not isinstance(fatal, int) or isinstance(fatal, bool) or fatal < 0:
        P(f"{path}: field 'scores.fatal_violations' is not a count")
        bad = True
    if not (isinstance(scores.get("roots"), int) and scores["roots"] >= 1):
        P(f"{path}: field 'scores.roots' is missing or not a positive count")
        bad = True
    if bad:
        return
    failed = [r for ok, r in _gate_checks(SimpleNamespace(**scores), settings) if not ok]
    if failed:
        P(f"{path}: field 'scores' does not pass the gate of suite {suite_name!r}: " + "; ".join(failed))
