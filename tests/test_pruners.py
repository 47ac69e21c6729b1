"""Optuna's pruners as stop policies: optuna's own decisions on a study built from other seeds, one trial per run;
optuna is a base dependency (the default board runs every bundled spec), and an install that lacks it all the same
gets a clear refusal."""
import json
import sys

import optuna  # a base dependency: an install without it fails here instead of skipping the module
import pytest

from tmsim.core import Bounds
from tmsim.evaluate.leaderboard import Suite, run_leaderboard
from tmsim.policies import ConstantPolicy, PolicySpec, find_specs, make_policy
from tmsim.policies.pruners import MissingExtraError
from tmsim.simulate import Simulator
from tmsim.traces import TreeIndex, load_library

REPO_POLICIES = ["optuna-median", "optuna-sha", "optuna-hyperband", "optuna-threshold", "optuna-patient"]


@pytest.fixture(scope="module")
def index(bundled):
    return TreeIndex(load_library(bundled))


def _pruner(index, name, **settings):
    return make_policy(PolicySpec(name=f"t-{name}", kind="optuna", settings={"pruner": name, **settings}), index)


def _reference_stop(index, root, pruner, replay):
    """The epoch at which optuna itself prunes the do-nothing run of ``root``: a study of every do-nothing run of the
    task with another seed, built here with optuna's API; ``replay`` runs each reference trial through the pruner
    (its answers ignored), as successive halving needs."""
    m = index.meta[root]
    refs = sorted(r for r in index.roots if index.meta[r]["task"] == m["task"] and index.meta[r]["seed"] != m["seed"])
    name = f"tmsim-{m['task']}-without-seeds-{m['seed']}"
    study = optuna.create_study(direction="minimize", pruner=pruner(), study_name=name,
                                sampler=optuna.samplers.RandomSampler(seed=0))
    for r in refs:
        rows = index[r]
        pen = 3 * rows[0]["val_loss"]
        vals = {e: (rows[e]["val_loss"] if rows[e]["val_loss"] == rows[e]["val_loss"] and abs(rows[e]["val_loss"]) != float("inf")
                    else pen) for e in sorted(rows) if e > 0}
        if replay:
            t = study.ask()
            for e, v in vals.items():
                t.report(v, e)
                t.should_prune()
            study.tell(t, index.final_val_loss(r))
        else:
            study.add_trial(optuna.trial.create_trial(value=index.final_val_loss(r), intermediate_values=vals))
    trial = study.ask()
    rows = index[root]
    for e in sorted(rows):
        if e > 0:
            trial.report(rows[e]["val_loss"], e)
            if trial.should_prune():
                return e
    return None


@pytest.mark.parametrize("name,pruner,replay", [
    ("median", lambda: optuna.pruners.MedianPruner(), False),
    ("successive_halving", lambda: optuna.pruners.SuccessiveHalvingPruner(min_resource=1), True),
])
def test_the_policy_stops_where_optuna_prunes(index, name, pruner, replay):
    """On do-nothing runs (a pruner only stops, so a rollout stays on the recorded do-nothing path until it stops),
    the rollout stops at the first decision epoch at or after the epoch where optuna, driven directly, prunes."""
    roots = [r for r in index.roots if index.meta[r]["task"] in ("digits-mlp", "text-lm") and index.meta[r]["replicate"] == 0]
    outs = Simulator(index, on_off_tree="truncate").rollout(_pruner(index, name), roots)
    stopped = 0
    for o in outs:
        m = index.meta[o.root]
        at = _reference_stop(index, o.root, pruner, replay)
        every = m["decide_every"]
        want = None if at is None else -(-at // every) * every
        if want is not None and want >= m["max_epochs"]:
            want = None  # pruned in the last segment: no decision left to act on
        if o.diverged and (want is None or o.final_epoch() < want):
            continue  # the run diverged before the pruner's stop could be acted on
        assert o.stopped_at == want, (o.root, at)
        stopped += want is not None
    assert stopped > 0


def test_one_trial_per_run_and_runs_never_see_each_other(index):
    """Interleaving the decisions of many runs gives the answers each run gets alone."""
    roots = [r for r in index.roots if index.meta[r]["task"] == "friedman-mlp"][:12]
    sim = Simulator(index, on_off_tree="truncate")
    together = {o.root: (o.stopped_at, o.final_epoch()) for o in sim.rollout(_pruner(index, "successive_halving"), roots)}
    alone = {}
    for r in roots:
        (o,) = sim.rollout(_pruner(index, "successive_halving"), [r])
        alone[r] = (o.stopped_at, o.final_epoch())
    assert together == alone


def test_the_study_leaves_out_every_run_of_the_seed_under_evaluation(index):
    pol = _pruner(index, "median")
    root = next(r for r in index.roots if index.meta[r]["task"] == "digits-mlp")
    seed = index.meta[root]["seed"]
    from tmsim.core.decision import RunInfo, build_snapshot

    m = index.meta[root]
    rows = index[root]
    snap = build_snapshot(RunInfo(root, m["task"], m["decide_every"], m["max_epochs"]),
                          [rows[e] for e in range(m["decide_every"] + 1)], {}, m["decide_every"], Bounds())
    run = pol._new_run(snap)
    done = run.study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    same_task = [r for r in index.roots if index.meta[r]["task"] == "digits-mlp"]
    assert len(done) == sum(index.meta[r]["seed"] != seed for r in same_task) > 0
    own = {tuple(index[r][e]["val_loss"] for e in sorted(index[r]) if e > 0) for r in same_task if index.meta[r]["seed"] == seed}
    assert not own & {tuple(t.intermediate_values[k] for k in sorted(t.intermediate_values)) for t in done}


def test_threshold_pruner_on_diverging_runs_saves_compute_and_loses_nothing(index):
    """The bundled library's diverge scenarios: the threshold pruner stops some runs early (compute below doing
    nothing) and loses nothing: the median change is 0 with the best checkpoint restored, and at most 0 without."""
    from tmsim.simulate import Surrogate, segment_data

    suite = Suite(name="diverge", scenarios=["diverge"])
    # the pruner's rollouts are exact replay (it only stops); the oracle's may not be: on diabetes-mlp (library v5)
    # its best recorded path raises weight decay three times, past the validator's bound, so the clamped value leaves
    # the tree there and a small surrogate carries that row
    sur = Surrogate(n_estimators=10).fit(segment_data(index, lambda m: m["scenario"] == "diverge"))
    res = run_leaderboard(index, [ConstantPolicy(), _pruner(index, "threshold")], suite, surrogate=sur)
    assert res.rollouts["t-threshold"] and all(o.replayed_share == 1.0 for o in res.rollouts["t-threshold"])
    row = next(s for s in res.scores if s.policy == "t-threshold")
    assert row.stops_only and row.epochs_share < 1 and row.epochs_saved_per_run > 0
    assert row.best_val_loss_change_pct == 0 and row.val_loss_change_pct <= 0
    for o in res.rollouts["t-threshold"]:  # optuna's rule: a run stops only after its val loss left [0, epoch-0 value]
        if o.stopped_at is not None:
            v0 = o.epochs[0]["val_loss"]
            assert any(not (r["val_loss"] <= v0) for r in o.epochs[1:]), o.root


def test_optuna_is_a_base_dependency_and_the_extra_an_alias():
    """The base install runs every spec in policies/: optuna is in the project's dependencies, at the version the
    ``optuna`` extra pins (kept, so that ``pip install 'tmsim[optuna]'`` still works)."""
    import tomllib

    from tmsim.cli import REPO

    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert "optuna==5.0.0" in project["dependencies"]
    assert project["optional-dependencies"]["optuna"] == ["optuna==5.0.0"]
    assert optuna.__version__ == "5.0.0"


def test_bundled_specs_build_and_only_stop(index):
    specs = [s for s in find_specs("policies") if s.name in REPO_POLICIES]
    assert sorted(s.name for s in specs) == sorted(REPO_POLICIES)
    snaps = [d["snapshot"] for o in Simulator(index, on_off_tree="truncate").rollout(ConstantPolicy(), index.roots[:30])
             for d in o.decisions]
    for spec in specs:
        pol = make_policy(spec, index)
        assert {pol.decide(s).action for s in snaps} <= {"continue", "stop"}


def test_missing_optuna_is_one_clear_error_and_the_board_skips_it(small_library, tmp_path, monkeypatch, capsys):
    from tmsim.cli import main

    monkeypatch.setitem(sys.modules, "optuna", None)  # what an environment without the extra looks like to import
    with pytest.raises(MissingExtraError, match=r"pip install 'tmsim\[optuna\]'"):
        make_policy(PolicySpec(name="m", kind="optuna", settings={"pruner": "median"}), load_library(small_library))
    pols = tmp_path / "pols"
    pols.mkdir()
    (pols / "m.toml").write_text('name = "m"\nkind = "optuna"\n[settings]\npruner = "median"\n')
    (pols / "r.toml").write_text('name = "r"\nkind = "rules"\n')
    monkeypatch.setenv("TMSIM_SURROGATE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "lb.json"
    rc = main(["leaderboard", "--traces", str(small_library), "--policies", str(pols), "--json", str(out),
               "--no-report", "--quiet"])
    text = capsys.readouterr()
    assert rc == 0 and "SKIPPED m: the optuna pruner policies need optuna" in text.out
    assert "tmsim[optuna]" in text.err
    rows = json.loads(out.read_text())
    assert "m" not in {r["policy"] for r in rows} and "r" in {r["policy"] for r in rows}
    assert "tmsim[optuna]" in rows[0]["skipped_policies"]["m"]
    assert main(["policy", "check", str(pols / "m.toml"), "--traces", str(small_library), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'tmsim[optuna]'" in err[0]
