"""The promotion gate and promotion records.

A policy is promoted on a suite only when, through the simulator:

1. it beats ``constant``: the bootstrap 95% interval of its median val-loss change lies wholly below zero;
2. its unsafe rate (diverged, or more than the suite's threshold worse than doing nothing) is at most the suite's
   ``max_unsafe_rate``;
3. it has no violation of a kind the suite marks fatal;
4. it is not an upper bound (the oracle reads the recorded answers and cannot run live).

A passing policy gets a record in ``eval/promotions/NAME.json``: the spec's hash, the hashes of any weight files
its settings name, the library hash, the surrogate identity, the suite and its hash, the scores and the date.
``check_record`` verifies that the record still matches the files; the live hook refuses a policy without a
record that checks, and takes its bounds from the record (the suite's bounds the policy was judged under).

This module imports nothing of the offline stack (simulator, leaderboard, DuckDB, scikit-learn), so the live hook
can check a record in a training process that has none of them loaded.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
from pathlib import Path

from typing import TYPE_CHECKING

from .. import __version__
from ..core.actions import Bounds

if TYPE_CHECKING:  # the gate reads scores and suites; importing their module would pull in the simulator
    from .leaderboard import PolicyScore, Suite

WEIGHT_KEYS = ("model", "adapter", "weights", "checkpoint", "path")


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            if p.is_file():
                h.update(str(p.relative_to(path)).encode())
                h.update(hashlib.sha256(p.read_bytes()).digest())
    else:
        h.update(path.read_bytes())
    return h.hexdigest()


def weight_hashes(spec) -> dict[str, str]:
    """Hashes of the files or directories a spec's settings point to (model, adapter, weights, ...)."""
    out = {}
    base = spec.path.parent if spec.path else Path(".")
    for k in WEIGHT_KEYS:
        v = spec.settings.get(k)
        if isinstance(v, str):
            p = Path(v) if Path(v).is_absolute() else (Path(v) if Path(v).exists() else base / v)
            if p.exists():
                out[k] = _sha(p)
    return out


def gate(score: "PolicyScore", suite: "Suite") -> tuple[bool, list[str]]:
    """(passed, reasons): every reason says which condition held or failed, with the figures."""
    g = suite.gate
    reasons, ok = [], True
    if score.upper_bound:
        return False, [f"{score.policy} is an upper bound that reads the recorded answers; it cannot be promoted"]
    if score.ci_high < 0:
        reasons.append(f"beats constant: median val-loss change {score.val_loss_change_pct:+.1f}%, "
                       f"95% CI [{score.ci_low:+.1f}, {score.ci_high:+.1f}] excludes zero")
    else:
        ok = False
        reasons.append(f"does not beat constant: median val-loss change {score.val_loss_change_pct:+.1f}%, "
                       f"95% CI [{score.ci_low:+.1f}, {score.ci_high:+.1f}] does not lie below zero")
    if score.unsafe_rate <= g.max_unsafe_rate:
        reasons.append(f"unsafe rate {score.unsafe_rate:.1%} <= {g.max_unsafe_rate:.1%}")
    else:
        ok = False
        reasons.append(f"unsafe rate {score.unsafe_rate:.1%} > {g.max_unsafe_rate:.1%} (diverged or >{g.unsafe_threshold:.0%} worse than doing nothing)")
    fatal = {k: v for k, v in score.violations_by_kind.items() if k in g.fatal_violations}
    if fatal:
        ok = False
        reasons.append(f"fatal violations: {fatal}")
    else:
        reasons.append("no fatal violations")
    return ok, reasons


def record_path(promotions: Path, name: str) -> Path:
    return Path(promotions) / f"{name}.json"


def write_record(spec, score: "PolicyScore", suite: "Suite", library_hash: str, surrogate_id: str, promotions: Path) -> Path:
    rec = {
        "policy": spec.name, "kind": spec.kind, "version": spec.version,
        "spec_path": str(spec.path) if spec.path else None, "spec_sha256": spec.digest(),
        "weights_sha256": weight_hashes(spec), "library_sha256": library_hash, "surrogate_id": surrogate_id,
        "suite": suite.name, "suite_path": str(suite.path) if suite.path else None,
        "suite_sha256": _sha(suite.path) if suite.path else None, "bounds": suite.bounds.model_dump(),
        "scores": score.to_dict(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "tmsim_version": __version__,
    }
    path = record_path(promotions, spec.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec, indent=2) + "\n")
    return path


def check_record(spec, promotions: Path, library_hash: str | None = None) -> tuple[bool, list[str]]:
    """(ok, problems): does ``spec`` have a promotion record that still matches its files?"""
    rec, problems = _check(spec, promotions, library_hash)
    return not problems, problems


def promoted_bounds(spec, promotions: Path) -> Bounds | None:
    """The bounds of the suite ``spec`` was promoted on (from its record; None when the record has none). The
    live hook applies a promoted policy under these bounds."""
    rec, problems = _check(spec, promotions, None)
    if problems or rec is None:
        return None
    if "bounds" in rec:
        return Bounds(**rec["bounds"])
    suite_path = rec.get("suite_path")
    if suite_path and Path(suite_path).exists():  # records written before bounds were stored in them
        import tomllib

        return Bounds(**tomllib.loads(Path(suite_path).read_text()).get("bounds", {}))
    return None


def _check(spec, promotions: Path, library_hash: str | None) -> tuple[dict | None, list[str]]:
    path = record_path(promotions, spec.name)
    if not path.exists():
        return None, [f"{spec.name}: no promotion record at {path} (run `tmsim promote {spec.path or spec.name}`)"]
    try:
        rec = json.loads(path.read_text())
    except ValueError as exc:
        return None, [f"{path}: not valid JSON ({exc})"]
    problems = []
    if rec.get("spec_sha256") != spec.digest():
        problems.append(f"{path}: field 'spec_sha256' does not match {spec.path} (the spec changed since promotion)")
    now = weight_hashes(spec)
    for k, v in rec.get("weights_sha256", {}).items():
        if now.get(k) != v:
            problems.append(f"{path}: field 'weights_sha256.{k}' does not match the file it names")
    for k in now:
        if k not in rec.get("weights_sha256", {}):
            problems.append(f"{path}: weights '{k}' were not part of the promotion")
    if rec.get("suite_path") and Path(rec["suite_path"]).exists() and rec.get("suite_sha256") != _sha(Path(rec["suite_path"])):
        problems.append(f"{path}: field 'suite_sha256' does not match {rec['suite_path']}")
    if library_hash is not None and rec.get("library_sha256") != library_hash:
        problems.append(f"{path}: field 'library_sha256' does not match the trace library")
    return rec, problems
