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
import yaml

from tests.conftest import running_proxy
from tests.proxyproc import ProxyProcess, free_port
from tests.upstream import FakeUpstream, Received, Reply

SECRET = "sk-routing-test-secret-123"
SIGV4 = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20250101/us-east-1/bedrock/aws4_request, Signature=abc"
#: The fake upstream's answer per model; a model it does not list gets an HTTP 500.
ANSWERS = {
    "gpt-4o": "The answer is (B).",
    "cheap-model": "B",
    "other-model": "Answer: C",
    "gpt-4o-mini": "B",  # a priced model: its copies cost something
}
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
    return answer(body, answers[model])


def answer(body: dict, text: str) -> Reply:
    """A chat completion saying ``text``, streamed if asked; a stream carries usage only when
    the request asks for it, as OpenAI's does."""
    model = body["model"]
    usage = {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25}
    if body.get("stream"):
        chunks = [
            {"id": "c1", "model": model, "choices": [{"index": 0, "delta": {"content": w}}]} for w in text
        ]
        chunks.append(
            {"id": "c1", "model": model, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        )
        if (body.get("stream_options") or {}).get("include_usage"):
            chunks.append({"id": "c1", "model": model, "choices": [], "usage": usage})
        return Reply.sse([*chunks, "[DONE]"])
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
    return yaml.safe_dump({"version": 1, "rules": [rule]})


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


def proxy_with(
    tmp_path: Path,
    fake: FakeUpstream,
    rules: str | None,
    *args: str,
    config: str = "",
    env: dict[str, str] | None = None,
):
    """A proxy on a fresh data directory with ``rules`` as its rules file, ``config`` (TOML) as
    its config file and ``env`` added to its environment."""
    data = tmp_path / "data"
    data.mkdir()
    if rules is not None:
        (data / "rules.yaml").write_text(rules)
    if config:
        (tmp_path / "llmtap.toml").write_text(config)
        args = (*args, "--config", str(tmp_path / "llmtap.toml"))
    return running_proxy(data, fake, extra_args=list(args), env=env)


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
    ("question", "stream", "capture", "method", "agree"),
    [
        ("Capital of France? A) Rome B) Paris", False, "full", "exact", True),
        ("16 eggs, eats 3, bakes 4, sells at $2: how much?", True, "full", "final_number", True),
        # No bodies are kept in this mode, yet both streams' texts are compared.
        ("16 eggs, eats 3, bakes 4, sells at $2: how much?", True, "metadata", "final_number", True),
    ],
)
def test_shadow_copy_is_compared_and_recorded_without_secrets(
    tmp_path, fake, question, stream, capture, method, agree
):
    config = f'capture = "{capture}"\n'
    with proxy_with(tmp_path, fake, rules_yaml("shadow", fraction=1.0), config=config) as proxy:
        text = ask(proxy, question, stream=stream)
        live, shadow = proxy.rows(wait_for=2)
        bodies = proxy.rows("SELECT * FROM call_bodies")
    assert text == (WORKED if stream else ANSWERS)["gpt-4o"]
    assert [json.loads(r.body)["model"] for r in fake.received] == ["gpt-4o", "cheap-model"]
    assert all(r.headers["authorization"] == f"Bearer {SECRET}" for r in fake.received)
    # The copy of a stream asks for usage as the live call does, so both rows have the
    # provider's counts.
    assert [json.loads(r.body).get("stream_options") for r in fake.received] == [
        {"include_usage": True} if stream else None
    ] * 2
    assert (live["usage_source"], shadow["usage_source"]) == ("provider", "provider")
    assert (shadow["input_tokens"], shadow["output_tokens"]) == (20, 5)
    assert (live["routing_arm"], live["request_model"], live["shadow_of"]) == ("live", "gpt-4o", None)
    assert (shadow["shadow_of"], shadow["routing_arm"], shadow["request_model"]) == (
        live["call_id"],
        "shadow",
        "cheap-model",
    )
    assert (shadow["comparison"], shadow["agreement"]) == (method, agree)
    assert shadow["started_at"] >= live["ended_at"]  # the copy leaves after the live answer
    assert SECRET not in json.dumps([live, shadow, bodies], default=str)


def test_shadow_spend_cap_holds_across_a_restart(tmp_path, fake):
    """The cap is per UTC day: a restarted proxy counts what the day's copies already cost."""
    rules = rules_yaml("shadow", to="gpt-4o-mini", fraction=1.0, shadow_spend_cap_usd=1e-9)
    with proxy_with(tmp_path, fake, rules) as proxy:
        ask(proxy)
        _, shadow = proxy.rows(wait_for=2)
        ask(proxy)  # over the cap: not copied
        proxy.rows(wait_for=3)
    assert shadow["cost_usd"] > 0
    with running_proxy(proxy.data_dir, fake) as restarted:
        ask(restarted)
        rows = restarted.rows(wait_for=4)
    assert [json.loads(r.body)["model"] for r in fake.received] == [
        "gpt-4o",
        "gpt-4o-mini",
        "gpt-4o",
        "gpt-4o",
    ]
    assert [r["routing_arm"] for r in rows] == ["live", "shadow", None, None]


#: Free-text answers (compared by the judge) per model.
PROSE = {
    "gpt-4o": "Paris is the capital of France, on the Seine, known for the Louvre.",
    "cheap-model": "The capital of France is Paris, a city on the Seine with the Louvre.",
}


@pytest.mark.parametrize(
    ("verdicts", "agree"),
    [(["2", "SAME"], True), (["SAME", "2"], False)],
    ids=["candidate-as-good-both-ways", "incumbent-better-when-second"],
)
def test_free_text_copy_is_judged_in_both_orders(tmp_path, fake, verdicts, agree):
    pending = list(verdicts)

    def reply(received: Received) -> Reply:
        body = json.loads(received.body)
        text = pending.pop(0) if body["model"] == "judge-model" else PROSE[body["model"]]
        return answer(body, text)

    fake.routes["/v1/chat/completions"] = reply
    config = '[routing]\njudge_model = "judge-model"\n'
    with proxy_with(tmp_path, fake, rules_yaml("shadow", fraction=1.0), config=config) as proxy:
        assert ask(proxy, "Tell me about the capital of France.") == PROSE["gpt-4o"]
        live, shadow, *judged = proxy.rows(wait_for=4)
    prompts = [json.loads(r.body)["messages"][0]["content"] for r in fake.received[2:]]
    assert [json.loads(r.body)["model"] for r in fake.received] == [
        "gpt-4o",
        "cheap-model",
        "judge-model",
        "judge-model",
    ]
    first, second = (prompt.index(PROSE["gpt-4o"]) < prompt.index(PROSE["cheap-model"]) for prompt in prompts)
    assert (first, second) == (True, False)  # the incumbent shown first, then second
    assert [(r["routing_arm"], r["shadow_of"], r["routing_rule"]) for r in judged] == [
        ("judge", live["call_id"], "shadow-rule")
    ] * 2
    assert (shadow["comparison"], shadow["agreement"]) == ("judge", agree)
    assert SECRET not in json.dumps([live, shadow, *judged], default=str)


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
    assert "mode must be one of shadow, canary, enforce, got 'sideways'" in proxy.log.read_text()


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


def test_transport_failure_of_a_rewritten_call_is_not_retried(tmp_path):
    """mitmproxy 12 answers the client with a 502 itself after the ``error`` hook, whatever
    an addon sets there (see collector/proxy/addons/router.py), so the failure is recorded, not retried."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "rules.yaml").write_text(rules_yaml("enforce"))
    refused = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    proxy = ProxyProcess(data, {"api.openai.com": refused}).start()
    try:
        with pytest.raises(openai.InternalServerError) as failure:
            ask(proxy)
        (row,) = proxy.rows(wait_for=1)
    finally:
        assert proxy.stop() == 0, proxy.log.read_text()
    assert failure.value.status_code == 502
    assert (row["routing_arm"], row["request_model"], row["status_code"]) == ("enforce", "cheap-model", None)
    assert row["error"]
