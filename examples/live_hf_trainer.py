"""A Hugging Face ``Trainer`` steered by a promoted policy through ``TMSimCallback``.

Run from the repository root:  python examples/live_hf_trainer.py [--spec policies/rules.toml] [--record traces-live]

It fine-tunes the offline qwen3-tiny-scratch model (a Qwen3-architecture model built by `tmsim model init`, not
Qwen3-0.6B) as a causal LM on a slice of the pinned stdlib-docstring corpus, on the CPU, evaluating every epoch.
The Trainer's default linear schedule is a LambdaLR: the hook scales its base LRs so an LR change sticks.
"""
from __future__ import annotations

import argparse
import gzip
import tempfile
from importlib import resources
from pathlib import Path

import torch

from tmsim.live import LiveManager, TMSimCallback

REPO = Path(__file__).resolve().parent.parent


class Chunks(torch.utils.data.Dataset):
    def __init__(self, ids: list[int], width: int):
        self.rows = [ids[i:i + width] for i in range(0, len(ids) - width, width)]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        t = torch.tensor(self.rows[i])
        return {"input_ids": t, "labels": t.clone(), "attention_mask": torch.ones_like(t)}


#: This run is no task of the bundled library, so no promoted policy's scope covers it: said, and recorded.
OUT_OF_SCOPE = "example: a causal-LM fine-tune of a scratch Qwen3-architecture model, no recorded task"


def main(spec: str = "policies/rules.toml", record: str | None = None, promotions: str | None = None,
         epochs: int = 4, lr: float = 5e-3, mode: str = "sync", model_dir: str | None = None,
         out_of_scope: str | None = OUT_OF_SCOPE):
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

    model_dir = model_dir or str(REPO / "models" / "qwen3-tiny-scratch")
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    text = gzip.decompress(resources.files("tmsim.data").joinpath("stdlib_docstrings.txt.gz").read_bytes()).decode()
    ids = tok(text[:12000], add_special_tokens=False)["input_ids"]
    split = int(len(ids) * 0.8)
    train, val = Chunks(ids[:split], 64), Chunks(ids[split:], 64)
    # the manager checks the spec's promotion record, then builds the policy from the spec itself
    # the LR and weight decay come from the TrainingArguments and then the Trainer's optimizer: nothing to mirror
    mgr = LiveManager.from_spec(spec, promotions=promotions, max_epochs=epochs, decide_every=1, mode=mode,
                                task="example-hf-lm", out_of_scope=out_of_scope, record_dir=record)
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, num_train_epochs=epochs, per_device_train_batch_size=8,
                                 per_device_eval_batch_size=16, learning_rate=lr, eval_strategy="epoch",
                                 logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, seed=0,
                                 disable_tqdm=True)
        trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=val,
                          callbacks=[TMSimCallback(mgr)])
        trainer.evaluate()  # epoch 0: the callback records the starting point, as recorded traces have
        trainer.train()
    return mgr, trainer


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default="policies/rules.toml")
    ap.add_argument("--record", default=None)
    a = ap.parse_args()
    m, t = main(a.spec, a.record)
    print(f"{m.run_id}: decisions", [(r["epoch"], r["action"]) for r in m.decision_rows], "|", m.promotion)
