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
