"""The offline Qwen3-architecture model: built here, deterministically, because no weights can be downloaded.

``init_model(out)`` trains a byte-level BPE tokenizer (the ``tokenizers`` library) on the prompt corpus (the
system prompt, the action schema, and snapshots rendered from the bundled trace library) and initialises a small
``Qwen3ForCausalLM`` from ``Qwen3Config`` with a fixed seed. It is saved like any Hugging Face checkpoint
(``config.json``, ``model.safetensors``, tokenizer files with a Qwen3-style chat template), so the same code path
loads it and a real checkpoint such as ``Qwen/Qwen3-0.6B``.

This model is called ``qwen3-tiny-scratch`` everywhere: it has the Qwen3 architecture but none of Qwen3's
training. Numbers measured with it say nothing about Qwen3-0.6B.
"""
from __future__ import annotations

import json
from pathlib import Path

MODEL_NAME = "qwen3-tiny-scratch"
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]

#: A ChatML template with Qwen3's switch: ``enable_thinking=False`` opens the answer with an empty think block.
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}{{ '<think>\\n\\n</think>\\n\\n' }}{% endif %}"
    "{% endif %}"
)


def prompt_corpus(traces: str | Path, limit: int = 4000) -> list[str]:
    """Texts the tokenizer is trained on: system prompt, schema, and rendered snapshots (a fixed, spread sample)."""
    from ..check import decision_points
    from ...traces.format import load_library
    from .prompt import system_prompt

    snaps = decision_points(load_library(traces))
    step = max(1, len(snaps) // limit)
    texts = [system_prompt(s.offered, style="terse") for s in snaps[::step][:50]]
    texts += [s.to_text() for s in snaps[::step][:limit]]
    return texts


def init_model(out: str | Path, traces: str | Path, vocab_size: int = 1024, hidden: int = 128, layers: int = 2,
               heads: int = 4, kv_heads: int = 2, seed: int = 0) -> Path:
    """Build the tokenizer and a randomly initialised Qwen3 model in ``out`` (deterministic for a seed)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(prompt_corpus(traces), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token=None, unk_token=None)
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    torch.manual_seed(seed)
    cfg = Qwen3Config(
        vocab_size=len(fast), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=hidden // heads,
        max_position_embeddings=2048, tie_word_embeddings=True,
        eos_token_id=fast.convert_tokens_to_ids("<|im_end|>"), pad_token_id=fast.pad_token_id,
    )
    model = Qwen3ForCausalLM(cfg)
    model.save_pretrained(out, safe_serialization=True)
    (out / "MODEL_CARD.md").write_text(
        f"# {MODEL_NAME}\n\nA Qwen3-architecture causal LM built offline by `tmsim model init` "
        f"({sum(p.numel() for p in model.parameters()):,} parameters, {layers} layers, hidden {hidden}, "
        f"vocabulary {len(fast)} byte-level BPE tokens trained on tmsim prompts).\n"
        "It has the architecture of Qwen3 and none of its training: results measured with it are not results of "
        "Qwen3-0.6B or any released Qwen model.\n")
    (out / "tmsim_model.json").write_text(json.dumps({"name": MODEL_NAME, "seed": seed, "vocab_size": vocab_size,
                                                      "hidden": hidden, "layers": layers}, indent=2) + "\n")
    return out
