"""LLM managers on a real pretrained model: SmolLM2-135M-Instruct, fetched through pip and converted once.

Kept few and small (a handful of decisions): each SmolLM2 decision costs about a second of CPU."""
import json
from pathlib import Path

import pytest

from tmsim.core import Bounds
from tmsim.models import MODELS, display_name, resolve_model, verify
from tmsim.policies import load_spec, make_policy
from tmsim.policies.check import decision_points, run_policy
from tmsim.policies.llm.policy import LLMPolicy
from tmsim.traces import load_library

from .llm_support import smollm2  # noqa: F401 -- a fixture

REPO = Path(__file__).resolve().parent.parent
ADAPTER = REPO / "finetune" / "adapters" / "smollm2-lora"


@pytest.fixture(scope="module")
def snaps(small_library):
    return decision_points(load_library(small_library))[::11][:2]


@pytest.fixture(scope="module")
def prompted(smollm2):
    return make_policy(load_spec(REPO / "policies" / "llm" / "llm-prompted.toml"))


def test_fetched_model_is_verified_and_carries_its_license(smollm2, tmp_path):
    card = verify(smollm2)
    src = MODELS["smollm2-135m-instruct"]
    assert card["gguf_sha256"] == src.gguf_sha256 and card["license"] == "Apache-2.0"
    assert "Apache License" in (smollm2 / "LICENSE").read_text() and (smollm2 / "MODEL_CARD.md").is_file()
    assert resolve_model("smollm2-135m-instruct") == str(smollm2) and display_name(str(smollm2)) == src.display
    (tmp_path / "model.safetensors").write_bytes(b"tampered")
    (tmp_path / "tmsim_model.json").write_text(json.dumps({"safetensors_sha256": card["safetensors_sha256"]}))
    with pytest.raises(ValueError, match="does not match"):
        verify(tmp_path)


def test_scoring_normalisations_batched_equals_single_and_no_unvalidated_update(prompted, snaps):
    assert prompted.model_name == "SmolLM2-135M-Instruct" and prompted.policy_id == "llm-prompted"
    prompted.memo = False
    one = [prompted.decide(s).action for s in snaps]
    many = [p.action for p in prompted.decide_batch(snaps)]
    assert one == many and all(a in s.offered for a, s in zip(one, snaps))
    for norm in ("sum", "calibrate"):
        prompted.normalize = norm
        sc = prompted.scores(snaps[0])
        assert set(sc) == set(snaps[0].offered)
    prompted.normalize = "mean"
    audit, report = run_policy(prompted, snaps, Bounds(), timeout=120)
    assert report["unvalidated_updates"] == 0 and prompted.stats["fallbacks"] == 0


def test_json_generation_follows_the_schema_and_keeps_the_reason(smollm2, snaps):
    pol = LLMPolicy("smollm2-135m-instruct", method="json", max_new_tokens=32, memo=False)
    props = pol.decide_batch(snaps)
    assert pol.stats["fallbacks"] == 0
    for s, p in zip(snaps, props):
        assert p.action in set(s.offered) | {"set_lr"}
        assert p.reason  # the model's own words (or, cut short, a note saying so)
        if p.action == "set_lr":
            lr = s.hparams.lr
            assert lr / 4 * 0.999 <= p.value <= lr * 4 * 1.001


@pytest.mark.skipif(not ADAPTER.exists(), reason="no committed SmolLM2 adapter")
def test_committed_lora_adapter_loads_on_the_fetched_model(smollm2, snaps):
    card = json.loads((ADAPTER / "tmsim_adapter.json").read_text())
    assert card["base_model_sha256"] == verify(smollm2)["safetensors_sha256"]
    assert card["holdout_tasks"] and card["train_seeds"] == "even" and card["data_sha256"]
    pol = make_policy(load_spec(REPO / "policies" / "llm" / "llm-lora.toml"))
    assert pol.model_name == "SmolLM2-135M-Instruct" and pol.trained_on["holdout_tasks"] == card["holdout_tasks"]
    assert all(p.action in s.offered for p, s in zip(pol.decide_batch(snaps), snaps))
