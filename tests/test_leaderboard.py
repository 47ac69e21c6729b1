"""The leaderboard, its report and the promotion gate, on a small real library."""
import json

import numpy as np
import pytest

from tmsim.cli import main
from tmsim.evaluate.leaderboard import Suite, boot_median, json_rows, load_suite, run_leaderboard
from tmsim.policies import ConstantPolicy, RandomPolicy, RulesPolicy
from tmsim.evaluate.report import write_report
from tmsim.traces import TreeIndex
from tmsim.simulate import Surrogate, segment_data
from tmsim.traces import load_library

KEYS = {"policy", "val_loss_change_pct", "ci_low", "ci_high", "regret", "unsafe_rate", "violations_per_100",
        "fallback_rate", "latency_ms_p50", "replayed_share"}


@pytest.fixture(scope="module")
def result(small_library):
    lib = load_library(small_library)
    sur = Surrogate(n_estimators=15).fit(segment_data(TreeIndex(lib)))
    pols = [ConstantPolicy(), RulesPolicy(), RandomPolicy(seed=1)]
    return run_leaderboard(lib, pols, Suite(name="t"), sur, "test")


def test_oracle_first_constant_zero_and_required_keys(result):
    ranked = result.ranked()
    assert ranked[0].policy == "oracle" and ranked[0].upper_bound and ranked[0].regret == pytest.approx(0)
    const = next(s for s in ranked if s.policy == "constant")
    assert const.val_loss_change_pct == 0 and const.regret == pytest.approx(1.0)
    rows = json_rows(result)
    assert all(KEYS <= set(r) for r in rows)
    # random leaves the recorded tree (depth 2: decisions at epochs 5 and 10) exactly where it intervenes at epoch 15,
    # and the surrogate takes over there; whether a draw does so depends on the recorded values, so each rollout is
    # checked against its own decisions rather than one draw asserted
    for o in result.rollouts["random"]:
        late = any(d["epoch"] > 10 and d["action"] not in ("continue", "stop") for d in o.decisions)
        assert (o.replayed_share < 1) == late == (o.surrogate_segments > 0), o.root
    for s in ranked:
        assert s.ci_low <= s.val_loss_change_pct <= s.ci_high
        assert set(s.per_scenario) == {"overfit", "healthy"}


def test_bootstrap_interval_is_deterministic_and_brackets_the_median():
    x = np.random.default_rng(3).normal(-10, 5, size=40)
    lo, hi = boot_median(x)
    assert (lo, hi) == boot_median(x) and lo < np.median(x) < hi


def test_report_files(result, tmp_path):
    files = write_report(result, tmp_path / "rep")
    for k in ("bars", "curves", "violations"):
        assert files[k].stat().st_size > 5000 and files[k].read_bytes()[:4] == b"\x89PNG"
    page = files["html"].read_text()
    assert "curves.png" in page and "leaderboard.png" in page and "oracle" in page
    assert json.loads(files["json"].read_text())[0]["policy"] == "oracle"
    assert "| 1 | oracle (upper bound)" in files["md"].read_text()


@pytest.fixture()
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("TMSIM_SURROGATE_CACHE", str(tmp_path / "cache"))
    return tmp_path


def test_cli_leaderboard_json_and_report(small_library, env, capsys):
    out = env / "lb.json"
    assert main(["leaderboard", "--traces", str(small_library), "--json", str(out), "--report", str(env / "rep"), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "leaderboard: suite default" in text and "oracle (upper bound)" in text
    rows = json.loads(out.read_text())
    assert rows[0]["policy"] == "oracle" and {r["policy"] for r in rows} >= {"constant", "rules", "plateau", "random"}
    assert all(KEYS <= set(r) for r in rows)
    assert (env / "rep" / "leaderboard.html").exists()
    assert list((env / "cache").glob("*.skops"))  # the fitted surrogate is cached for the next run


def test_promote_refuses_random_accepts_a_passing_policy_and_checks(small_library, env, capsys):
    suite = env / "overfit.toml"
    suite.write_text('name = "overfit"\nscenarios = ["overfit"]\n[gate]\nmax_unsafe_rate = 0.0\n')
    proms = env / "proms"
    args = ["--traces", str(small_library), "--suite", str(suite), "--promotions", str(proms), "--quiet"]
    assert main(["promote", "random", *args]) == 1
    out = capsys.readouterr().out
    assert "random on suite overfit: REFUSED" in out and ("does not beat constant" in out or "unsafe rate" in out)
    spec = env / "halve.toml"
    spec.write_text('name = "halve"\nkind = "sequence"\n[settings]\nactions = ["lr_down", "lr_down"]\n')
    assert main(["promote", str(spec), *args]) == 0
    out = capsys.readouterr().out
    assert "halve on suite overfit: PROMOTED" in out and "excludes zero" in out
    record = json.loads((proms / "halve.json").read_text())
    assert {"spec_sha256", "library_sha256", "surrogate_sha256", "suite_toml", "suite", "scores", "date"} <= set(record)
    assert main(["promote", "--check", str(spec), "--promotions", str(proms)]) == 0
    spec.write_text(spec.read_text() + "# edited\n")
    assert main(["promote", "--check", str(spec), "--promotions", str(proms)]) == 1
    assert "spec_sha256" in capsys.readouterr().err
    oracle = env / "o.toml"
    oracle.write_text('name = "oracle"\nkind = "oracle"\n')
    assert main(["promote", str(oracle), *args]) == 1
    assert "upper bound" in capsys.readouterr().out


def test_bundled_suites_load(tmp_path):
    from tmsim.cli import REPO

    for p in (REPO / "eval" / "suites").glob("*.toml"):
        assert load_suite(p).name == p.stem
    bad = tmp_path / "s.toml"
    bad.write_text('name = "x"\ncolour = 1\n')
    with pytest.raises(ValueError, match="s.toml: field 'colour'"):
        load_suite(bad)


def test_process_pool_gives_the_same_scores(small_library, env):
    a, b = env / "a.json", env / "b.json"
    base = ["leaderboard", "--traces", str(small_library), "--no-report", "--quiet", "--policies", "policies/rules.toml", "policies/random.toml"]
    assert main([*base, "--json", str(a)]) == 0
    assert main([*base, "--json", str(b), "--workers", "2"]) == 0
    strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith("latency")} for r in rows]  # noqa: E731
    assert strip(json.loads(a.read_text())) == strip(json.loads(b.read_text()))


def test_a_lora_adapter_trained_on_another_library_is_refused_naming_both_hashes(tmp_path, small_library, capsys):
    from tmsim.policies import load_spec
    from tmsim.policies.llm.finetune import adapter_library_problem

    here = load_library(small_library).digest()
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    card = adapter / "tmsim_adapter.json"
    card.write_text(json.dumps({"base_model": "smollm2-135m-instruct", "library_sha256": "ab" * 32}))
    spec = tmp_path / "stale-lora.toml"
    spec.write_text('name = "stale-lora"\nkind = "llm"\n[settings]\nmodel = "smollm2-135m-instruct"\nadapter = "adapter"\n')
    # refused before any model is loaded or any policy rolled out: one line, exit 2, both libraries named
    assert main(["leaderboard", "--traces", str(small_library), "--policies", str(spec), "--no-report",
                 "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "abababababababab" in err and here[:16] in err and "stale-lora" in err
    # a card that records no library is refused too; the library it was trained on is accepted
    card.write_text(json.dumps({"base_model": "smollm2-135m-instruct"}))
    assert "records no library" in adapter_library_problem(load_spec(spec), here)
    card.write_text(json.dumps({"base_model": "smollm2-135m-instruct", "library_sha256": here}))
    assert adapter_library_problem(load_spec(spec), here) is None
    card.unlink()
    assert "no readable tmsim_adapter.json" in adapter_library_problem(load_spec(spec), here)
    from tmsim.cli import REPO

    assert adapter_library_problem(load_spec(REPO / "policies" / "rules.toml"), here) is None  # no adapter: nothing to check
