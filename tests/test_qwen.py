"""The Qwen path on the offline model: chat template, constrained output, batching, LoRA, fine-tuning."""
import json

import pytest

from tmsim.core import ALL_ACTIONS, Bounds
from tmsim.policies.check import decision_points, run_policy
from tmsim.policies.llm.finetune import Recipe, build_dataset, run_recipe
from tmsim.policies.llm.model import init_model
from tmsim.policies.llm.policy import AdapterError, QwenPolicy
from tmsim.traces import load_library


@pytest.fixture(scope="module")
def tiny(small_library, tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "qwen3-tiny-scratch"
    return init_model(out, small_library, vocab_size=400, hidden=32, layers=1, heads=2, kv_heads=1)


@pytest.fixture(scope="module")
def snaps(small_library):
    return decision_points(load_library(small_library))[::7][:12]


def test_model_is_qwen3_and_template_disables_thinking(tiny, snaps):
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(tiny).model_type == "qwen3"
    pol = QwenPolicy(str(tiny))
    prompt = pol.prompt(snaps[0])
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert "allowed actions:" in prompt and "test" not in prompt.lower()
    assert "qwen3-tiny-scratch" in (tiny / "MODEL_CARD.md").read_text() and "not" in (tiny / "MODEL_CARD.md").read_text()


def test_model_init_is_deterministic(tiny, small_library, tmp_path):
    again = init_model(tmp_path / "m", small_library, vocab_size=400, hidden=32, layers=1, heads=2, kv_heads=1)
    assert (again / "model.safetensors").read_bytes() == (tiny / "model.safetensors").read_bytes()
    assert (again / "tokenizer.json").read_bytes() == (tiny / "tokenizer.json").read_bytes()


def test_scoring_one_at_a_time_equals_batched_and_outputs_are_offered(tiny, snaps):
    pol = QwenPolicy(str(tiny), batch_size=8)
    one = [pol.decide(s).action for s in snaps]
    many = [p.action for p in pol.decide_batch(snaps)]
    assert one == many
    assert all(a in s.offered for a, s in zip(one, snaps))
    sc = pol.scores(snaps[0])
    assert set(sc) == set(snaps[0].offered) and all(v < 0 for v in sc.values())


def test_constrained_generation_yields_offered_actions(tiny, snaps):
    pol = QwenPolicy(str(tiny), method="generate")
    acts = [p.action for p in pol.decide_batch(snaps)]
    assert all(a in s.offered for a, s in zip(acts, snaps))


def test_prompted_policy_end_to_end_has_no_unvalidated_update(tiny, small_library):
    snaps = decision_points(load_library(small_library))[:30]
    audit, report = run_policy(QwenPolicy(str(tiny)), snaps, Bounds(), timeout=30)
    assert report["unvalidated_updates"] == 0 and report["decisions"] == 30
    assert set(report["actions"]) <= set(ALL_ACTIONS)


def test_model_failure_falls_back_to_rules_and_is_counted(tiny, snaps):
    pol = QwenPolicy(str(tiny))
    pol.model = None  # any failure inside the model call
    props = pol.decide_batch(snaps[:3])
    assert pol.stats["fallbacks"] == 3 and all(p.reason.startswith("fallback:rules") for p in props)


def test_lora_adapter_loads_and_bad_adapters_are_refused(tiny, snaps, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny),
                           LoraConfig(r=2, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    good = tmp_path / "adapter"
    model.save_pretrained(good, safe_serialization=True)
    (good / "tmsim_adapter.json").write_text(json.dumps({"base_model": str(tiny)}))
    pol = QwenPolicy(str(tiny), adapter=str(good))
    assert pol.decide(snaps[0]).action in snaps[0].offered
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(AdapterError, match="missing adapter_config.json"):
        QwenPolicy(str(tiny), adapter=str(empty))
    (empty / "adapter_config.json").write_text("{}")
    with pytest.raises(AdapterError, match="missing adapter_model.safetensors"):
        QwenPolicy(str(tiny), adapter=str(empty))
    (good / "tmsim_adapter.json").write_text(json.dumps({"base_model": "Qwen/Qwen3-0.6B"}))
    with pytest.raises(AdapterError, match="field 'base_model' is 'Qwen/Qwen3-0.6B'"):
        QwenPolicy(str(tiny), adapter=str(good))
    with pytest.raises(AdapterError, match="not found"):
        QwenPolicy(str(tiny), adapter=str(tmp_path / "nope"))


def test_dataset_split_and_a_short_recipe_end_to_end(tiny, small_library, tmp_path):
    lib = load_library(small_library)
    train, held = build_dataset(lib)
    assert train and held
    assert {e.seed % 2 for e in train} == {0} and {e.seed % 2 for e in held} == {1}
    recipe = Recipe(name="t", base_model=str(tiny), traces=str(small_library), eval_points=10,
                    base={"steps": 3, "batch": 4, "out": str(tmp_path / "base")},
                    lora={"steps": 3, "batch": 4, "r": 2, "out": str(tmp_path / "adapter")})
    report = run_recipe(recipe, tmp_path, log=None)
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    card = json.loads((tmp_path / "adapter" / "tmsim_adapter.json").read_text())
    assert card["data_sha256"] == report["data_sha256"] and "oracle_agreement_held_out" in card["metrics"]
    # the card names the library it was trained on and what training cost; the README is tmsim's, without local paths
    assert card["library_sha256"] == lib.digest() == report["library_sha256"]
    assert card["train_cost"]["steps"] == 3 and card["train_cost"]["examples_seen"] == 12 and card["train_losses"]
    readme = (tmp_path / "adapter" / "README.md").read_text()
    assert lib.digest()[:16] in readme and str(tmp_path) not in readme
    for k in ("agreement_prompted", "agreement_base", "agreement_lora"):
        assert 0 <= report[k]["accuracy"] <= 1 and report[k]["n"] == 10
