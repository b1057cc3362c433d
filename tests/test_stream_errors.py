"""Failed and odd calls through the real proxy: each still gives one row that says what happened.

One proxy runs for the module; each test tags its call with a ``?case=`` query parameter
(kept in the stored path) to find its row, and checks that the part of the proxy's log
written during the test holds no traceback.
"""

from __future__ import annotations

import json
import re
import ssl
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import running_proxy
from tests.proxyproc import ProxyProcess
from tests.upstream import FakeUpstream, Reply

OPENAI = "https://api.openai.com/v1/chat/completions"
ANTHROPIC = "https://api.anthropic.com/v1/messages"


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as server:
        yield server


@pytest.fixture(scope="module")
def proxy(tmp_path_factory, upstream) -> Iterator[ProxyProcess]:
    with running_proxy(tmp_path_factory.mktemp("errors") / "data", upstream) as proc:
        yield proc


@pytest.fixture
def client(proxy) -> Iterator[httpx.Client]:
    ctx = ssl.create_default_context(cafile=str(proxy.data_dir / "ca-bundle.pem"))
    with httpx.Client(proxy=proxy.url, verify=ctx, timeout=30) as c:
        yield c


@pytest.fixture
def clean_log(proxy) -> Iterator[None]:
    """The proxy logs no traceback and no internal error while the test runs."""
    start = proxy.log.stat().st_size
    yield
    time.sleep(0.2)
    with open(proxy.log, "rb") as f:
        f.seek(start)
        new = f.read().decode(errors="replace")
    assert "Traceback" not in new, new
    assert "internal error" not in new, new


def row_for(proxy: ProxyProcess, case: str) -> dict:
    rows = proxy.rows(f"SELECT * FROM llm_calls WHERE path LIKE '%case={case}'", wait_for=1)
    assert len(rows) == 1, rows
    return rows[0]


def anthropic_start(model: str, input_tokens: int, cache_read: int = 0) -> tuple[str, dict]:
    return (
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": "msg_01",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": None,
                "usage": {
                    "input_tokens": input_tokens,
                    "cache_read_input_tokens": cache_read,
                    "output_tokens": 1,
                },
            },
        },
    )


def text_delta(text: str) -> tuple[str, dict]:
    return (
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}},
    )


# -- streams cut short ------------------------------------------------------------------------


def test_client_disconnects_mid_stream(proxy, upstream, client, clean_log):
    events = [anthropic_start("claude-sonnet-4-20250514", 25, cache_read=5)]
    events += [text_delta(f"word{i} ") for i in range(200)]  # 200 x 0.1 s: far longer than the test
    upstream.routes["/v1/messages"] = Reply.sse(events, delay=0.1)
    body = {"model": "claude-sonnet-4", "stream": True, "max_tokens": 500, "messages": []}
    seen = 0
    t0 = time.monotonic()
    with client.stream("POST", f"{ANTHROPIC}?case=disconnect", json=body) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line.startswith("data:"):
                seen += 1
                if seen == 3:
                    break
    # leaving the block closes the unfinished response's connection
    row = row_for(proxy, "disconnect")
    assert time.monotonic() - t0 < 10, "row only written once the upstream finished"
    assert row["error"] and re.search(r"client.*disconnect|disconnect.*client", row["error"], re.I), row
    assert row["stream"] is True and row["status_code"] == 200
    # the usage seen so far (message_start's), normalised: 25 uncached + 5 cache reads
    assert (row["input_tokens"], row["output_tokens"], row["cache_read_tokens"]) == (30, 1, 5)
    assert row["usage_source"] == "provider"
    assert row["response_model"] == "claude-sonnet-4-20250514"
    assert row["latency_ms"] < 10_000
    assert row["ended_at"] >= row["started_at"]


def test_upstream_resets_mid_stream(proxy, upstream, client, clean_log):
    events = [anthropic_start("claude-3-5-haiku-20241022", 40)]
    events += [text_delta(f"w{i} ") for i in range(10)]
    reply = Reply.sse(events, delay=0.02, reset_after=4)
    upstream.routes["/v1/messages"] = reply
    body = {"model": "claude-3-5-haiku", "stream": True, "max_tokens": 50, "messages": []}
    got = b""
    # the client sees the stream cut short, too
    with pytest.raises(httpx.HTTPError), client.stream("POST", f"{ANTHROPIC}?case=reset", json=body) as resp:
        assert resp.status_code == 200
        for chunk in resp.iter_raw():
            got += chunk
    assert got == b"".join((reply.chunks or [])[:4])  # everything before the reset arrived unchanged
    row = row_for(proxy, "reset")
    assert row["error"], row
    assert re.search(r"reset|closed|incomplete|protocol", row["error"], re.I), row["error"]
    assert "client disconnected" not in row["error"].lower()
    assert row["stream"] is True and row["status_code"] == 200
    assert (row["input_tokens"], row["output_tokens"]) == (40, 1)
    assert row["usage_source"] == "provider"


# -- in-band stream errors --------------------------------------------------------------------


def test_anthropic_stream_error_event(proxy, upstream, client, clean_log):
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    reply = Reply.sse(
        [anthropic_start("claude-sonnet-4-20250514", 12), text_delta("Hel"), ("error", error)], delay=0.01
    )
    upstream.routes["/v1/messages"] = reply
    body = {"model": "claude-sonnet-4", "stream": True, "max_tokens": 50, "messages": []}
    resp = client.post(f"{ANTHROPIC}?case=anthropic-error", json=body)
    assert resp.status_code == 200
    assert resp.content == b"".join(reply.chunks or [])
    row = row_for(proxy, "anthropic-error")
    assert row["error"] and "overloaded_error" in row["error"] and "Overloaded" in row["error"], row
    assert row["stream"] is True and row["status_code"] == 200
    assert (row["input_tokens"], row["output_tokens"]) == (12, 1)
    assert row["usage_source"] == "provider"


def test_openai_stream_error_chunk(proxy, upstream, client, clean_log):
    chunk = {"id": "c1", "model": "gpt-4o-2024-08-06", "choices": [{"index": 0, "delta": {"content": "Hi"}}]}
    error = {
        "error": {"message": "The server had an error while processing your request.", "type": "server_error"}
    }
    reply = Reply.sse([chunk, chunk, error], delay=0.01)
    upstream.routes["/v1/chat/completions"] = reply
    resp = client.post(
        f"{OPENAI}?case=openai-error", json={"model": "gpt-4o", "stream": True, "messages": []}
    )
    assert resp.status_code == 200
    assert resp.content == b"".join(reply.chunks or [])
    row = row_for(proxy, "openai-error")
    assert row["error"] and "server_error" in row["error"], row
    assert row["stream"] is True and row["response_model"] == "gpt-4o-2024-08-06"
    assert row["input_tokens"] is None and row["usage_source"] == "none"


# -- HTTP errors ------------------------------------------------------------------------------


def test_openai_429_passed_through_and_recorded(proxy, upstream, client, clean_log):
    err = {
        "error": {
            "message": "Rate limit reached for gpt-4o-mini in organization org-x on tokens per min.",
            "type": "tokens",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    reply = Reply.json(err, status=429)
    reply.headers.update({"retry-after": "7", "x-request-id": "req_429"})
    upstream.routes["/v1/chat/completions"] = reply
    resp = client.post(f"{OPENAI}?case=http429", json={"model": "gpt-4o-mini", "messages": []})
    assert resp.status_code == 429
    assert resp.content == reply.body
    assert resp.headers["retry-after"] == "7" and resp.headers["x-request-id"] == "req_429"
    row = row_for(proxy, "http429")
    assert row["status_code"] == 429
    assert row["error"] and "Rate limit reached" in row["error"], row
    assert row["request_model"] == "gpt-4o-mini" and row["stream"] is False
    assert row["input_tokens"] is None and row["usage_source"] == "none"


def test_anthropic_500_recorded(proxy, upstream, client, clean_log):
    err = {"type": "error", "error": {"type": "api_error", "message": "Internal server error"}}
    reply = Reply.json(err, status=500)
    upstream.routes["/v1/messages"] = reply
    resp = client.post(f"{ANTHROPIC}?case=http500", json={"model": "claude-3-5-haiku", "messages": []})
    assert (resp.status_code, resp.content) == (500, reply.body)
    row = row_for(proxy, "http500")
    assert row["status_code"] == 500
    assert row["error"] and "api_error" in row["error"], row


def test_non_json_error_body_recorded(proxy, upstream, client, clean_log):
    reply = Reply(
        status=503, body=b"<html>upstream unavailable</html>", headers={"content-type": "text/html"}
    )
    upstream.routes["/v1/chat/completions"] = reply
    resp = client.post(f"{OPENAI}?case=http503", json={"model": "gpt-4o", "messages": []})
    assert (resp.status_code, resp.content) == (503, reply.body)
    row = row_for(proxy, "http503")
    assert row["status_code"] == 503
    assert row["error"] and "503" in row["error"], row


# -- malformed bodies -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b'{"id": "x", "model": "gpt-4o", "usage": {"prompt_tokens": 3',  # cut short
        b"not json at all",
        b"[1, 2, 3]",
        b'"a string"',
        b'{"usage": "lots", "choices": "none", "model": 7}',  # JSON, wrong shapes
        b"\xff\xfe\x00garbage",
    ],
    ids=["truncated", "text", "list", "string", "wrong-shapes", "binary"],
)
def test_malformed_response_body(proxy, upstream, client, clean_log, body, request):
    case = f"bad-response-{request.node.callspec.id}"
    upstream.routes["/v1/chat/completions"] = Reply(body=body, headers={"content-type": "application/json"})
    resp = client.post(f"{OPENAI}?case={case}", json={"model": "gpt-4o", "messages": []})
    assert (resp.status_code, resp.content) == (200, body)
    row = row_for(proxy, case)
    assert row["status_code"] == 200 and row["request_model"] == "gpt-4o"
    assert row["input_tokens"] is None and row["output_tokens"] is None
    assert row["usage_source"] == "none"


def test_bad_gzip_response_passed_through(proxy, upstream, client, clean_log):
    body = b"this is not gzip"
    upstream.routes["/v1/chat/completions"] = Reply(
        body=body, headers={"content-type": "application/json", "content-encoding": "gzip"}
    )
    with client.stream("POST", f"{OPENAI}?case=bad-gzip", json={"model": "gpt-4o", "messages": []}) as resp:
        raw = b"".join(resp.iter_raw())  # as sent, not decoded by the client
    assert (resp.status_code, raw) == (200, body)
    assert resp.headers["content-encoding"] == "gzip"
    row = row_for(proxy, "bad-gzip")
    assert row["status_code"] == 200 and row["request_model"] == "gpt-4o"
    assert row["input_tokens"] is None and row["usage_source"] == "none"


@pytest.mark.parametrize(
    "payload",
    [b"hello, not json", b"{broken", b"\x00\x01\x02binary", b""],
    ids=["text", "broken", "binary", "empty"],
)
def test_non_json_request_body(proxy, upstream, client, clean_log, payload, request):
    case = f"bad-request-{request.node.callspec.id}"
    upstream.routes["/v1/chat/completions"] = Reply(status=400, body=b"could not parse the JSON body")
    resp = client.post(f"{OPENAI}?case={case}", content=payload, headers={"content-type": "application/json"})
    assert (resp.status_code, resp.content) == (400, b"could not parse the JSON body")
    assert upstream.received[-1].body == payload  # forwarded unchanged
    row = row_for(proxy, case)
    assert row["request_model"] is None and row["status_code"] == 400
    assert row["input_tokens"] is None and row["usage_source"] == "none"


def test_malformed_stream_event_keeps_later_usage(proxy, upstream, client, clean_log):
    """One bad event does not stop usage from being read from the rest of the stream."""
    chunk = {"id": "c2", "model": "gpt-4o-mini", "choices": [{"index": 0, "delta": {"content": "a"}}]}
    usage = {
        "id": "c2",
        "model": "gpt-4o-mini",
        "choices": [],
        "usage": {"prompt_tokens": 8, "completion_tokens": 3},
    }
    reply = Reply.sse([chunk, '{"id": "c2", "choices": [', chunk, usage, "[DONE]"], delay=0.01)
    upstream.routes["/v1/chat/completions"] = reply
    body = {"model": "gpt-4o-mini", "stream": True, "stream_options": {"include_usage": True}}
    resp = client.post(f"{OPENAI}?case=bad-event", json=body)
    assert resp.content == b"".join(reply.chunks or [])
    row = row_for(proxy, "bad-event")
    assert (row["input_tokens"], row["output_tokens"]) == (8, 3), row
    assert row["usage_source"] == "provider"


def test_gzip_json_body_still_read(proxy, upstream, client, clean_log):
    """Control for the malformed cases: a well-formed (gzip) body does give usage."""
    obj = {"id": "g", "model": "gpt-4o", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}}
    upstream.routes["/v1/chat/completions"] = Reply.json(obj, gzip_body=True)
    resp = client.post(f"{OPENAI}?case=gzip-ok", json={"model": "gpt-4o", "messages": []})
    assert json.loads(resp.content) == obj
    row = row_for(proxy, "gzip-ok")
    assert (row["input_tokens"], row["output_tokens"], row["usage_source"]) == (5, 2, "provider")
