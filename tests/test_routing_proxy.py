"""Routing rules applied by a real proxy process, called with the official openai SDK and
curl, against a local fake OpenAI upstream that answers per model."""

from __future__ import annotations

import json
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import running_proxy
from tests.proxyproc import ProxyProcess
from tests.upstream import FakeUpstream, Received, Reply

SECRET = "sk-routing-test-secret-123"
SIGV4 = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20250101/us-east-1/bedrock/aws4_request, Signature=abc"
#: The fake upstream's answer per model; a model it does not list gets an HTTP 500.
ANSWERS = {"gpt-4o": "The answer is (B).", "cheap-model": "B", "other-model": "Answer: C"}
WORKED = {
    "gpt-4o": "She sells 16 - 3 - 4 = 9 eggs for 9 * $2 = $18 a day.",
    "cheap-model": "16 - 7 = 9 eggs.\n9 * 2 = 18\n#### 18",
    "other-model": "16 - 3 = 13 eggs, so 13 * 2 = $26.\n#### 26",
}


def chat_reply(received: Received) -> Reply:
    body = json.loads(received.body)
    model = body["model"]
    answers = WORKED if "eggs" in json.dumps(body["messages"]) else ANSWERS
    if model not in answers:
        return Reply.json({"error": {"message": f"model {model} is overloaded", "type": "server_error"}}, 500)
    text = answers[model]
    usage = {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25}
    if body.get("stream"):
        chunks = [
            {"id": "c1", "model": model, "choices": [{"index": 0, "delta": {"content": w}}]} for w in text
        ]
        chunks.append(
            {"id": "c1", "model": model, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        )
        return Reply.sse([*chunks, {"id": "c1", "model": model, "choices": [], "usage": usage}, "[DONE]"])
    message = {"role": "assistant", "content": text}
    return Reply.json(
        {
            "id": "c1",
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": usage,
        }
    )


def rules_yaml(mode: str, to: str = "cheap-model", **extra: object) -> str:
    rule = {"id": f"{mode}-rule", "match": {"model": "gpt-4o"}, "to": to, "mode": mode, **extra}
    return json.dumps({"version": 1, "rules": [rule]})  # JSON is YAML


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream() as server:
        server.routes["/v1/chat/completions"] = chat_reply
        yield server


_CLIENTS: dict[int, openai.OpenAI] = {}


def client(proxy: ProxyProcess) -> openai.OpenAI:
    """The official SDK with its default base URL, through the proxy (one per proxy)."""
    if proxy.port not in _CLIENTS:
        tls = ssl.create_default_context(cafile=str(proxy.data_dir / "ca-bundle.pem"))
        http_client = httpx.Client(proxy=proxy.url, verify=tls)
        _CLIENTS[proxy.port] = openai.OpenAI(api_key=SECRET, http_client=http_client, max_retries=0)
    return _CLIENTS[proxy.port]


def ask(proxy: ProxyProcess, question: str = "Capital of France? A) Rome B) Paris", **kw) -> str:
    session = kw.pop("session", None)
    reply = client(proxy).chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": question}],
        extra_headers={"X-Llmtap-Session": session} if session else None,
        **kw,
    )
    if kw.get("stream"):
        return "".join(chunk.choices[0].delta.content or "" for chunk in reply if chunk.choices)
    return reply.choices[0].message.content


def proxy_with(tmp_path: Path, fake: FakeUpstream, rules: str | None, *args: str):
    data = tmp_path / "data"
    data.mkdir()
    if rules is not None:
        (data / "rules.yaml").write_text(rules)
    return running_proxy(data, fake, extra_args=list(args))


def test_enforce_rewrites_and_records_the_client_model(tmp_path, fake):
    with proxy_with(tmp_path, fake, rules_yaml("enforce")) as proxy:
        assert ask(proxy) == "B"
        (row,) = proxy.rows(wait_for=1)
    assert json.loads(fake.received[0].body)["model"] == "cheap-model"
    assert (row["request_model"], row["routed_from_model"]) == ("cheap-model", "gpt-4o")
    assert (row["routing_rule"], row["routing_arm"]) == ("enforce-rule", "enforce")


def test_canary_is_sticky_per_session_and_splits_near_the_fraction(tmp_path, fake):
    sessions = [f"session-{i}" for i in range(30)]
    with proxy_with(tmp_path, fake, rules_yaml("canary", fraction=0.5, sticky="session")) as proxy:
        for session in sessions * 2:
            ask(proxy, session=session)
        rows = proxy.rows(wait_for=60)
    arms: dict[str, set[str]] = {}
    for row in rows:
        arms.setdefault(row["session_id"], set()).add(row["routing_arm"])
        expected = "cheap-model" if row["routing_arm"] == "canary" else "gpt-4o"
        assert row["request_model"] == expected
    assert all(len(seen) == 1 for seen in arms.values()), arms
    canary = sum(seen == {"canary"} for seen in arms.values())
    assert 8 <= canary <= 22, canary  # 30 sessions at 0.5


def test_candidate_error_is_retried_with_the_client_model(tmp_path, fake):
    with proxy_with(tmp_path, fake, rules_yaml("enforce", to="broken-model")) as proxy:
        assert ask(proxy) == ANSWERS["gpt-4o"]
        failed, retry = proxy.rows(wait_for=2)
    assert [json.loads(r.body)["model"] for r in fake.received] == ["broken-model", "gpt-4o"]
    assert (failed["request_model"], failed["routed_from_model"], failed["status_code"]) == (
        "broken-model",
        "gpt-4o",
        500,
    )
    assert "overloaded" in failed["error"]
    assert retry["retry_of"] == failed["call_id"]
    assert (retry["request_model"], retry["status_code"], retry["routing_arm"]) == ("gpt-4o", 200, "retry")


@pytest.mark.parametrize(
    ("question", "stream", "method", "agree"),
    [
        ("Capital of France? A) Rome B) Paris", False, "exact", True),
        ("16 eggs, eats 3, bakes 4, sells at $2: how much?", True, "final_number", True),
    ],
)
def test_shadow_copy_is_compared_and_recorded_without_secrets(
    tmp_path, fake, question, stream, method, agree
):
    with proxy_with(tmp_path, fake, rules_yaml("shadow", fraction=1.0)) as proxy:
        answer = ask(proxy, question, stream=stream)
        live, shadow = proxy.rows(wait_for=2)
        bodies = proxy.rows("SELECT * FROM call_bodies")
    assert answer == (WORKED if stream else ANSWERS)["gpt-4o"]
    assert [json.loads(r.body)["model"] for r in fake.received] == ["gpt-4o", "cheap-model"]
    assert all(r.headers["authorization"] == f"Bearer {SECRET}" for r in fake.received)
    assert (live["routing_arm"], live["request_model"], live["shadow_of"]) == ("live", "gpt-4o", None)
    assert (shadow["shadow_of"], shadow["routing_arm"], shadow["request_model"]) == (
        live["call_id"],
        "shadow",
        "cheap-model",
    )
    assert (shadow["comparison"], shadow["agreement"]) == (method, agree)
    assert shadow["started_at"] >= live["ended_at"]  # the copy leaves after the live answer
    assert SECRET not in json.dumps([live, shadow, bodies], default=str)


def test_shadow_disagreement_is_recorded(tmp_path, fake):
    with proxy_with(tmp_path, fake, rules_yaml("shadow", to="other-model", fraction=1.0)) as proxy:
        ask(proxy, "16 eggs, eats 3, bakes 4, sells at $2: how much?")
        _, shadow = proxy.rows(wait_for=2)
    assert (shadow["comparison"], shadow["agreement"]) == ("final_number", False)


def test_rules_file_is_hot_reloaded_and_a_bad_one_keeps_traffic_flowing(tmp_path, fake):
    with proxy_with(tmp_path, fake, None) as proxy:
        ask(proxy)
        rules = proxy.data_dir / "rules.yaml"
        rules.write_text(rules_yaml("enforce"))
        time.sleep(1.2)  # the file is checked at most once a second
        ask(proxy)
        rules.write_text("version: 1\nrules:\n  - id: x\n    mode: sideways\n")
        time.sleep(1.2)
        ask(proxy)
        rows = proxy.rows(wait_for=3)
    assert [r["request_model"] for r in rows] == ["gpt-4o", "cheap-model", "cheap-model"]
    assert "mode: expected one of shadow, canary, enforce, got 'sideways'" in proxy.log.read_text()


def test_bad_rules_file_at_start_leaves_calls_untouched(tmp_path, fake):
    with proxy_with(tmp_path, fake, "rules: [oops") as proxy:
        assert ask(proxy) == ANSWERS["gpt-4o"]
        (row,) = proxy.rows(wait_for=1)
    assert (row["request_model"], row["routing_rule"]) == ("gpt-4o", None)
    assert "not valid YAML" in proxy.log.read_text()


def test_signed_request_is_never_rewritten(tmp_path, fake):
    rules = tmp_path / "my-rules.yaml"
    rules.write_text(rules_yaml("enforce"))
    with proxy_with(tmp_path, fake, None, "--rules", str(rules)) as proxy:
        body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi B"}]})
        out = subprocess.run(
            ["curl", "-sS", "--proxy", proxy.url, "--cacert", str(proxy.data_dir / "ca-bundle.pem"),
             "https://api.openai.com/v1/chat/completions", "-H", "content-type: application/json",
             "-H", f"authorization: {SIGV4}",
             "-d", body],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout  # fmt: skip
        assert json.loads(out)["model"] == "gpt-4o"
        ask(proxy)  # an unsigned call under the same rules file is rewritten
        signed, unsigned = proxy.rows(wait_for=2)
    assert (signed["request_model"], signed["routed_from_model"], signed["routing_rule"]) == (
        "gpt-4o",
        None,
        None,
    )
    assert (unsigned["request_model"], unsigned["routed_from_model"]) == ("cheap-model", "gpt-4o")
