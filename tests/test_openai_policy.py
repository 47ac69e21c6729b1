"""``kind = "openai"``: a real ``transformers serve`` with SmolLM2 on 127.0.0.1, and real local servers that hang,
answer 500 or answer garbage (each a counted fallback, never a crash)."""
from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from tmsim.policies import PolicySpec, make_policy
from tmsim.policies.check import decision_points
from tmsim.policies.llm.openai import OpenAIPolicy, parse_reply
from tmsim.traces import load_library

from .llm_support import smollm2  # noqa: F401 -- a fixture


@pytest.fixture(scope="module")
def snaps(small_library):
    return decision_points(load_library(small_library))[::9][:3]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Bad(http.server.BaseHTTPRequestHandler):
    mode = "500"
    hits = 0

    def log_message(self, *a):  # quiet
        pass

    def do_POST(self):
        type(self).hits += 1
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.mode == "hang":
            time.sleep(3)
            return
        if self.mode == "500":
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"internal error")
            return
        body = b"\x00\xffnot json at all" if self.mode == "garbage" else json.dumps(
            {"choices": [{"message": {"content": "I would rather not say."}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def bad_server():
    servers = []

    def start(mode):
        handler = type("Handler", (_Bad,), {"mode": mode, "hits": 0})
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        srv.daemon_threads = True
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}/v1", handler

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


@pytest.mark.parametrize("mode, retried", [("500", True), ("hang", True), ("garbage", False), ("no-action", False)])
def test_a_failing_service_is_a_counted_fallback(bad_server, snaps, mode, retried):
    url, handler = bad_server(mode)
    pol = OpenAIPolicy(model="m", base_url=url, timeout=1, retries=1, backoff=0.01)
    props = pol.decide_batch(snaps[:2])
    assert pol.stats["decisions"] == 2 and pol.stats["fallbacks"] == 2
    assert all(p.reason.startswith("fallback:rules") for p in props)
    assert handler.hits == (4 if retried else 2) and pol.stats["retries"] == (2 if retried else 0)


def test_a_refused_connection_is_a_counted_fallback(snaps):
    pol = OpenAIPolicy(model="m", base_url=f"http://127.0.0.1:{_free_port()}/v1", timeout=1, retries=0)
    assert pol.decide(snaps[0]).reason.startswith("fallback:rules (ServiceError: connection failed")
    assert pol.stats["fallbacks"] == 1


def test_the_api_key_comes_from_the_environment_and_is_never_shown(bad_server, snaps, monkeypatch):
    seen = []

    class Echo(_Bad):
        def do_POST(self):
            seen.append(self.headers.get("Authorization"))
            super().do_POST()

    handler = type("H", (Echo,), {"mode": "500", "hits": 0})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("TMSIM_TEST_KEY", "sk-secret-123")
        pol = OpenAIPolicy(model="m", base_url=f"http://127.0.0.1:{srv.server_address[1]}/v1",
                           api_key_env="TMSIM_TEST_KEY", timeout=1, retries=0)
        p = pol.decide(snaps[0])
    finally:
        srv.shutdown()
        srv.server_close()
    assert seen == ["Bearer sk-secret-123"] and "sk-secret" not in p.reason and "sk-secret" not in str(pol.last_errors)


def test_replies_are_parsed_as_json_or_as_an_action_name(snaps):
    s = snaps[0]
    p = parse_reply('```json\n{"action": "set_lr", "value": 0.01, "reason": "too fast"}\n```', s)
    assert (p.action, p.value, p.reason) == ("set_lr", 0.01, "too fast")
    assert parse_reply("I think lr_down is best, not stop.", s).action == "lr_down"
    body = OpenAIPolicy(model="m").request_body(s)
    schema = body["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["action"]["enum"][:-1] == list(s.offered)
    assert body["messages"][0]["role"] == "system" and "JSON" in body["messages"][0]["content"]


@pytest.fixture(scope="module")
def served_smollm2(smollm2):
    """``transformers serve`` with SmolLM2 on 127.0.0.1, stopped at the end of the module."""
    port = _free_port()
    env = dict(os.environ, TRANSFORMERS_VERBOSITY="error")
    proc = subprocess.Popen([sys.executable, "-m", "transformers.cli.transformers", "serve", str(smollm2),
                             "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 240
        while True:
            if proc.poll() is not None:
                pytest.fail(f"transformers serve exited: {proc.stderr.read().decode()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/v1/models", timeout=2):
                    break
            except OSError:
                if time.time() > deadline:
                    pytest.fail("transformers serve did not answer within 240 s")
                time.sleep(1)
        yield url + "/v1", smollm2
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_openai_kind_against_transformers_serve(served_smollm2, snaps):
    url, model = served_smollm2
    spec = PolicySpec(name="openai-smollm2", kind="openai",
                      settings={"base_url": url, "model": str(model), "timeout": 120, "retries": 0, "max_tokens": 40})
    pol = make_policy(spec)
    props = pol.decide_batch(snaps[:2])
    assert pol.stats["requests"] == 2
    # SmolLM2 may answer with or without an allowed action: either way no crash, and failures are counted
    answered = [p for p in props if not p.reason.startswith("fallback:rules")]
    assert len(answered) + pol.stats["fallbacks"] == 2
    assert pol.model_name == "SmolLM2-135M-Instruct"
    assert all(p.reason for p in answered)
    assert "ServiceError: HTTP" not in " ".join(pol.last_errors)  # the service itself answered every request
