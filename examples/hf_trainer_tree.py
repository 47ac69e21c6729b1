"""A Trainer factory for ``tmsim record --trainer``: trace trees of your own Hugging Face ``Trainer``.

Run from the repository root::

    tmsim record --trainer examples/hf_trainer_tree.py:make_trainer --seeds 0 --depth 1 --out traces-mine --dry-run
    tmsim record --trainer examples/hf_trainer_tree.py:make_trainer --seeds 0 --depth 1 --out traces-mine
    tmsim query "select run_id, epoch, step, lr, val_loss from epochs order by run_id, epoch" --traces traces-mine

``make_trainer`` returns a configured ``Trainer``: here a causal-LM fine-tune of the offline scratch
Qwen3-architecture model (``models/qwen3-tiny-scratch``, built by ``tmsim model init``; not Qwen3-0.6B) on a slice
of the pinned stdlib-docstring corpus, on the CPU, evaluating every 4 optimizer steps: the evaluations are the
decision points. tmsim calls it once per run of the tree with ``output_dir`` (where the Trainer writes its
checkpoints) and ``seed``; the rest of the configuration is yours. Use the same factory for the live hook
(``TMSimCallback``) to steer the run you recorded.
"""
from __future__ import annotations

import gzip
import sys
from importlib import resources
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # loaded by file path: its sibling example is importable
from live_hf_trainer import Chunks  # noqa: E402 -- fixed-width token chunks, labels = inputs


def make_trainer(output_dir: str, seed: int = 0, max_steps: int = 16, eval_steps: int = 4):
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

    model_dir = str(REPO / "models" / "qwen3-tiny-scratch")
    tok = AutoTokenizer.from_pretrained(model_dir)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    text = gzip.decompress(resources.files("tmsim.data").joinpath("stdlib_docstrings.txt.gz").read_bytes()).decode()
    ids = tok(text[:6000], add_special_tokens=False)["input_ids"]
    split = int(len(ids) * 0.8)
    args = TrainingArguments(output_dir=output_dir, max_steps=max_steps, per_device_train_batch_size=4,
                             per_device_eval_batch_size=16, learning_rate=5e-3, weight_decay=0.01,
                             lr_scheduler_type="linear", eval_strategy="steps", eval_steps=eval_steps,
                             logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, seed=seed,
                             disable_tqdm=True)
    return Trainer(model=model, args=args, train_dataset=Chunks(ids[:split], 32), eval_dataset=Chunks(ids[split:], 32))
