"""The LLM policy: a causal language model reads the snapshot and picks one of the allowed actions.

``LLMPolicy(model=...)`` loads a model by name, path or hub id: a name tmsim can fetch (``"smollm2-135m-instruct"``,
converted once by ``tmsim model fetch smollm2``, see ``tmsim.models``), a local checkpoint directory, or a hub id
such as ``"Qwen/Qwen3-0.6B"`` where weights can be downloaded. It optionally adds a LoRA adapter (peft) and renders
the model's own chat template (``enable_thinking=False`` for templates that know it). Output is constrained in one
of three ways:

- ``method="score"`` (default): every allowed action name, followed by the end-of-turn token, is scored by its
  log-likelihood after the prompt, and the best wins. ``normalize`` says how candidates of different token lengths
  are compared: ``"mean"`` (default: mean log-probability per token), ``"sum"`` (the raw sum, which favours short
  names), or ``"calibrate"`` (the sum minus the same candidate's sum after a *content-free* prompt, i.e. the
  pointwise mutual information between the telemetry and the action: the model's prior for each name is divided
  out). The prompts of a batch run in one left-padded pass; their KV cache is repeated for each candidate and all
  candidates run in a second pass.
- ``method="generate"``: greedy decoding where only tokens that continue some allowed action name (or end one)
  are permitted (``prefix_allowed_tokens_fn``).
- ``method="json"``: greedy decoding constrained by a JSON schema (``action`` from the allowed actions or
  ``set_lr``, a ``value`` bounded by the run's learning-rate limits, a short ``reason``), enforced token by token
  with llguidance through a transformers ``LogitsProcessor``. The model's reason is kept in ``Proposal.reason``.

Either way the validator still judges the answer. If the model call itself fails, the policy answers with the
``rules`` policy's proposal, marked in its reason, and counts it in ``stats["fallbacks"]``. A deterministic decoder
gives the same answer to the same snapshot, so answers are remembered by snapshot hash (``memo``; replicate roots
share their first snapshot); ``stats["memo_hits"]`` counts them.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from ...core.actions import Bounds, Proposal
from ..baselines import RulesPolicy
from .prompt import content_free_snapshot_text, messages, system_prompt


class AdapterError(ValueError):
    """A LoRA adapter directory that cannot be used with this base model."""


def _model_key(model: str) -> str:
    from ...models import resolve_name

    return resolve_name(Path(str(model).rstrip("/")).name) or Path(str(model).rstrip("/")).name


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
        want = meta.get("base_model", "")
        if want and _model_key(want) != _model_key(base):
            raise AdapterError(f"{path}: field 'base_model' is {meta['base_model']!r}, but the policy's model is {base!r}")
    return cfg


class LLMPolicy:
    """A causal language model as a training manager (see the module docs)."""

    #: settings that are paths, resolved relative to the spec file (see ``tmsim.policies.protocol``)
    path_settings = ("model", "adapter")

    def __init__(self, model: str, adapter: str | None = None, method: str = "score", normalize: str = "mean",
                 prompt: str = "manager", device: str | None = None, dtype: str = "auto", batch_size: int = 8,
                 max_new_tokens: int = 48, memo: bool = True, threads: int | None = None, policy_id: str = "llm",
                 version: str = "1"):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ...models import display_name, resolve_model

        if method not in ("score", "generate", "json"):
            raise TypeError("method must be 'score', 'generate' or 'json'")
        if normalize not in ("mean", "sum", "calibrate"):
            raise TypeError("normalize must be 'mean', 'sum' or 'calibrate'")
        if prompt not in ("manager", "terse", "compact"):
            raise TypeError("prompt must be 'manager', 'terse' or 'compact'")
        if threads:
            torch.set_num_threads(int(threads))
        self.policy_id, self.version, self.method, self.normalize, self.style = policy_id, version, method, normalize, prompt
        self.batch_size, self.max_new_tokens, self.memo = batch_size, max_new_tokens, memo
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if dtype == "auto":
            dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        elif isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        path = resolve_model(model)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.tokenizer.padding_side = "right"
        net = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        if adapter:
            from peft import PeftModel

            check_adapter(adapter, model)
            net = PeftModel.from_pretrained(net, adapter)
        self.model = net.to(self.device).eval()
        #: what a leaderboard row names as the model (the base model; ``adapter`` says which LoRA sits on it)
        self.model_name = display_name(model)
        self.model_path, self.adapter = path, adapter
        self.eos = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        if self.eos is None or self.eos == self.tokenizer.unk_token_id:
            self.eos = self.tokenizer.eos_token_id
        self.pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos
        self.bounds = Bounds()
        self.fallback = RulesPolicy()
        self.stats = {"decisions": 0, "fallbacks": 0, "memo_hits": 0}
        self._memo: dict[str, Proposal] = {}
        self._prior: dict[tuple, dict[str, float]] = {}
        self._ll_tok = None
        import inspect

        # transformers 5 names the KV-cache argument `cache`; 4.x `past_key_values`
        base = getattr(self.model, "get_base_model", lambda: self.model)()
        self._cache_kw = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"

    # --- prompts ------------------------------------------------------------------------------------------------
    def _template(self, msgs: list[dict]) -> str:
        return self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, enable_thinking=False)

    def prompt(self, snapshot) -> str:
        reply = "json" if self.method == "json" else "action"
        return self._template(messages(snapshot, self.style, reply, self.bounds))

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def candidates(self, snapshot) -> list[str]:
        return [a for a in snapshot.offered] or ["continue"]

    # --- decisions ----------------------------------------------------------------------------------------------
    def decide(self, snapshot) -> Proposal:
        return self.decide_batch([snapshot])[0]

    def decide_batch(self, snapshots: list) -> list[Proposal]:
        out: list[Proposal | None] = [None] * len(snapshots)
        todo = []
        for i, s in enumerate(snapshots):
            hit = self._memo.get(s.hash) if self.memo else None
            if hit is not None:
                self.stats["memo_hits"] += 1
                out[i] = hit.model_copy()
            else:
                todo.append(i)
        for k in range(0, len(todo), self.batch_size):
            idx = todo[k: k + self.batch_size]
            chunk = [snapshots[i] for i in idx]
            self.stats["decisions"] += len(chunk)
            try:
                if self.method == "generate":
                    props = [Proposal(action=a, reason=f"constrained generation by {self.model_name}")
                             for a in self._generate(chunk)]
                elif self.method == "json":
                    props = self._generate_json(chunk)
                else:
                    props = []
                    for sc in self._scores(chunk):
                        ranked = sorted(sc, key=sc.get, reverse=True)
                        gap = sc[ranked[0]] - sc[ranked[1]] if len(ranked) > 1 else math.inf
                        props.append(Proposal(action=ranked[0], reason=f"{self.normalize}-normalised score "
                                              f"{sc[ranked[0]]:.3f}, {gap:.3f} ahead of {ranked[1] if len(ranked) > 1 else '-'}"))
                for i, s, p in zip(idx, chunk, props):
                    out[i] = p
                    if self.memo:
                        self._memo[s.hash] = p
            except Exception as exc:  # noqa: BLE001 -- the model failed: the rules answer, counted
                self.stats["fallbacks"] += len(chunk)
                for i, s in zip(idx, chunk):
                    p = self.fallback.decide(s)
                    out[i] = Proposal(action=p.action, value=p.value, reason=f"fallback:rules ({type(exc).__name__})")
        return out  # type: ignore[return-value]

    # --- candidate scoring --------------------------------------------------------------------------------------
    def scores(self, snapshot) -> dict[str, float]:
        """Each allowed action's score after the prompt, normalised as the policy's ``normalize`` says."""
        return self._scores([snapshot])[0]

    def _scores(self, snaps: list) -> list[dict[str, float]]:
        prompts = [self._ids(self.prompt(s)) for s in snaps]
        names = [self.candidates(s) for s in snaps]
        raw = self._candidate_logprobs(prompts, names)
        if self.normalize == "sum":
            return [{c: sum(lp) for c, lp in r.items()} for r in raw]
        if self.normalize == "mean":
            return [{c: sum(lp) / len(lp) for c, lp in r.items()} for r in raw]
        out = []
        for s, r in zip(snaps, raw):
            prior = self._content_free(tuple(self.candidates(s)))
            out.append({c: sum(lp) - prior[c] for c, lp in r.items()})
        return out

    def _content_free(self, offered: tuple[str, ...]) -> dict[str, float]:
        """Summed log-probabilities of each candidate after a prompt with the same instructions and no telemetry."""
        if offered not in self._prior:
            msgs = [{"role": "system", "content": system_prompt(offered, self.style, "action", None, self.bounds)},
                    {"role": "user", "content": content_free_snapshot_text()}]
            r = self._candidate_logprobs([self._ids(self._template(msgs))], [list(offered)])[0]
            self._prior[offered] = {c: sum(lp) for c, lp in r.items()}
        return self._prior[offered]

    def _candidate_logprobs(self, prompts: list[list[int]], names: list[list[str]]) -> list[dict[str, list[float]]]:
        """Per snapshot, per candidate, the log-probability of each of its tokens (end token included). The
        left-padded prompts run in one pass, their KV cache is repeated for each candidate slot, and all candidates
        run in a second pass (rotary attention depends only on relative positions, so masked left padding changes
        nothing)."""
        import torch

        cands = [[self._ids(c) + [self.eos] for c in cs] for cs in names]
        B, L = len(prompts), max(len(p) for p in prompts)
        K = max(len(c) for c in cands)
        W = max(len(x) for c in cands for x in c)
        P = torch.full((B, L), self.pad, device=self.device)
        M = torch.zeros((B, L), dtype=torch.long, device=self.device)
        for i, p in enumerate(prompts):
            P[i, L - len(p):] = torch.tensor(p)
            M[i, L - len(p):] = 1
        C = torch.full((B * K, W), self.pad, device=self.device)
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
            row = {}
            for k, x in enumerate(cs):
                r = i * K + k
                row[names[i][k]] = [float(lp_first[i, x[0]])] + [float(lp[r, t - 1, x[t]]) for t in range(1, len(x))]
            out.append(row)
        return out

    # --- generation ---------------------------------------------------------------------------------------------
    def _left_padded(self, snaps: list):
        import torch

        prompts = [self._ids(self.prompt(s)) for s in snaps]
        width = max(len(p) for p in prompts)
        toks = torch.full((len(snaps), width), self.pad, device=self.device)
        mask = torch.zeros((len(snaps), width), dtype=torch.long, device=self.device)
        for i, p in enumerate(prompts):
            toks[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        return toks, mask, width

    def _generate(self, snaps: list) -> list[str]:
        """Greedy decoding restricted to tokens that spell an allowed action, then the end token."""
        import torch

        toks, mask, width = self._left_padded(snaps)
        tries = [[self._ids(c) + [self.eos] for c in self.candidates(s)] for s in snaps]

        def allowed(batch_id: int, ids: torch.Tensor) -> list[int]:
            done = ids[width:].tolist()
            nxt = {seq[len(done)] for seq in tries[batch_id] if len(seq) > len(done) and seq[: len(done)] == done}
            return sorted(nxt) or [self.eos]

        longest = max(len(x) for t in tries for x in t)
        with torch.no_grad():
            gen = self.model.generate(input_ids=toks, attention_mask=mask, max_new_tokens=longest,
                                      do_sample=False, prefix_allowed_tokens_fn=allowed, pad_token_id=self.pad,
                                      eos_token_id=self.eos)
        out = []
        for i in range(len(snaps)):
            ids = gen[i, width:].tolist()
            if self.eos in ids:
                ids = ids[: ids.index(self.eos)]
            out.append(self.tokenizer.decode(ids).strip())
        return out

    def schema(self, snapshot) -> dict:
        """The JSON schema a ``json`` answer is held to: an allowed action or ``set_lr``, a value within the
        learning-rate bounds of this decision, and a short reason."""
        b, lr = self.bounds, snapshot.hparams.lr
        lo, hi = max(b.lr_min, lr / b.max_factor), min(b.lr_max, lr * b.max_factor)
        return {"type": "object", "additionalProperties": False, "required": ["action", "value", "reason"],
                "properties": {"action": {"enum": list(self.candidates(snapshot)) + ["set_lr"]},
                               "value": {"anyOf": [{"type": "null"},
                                                   {"type": "number", "minimum": float(f"{lo:.4g}"), "maximum": float(f"{hi:.4g}")}]},
                               "reason": {"type": "string", "maxLength": 120}}}

    def _generate_json(self, snaps: list) -> list[Proposal]:
        import llguidance
        import llguidance.hf
        import torch

        if self._ll_tok is None:
            self._ll_tok = llguidance.hf.from_tokenizer(self.tokenizer, n_vocab=self.model.config.vocab_size,
                                                        eos_token=self.eos)
        opts = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
        matchers = []
        for s in snaps:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(self.schema(s), defaults=opts)
            m = llguidance.LLMatcher(self._ll_tok, grammar, log_level=0)
            if m.is_error():
                raise ValueError(f"JSON schema grammar: {m.get_error()}")
            matchers.append(m)
        toks, mask, width = self._left_padded(snaps)
        proc = _GuidanceProcessor(matchers, width, self.model.config.vocab_size)
        from transformers import LogitsProcessorList

        with torch.no_grad():
            gen = self.model.generate(input_ids=toks, attention_mask=mask, max_new_tokens=self.max_new_tokens,
                                      do_sample=False, logits_processor=LogitsProcessorList([proc]),
                                      pad_token_id=self.pad, eos_token_id=self.eos)
        out = []
        for i, s in enumerate(snaps):
            ids = gen[i, width:].tolist()
            if self.eos in ids:
                ids = ids[: ids.index(self.eos)]
            text = self.tokenizer.decode(ids).strip()
            try:
                obj = json.loads(text)
            except ValueError:  # cut by max_new_tokens inside the reason: the action and value are complete
                obj = _partial_json(text)
            reason = str(obj.get("reason") or "").strip() or f"json generation by {self.model_name}"
            value = obj.get("value") if obj.get("action") == "set_lr" else None
            out.append(Proposal(action=str(obj.get("action", "")), value=value, reason=reason))
        return out


from transformers import LogitsProcessor  # noqa: E402


class _GuidanceProcessor(LogitsProcessor):
    """A transformers logits processor that lets through only the tokens each row's llguidance matcher accepts."""

    def __init__(self, matchers: list, prompt_width: int, vocab: int):
        from llguidance.torch import allocate_token_bitmask

        self.matchers, self.width = matchers, prompt_width
        self.bitmask = allocate_token_bitmask(len(matchers), vocab)
        self.done = [False] * len(matchers)

    def __call__(self, input_ids, scores):
        from llguidance.torch import apply_token_bitmask_inplace, fill_next_token_bitmask

        if input_ids.shape[1] > self.width:
            last = input_ids[:, -1].tolist()
            for i, m in enumerate(self.matchers):
                if self.done[i] or m.is_stopped():
                    self.done[i] = True
                elif not m.consume_token(int(last[i])):
                    self.done[i] = True
        for i, m in enumerate(self.matchers):
            if not self.done[i]:
                fill_next_token_bitmask(m, self.bitmask, i)
            else:
                self.bitmask[i].fill_(-1)  # a finished row only pads: leave its logits alone
        apply_token_bitmask_inplace(scores, self.bitmask.to(scores.device))
        return scores


def _partial_json(text: str) -> dict:
    """The fields of a JSON object cut short inside its last string: close the string and the object."""
    for tail in ('"}', "}", ""):
        try:
            return json.loads(text + tail)
        except ValueError:
            continue
    return {}


def _cache_of(out):
    """The KV cache of a forward pass (``cache`` in transformers 5, ``past_key_values`` before)."""
    return out["cache"] if "cache" in out else out.past_key_values


#: The former name of ``LLMPolicy`` (its first model was a Qwen3-architecture checkpoint).
QwenPolicy = LLMPolicy
