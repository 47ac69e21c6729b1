"""Any hosted model as a manager: ``kind = "openai"`` asks an OpenAI-compatible chat-completions service.

Every decision is one ``POST {base_url}/chat/completions`` with the manager prompt (``tmsim.policies.llm.prompt``,
JSON reply) and, by default, ``response_format = {"type": "json_schema", ...}`` holding the answer to the same
schema as the local JSON decoder (an allowed action or ``set_lr``, a bounded ``value``, a short ``reason``). A
service that ignores the response format still works: the reply is read as JSON if it is JSON, else the first
allowed action name in the text is taken.

The service is outside tmsim's control, so every way it can fail is a *counted fallback*, never a crash: a timeout
(``timeout`` seconds per request), a refused connection, an HTTP error, a body that is not a chat completion, or a
reply with no allowed action. Each request is retried ``retries`` more times (HTTP 429 and 5xx, timeouts and refused
connections only; a 4xx other than 429 is not retried); then the decision is answered by the ``rules`` policy,
marked ``fallback:rules (...)`` in its reason and counted in ``stats["fallbacks"]`` (the leaderboard reports the
share as ``model_fallback_rate``).

The API key is read from the environment variable named by ``api_key_env`` (default ``OPENAI_API_KEY``); none is
needed for a local server. The key never appears in a spec, an audit row or an error message. A spec::

    name = "openai-gpt"
    kind = "openai"
    [settings]
    base_url = "https://api.openai.com/v1"
    model = "gpt-4o-mini"
    api_key_env = "OPENAI_API_KEY"
    timeout = 20
    retries = 2

``transformers serve`` is such a service (tested with SmolLM2 on 127.0.0.1; it accepts ``response_format`` but does
not enforce it, which the parsing above covers). It loads a model by hub id or local path; with ``local_model =
true`` a model name tmsim fetched (``smollm2-135m-instruct``) is sent as its checkpoint directory.
"""
from __future__ import annotations

import json
import os
import re
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from ...core.actions import Bounds, Proposal
from ..baselines import RulesPolicy
from .prompt import messages


class ServiceError(RuntimeError):
    """A request that got no usable answer (``retryable`` says whether another try may help)."""

    def __init__(self, msg: str, retryable: bool):
        super().__init__(msg)
        self.retryable = retryable


class OpenAIPolicy:
    """See the module docs."""

    def __init__(self, model: str, base_url: str = "http://127.0.0.1:8000/v1", api_key_env: str = "OPENAI_API_KEY",
                 timeout: float = 30.0, retries: int = 1, backoff: float = 0.5, response_format: bool = True,
                 temperature: float = 0.0, max_tokens: int = 80, concurrency: int = 1, local_model: bool = False,
                 policy_id: str = "openai", version: str = "1"):
        if timeout <= 0 or retries < 0 or concurrency < 1:
            raise TypeError("timeout must be > 0, retries >= 0, concurrency >= 1")
        self.policy_id, self.version = policy_id, version
        from ...models import display_name, resolve_model

        # local_model: the service runs on this machine and loads checkpoints by path (``transformers serve``), so a
        # model tmsim fetched is sent as its checkpoint directory
        self.model = resolve_model(model) if local_model else model
        self.base_url = base_url.rstrip("/")
        self.model_name = display_name(model)
        self.api_key_env, self.timeout, self.retries, self.backoff = api_key_env, float(timeout), int(retries), backoff
        self.response_format, self.temperature, self.max_tokens = response_format, temperature, max_tokens
        self.concurrency = concurrency
        self.bounds = Bounds()
        self.fallback = RulesPolicy()
        self.stats = {"decisions": 0, "fallbacks": 0, "requests": 0, "retries": 0}
        self.last_errors: list[str] = []  # the most recent failures (no secrets: the key is never formatted)

    # --- the request ----------------------------------------------------------------------------------------
    def schema(self, snapshot) -> dict:
        b, lr = self.bounds, snapshot.hparams.lr
        lo, hi = max(b.lr_min, lr / b.max_factor), min(b.lr_max, lr * b.max_factor)
        return {"type": "object", "additionalProperties": False, "required": ["action", "value", "reason"],
                "properties": {"action": {"type": "string", "enum": list(snapshot.offered or ("continue",)) + ["set_lr"]},
                               "value": {"type": ["number", "null"], "minimum": lo, "maximum": hi},
                               "reason": {"type": "string"}}}

    def request_body(self, snapshot) -> dict:
        body = {"model": self.model, "messages": messages(snapshot, "manager", "json", self.bounds),
                "temperature": self.temperature, "max_tokens": self.max_tokens}
        if self.response_format:
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "proposal", "strict": True, "schema": self.schema(snapshot)}}
        return body

    def _post(self, body: dict) -> dict:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        req = urllib.request.Request(f"{self.base_url}/chat/completions", data=json.dumps(body).encode(),
                                     headers=headers, method="POST")
        self.stats["requests"] += 1
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                raw = r.read(1 << 20)
        except urllib.error.HTTPError as exc:
            raise ServiceError(f"HTTP {exc.code}", exc.code == 429 or exc.code >= 500) from None
        except (TimeoutError, socket.timeout):
            raise ServiceError(f"no answer within {self.timeout:g} s", True) from None
        except (urllib.error.URLError, ConnectionError, OSError) as exc:
            why = getattr(exc, "reason", exc)
            retry = isinstance(why, (TimeoutError, socket.timeout, ConnectionError, OSError))
            raise ServiceError(f"connection failed ({type(why).__name__})", retry) from None
        try:
            data = json.loads(raw)
            return data["choices"][0]["message"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise ServiceError("the body is not a chat completion", False) from None

    def ask(self, snapshot) -> Proposal:
        """One decision from the service; raises ``ServiceError`` when no usable answer came."""
        body = self.request_body(snapshot)
        for attempt in range(self.retries + 1):
            try:
                msg = self._post(body)
                return parse_reply(msg.get("content") if isinstance(msg, dict) else None, snapshot)
            except ServiceError as exc:
                if not exc.retryable or attempt == self.retries:
                    raise
                self.stats["retries"] += 1
                time.sleep(self.backoff * (2 ** attempt))
        raise ServiceError("no attempt made", False)  # unreachable: retries >= 0

    # --- decisions ------------------------------------------------------------------------------------------
    def decide(self, snapshot) -> Proposal:
        return self.decide_batch([snapshot])[0]

    def decide_batch(self, snapshots: list) -> list[Proposal]:
        def one(s):
            try:
                return self.ask(s), None
            except Exception as exc:  # noqa: BLE001 -- a service failure of any kind is a counted fallback
                return None, f"{type(exc).__name__}: {exc}"

        if self.concurrency > 1 and len(snapshots) > 1:
            with ThreadPoolExecutor(self.concurrency) as ex:
                answers = list(ex.map(one, snapshots))
        else:
            answers = [one(s) for s in snapshots]
        out = []
        for s, (p, err) in zip(snapshots, answers):
            self.stats["decisions"] += 1
            if p is None:
                self.stats["fallbacks"] += 1
                self.last_errors = (self.last_errors + [err])[-20:]
                r = self.fallback.decide(s)
                p = Proposal(action=r.action, value=r.value, reason=f"fallback:rules ({err})")
            out.append(p)
        return out


def parse_reply(content, snapshot) -> Proposal:
    """A proposal from a reply's text: a JSON object with ``action`` (also inside a fenced block or other text),
    else the first allowed action name that appears as a word. Raises ``ServiceError`` when there is neither."""
    if not isinstance(content, str) or not content.strip():
        raise ServiceError("empty reply", False)
    allowed = list(snapshot.offered or ("continue",)) + ["set_lr"]
    for m in re.finditer(r"\{.*?\}", content, re.S):
        try:
            obj = json.loads(m.group(0))
        except ValueError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("action"), str):
            act = obj["action"].strip()
            value = obj.get("value") if act == "set_lr" else None
            if value is not None and not isinstance(value, (int, float)):
                value = None
            reason = obj.get("reason") if isinstance(obj.get("reason"), str) else None
            return Proposal(action=act[:64], value=value, reason=reason)
    # free text: the earliest allowed action name (longest first at the same place: lr_down before lr)
    hits = [(m.start(), -len(a), a) for a in allowed for m in re.finditer(rf"\b{re.escape(a)}\b", content)]
    if hits:
        return Proposal(action=min(hits)[2], reason=content.strip()[:200])
    raise ServiceError("no allowed action in the reply", False)
