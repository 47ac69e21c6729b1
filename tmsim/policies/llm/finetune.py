"""Fine-tuning a Qwen manager on what the trace trees say was best.

The supervised set: at every recorded node of the training split (decision points whose tree records more than
one action there), the prompt is the rendered snapshot and the target is the action whose recorded subtree reached
the best final validation loss (the oracle's choice), optionally weighted by its advantage over doing nothing.
The split is by seed (``train_seeds``: even or odd; the others are held out) and optionally by task.

A recipe (``finetune/recipes/*.toml``) runs up to two stages:

1. ``[base]``: full-weight training of the base model on the decision corpus. A scratch model has no language
   skill, so LoRA alone on it has little to adapt; this stage gives it the task's vocabulary first.
2. ``[lora]``: LoRA adapters (peft) on the attention and MLP projections of the stage-1 model (or of the given
   base model when there is no stage 1), saved as safetensors with a card (``tmsim_adapter.json``: base model,
   data hash, split, metrics).

With a real checkpoint (``base_model = "Qwen/Qwen3-0.6B"`` or a local path) the same code runs, in bf16 on a GPU
when one is present; a real model would normally skip stage 1.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from ...core.config import load_toml_model
from .prompt import messages


class StageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tasks: list[str] = Field(default_factory=list)  # train this stage on these tasks only (empty: all)
    steps: int = Field(300, ge=1)
    lr: float = Field(2e-3, gt=0)
    batch: int = Field(16, ge=1)
    out: str


class LoraConfig(StageConfig):
    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj",
                                                                "gate_proj", "up_proj", "down_proj"])


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    base_model: str
    traces: str = "traces"
    train_seeds: str = "even"
    tasks: list[str] = Field(default_factory=list)
    eval_points: int = Field(600, ge=10)
    weight_by_advantage: bool = True
    seed: int = 0
    base: StageConfig | None = None
    lora: LoraConfig | None = None
    path: Path | None = None


def load_recipe(path: str | Path) -> Recipe:
    return load_toml_model(path, Recipe, "recipe")


@dataclass
class Example:
    snapshot: object
    target: str
    weight: float
    seed: int
    task: str


def build_dataset(library, train_seeds: str = "even", tasks: list[str] | None = None, weight_by_advantage: bool = True):
    """(train, held_out) examples from every recorded node with alternatives; split by seed parity."""
    from ...traces.index import TreeIndex
    from ..check import decision_points
    from ..oracle import OraclePolicy

    index = library if isinstance(library, TreeIndex) else TreeIndex(library)
    library = index.library
    oracle = OraclePolicy(index)
    parity = 0 if train_seeds == "even" else 1
    seed_of = dict(zip(library.runs["run_id"].to_pylist(), library.runs["seed"].to_pylist()))
    train, held = [], []
    for s in decision_points(index, tasks=tasks or None):
        vals = oracle.values(s.run_id, s.epoch)
        vals = {a: v for a, v in vals.items() if a in s.offered}
        if len(vals) < 2:
            continue
        best = min(vals, key=lambda a: (vals[a], a != "continue"))
        adv = math.log(vals["continue"] / vals[best]) if math.isfinite(vals.get("continue", math.inf)) and vals[best] > 0 else 1.0
        w = 0.5 + min(adv, 1.0) if weight_by_advantage else 1.0
        seed = seed_of[s.run_id]
        ex = Example(s, best, w, seed, s.task)
        (train if seed % 2 == parity else held).append(ex)
    return train, held


def data_hash(examples: list[Example]) -> str:
    h = hashlib.sha256()
    for e in examples:
        h.update(f"{e.snapshot.hash}:{e.target}:{e.weight:.6f}".encode())
    return h.hexdigest()


def _encode(tok, examples: list[Example], eos: int):
    rows = []
    for e in examples:
        prompt = tok.apply_chat_template(messages(e.snapshot), tokenize=False, add_generation_prompt=True, enable_thinking=False)
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        t = tok(e.target, add_special_tokens=False)["input_ids"] + [eos]
        rows.append((p, t, e.weight))
    return rows


def _train(model, rows, steps: int, lr: float, batch: int, seed: int, pad: int, device: str, log) -> list[float]:
    """Weighted next-token loss on the target tokens only (the prompt is context, not a target)."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / 20) * max(0.05, 1 - i / steps))
    rng = random.Random(seed)
    model.train()
    losses = []
    t0 = time.perf_counter()
    for step in range(steps):
        b = [rows[rng.randrange(len(rows))] for _ in range(batch)]
        width = max(len(p) + len(t) for p, t, _ in b)
        ids = torch.full((batch, width), pad, dtype=torch.long)
        labels = torch.full((batch, width), -100, dtype=torch.long)
        mask = torch.zeros((batch, width), dtype=torch.long)
        w = torch.tensor([x[2] for x in b], dtype=torch.float32)
        for i, (p, t, _) in enumerate(b):
            ids[i, : len(p) + len(t)] = torch.tensor(p + t)
            labels[i, len(p): len(p) + len(t)] = torch.tensor(t)
            mask[i, : len(p) + len(t)] = 1
        ids, labels, mask, w = ids.to(device), labels.to(device), mask.to(device), w.to(device)
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
        lp = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                               ignore_index=-100, reduction="none").view(batch, -1)
        per = lp.sum(1) / (labels[:, 1:] != -100).sum(1).clamp_min(1)
        loss = (per * w).sum() / w.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if log and (step + 1) % max(1, steps // 10) == 0:
            log(f"  step {step + 1}/{steps}  loss {sum(losses[-20:]) / len(losses[-20:]):.3f}  ({time.perf_counter() - t0:.0f} s)")
    model.eval()
    return losses


def agreement(policy, examples: list[Example]) -> dict:
    """Accuracy of ``policy``'s choices against the oracle's, and the confusion counts by action."""
    props = policy.decide_batch([e.snapshot for e in examples])
    conf: dict[str, Counter] = {}
    hits = 0
    for e, p in zip(examples, props):
        conf.setdefault(e.target, Counter())[p.action] += 1
        hits += p.action == e.target
    by_action = {a: {"n": sum(c.values()), "recall": c[a] / sum(c.values())} for a, c in conf.items()}
    by_task: dict[str, list[bool]] = {}
    for e, p in zip(examples, props):
        by_task.setdefault(e.task, []).append(p.action == e.target)
    return {"n": len(examples), "accuracy": hits / len(examples) if examples else 0.0,
            "by_task": {t: sum(v) / len(v) for t, v in sorted(by_task.items())},
            "majority_baseline": max(Counter(e.target for e in examples).values()) / len(examples) if examples else 0.0,
            "by_action": by_action, "confusion": {a: dict(c) for a, c in conf.items()}}


def run_recipe(recipe: Recipe, repo: Path, log=print) -> dict:
    """Run the recipe's stages; returns a report with data sizes, losses and held-out agreement."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ...traces.format import load_library
    from .policy import QwenPolicy

    log = log or (lambda *_: None)
    torch.manual_seed(recipe.seed)
    t_start = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    base_path = _path(recipe.base_model, repo)
    lib = load_library(_path(recipe.traces, repo))
    train, held = build_dataset(lib, recipe.train_seeds, recipe.tasks, recipe.weight_by_advantage)
    if not train:
        raise ValueError(f"{recipe.path}: the training split holds no recorded node with alternatives")
    rng = random.Random(recipe.seed)
    held_eval = rng.sample(held, min(recipe.eval_points, len(held)))
    log(f"decision corpus: {len(train)} training nodes ({recipe.train_seeds} seeds), {len(held)} held out; "
        f"targets {dict(Counter(e.target for e in train).most_common())}")
    report = {"recipe": recipe.name, "base_model": str(recipe.base_model), "train_examples": len(train),
              "held_out_examples": len(held), "eval_examples": len(held_eval), "data_sha256": data_hash(train),
              "split": f"train on {recipe.train_seeds} seeds, evaluate on the others", "device": device}
    tok = AutoTokenizer.from_pretrained(base_path)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    def stage_rows(stage: StageConfig):
        ex = [e for e in train if not stage.tasks or e.task in stage.tasks]
        if not ex:
            raise ValueError(f"{recipe.path}: no training nodes for tasks {stage.tasks}")
        return _encode(tok, ex, eos)

    report["agreement_prompted"] = agreement(QwenPolicy(str(base_path), device=device), held_eval)
    log(f"prompted base model: oracle agreement {report['agreement_prompted']['accuracy']:.3f} on {len(held_eval)} held-out nodes")
    model_path = base_path
    if recipe.base:
        model = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype).to(device)
        log(f"stage 1: full-weight training, {recipe.base.steps} steps")
        report["base_tasks"] = recipe.base.tasks or "all"
        report["base_losses"] = _train(model, stage_rows(recipe.base), recipe.base.steps, recipe.base.lr, recipe.base.batch, recipe.seed,
                                       tok.pad_token_id, device, log)[-20:]
        out = _path(recipe.base.out, repo, output=True)
        model.save_pretrained(out, safe_serialization=True)
        tok.save_pretrained(out)
        (out / "MODEL_CARD.md").write_text(
            f"# {out.name}\n\n`{recipe.base_model}` trained with full weights on the tmsim decision corpus "
            f"(recipe `{recipe.name}`, {len(train)} nodes, data {report['data_sha256'][:12]}). Built from a scratch "
            "Qwen3-architecture model: not Qwen3-0.6B.\n")
        model_path = out
        report["agreement_base"] = agreement(QwenPolicy(str(out), device=device), held_eval)
        log(f"stage-1 model: oracle agreement {report['agreement_base']['accuracy']:.3f}")
    if recipe.lora:
        from peft import LoraConfig as PeftLora
        from peft import get_peft_model

        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(device)
        cfg = PeftLora(r=recipe.lora.r, lora_alpha=recipe.lora.alpha, lora_dropout=recipe.lora.dropout,
                       target_modules=recipe.lora.target_modules, task_type="CAUSAL_LM")
        model = get_peft_model(model, cfg)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        log(f"stage 2: LoRA r={recipe.lora.r} on {recipe.lora.target_modules}, {trainable:,} trainable parameters, {recipe.lora.steps} steps")
        report["lora_tasks"] = recipe.lora.tasks or "all"
        report["lora_losses"] = _train(model, stage_rows(recipe.lora), recipe.lora.steps, recipe.lora.lr, recipe.lora.batch, recipe.seed + 1,
                                       tok.pad_token_id, device, log)[-20:]
        out = _path(recipe.lora.out, repo, output=True)
        model.save_pretrained(out, safe_serialization=True)
        pol = QwenPolicy(str(model_path), adapter=str(out), device=device)
        report["agreement_lora"] = agreement(pol, held_eval)
        log(f"LoRA adapter: oracle agreement {report['agreement_lora']['accuracy']:.3f}")
        card = {"base_model": str(Path(recipe.base.out).as_posix()) if recipe.base else str(recipe.base_model),
                "recipe": recipe.name, "data_sha256": report["data_sha256"], "split": report["split"],
                "train_examples": len(train), "lora": recipe.lora.model_dump(exclude={"out"}),
                "metrics": {"oracle_agreement_held_out": report["agreement_lora"]["accuracy"],
                            "majority_baseline": report["agreement_lora"]["majority_baseline"]},
                "model_note": "base is a scratch Qwen3-architecture model trained by tmsim, not Qwen3-0.6B"}
        (out / "tmsim_adapter.json").write_text(json.dumps(card, indent=2) + "\n")
    report["seconds"] = round(time.perf_counter() - t_start, 1)
    return report


def _path(value: str, repo: Path, output: bool = False) -> Path | str:
    """A recipe path: absolute as is; outputs and existing repo files relative to the repository; an existing
    path relative to the working directory; anything else is a hub id (``Qwen/Qwen3-0.6B``)."""
    p = Path(value)
    if p.is_absolute():
        return p
    if output or (repo / p).exists():
        return repo / p
    if p.exists():
        return p
    return value
