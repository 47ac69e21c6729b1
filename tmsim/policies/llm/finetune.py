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
   the trace library's hash, data hash, split, training cost, metrics). A leaderboard refuses an adapter whose card
   names another library (``adapter_library_problem``).

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
    #: train with transformers' ``Trainer`` (weighted loss on the target tokens) instead of the short loop here
    trainer: bool = False
    #: put adapters only on the last N transformer layers (0: all); backward then stops there, which saves CPU time
    last_layers: int = Field(0, ge=0)
    #: at most this many training nodes (a seeded sample; 0: all)
    max_examples: int = Field(0, ge=0)
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
    #: tasks held out whole: none of their nodes is trained on, whatever the seed
    holdout_tasks: list[str] = Field(default_factory=list)
    #: the prompt style (``tmsim.policies.llm.prompt``): "terse" for the scratch model, "manager" for real models
    prompt: str = "terse"
    #: how the policies that measure agreement score candidates ("mean", "sum", "calibrate")
    normalize: str = "mean"
    eval_points: int = Field(600, ge=4)
    #: also measure the base model's agreement with the recipe's prompt before training
    eval_prompted: bool = True
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


def _seed_split(train_seeds):
    """The training seeds as a predicate: "even", "odd", or an explicit list (a validation fold of the even seeds)."""
    if train_seeds in ("even", "odd"):
        parity = 0 if train_seeds == "even" else 1
        return lambda seed: seed % 2 == parity
    if isinstance(train_seeds, (list, tuple, set, frozenset)) and train_seeds and all(
            isinstance(x, int) and not isinstance(x, bool) for x in train_seeds):
        chosen = frozenset(train_seeds)
        return lambda seed: seed in chosen
    raise TypeError(f"train_seeds must be 'even', 'odd' or a non-empty list of seeds, not {train_seeds!r}")


def build_dataset(library, train_seeds: str = "even", tasks: list[str] | None = None, weight_by_advantage: bool = True,
                  holdout_tasks: list[str] | None = None):
    """(train, held_out) examples from every recorded node with alternatives; split by seed (``train_seeds``: "even",
    "odd" or a list of seeds), and every node of a task in ``holdout_tasks`` held out whatever its seed
    (tmsim.policies.gbm uses the same labels)."""
    from ...traces.index import TreeIndex
    from ..check import decision_points
    from ..oracle import OraclePolicy

    index = library if isinstance(library, TreeIndex) else TreeIndex(library)
    library = index.library
    oracle = OraclePolicy(index)
    seeds = _seed_split(train_seeds)
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
        (train if seeds(seed) and s.task not in (holdout_tasks or ()) else held).append(ex)
    return train, held


def data_hash(examples: list[Example]) -> str:
    h = hashlib.sha256()
    for e in examples:
        h.update(f"{e.snapshot.hash}:{e.target}:{e.weight:.6f}".encode())
    return h.hexdigest()


def _encode(tok, examples: list[Example], eos: int, style: str = "terse"):
    rows = []
    for e in examples:
        prompt = tok.apply_chat_template(messages(e.snapshot, style), tokenize=False, add_generation_prompt=True,
                                         enable_thinking=False)
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

    from ...models import display_name, resolve_model
    from ...traces.format import load_library
    from .policy import LLMPolicy

    log = log or (lambda *_: None)
    torch.manual_seed(recipe.seed)
    t_start = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    base_path = _path(recipe.base_model, repo)
    base_load = resolve_model(str(base_path))
    lib = load_library(_path(recipe.traces, repo))
    train, held = build_dataset(lib, recipe.train_seeds, recipe.tasks, recipe.weight_by_advantage, recipe.holdout_tasks)
    if not train:
        raise ValueError(f"{recipe.path}: the training split holds no recorded node with alternatives")
    rng = random.Random(recipe.seed)
    held_eval = rng.sample(held, min(recipe.eval_points, len(held)))
    log(f"decision corpus: {len(train)} training nodes ({recipe.train_seeds} seeds"
        f"{', without ' + ', '.join(recipe.holdout_tasks) if recipe.holdout_tasks else ''}), {len(held)} held out; "
        f"targets {dict(Counter(e.target for e in train).most_common())}")
    split = f"train on {recipe.train_seeds} seeds" + (f" of every task but {', '.join(recipe.holdout_tasks)}"
                                                     if recipe.holdout_tasks else "") + "; evaluate on the others"
    report = {"recipe": recipe.name, "base_model": str(recipe.base_model), "model": display_name(str(recipe.base_model)),
              "train_examples": len(train), "held_out_examples": len(held), "eval_examples": len(held_eval),
              "eval_tasks": dict(Counter(e.task for e in held_eval)), "data_sha256": data_hash(train), "split": split,
              "holdout_tasks": recipe.holdout_tasks, "prompt": recipe.prompt, "device": device,
              "library_sha256": lib.digest()}
    tok = AutoTokenizer.from_pretrained(base_load)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    if tok.pad_token_id is None:
        tok.pad_token = "<|im_end|>"

    def policy(model, adapter=None):
        return LLMPolicy(str(model), adapter=adapter, device=device, prompt=recipe.prompt, normalize=recipe.normalize,
                         memo=False)

    def stage_rows(stage: StageConfig, limit: int = 0):
        ex = [e for e in train if not stage.tasks or e.task in stage.tasks]
        if not ex:
            raise ValueError(f"{recipe.path}: no training nodes for tasks {stage.tasks}")
        if limit and len(ex) > limit:
            ex = random.Random(recipe.seed + 2).sample(ex, limit)
        return _encode(tok, ex, eos, recipe.prompt)

    t0 = time.perf_counter()
    if recipe.eval_prompted:
        report["agreement_prompted"] = agreement(policy(base_path), held_eval)
        log(f"prompted base model: oracle agreement {report['agreement_prompted']['accuracy']:.3f} on {len(held_eval)} "
            f"held-out nodes ({time.perf_counter() - t0:.0f} s)")
    model_path = base_path
    if recipe.base:
        model = AutoModelForCausalLM.from_pretrained(base_load, dtype=dtype).to(device)
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
        report["agreement_base"] = agreement(policy(out), held_eval)
        log(f"stage-1 model: oracle agreement {report['agreement_base']['accuracy']:.3f}")
    if recipe.lora:
        from peft import LoraConfig as PeftLora
        from peft import get_peft_model

        lo = recipe.lora
        model = AutoModelForCausalLM.from_pretrained(resolve_model(str(model_path)), dtype=dtype).to(device)
        n_layers = getattr(model.config, "num_hidden_layers", 0)
        layers = list(range(n_layers - lo.last_layers, n_layers)) if lo.last_layers and n_layers else None
        cfg = PeftLora(r=lo.r, lora_alpha=lo.alpha, lora_dropout=lo.dropout, target_modules=lo.target_modules,
                       layers_to_transform=layers, task_type="CAUSAL_LM")
        model = get_peft_model(model, cfg)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        rows = stage_rows(lo, lo.max_examples)
        report["lora_train_rows"] = len(rows)
        report["lora_mean_tokens"] = round(sum(len(p) + len(t) for p, t, _ in rows) / len(rows), 1)
        log(f"stage 2: LoRA r={lo.r} on {lo.target_modules}" + (f" of the last {lo.last_layers} layers" if layers else "")
            + f", {trainable:,} trainable parameters, {lo.steps} steps of {lo.batch} over {len(rows)} nodes "
            f"(mean {report['lora_mean_tokens']} tokens)" + (" with transformers.Trainer" if lo.trainer else ""))
        report["lora_tasks"] = lo.tasks or "all"
        t0 = time.perf_counter()
        train_fn = _train_with_trainer if lo.trainer else _train
        report["lora_losses"] = train_fn(model, rows, lo.steps, lo.lr, lo.batch, recipe.seed + 1, tok.pad_token_id,
                                         device, log)[-20:]
        report["lora_seconds"] = round(time.perf_counter() - t0, 1)
        out = _path(lo.out, repo, output=True)
        model.save_pretrained(out, safe_serialization=True)
        cfg_file = out / "adapter_config.json"  # name the base as the recipe does, not by this machine's cache path
        peft_cfg = json.loads(cfg_file.read_text())
        peft_cfg["base_model_name_or_path"] = str(recipe.base_model)
        cfg_file.write_text(json.dumps(peft_cfg, indent=2, sort_keys=True) + "\n")
        t0 = time.perf_counter()
        report["agreement_lora"] = agreement(policy(model_path, str(out)), held_eval)
        log(f"LoRA adapter: oracle agreement {report['agreement_lora']['accuracy']:.3f} ({time.perf_counter() - t0:.0f} s)")
        base_name = (str(Path(recipe.base.out).as_posix()) if recipe.base else str(recipe.base_model))
        card = {"base_model": base_name, "model": display_name(str(recipe.base_model)), "recipe": recipe.name,
                "data_sha256": report["data_sha256"], "split": report["split"], "holdout_tasks": recipe.holdout_tasks,
                "train_seeds": recipe.train_seeds, "prompt": recipe.prompt, "train_examples": len(train),
                "trained_rows": len(rows), "lora": lo.model_dump(exclude={"out"}),
                "library_sha256": report["library_sha256"],
                "train_cost": {"steps": lo.steps, "examples_seen": lo.steps * lo.batch, "rows": len(rows),
                               "epochs_over_rows": round(lo.steps * lo.batch / len(rows), 3),
                               "seconds": report["lora_seconds"], "device": device,
                               "torch_threads": torch.get_num_threads()},
                "train_losses": report["lora_losses"],
                "metrics": {"oracle_agreement_held_out": report["agreement_lora"]["accuracy"],
                            "majority_baseline": report["agreement_lora"]["majority_baseline"],
                            "eval_examples": len(held_eval)}}
        base_sha = _base_hash(model_path)
        if base_sha:
            card["base_model_sha256"] = base_sha
        if "qwen3-tiny" in base_name or "qwen3-tiny" in str(recipe.base_model):
            card["model_note"] = "base is a scratch Qwen3-architecture model trained by tmsim, not Qwen3-0.6B"
        (out / "tmsim_adapter.json").write_text(json.dumps(card, indent=2) + "\n")
        # peft's save_pretrained writes a hub card naming this machine's paths: the adapter's README is tmsim's own
        (out / "README.md").write_text(adapter_readme(out.name, card))
    report["seconds"] = round(time.perf_counter() - t_start, 1)
    return report


def adapter_readme(name: str, card: dict) -> str:
    """The README of an adapter directory, from its card (``tmsim_adapter.json``)."""
    tasks = card.get("holdout_tasks") or []
    split = f"{card.get('train_seeds', 'even')} seeds" + (f", every task but {', '.join(tasks)}" if tasks else "")
    return (f"# {name}\n\nA peft LoRA adapter for {card.get('model', card.get('base_model'))} (as converted by "
            f"`tmsim model fetch`; the base weights' SHA-256 is in `tmsim_adapter.json`), trained by `tmsim finetune` "
            f"(recipe `{card.get('recipe')}`) on the oracle's choices at recorded nodes of the trace library "
            f"{str(card.get('library_sha256', 'unknown'))[:16]}: {split}. The card `tmsim_adapter.json` holds the "
            "library and data hashes, the split, the LoRA settings, the training cost and losses, and the held-out "
            "agreement; a leaderboard on another library refuses the adapter. Adapters load from safetensors only; the "
            "base model's license is beside its weights (LICENSE, MODEL_CARD.md).\n")


def adapter_library_problem(spec, library_hash: str) -> str | None:
    """Why the LoRA adapter a spec names must not be scored on the library with SHA-256 ``library_hash`` (None when
    it may): its card (``tmsim_adapter.json``, written by ``tmsim finetune``) records the library it was trained on
    as ``library_sha256``, and an adapter trained on another library (or before cards recorded one) is stale: its
    labels and its split are not this library's, so its row would not compare like with like."""
    adapter = (spec.settings or {}).get("adapter")
    if not isinstance(adapter, str) or not adapter:
        return None
    path = spec.resolve_path(adapter) or Path(adapter)
    card = Path(path) / "tmsim_adapter.json"
    where = spec.path or spec.name
    refit = "refit it with `tmsim finetune --recipe RECIPE` on this library (`tmsim leaderboard --allow-stale-adapters` scores it anyway)"
    try:
        meta = json.loads(card.read_text())
    except (OSError, ValueError):
        return f"{where}: adapter {path} has no readable tmsim_adapter.json, so the library it was trained on is unknown; {refit}"
    trained = meta.get("library_sha256") if isinstance(meta, dict) else None
    if not isinstance(trained, str) or not trained:
        return (f"{where}: adapter {path} records no library (field 'library_sha256' of tmsim_adapter.json); this "
                f"library is {library_hash[:16]}; {refit}")
    if trained != library_hash:
        return (f"{where}: adapter {path} was trained on library {trained[:16]} (field 'library_sha256' of "
                f"tmsim_adapter.json), but this library is {library_hash[:16]}; {refit}")
    return None


def _base_hash(model) -> str | None:
    """SHA-256 of the base checkpoint's weights (from its ``tmsim_model.json`` when tmsim converted it)."""
    from ...models import resolve_model

    try:
        d = Path(resolve_model(str(model)))
    except FileNotFoundError:
        return None
    card = d / "tmsim_model.json"
    if card.is_file():
        return json.loads(card.read_text()).get("safetensors_sha256")
    f = d / "model.safetensors"
    if f.is_file():
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()
    return None


def _train_with_trainer(model, rows, steps: int, lr: float, batch: int, seed: int, pad: int, device: str, log) -> list[float]:
    """The same weighted target-token loss as ``_train``, run by transformers' ``Trainer`` (AdamW, warm-up then
    linear decay, gradient clipping at 1.0; no checkpoints written)."""
    import tempfile

    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class Rows(torch.utils.data.Dataset):
        def __len__(self):
            return len(rows)

        def __getitem__(self, i):
            p, t, w = rows[i]
            return {"input_ids": p + t, "labels": [-100] * len(p) + t, "weight": w}

    def collate(items):
        width = max(len(x["input_ids"]) for x in items)
        ids = torch.full((len(items), width), pad, dtype=torch.long)
        labels = torch.full((len(items), width), -100, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for i, x in enumerate(items):
            n = len(x["input_ids"])
            ids[i, :n] = torch.tensor(x["input_ids"])
            labels[i, :n] = torch.tensor(x["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask,
                "weight": torch.tensor([x["weight"] for x in items], dtype=torch.float32)}

    class WeightedTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            w = inputs.pop("weight")
            labels = inputs.pop("labels")
            out = model(**inputs)
            logits = out.logits.float()
            lp = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                   labels[:, 1:].reshape(-1), ignore_index=-100,
                                                   reduction="none").view(labels.shape[0], -1)
            per = lp.sum(1) / (labels[:, 1:] != -100).sum(1).clamp_min(1)
            loss = (per * w).sum() / w.sum()
            return (loss, out) if return_outputs else loss

    losses: list[float] = []
    t0 = time.perf_counter()

    class Log(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))
                if log:
                    log(f"  step {state.global_step}/{steps}  loss {logs['loss']:.3f}  ({time.perf_counter() - t0:.0f} s)")

    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, max_steps=steps, per_device_train_batch_size=batch, learning_rate=lr,
                                 lr_scheduler_type="linear", warmup_steps=min(10, max(steps // 10, 1)),
                                 weight_decay=0.0, max_grad_norm=1.0, logging_steps=max(1, steps // 10),
                                 save_strategy="no", report_to=[], seed=seed, data_seed=seed,
                                 remove_unused_columns=False, dataloader_num_workers=0, disable_tqdm=True,
                                 use_cpu=device == "cpu")
        trainer = WeightedTrainer(model=model, args=args, train_dataset=Rows(), data_collator=collate,
                                  callbacks=[Log()])
        trainer.train()
    model.eval()
    return losses


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
