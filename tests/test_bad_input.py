"""Bad input on LLM paths: the client's traffic passes unchanged, the row records what could
be read, and nothing raises out of the addon (the proxy log shows no traceback)."""

from __future__ import annotations

import json
import os
import ssl
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import running_proxy
from tests.upstream import FakeUpstream, Received, Reply

OPENAI = "https://api.openai.com"


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as server:
        yield server


@pytest.fixture(scope="module")
def proxy(tmp_path_factory, upstream):
    with running_proxy(tmp_path_factory.mktemp("bad") / "data", upstream) as proc:
        yield proc
    assert "Traceback" not in proc.log.read_text()


@pytest.fixture
def client(proxy) -> Iterator[httpx.Client]:
    ctx = ssl.create_default_context(cafile=str(proxy.data_dir / "ca-bundle.pem"))
    with httpx.Client(proxy=proxy.url, verify=ctx, timeout=60) as c:
        yield c


def echo_size(received: Received) -> Reply:
    usage = {"prompt_tokens": len(received.body) // 4, "completion_tokens": 1}
    return Reply.json({"id": f"size-{len(received.body)}", "model": "gpt-4o", "choices": [], "usage": usage})


def row(proxy, case: str) -> dict:
    """The stored row of the call tagged ``case=<case>``, waiting (up to 10 s) for it."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if found := [r for r in proxy.rows() if f"case={case}" in r["path"]]:
            (only,) = found
            return only
        time.sleep(0.1)
    raise AssertionError(f"no row for {case}")


def test_ten_megabyte_body(proxy, upstream, client):
    upstream.routes["/v1/chat/completions"] = echo_size
    text = "x" * (10 * 1024 * 1024)
    body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": text}]}).encode()
    resp = client.post(f"{OPENAI}/v1/chat/completions?case=10mb", content=body)
    assert resp.json()["id"] == f"size-{len(body)}"  # the upstream got every byte
    found = row(proxy, "10mb")
    assert found["request_model"] == "gpt-4o" and found["input_tokens"] == len(body) // 4


def test_binary_body_on_llm_path(proxy, upstream, client):
    upstream.routes["/v1/chat/completions"] = Reply(
        body=os.urandom(4096), headers={"content-type": "application/octet-stream"}
    )
    payload = os.urandom(8192)
    resp = client.post(f"{OPENAI}/v1/chat/completions?case=binary", content=payload)
    assert resp.status_code == 200 and len(resp.content) == 4096
    assert upstream.received[-1].body == payload
    found = row(proxy, "binary")
    assert found["request_model"] is None and found["usage_source"] == "none"


def test_unknown_fields_are_ignored(proxy, upstream, client):
    reply = {
        "id": "u1",
        "model": "gpt-4o",
        "choices": [{"finish_reason": "stop", "future_field": {"x": [1, 2]}}],
        "usage": {
            "prompt_tokens": 5,
            "completion_tokens": 2,
            "brand_new_tokens": 9,
            "prompt_tokens_details": 7,
        },
        "surprise": True,
    }
    upstream.routes["/v1/chat/completions"] = Reply.json(reply)
    resp = client.post(
        f"{OPENAI}/v1/chat/completions?case=unknown-fields", json={"model": "gpt-4o", "new": 1}
    )
    assert resp.json() == reply
    found = row(proxy, "unknown-fields")
    assert (found["input_tokens"], found["output_tokens"], found["cache_read_tokens"]) == (5, 2, None)


def test_unknown_endpoint_on_known_host(proxy, upstream, client):
    upstream.routes["/v1/brand/new/thing"] = Reply.json(
        {"id": "n1", "model": "gpt-9", "usage": {"input_tokens": 3}}
    )
    resp = client.post(f"{OPENAI}/v1/brand/new/thing?case=new-endpoint", json={"model": "gpt-9"})
    assert resp.json()["id"] == "n1"
    found = row(proxy, "new-endpoint")
    assert (found["provider"], found["api"], found["request_model"]) == ("openai", "unknown", "gpt-9")
    # a GET on the same host (model listing, file download) is not an LLM call
    upstream.routes["/v1/models"] = Reply.json({"data": []})
    assert client.get(f"{OPENAI}/v1/models?case=listing").json() == {"data": []}


def test_truncated_stream(proxy, upstream, client):
    chunk = {"id": "t1", "model": "gpt-4o", "choices": [{"index": 0, "delta": {"content": "partial"}}]}
    reply = Reply.sse([chunk, chunk])
    reply.chunks[-1] = reply.chunks[-1][:20]  # the stream ends mid-event
    upstream.routes["/v1/chat/completions"] = reply
    body = {"model": "gpt-4o", "stream": True, "stream_options": {"include_usage": True}, "messages": []}
    resp = client.post(f"{OPENAI}/v1/chat/completions?case=truncated", json=body)
    assert resp.content == b"".join(reply.chunks)
    found = row(proxy, "truncated")
    assert found["response_model"] == "gpt-4o" and found["stream"] is True
    assert found["usage_source"] in ("estimated", "none")


def test_no_row_for_get_listing(proxy):
    assert not [r for r in proxy.rows() if "case=listing" in r["path"]]


def test_fifty_megabyte_body(proxy, upstream, client):
    upstream.routes["/v1/chat/completions"] = echo_size
    body = b'{"model": "gpt-4o", "input": "' + b"y" * (50 * 1024 * 1024) + b'"}'
    resp = client.post(f"{OPENAI}/v1/chat/completions?case=50mb", content=body)
    assert upstream.received[-1].body == body  # every byte, unchanged
    direct = httpx.post(f"{upstream.url}/v1/chat/completions", content=body, timeout=60)
    assert resp.content == direct.content
    found = row(proxy, "50mb")
    assert found["status_code"] == 200 and found["request_model"] == "gpt-4o"
    assert found["input_tokens"] == len(body) // 4 and found["error"] is None


def test_upstream_that_never_answers(proxy, upstream, client):
    """No response headers before the client gives up: the row says the client went away."""

    def hang(received: Received) -> Reply:
        time.sleep(2.0)
        return Reply.json({"id": "too-late"})

    upstream.routes["/v1/chat/completions"] = hang
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}]}
    with pytest.raises(httpx.ReadTimeout):
        client.post(f"{OPENAI}/v1/chat/completions?case=hang", json=body, timeout=0.5)
    assert json.loads(upstream.received[-1].body) == body  # the request itself went through
    found = row(proxy, "hang")
    assert found["status_code"] is None and found["request_model"] == "gpt-4o"
    assert found["error"] and "disconnect" in found["error"].lower()
    assert found["usage_source"] == "none" and found["input_tokens"] is None


def test_upstream_that_stalls_past_the_client_timeout(proxy, upstream, client):
    chunk = {"id": "slow", "model": "gpt-4o", "choices": [{"index": 0, "delta": {"content": "late"}}]}
    upstream.routes["/v1/chat/completions"] = Reply.sse([chunk, chunk], delay=3.0)
    body = {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "hello"}]}
    with pytest.raises(httpx.ReadTimeout):
        client.post(f"{OPENAI}/v1/chat/completions?case=stall", json=body, timeout=0.5)
    found = row(proxy, "stall")
    assert found["error"] and "disconnect" in found["error"].lower()
    assert found["status_code"] == 200 and found["request_model"] == "gpt-4o"
