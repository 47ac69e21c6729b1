"""``kind = "gbm"``: the gradient-boosted baseline on the snapshot's numbers, learned from the training split."""
import math

import pytest

from tmsim.policies import PolicySpec, make_policy
from tmsim.policies.check import decision_points
from tmsim.policies.gbm import FEATURES, GBMPolicy, features
from tmsim.traces import TreeIndex, load_library


@pytest.fixture(scope="module")
def index(small_library):
    return TreeIndex(load_library(small_library))


def test_gbm_is_deterministic_and_answers_offered_actions(index):
    spec = PolicySpec(name="gbm", kind="gbm", settings={"train_seeds": "even", "max_iter": 30},
                      trained_on={"seeds": "even"})
    a, b = make_policy(spec, index), make_policy(spec, index)
    snaps = decision_points(index)
    pa, pb = a.decide_batch(snaps), b.decide_batch(snaps)
    assert [p.action for p in pa] == [p.action for p in pb]
    assert all(p.action in s.offered for p, s in zip(pa, snaps))
    assert a.trained_on == {"seeds": "even"} and a.train_examples > 0
    assert [a.decide(s).action for s in snaps[:5]] == [p.action for p in pa[:5]]


def test_gbm_features_are_numbers_without_the_task_name(index):
    s = decision_points(index)[0]
    x = features(s)
    assert len(x) == len(FEATURES) and all(isinstance(v, float) for v in x)
    assert all(math.isfinite(v) for v in x[:6])


def test_held_out_tasks_are_never_trained_on(index):
    with pytest.raises(ValueError, match="no recorded node"):
        GBMPolicy(index, holdout_tasks=["digits-mlp"])


def test_a_list_of_seeds_is_a_training_split_as_validation_folds_use_it(index):
    """``eval/select_gbm.py`` fits on folds of the even seeds: a list of seeds trains on exactly those."""
    from tmsim.policies.llm.finetune import build_dataset

    everything, _ = build_dataset(index, "even")
    seed = min(e.seed for e in everything)
    train, held = build_dataset(index, [seed])
    assert train and {e.seed for e in train} == {seed} and all(e.seed != seed for e in held)
    assert GBMPolicy(index, train_seeds=[seed], max_iter=10).train_examples == len(train)
    for bad in ("all", [], [True], ["0"]):
        with pytest.raises(TypeError, match="train_seeds"):
            build_dataset(index, bad)
