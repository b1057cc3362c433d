"""include_usage injection: exact counts for streams whose client did not ask for usage,
while the client receives exactly the stream it would have received directly."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import textwrap

import httpx

from collector.proxy.addons.stream_usage import UsageChunkFilter
from tests.conftest import running_proxy
from tests.upstream import Received, Reply

PIECES = ["Hel", "lo", " there", "!"]


def openai_like_stream(received: Received) -> Reply:
    """What OpenAI sends: with include_usage, `"usage":null` on every chunk and a final
    usage-only chunk; without it, neither."""
    body = json.loads(received.body)
    with_usage = (body.get("stream_options") or {}).get("include_usage") is True
    base = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "gpt-4o-mini-2024-07-18",
    }
    events = []
    for i, piece in enumerate(PIECES):
        choice = {"index": 0, "delta": {"content": piece}, "logprobs": None, "finish_reason": None}
        if i == 0:
            choice["delta"] = {"role": "assistant", "content": piece, "refusal": None}
        events.append({**base, "choices": [choice]})
    events.append({**base, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]})
    if with_usage:
        events = [{**e, "usage": None} for e in events]
        events.append(
            {
                **base,
                "choices": [],
                "usage": {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15},
            }
        )
    payloads = [json.dumps(e, separators=(",", ":")) for e in events] + ["[DONE]"]
    return Reply.sse(payloads, delay=0.01)


SDK_SCRIPT = textwrap.dedent(
    """
    import json, sys, openai
    client = openai.OpenAI(api_key="sk-test-not-real", base_url=sys.argv[1] or None, max_retries=0)
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "say hello"}], stream=True)
    print(json.dumps([chunk.to_dict() for chunk in stream]))
    """
)


def sdk_chunks(base_url: str, env: dict[str, str]) -> list[dict]:
    out = subprocess.run(
        [sys.executable, "-c", SDK_SCRIPT, base_url], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_sdk_stream_is_unchanged_and_row_has_exact_usage(proxy, upstream):
    upstream.routes["/v1/chat/completions"] = openai_like_stream
    clean = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and not k.startswith("OPENAI")}
    direct = sdk_chunks(f"{upstream.url}/v1", clean)
    through = sdk_chunks("", {**clean, **proxy.env})
    assert through == direct
    assert all("usage" not in chunk for chunk in through)
    assert (
        "".join(c["choices"][0]["delta"].get("content", "") for c in through if c["choices"])
        == "Hello there!"
    )
    # upstream saw the option only on the proxied request
    sent = [json.loads(r.body) for r in upstream.received]
    assert "stream_options" not in sent[0]
    assert sent[1]["stream_options"] == {"include_usage": True}
    (row,) = proxy.rows(wait_for=1)
    assert (row["input_tokens"], row["output_tokens"], row["usage_source"]) == (11, 4, "provider")
    assert row["error"] is None and row["finish_reasons"] == ["stop"]
    # the stored request is the client's, not the rewritten one
    (body,) = proxy.rows("SELECT request_body FROM call_bodies", wait_for=1)
    assert "stream_options" not in json.loads(body["request_body"])


def post(proxy, url: str, body: dict, headers: dict | None = None) -> bytes:
    ctx = ssl.create_default_context(cafile=str(proxy.data_dir / "ca-bundle.pem"))
    with httpx.Client(proxy=proxy.url, verify=ctx) as client:
        resp = client.post(url, json=body, headers=headers or {})
        assert resp.status_code == 200
        return resp.content


def test_client_choices_are_respected(proxy, upstream):
    upstream.routes["/v1/chat/completions"] = openai_like_stream
    url = "https://api.openai.com/v1/chat/completions"
    asked = post(proxy, url, {"model": "m", "stream": True, "stream_options": {"include_usage": True}})
    assert asked.count(b'"usage":null') == 5 and b'"prompt_tokens":11' in asked
    messages = [{"role": "user", "content": "say hello to everyone in the room"}]
    declined = post(
        proxy,
        url,
        {"model": "m", "messages": messages, "stream": True, "stream_options": {"include_usage": False}},
    )
    assert b"usage" not in declined
    assert json.loads(upstream.received[1].body)["stream_options"] == {"include_usage": False}
    rows = proxy.rows("SELECT * FROM llm_calls ORDER BY started_at", wait_for=2)
    assert [r["usage_source"] for r in rows] == ["provider", "estimated"]
    # estimated at 4 characters a token: 37 prompt characters (33 of content, 4 of role),
    # 12 generated ("Hello there!")
    assert (rows[1]["input_tokens"], rows[1]["output_tokens"]) == (10, 3)


def test_signed_requests_are_never_modified(proxy, upstream):
    upstream.routes["/v1/chat/completions"] = openai_like_stream
    body = {"model": "m", "stream": True}
    post(proxy, "https://api.openai.com/v1/chat/completions", body, {"x-amz-content-sha256": "abc"})
    assert json.loads(upstream.received[0].body) == body


def test_filter_handles_events_split_anywhere():
    events = [
        b'data: {"choices":[{"delta":{"content":"a"}}],"usage":null}\n\n',
        b'data: {"usage":null,"choices":[{"delta":{}}]}\n\n',
        b'data: {"choices":[],"usage":{"prompt_tokens":1}}\n\n',
        b"data: [DONE]\n\n",
    ]
    stream = b"".join(events)
    want = (
        b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n'
        b'data: {"choices":[{"delta":{}}]}\n\n'
        b"data: [DONE]\n\n"
    )
    for size in (1, 3, 17, len(stream)):
        filt = UsageChunkFilter(lambda chunk: chunk)
        pieces = [p for i in range(0, len(stream), size) for p in filt(stream[i : i + size])] + filt(b"")
        assert all(pieces), "an empty piece would end a chunked response"
        out = b"".join(pieces)
        assert out == want, size


def test_injection_can_be_turned_off_per_provider(tmp_path, upstream):
    config = tmp_path / "llmtap.toml"
    config.write_text("[stream_usage]\nopenai = false\n")
    upstream.routes["/v1/chat/completions"] = openai_like_stream
    with running_proxy(tmp_path / "data", upstream, extra_args=["--config", str(config)]) as proxy:
        post(proxy, "https://api.openai.com/v1/chat/completions", {"model": "m", "stream": True})
    assert "stream_options" not in json.loads(upstream.received[0].body)


def test_bad_stream_usage_config_is_a_clear_error(tmp_path):
    config = tmp_path / "llmtap.toml"
    config.write_text('[stream_usage]\nopenai = "yes"\n')
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "proxy", "--data-dir", str(tmp_path), "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "stream_usage must be a table" in result.stderr


def test_stream_bytes_equal_the_direct_stream(proxy, upstream):
    """Byte for byte: what the client gets through llmtap (which added include_usage upstream)
    is what it gets directly without it, up to and including the final [DONE]."""
    upstream.routes["/v1/chat/completions"] = openai_like_stream
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    direct = httpx.post(f"{upstream.url}/v1/chat/completions", json=body).content
    through = post(proxy, "https://api.openai.com/v1/chat/completions", body)
    assert through == direct
    assert through.endswith(b"data: [DONE]\n\n")
    assert json.loads(upstream.received[-1].body)["stream_options"] == {"include_usage": True}
