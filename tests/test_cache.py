"""The response cache, through a real proxy process: the official openai and anthropic SDKs,
streamed and not, against a local fake upstream that puts a fresh id in every answer (so an
answer fetched again would differ from the one replayed).

Every SDK call goes through an httpx transport that keeps the raw bytes the SDK read, so a hit is
compared with the miss that filled it byte for byte, and as the events the SDK handed the app.
"""

from __future__ import annotations

import itertools
import json
import ssl
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import pytest

from tests.conftest import running_proxy
from tests.proxyproc import ProxyProcess
from tests.upstream import FakeUpstream, Received, Reply

OPENAI_KEY = "sk-cache-test-key-one-0000"
OTHER_KEY = "sk-cache-test-key-two-0000"
ANTHROPIC_KEY = "sk-ant-cache-test-key-0000"
USAGE = {"prompt_tokens": 2000, "completion_tokens": 500, "total_tokens": 2500}
#: gpt-4o-mini: $0.15 input, $0.60 output per 1M tokens.
OPENAI_COST = Decimal("0.0006")
#: claude-haiku-4-5: $1 input, $5 output per 1M tokens.
ANTHROPIC_COST = Decimal("0.0045")
CONFIG = """
[cache]
ttl_s = 3600
max_mb = 16
"""
_ids = itertools.count(1)


# -- the fake provider ---------------------------------------------------------------------------


def openai_reply(received: Received) -> Reply:
    """A chat completion with a fresh id; a stream carries usage only when asked for, with
    ``"usage": null`` on every other chunk, as OpenAI's does."""
    body = json.loads(received.body)
    model, rid = body["model"], f"chatcmpl-{next(_ids)}"
    text = "Paris is the capital of France."
    if not body.get("stream"):
        message = {"role": "assistant", "content": text}
        return Reply.json(
            {
                "id": rid,
                "object": "chat.completion",
                "created": 1700000000 + next(_ids),
                "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": USAGE,
            }
        )
    with_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    base = {"id": rid, "object": "chat.completion.chunk", "created": 1700000000, "model": model}
    chunks: list[dict[str, Any]] = [
        {**base, "choices": [{"index": 0, "delta": {"content": word + " "}, "finish_reason": None}]}
        for word in text.split()
    ]
    chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    if with_usage:
        chunks = [{**chunk, "usage": None} for chunk in chunks]
        chunks.append({**base, "choices": [], "usage": USAGE})
    return Reply.sse([*chunks, "[DONE]"], delay=0.01)


def anthropic_reply(received: Received) -> Reply:
    body = json.loads(received.body)
    model, rid = body["model"], f"msg_{next(_ids)}"
    text = "Paris."
    usage = {"input_tokens": 2000, "output_tokens": 500}
    if not body.get("stream"):
        return Reply.json(
            {
                "id": rid,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": usage,
            }
        )
    start = {"id": rid, "type": "message", "role": "assistant", "model": model, "content": []}
    delta = {"type": "text_delta", "text": text}
    events = [
        {"type": "message_start", "message": {**start, "usage": {**usage, "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": delta},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 500}},
        {"type": "message_stop"},
    ]
    return Reply.sse([(event["type"], event) for event in events], delay=0.01)


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as server:
        server.routes["/v1/chat/completions"] = openai_reply
        server.routes["/v1/messages"] = anthropic_reply
        yield server


def proxy_with(data: Path, upstream: FakeUpstream, config: str = CONFIG):
    data.mkdir(parents=True, exist_ok=True)
    config_file = data.parent / f"{data.name}.toml"
    config_file.write_text(config)
    return running_proxy(data, upstream, extra_args=["--config", str(config_file)])


@pytest.fixture(scope="module")
def proxy(tmp_path_factory, upstream) -> Iterator[ProxyProcess]:
    with proxy_with(tmp_path_factory.mktemp("cache") / "data", upstream) as proc:
        yield proc


def calls_for(upstream: FakeUpstream, marker: str) -> int:
    """How many requests holding ``marker`` reached the upstream."""
    return sum(marker.encode() in r.body for r in upstream.received)


# -- clients that keep the bytes they read -------------------------------------------------------


class Recording:
    """An httpx transport that keeps, per response, its headers and the raw body bytes read.
    ``http`` is the httpx package the SDK uses (the anthropic SDK has its own fork, httpx2)."""

    def __init__(self, http: Any, proxy: ProxyProcess) -> None:
        tls = ssl.create_default_context(cafile=str(proxy.data_dir / "ca-bundle.pem"))
        self.http = http
        self.inner = http.HTTPTransport(proxy=proxy.url, verify=tls)
        self.responses: list[tuple[Any, bytearray]] = []

    def handle_request(self, request: Any) -> Any:
        response = self.inner.handle_request(request)
        body = bytearray()
        self.responses.append((response.headers, body))
        stream = response.stream

        class Tee(self.http.SyncByteStream):  # type: ignore[name-defined,misc]
            def __iter__(self) -> Iterator[bytes]:
                for chunk in stream:
                    body.extend(chunk)
                    yield chunk

            def close(self) -> None:
                stream.close()

        response.stream = Tee()
        return response

    def close(self) -> None:
        self.inner.close()


def transport(proxy: ProxyProcess) -> Recording:
    return Recording(httpx, proxy)


def openai_client(proxy: ProxyProcess, key: str = OPENAI_KEY) -> tuple[openai.OpenAI, Recording]:
    recording = transport(proxy)
    client = openai.OpenAI(
        api_key=key,
        http_client=httpx.Client(transport=recording),  # type: ignore[arg-type]
        max_retries=0,
    )
    return client, recording


def anthropic_client(proxy: ProxyProcess) -> tuple[anthropic.Anthropic, Recording]:
    recording = Recording(httpx2, proxy)
    client = anthropic.Anthropic(
        api_key=ANTHROPIC_KEY, http_client=httpx2.Client(transport=recording), max_retries=0
    )
    return client, recording


def sdk_call(proxy: ProxyProcess, case: str, prompt: str) -> tuple[list[Any], httpx.Headers, bytes]:
    """One call of ``case`` asking ``prompt``: what the SDK handed the app (the events of a stream,
    else the one parsed object, as dicts), the response headers and the raw body bytes read."""
    provider, mode = case.split("-", 1)
    if provider == "openai":
        client, recording = openai_client(proxy)
        kwargs: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]}
        if mode != "plain":
            kwargs["stream"] = True
        if mode == "stream-usage":
            kwargs["stream_options"] = {"include_usage": True}
        result: Any = client.chat.completions.create(**kwargs)
    else:
        aclient, recording = anthropic_client(proxy)
        result = aclient.messages.create(
            model="claude-haiku-4-5",
            max_tokens=600,
            messages=[{"role": "user", "content": prompt}],
            stream=mode == "stream",
        )
    seen = [event.model_dump() for event in result] if mode != "plain" else [result.model_dump()]
    ((headers, body),) = recording.responses
    return seen, headers, bytes(body)


def rows(proxy: ProxyProcess, marker: str, count: int) -> list[dict[str, Any]]:
    """The rows of the calls whose stored request body holds ``marker``, oldest first."""
    sql = (
        "SELECT c.* FROM llm_calls c JOIN call_bodies b USING (call_id) "
        f"WHERE b.request_body LIKE '%{marker}%' ORDER BY c.started_at"
    )
    found = proxy.rows(sql, wait_for=count)
    assert len(found) == count, found
    return found


# -- hits replay what the miss received ----------------------------------------------------------


CASES = ["openai-plain", "openai-stream", "openai-stream-usage", "anthropic-plain", "anthropic-stream"]


@pytest.mark.parametrize("case", CASES)
def test_a_hit_gives_the_sdk_the_same_bytes_and_events_as_the_miss_that_filled_it(proxy, upstream, case):
    prompt = f"Capital of France? ({case})"
    first, first_headers, first_raw = sdk_call(proxy, case, prompt)
    second, second_headers, second_raw = sdk_call(proxy, case, prompt)

    assert (first_headers["x-llmtap-cache"], second_headers["x-llmtap-cache"]) == ("miss", "hit")
    assert calls_for(upstream, prompt) == 1
    assert second_raw == first_raw
    assert second == first
    if case != "openai-stream":  # the usage chunk only when the client asked for it
        assert "2000" in first_raw.decode()
    else:
        assert b'"usage"' not in first_raw and len(first) == 7

    miss, hit = rows(proxy, prompt, 2)
    cost = OPENAI_COST if case.startswith("openai") else ANTHROPIC_COST
    assert (miss["cache_hit"], miss["cost_usd"], miss["cache_saved_usd"]) == (False, cost, None)
    assert (hit["cache_hit"], hit["cache_of"], hit["cost_usd"]) == (True, miss["call_id"], 0)
    assert (hit["input_cost_usd"], hit["output_cost_usd"], hit["cache_saved_usd"]) == (0, 0, cost)
    # The tokens served are the original's, as the provider reported them (the stream's usage
    # when its client did not ask for it too).
    tokens = ("input_tokens", "output_tokens", "usage_source", "response_model", "stream", "response_id")
    assert [hit[c] for c in tokens] == [miss[c] for c in tokens]
    assert (hit["input_tokens"], hit["output_tokens"], hit["usage_source"]) == (2000, 500, "provider")
    assert hit["call_id"] != miss["call_id"] and hit["status_code"] == 200
    assert 0 <= hit["ttft_ms"] <= hit["latency_ms"]
    assert second_headers["x-llmtap-call-id"] == hit["call_id"]


def test_a_changed_key_order_or_whitespace_still_hits(proxy, upstream):
    url = "https://api.openai.com/v1/chat/completions"
    prompt = "Key order test"
    bodies = [
        json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}], "n": 1}),
        '{ "n" : 1,\n  "messages": [ {"content": "Key order test", "role": "user"} ],\n'
        ' "model":"gpt-4o-mini"}',
    ]
    client = httpx.Client(transport=transport(proxy))  # type: ignore[arg-type]
    headers = {"authorization": f"Bearer {OPENAI_KEY}", "content-type": "application/json"}
    answers = [client.post(url, content=body, headers=headers) for body in bodies]
    assert [a.headers["x-llmtap-cache"] for a in answers] == ["miss", "hit"]
    assert answers[0].content == answers[1].content
    assert calls_for(upstream, prompt) == 1


def test_requests_signed_over_their_body_are_not_cached(proxy, upstream):
    """AWS SigV4: the signature is the credential and changes with every request."""
    client = httpx.Client(transport=transport(proxy))  # type: ignore[arg-type]
    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Signed"}]})
    headers = {"authorization": "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/x, Signature=abc"}
    for _ in range(2):
        answer = client.post("https://api.openai.com/v1/chat/completions", content=body, headers=headers)
        assert answer.status_code == 200 and "x-llmtap-cache" not in answer.headers
    assert calls_for(upstream, "Signed") == 2


def test_a_different_api_key_misses(proxy, upstream):
    prompt = "Which key asks?"
    for key, expected in [(OPENAI_KEY, "miss"), (OTHER_KEY, "miss"), (OTHER_KEY, "hit"), (OPENAI_KEY, "hit")]:
        client, recording = openai_client(proxy, key)
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}])
        assert recording.responses[0][0]["x-llmtap-cache"] == expected, key
    assert calls_for(upstream, prompt) == 2


@pytest.mark.parametrize("bypass", [{"Cache-Control": "no-cache"}, {"X-Llmtap-Cache": "off"}])
def test_bypass_headers_go_to_the_provider_and_fill_nothing(proxy, upstream, bypass):
    prompt = f"Bypass {next(iter(bypass))}"
    client, recording = openai_client(proxy)
    ask = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]}
    client.chat.completions.create(**ask)  # fills the cache
    client.chat.completions.create(**ask, extra_headers=bypass)
    client.chat.completions.create(**ask, extra_headers=bypass)
    client.chat.completions.create(**ask)
    assert [headers.get("x-llmtap-cache") for headers, _ in recording.responses] == [
        "miss",
        None,
        None,
        "hit",
    ]
    assert calls_for(upstream, prompt) == 3
    assert all("x-llmtap-cache" not in r.headers for r in upstream.received)  # never sent upstream
    assert [row["cache_hit"] for row in rows(proxy, prompt, 4)] == [False, None, None, True]


def test_ttl_header_shortens_the_ttl(proxy, upstream):
    prompt = "Short-lived answer"
    client, recording = openai_client(proxy)
    ask = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]}
    short = {"X-Llmtap-Cache-Ttl": "1"}
    client.chat.completions.create(**ask, extra_headers=short)
    client.chat.completions.create(**ask)
    time.sleep(1.2)
    client.chat.completions.create(**ask)  # expired: the entry was kept for 1 s only
    client.chat.completions.create(**ask)  # stored again for the config's hour ...
    time.sleep(0.6)
    client.chat.completions.create(
        **ask, extra_headers={"X-Llmtap-Cache-Ttl": "0.5"}
    )  # ... too old for this one
    client.chat.completions.create(**ask, extra_headers={"X-Llmtap-Cache-Ttl": "0"})  # 0: bypass
    expected = ["miss", "hit", "miss", "hit", "miss", None]
    assert [headers.get("x-llmtap-cache") for headers, _ in recording.responses] == expected
    assert calls_for(upstream, prompt) == 4


def test_only_complete_successful_answers_are_stored(proxy, upstream):
    def flaky(received: Received) -> Reply:
        body = json.loads(received.body)
        if "error" in body["messages"][0]["content"]:
            return Reply.json({"error": {"message": "overloaded", "type": "server_error"}}, status=500)
        reply = openai_reply(received)
        reply.reset_after = 3  # the stream breaks before its end
        return reply

    upstream.routes["/v1/chat/completions"] = flaky
    try:
        client, _ = openai_client(proxy)
        for prompt in ("An error, please", "A broken stream, please"):
            for _ in range(2):
                with pytest.raises((openai.APIError, httpx.HTTPError)):
                    if "error" in prompt:
                        client.chat.completions.create(
                            model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}]
                        )
                    else:
                        stream = client.chat.completions.create(
                            model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}], stream=True
                        )
                        list(stream)
            assert calls_for(upstream, prompt) == 2, prompt
    finally:
        upstream.routes["/v1/chat/completions"] = openai_reply


def test_no_cache_table_no_header(tmp_path, upstream):
    with proxy_with(tmp_path / "data", upstream, config="") as proxy:
        client, recording = openai_client(proxy)
        for _ in range(2):
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "No cache"}]
            )
        assert all("x-llmtap-cache" not in headers for headers, _ in recording.responses)
        assert [row["cache_hit"] for row in proxy.rows(wait_for=2)] == [None, None]
        assert not (proxy.data_dir / "cache.sqlite3").exists()
    assert calls_for(upstream, "No cache") == 2


# -- restarts, damage, budgets -------------------------------------------------------------------


def ask_openai(proxy: ProxyProcess, prompt: str, stream: bool = False) -> tuple[str | None, bytes]:
    client, recording = openai_client(proxy)
    result = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}], stream=stream
    )
    if stream:
        list(result)  # type: ignore[arg-type]
    headers, body = recording.responses[0]
    return headers.get("x-llmtap-cache"), bytes(body)


def test_the_cache_survives_a_restart(tmp_path, upstream):
    data = tmp_path / "data"
    with proxy_with(data, upstream) as proxy:
        first = [ask_openai(proxy, "Remember me"), ask_openai(proxy, "Remember my stream", stream=True)]
    assert (data / "cache.sqlite3").stat().st_mode & 0o777 == 0o600
    with proxy_with(data, upstream) as proxy:
        again = [ask_openai(proxy, "Remember me"), ask_openai(proxy, "Remember my stream", stream=True)]
    assert [state for state, _ in first] == ["miss", "miss"]
    assert [state for state, _ in again] == ["hit", "hit"]
    assert [body for _, body in again] == [body for _, body in first]
    assert calls_for(upstream, "Remember me") == calls_for(upstream, "Remember my stream") == 1


def test_a_damaged_cache_file_fails_open(tmp_path, upstream):
    data = tmp_path / "data"
    data.mkdir()
    (data / "cache.sqlite3").write_bytes(b"this is not a database" * 1000)
    with proxy_with(data, upstream) as proxy:  # replaced by an empty cache
        assert [ask_openai(proxy, "Damaged file")[0] for _ in range(2)] == ["miss", "hit"]
    # Damage the stored answers' bytes where they lie in the file: a hit must never replay them.
    path = data / "cache.sqlite3"
    raw = bytearray(path.read_bytes())
    at = raw.find(b"Paris is the capital")
    assert at > 0
    while at >= 0:
        raw[at : at + 5] = b"Xaris"
        at = raw.find(b"Paris is the capital", at + 1)
    path.write_bytes(bytes(raw))
    with proxy_with(data, upstream) as proxy:
        state, body = ask_openai(proxy, "Damaged file")
        assert state == "miss" and b"Paris is the capital" in body
        assert ask_openai(proxy, "Damaged file")[0] == "hit"
    assert calls_for(upstream, "Damaged file") == 2


def test_budgets_count_a_hit_as_zero(tmp_path, upstream):
    """A budget that blocks once the calls cost 1.5 times one answer: three hits after the first
    call leave it open; a second paid call closes it."""
    config = (
        CONFIG
        + f"""
[budgets.tight]
limit_usd = {OPENAI_COST * Decimal("1.5")}
period = "day"
action = "block"
"""
    )
    with proxy_with(tmp_path / "data", upstream, config=config) as proxy:
        states = [ask_openai(proxy, "Budget A")[0] for _ in range(4)]
        assert states == ["miss", "hit", "hit", "hit"]
        assert ask_openai(proxy, "Budget B")[0] == "miss"  # spent 1 answer's cost: still open
        with pytest.raises(openai.RateLimitError):
            ask_openai(proxy, "Budget C")  # spent 2 answers' cost: blocked
        found = proxy.rows(
            "SELECT cache_hit, cost_usd, cache_saved_usd FROM llm_calls ORDER BY started_at", 6
        )
    assert found[:5] == [
        {"cache_hit": False, "cost_usd": OPENAI_COST, "cache_saved_usd": None},
        *[{"cache_hit": True, "cost_usd": 0, "cache_saved_usd": OPENAI_COST}] * 3,
        {"cache_hit": False, "cost_usd": OPENAI_COST, "cache_saved_usd": None},
    ]
    assert found[5]["cache_hit"] is None  # blocked before the cache: not a call it could serve
