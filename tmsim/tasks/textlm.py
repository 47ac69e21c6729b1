"""``text-lm``: a small character-level causal transformer on pinned English text (stdlib docstrings).

The corpus ships in ``tmsim/data/stdlib_docstrings.txt.gz`` (see ``scripts/build_corpus.py``): 120,000 characters
of printable ASCII. The last 20,000 characters are validation and test (10,000 each); the training split is the
first ``n_train`` characters. A small training split and a roomy model reproduce the overfitting setting in which
LLM training managers were shown to help; an epoch is a fixed number of steps of random windows.
"""
from __future__ import annotations

import gzip
from importlib import resources

import torch
import torch.nn.functional as F
from torch import nn

from .base import Hyperparams, Scenario, TorchTask, adam

VOCAB = ["\n"] + [chr(i) for i in range(32, 127)]


def load_corpus() -> torch.Tensor:
    raw = resources.files("tmsim.data").joinpath("stdlib_docstrings.txt.gz").read_bytes()
    text = gzip.decompress(raw).decode("ascii")
    index = {c: i for i, c in enumerate(VOCAB)}
    return torch.tensor([index[c] for c in text], dtype=torch.long)


class Block(nn.Module):
    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.drop = nn.Dropout(dropout)
        self.heads = heads
        # Read at forward time, like the attention modules of Qwen-style models.
        self.attention_dropout = dropout

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        p = self.attention_dropout if self.training else 0.0
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(b, t, d)))
        return x + self.drop(self.mlp(self.ln2(x)))


class CharTransformer(nn.Module):
    def __init__(self, vocab: int, d: int, layers: int, heads: int, ctx: int, dropout: float):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(ctx, d)
        self.blocks = nn.ModuleList(Block(d, heads, dropout) for _ in range(layers))
        self.ln, self.head = nn.LayerNorm(d), nn.Linear(d, vocab)

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.ln(x))


class TextLM(TorchTask):
    name = "text-lm"
    losses = ("cross_entropy",)
    dataset_descriptor = "stdlib docstrings (pinned, 120k chars), char-level"

    SCENARIOS = {
        s.name: s
        for s in [
            Scenario("overfit", Hyperparams(lr=4e-3), 16, 4,
                     "roomy model on 5k characters: validation loss turns up after a few epochs",
                     {"d": 96, "layers": 2, "heads": 4, "ctx": 48, "n_train": 5_000, "batch_size": 16, "steps_per_epoch": 20,
                      "betas": (0.9, 0.999)},
                     {"lr": ("log", 3e-3, 6e-3), "d": ("choice", [80, 96, 128]), "n_train": ("int", 4_000, 6_500),
                      "betas": ("choice", [(0.9, 0.999), (0.9, 0.99), (0.85, 0.98)])}),
            Scenario("diverge", Hyperparams(lr=0.08), 16, 4,
                     "Adam LR ten times too high without warm-up: loss spikes and may never recover",
                     {"d": 64, "layers": 2, "heads": 4, "ctx": 48, "n_train": 80_000, "batch_size": 16, "steps_per_epoch": 20,
                      "betas": (0.9, 0.999)},
                     {"lr": ("log", 0.05, 0.12), "d": ("choice", [48, 64, 80]), "n_train": ("int", 60_000, 90_000),
                      "betas": ("choice", [(0.9, 0.999), (0.9, 0.99)])}),
            Scenario("plateau", Hyperparams(lr=1e-4), 16, 4,
                     "LR far too low: the model is stuck near unigram statistics",
                     {"d": 64, "layers": 2, "heads": 4, "ctx": 48, "n_train": 80_000, "batch_size": 16, "steps_per_epoch": 20,
                      "betas": (0.9, 0.999)},
                     {"lr": ("log", 6e-5, 1.6e-4), "d": ("choice", [48, 64, 80]), "n_train": ("int", 60_000, 90_000),
                      "betas": ("choice", [(0.9, 0.999), (0.9, 0.99)])}),
            Scenario("healthy", Hyperparams(lr=2e-3, dropout=0.1), 16, 4,
                     "a sensible recipe on 80k characters: leave it alone",
                     {"d": 64, "layers": 2, "heads": 4, "ctx": 48, "n_train": 80_000, "batch_size": 16, "steps_per_epoch": 20,
                      "betas": (0.9, 0.999)},
                     {"lr": ("log", 1.4e-3, 3e-3), "dropout": ("uniform", 0.05, 0.15), "d": ("choice", [48, 64, 80]),
                      "n_train": ("int", 60_000, 90_000), "betas": ("choice", [(0.9, 0.999), (0.9, 0.99)])}),
        ]
    }

    def make_optimizer(self, model, scenario, hp):
        return adam(model, scenario, hp, decoupled=True)

    def data(self, scenario: Scenario):
        ids = load_corpus()
        n = scenario.settings["n_train"]
        # Each split is one character sequence; windows and their next-character targets are cut from it
        # (``batch`` for training, ``eval_subset`` for evaluation), so the target slot stays empty here.
        return {"train": (ids[:n], None), "val": (ids[-20_000:-10_000], None), "test": (ids[-10_000:], None)}

    def make_model(self, scenario: Scenario, hp: Hyperparams) -> nn.Module:
        s = scenario.settings
        return CharTransformer(len(VOCAB), s["d"], s["layers"], s["heads"], s["ctx"], hp.dropout)

    def apply(self, state, hp):
        super().apply(state, hp)
        for m in state.model.modules():
            if hasattr(m, "attention_dropout"):
                m.attention_dropout = hp.dropout

    def epoch_order(self, n, bs, steps, gen):
        """``steps`` batches of ``bs`` random window starts (an epoch is a fixed number of steps here)."""
        return [torch.randint(0, n, (bs,), generator=gen) for _ in range(steps)]

    def batch(self, x, y, idx, state):
        ctx = state.scenario.settings["ctx"]
        return self._windows(x, idx % (len(x) - ctx - 1), ctx)

    def _windows(self, ids: torch.Tensor, starts: torch.Tensor, ctx: int):
        offs = starts[:, None] + torch.arange(ctx + 1)[None, :]
        w = ids[offs]
        return w[:, :-1], w[:, 1:]

    def batch_loss(self, model, xb, yb, hp):
        logits = model(xb)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), yb.reshape(-1))

    def eval_subset(self, x, y, split, scenario):
        # Fixed, non-overlapping windows over (at most) the first 4,000 characters of the split.
        ctx = scenario.settings["ctx"]
        ids = x[:4_000]
        starts = torch.arange(0, len(ids) - ctx - 1, ctx)
        return self._windows(ids, starts, ctx)

    def evaluate_split(self, model, x, y, hp):
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        acc = (logits.argmax(-1) == y).float().mean()
        return float(loss), float(acc)

