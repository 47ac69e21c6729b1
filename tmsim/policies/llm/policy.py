"""The Qwen policy: a causal LM reads the snapshot and picks one of the allowed actions.

``QwenPolicy(model=...)`` loads any local path or hub id with ``AutoTokenizer``/``AutoModelForCausalLM`` (a real
``Qwen/Qwen3-0.6B`` where weights can be had; the offline ``qwen3-tiny-scratch`` here), optionally a LoRA adapter
with peft, and renders the model's chat template with thinking disabled. Output is constrained to the allowed
actions in one of two ways:

- ``method="score"`` (default): every allowed action string is scored by its log-likelihood after the prompt.
  One snapshot: the prompt runs once and its KV cache is shared by all candidates in one batched pass. Many
  snapshots (``decide_batch``): all prompt+candidate sequences go through one padded forward pass.
- ``method="generate"``: greedy decoding where, at each step, only tokens that continue some allowed action (or
  end one) are permitted (``prefix_allowed_tokens_fn``).

Either way the validator still judges the answer. If the model call itself fails, the policy answers with the
``rules`` policy's proposal, marked in its reason, and counts it in ``stats["fallbacks"]``.
"""
from __future__ import annotations

import json
from pathlib import Path

from ...core.actions import Proposal
from ..baselines import RulesPolicy
from .prompt import messages


class AdapterError(ValueError):
    """A LoRA adapter directory that cannot be used with this base model."""


def check_adapter(adapter: str | Path, base: str) -> dict:
    """Validate an adapter directory before peft touches it; returns its config."""
    path = Path(adapter)
    cfg_path = path / "adapter_config.json"
    if not path.is_dir():
        raise AdapterError(f"{path}: adapter directory not found")
    if not cfg_path.exists():
        raise AdapterError(f"{path}: missing adapter_config.json (not a peft adapter directory)")
    if not (path / "adapter_model.safetensors").exists():
        raise AdapterError(f"{path}: missing adapter_model.safetensors (adapters load from safetensors only)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except ValueError as exc:
        raise AdapterError(f"{cfg_path}: not valid JSON ({exc})") from None
    card = path / "tmsim_adapter.json"
    if card.exists():
        meta = json.loads(card.read_text())
        want = Path(meta.get("base_model", "")).name
        if want and want != Path(str(base).rstrip("/")).name:
            raise AdapterError(f"{path}: field 'base_model' is {meta['base_model']!r}, but the policy's model is {base!r}")
    return cfg


class QwenPolicy:
    """A Qwen-family causal LM as a training manager (see the module docs)."""

    #: settings that are paths, resolved relative to the spec file (see ``tmsim.policies.protocol``)
    path_settings = ("model", "adapter")

    def __init__(self, model: str, adapter: str | None = None, method: str = "score", device: str | None = None,
                 dtype: str = "auto", batch_size: int = 16, max_new_tokens: int = 8, policy_id: str = "qwen",
                 version: str = "1"):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if method not in ("score", "generate"):
            raise TypeError("method must be 'score' or 'generate'")
        self.policy_id, self.version, self.method = policy_id, version, method
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if dtype == "auto":
            dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        elif isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.tokenizer.padding_side = "right"
        net = AutoModelForCausalLM.from_pretrained(model, dtype=dtype)
        if adapter:
            from peft import PeftModel

            check_adapter(adapter, model)
            net = PeftModel.from_pretrained(net, adapter)
        self.model = net.to(self.device).eval()
        self.model_name, self.adapter = model, adapter
        self.eos = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        if self.eos is None or self.eos == self.tokenizer.unk_token_id:
            self.eos = self.tokenizer.eos_token_id
        self.fallback = RulesPolicy()
        self.stats = {"decisions": 0, "fallbacks": 0}
        import inspect

        # transformers 5 names the KV-cache argument `cache`; 4.x `past_key_values`
        base = getattr(self.model, "get_base_model", lambda: self.model)()
        self._cache_kw = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"

    # --- prompts ------------------------------------------------------------------------------------------------
    def prompt(self, snapshot) -> str:
        return self.tokenizer.apply_chat_template(messages(snapshot), tokenize=False, add_generation_prompt=True,
                                                  enable_thinking=False)

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def candidates(self, snapshot) -> list[str]:
        return [a for a in snapshot.offered] or ["continue"]

    # --- decisions ----------------------------------------------------------------------------------------------
    def decide(self, snapshot) -> Proposal:
        return self.decide_batch([snapshot])[0]

    def decide_batch(self, snapshots: list) -> list[Proposal]:
        out: list[Proposal] = []
        for i in range(0, len(snapshots), self.batch_size):
            chunk = snapshots[i: i + self.batch_size]
            self.stats["decisions"] += len(chunk)
            try:
                if self.method == "generate":
                    acts = self._generate(chunk)
                elif len(chunk) == 1:
                    acts = [self._score_one(chunk[0])]
                else:
                    acts = self._score_batch(chunk)
                out += [Proposal(action=a, reason=f"{self.method} by {self.policy_id}") for a in acts]
            except Exception as exc:  # the model failed: the rules answer, counted
                self.stats["fallbacks"] += len(chunk)
                for s in chunk:
                    p = self.fallback.decide(s)
                    out.append(Proposal(action=p.action, value=p.value, reason=f"fallback:rules ({type(exc).__name__})"))
        return out

    def scores(self, snapshot) -> dict[str, float]:
        """Log-likelihood of each allowed action after the prompt (prompt run once, KV cache shared)."""
        import torch

        cands = self.candidates(snapshot)
        prompt = torch.tensor([self._ids(self.prompt(snapshot))], device=self.device)
        seqs = [self._ids(c) + [self.eos] for c in cands]
        n, width = len(seqs), max(len(s) for s in seqs)
        with torch.no_grad():
            first = self.model(prompt, use_cache=True)
            cache = _cache_of(first)
            cache.batch_repeat_interleave(n)
            toks = torch.full((n, width), self.tokenizer.pad_token_id, device=self.device)
            mask = torch.zeros((n, width), dtype=torch.long, device=self.device)
            for i, s in enumerate(seqs):
                toks[i, : len(s)] = torch.tensor(s)
                mask[i, : len(s)] = 1
            attn = torch.cat([torch.ones((n, prompt.shape[1]), dtype=torch.long, device=self.device), mask], 1)
            logits = self.model(toks, attention_mask=attn, **{self._cache_kw: cache}).logits
            # position t predicts token t+1; the prompt's last logits predict each candidate's first token
            lp_first = torch.log_softmax(first.logits[0, -1].float(), -1)
            lp = torch.log_softmax(logits.float(), -1)
        out = {}
        for i, (c, s) in enumerate(zip(cands, seqs)):
            total = float(lp_first[s[0]])
            for t in range(1, len(s)):
                total += float(lp[i, t - 1, s[t]])
            out[c] = total
        return out

    def _score_one(self, snapshot) -> str:
        sc = self.scores(snapshot)
        return max(sc, key=sc.get)

    def _score_batch(self, snaps: list) -> list[str]:
        """Many snapshots at once: the left-padded prompts run in one pass, their KV cache is repeated for each
        candidate slot, and all candidates run in a second pass (RoPE attention depends only on relative
        positions, so the left padding, masked out, changes nothing)."""
        import torch

        prompts = [self._ids(self.prompt(s)) for s in snaps]
        cands = [[self._ids(c) + [self.eos] for c in self.candidates(s)] for s in snaps]
        names = [self.candidates(s) for s in snaps]
        B, L = len(snaps), max(len(p) for p in prompts)
        K = max(len(c) for c in cands)
        W = max(len(x) for c in cands for x in c)
        pad = self.tokenizer.pad_token_id
        P = torch.full((B, L), pad, device=self.device)
        M = torch.zeros((B, L), dtype=torch.long, device=self.device)
        for i, p in enumerate(prompts):
            P[i, L - len(p):] = torch.tensor(p)
            M[i, L - len(p):] = 1
        C = torch.full((B * K, W), pad, device=self.device)
        CM = torch.zeros((B * K, W), dtype=torch.long, device=self.device)
        for i, cs in enumerate(cands):
            for k, x in enumerate(cs):
                C[i * K + k, : len(x)] = torch.tensor(x)
                CM[i * K + k, : len(x)] = 1
        with torch.no_grad():
            first = self.model(P, attention_mask=M, use_cache=True)
            cache = _cache_of(first)
            cache.batch_repeat_interleave(K)
            attn = torch.cat([M.repeat_interleave(K, 0), CM], 1)
            lp = torch.log_softmax(self.model(C, attention_mask=attn, **{self._cache_kw: cache}).logits.float(), -1)
            lp_first = torch.log_softmax(first.logits[:, -1].float(), -1)
        out = []
        for i, cs in enumerate(cands):
            best, best_name = -float("inf"), names[i][0]
            for k, x in enumerate(cs):
                r = i * K + k
                total = float(lp_first[i, x[0]]) + sum(float(lp[r, t - 1, x[t]]) for t in range(1, len(x)))
                if total > best:
                    best, best_name = total, names[i][k]
            out.append(best_name)
        return out

    def _generate(self, snaps: list) -> list[str]:
        """Greedy decoding restricted to tokens that spell an allowed action, then the end token."""
        import torch

        prompts = [self._ids(self.prompt(s)) for s in snaps]
        width = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id
        toks = torch.full((len(snaps), width), pad, device=self.device)
        mask = torch.zeros((len(snaps), width), dtype=torch.long, device=self.device)
        for i, p in enumerate(prompts):  # left padding for generation
            toks[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        tries = [[self._ids(c) + [self.eos] for c in self.candidates(s)] for s in snaps]

        def allowed(batch_id: int, ids: torch.Tensor) -> list[int]:
            done = ids[width:].tolist()
            nxt = {seq[len(done)] for seq in tries[batch_id] if len(seq) > len(done) and seq[: len(done)] == done}
            return sorted(nxt) or [self.eos]

        with torch.no_grad():
            gen = self.model.generate(input_ids=toks, attention_mask=mask, max_new_tokens=self.max_new_tokens,
                                      do_sample=False, prefix_allowed_tokens_fn=allowed, pad_token_id=pad,
                                      eos_token_id=self.eos)
        out = []
        for i, s in enumerate(snaps):
            ids = gen[i, width:].tolist()
            if self.eos in ids:
                ids = ids[: ids.index(self.eos)]
            out.append(self.tokenizer.decode(ids).strip())
        return out


def _cache_of(out):
    """The KV cache of a forward pass (``cache`` in transformers 5, ``past_key_values`` before)."""
    return out["cache"] if "cache" in out else out.past_key_values
