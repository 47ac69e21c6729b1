"""The examples in docs/policies.md and examples/policies/ run, and say what the code does.

* ``examples/policies/gap.toml`` goes through ``tmsim policy check`` on a small real library without violations.
* Every ```python block preceded by a ``<!-- runnable -->`` line runs (cwd = repo root). When such a block is
  followed directly by a ```text block, that block must equal what the code printed.
* The listing of ``GapPolicy`` in the doc is the code of ``examples/policies/gap_policy.py``, and the doc's tables
  name every action, violation and ``Bounds`` field with its default.
"""
import json
import re

import pytest

from tests.conftest import REPO
from tmsim.core import ALL_ACTIONS, VIOLATIONS, Bounds
from tmsim.cli import main
from tmsim.policies import load_spec, make_policy

DOC = REPO / "docs" / "policies.md"
SPEC = REPO / "examples" / "policies" / "gap.toml"
MODULE = REPO / "examples" / "policies" / "gap_policy.py"
FENCE = re.compile(r"```(\w*)\n(.*?)```", re.S)


def _blocks():
    """(language, code, following text block or None) for every runnable block of the doc."""
    text = DOC.read_text(encoding="utf-8")
    out = []
    for m in re.finditer(r"<!-- runnable -->\s*\n```python\n(.*?)```", text, re.S):
        nxt = re.match(r"\s*```text\n(.*?)```", text[m.end():], re.S)
        out.append((m.group(1), nxt.group(1) if nxt else None))
    return out


@pytest.fixture
def at_repo(monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.syspath_prepend(str(REPO))


def test_gap_spec_passes_policy_check(small_library, tmp_path, at_repo):
    spec = load_spec(SPEC)
    assert spec.kind == "python" and spec.target == "examples.policies.gap_policy:GapPolicy"
    assert make_policy(spec).policy_id == "gap"
    out = tmp_path / "gap.json"
    rc = main(["policy", "check", str(SPEC), "--traces", str(small_library), "--json", str(out), "--quiet"])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["policy"] == "gap" and report["upper_bound"] is False and not report["hung"]
    assert report["decisions"] > 0
    assert report["unvalidated_updates"] == 0
    assert report["violations"] == {} and report["fallback_rate"] == 0.0
    assert report["interventions"] > 0 and report["actions"].get("lr_down", 0) > 0


def test_doc_has_runnable_blocks():
    assert len(_blocks()) >= 3


@pytest.mark.parametrize("i", range(len(_blocks())))
def test_runnable_doc_block(i, at_repo, capsys):
    code, expected = _blocks()[i]
    exec(compile(code, f"{DOC.name} runnable block {i + 1}", "exec"), {"__name__": f"doc_block_{i}"})
    if expected is not None:
        assert capsys.readouterr().out == expected


def test_doc_listing_matches_the_example_module():
    text = DOC.read_text(encoding="utf-8")
    listings = [code for lang, code in FENCE.findall(text) if lang == "python" and code.startswith("class GapPolicy")]
    assert len(listings) == 1
    assert listings[0] in MODULE.read_text(encoding="utf-8")
    toml = [code for lang, code in FENCE.findall(text) if lang == "toml" and "examples.policies.gap_policy" in code]
    assert toml == [SPEC.read_text(encoding="utf-8")]


def test_doc_tables_cover_the_code():
    text = DOC.read_text(encoding="utf-8")
    for name in VIOLATIONS:
        assert f"| `{name}` |" in text, name
    for action in ALL_ACTIONS:
        assert f"`{action}`" in text, action
    documented = {}
    for line in text.splitlines():
        cols = line.split("|")
        if len(cols) > 3 and cols[1].strip().startswith("`") and cols[2].strip().startswith("`"):
            names, defaults = re.findall(r"`([^`]+)`", cols[1]), re.findall(r"`([^`]+)`", cols[2])
            if len(names) == len(defaults):
                documented.update(zip(names, defaults))
    for field, info in Bounds.model_fields.items():
        assert field in documented, field
        value = documented[field]
        assert (None if value == "None" else float(value)) == info.default, (field, value, info.default)
