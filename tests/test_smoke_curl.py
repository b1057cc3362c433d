"""curl through the real proxy: non-streamed and streamed OpenAI chat calls are recorded."""

from __future__ import annotations

import json
import os
import subprocess

from tests.upstream import Reply


def curl(proxy, url: str, body: dict, *headers: str) -> str:
    args = [
        "curl",
        "-sS",
        "--fail-with-body",
        "-N",
        url,
        "-H",
        "content-type: application/json",
        "-d",
        json.dumps(body),
    ]
    for h in headers:
        args += ["-H", h]
    return subprocess.run(
        args, env={**os.environ, **proxy.env}, capture_output=True, text=True, check=True
    ).stdout


def test_curl_chat_recorded(proxy, upstream):
    upstream.routes["/v1/chat/completions"] = Reply.json(
        {
            "id": "r1",
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [{"finish_reason": "stop"}],
            "usage": {
                "prompt_tokens": 12,
                "completion_tokens": 5,
                "prompt_tokens_details": {"cached_tokens": 4},
                "completion_tokens_details": {"reasoning_tokens": 1},
            },
        }
    )
    out = curl(
        proxy,
        "https://api.openai.com/v1/chat/completions",
        {"model": "gpt-4o-mini", "messages": []},
        "X-Llmtap-App: billing",
        "X-Llmtap-Property-Team: core",
    )
    assert json.loads(out)["id"] == "r1"
    (row,) = proxy.rows(wait_for=1)
    assert (row["provider"], row["api"], row["status_code"], row["stream"]) == ("openai", "chat", 200, False)
    assert (row["request_model"], row["response_model"]) == ("gpt-4o-mini", "gpt-4o-mini-2024-07-18")
    assert (row["input_tokens"], row["output_tokens"], row["cache_read_tokens"], row["reasoning_tokens"]) == (
        12,
        5,
        4,
        1,
    )
    assert row["app"] == "billing" and json.loads(row["properties"]) == {"team": "core"}
    assert row["usage_source"] == "provider"
    assert row["latency_ms"] > 0 and row["ttft_ms"] is not None
    # metadata headers never reach the provider
    assert not any(k.startswith("x-llmtap") for k in upstream.received[0].headers)


def test_curl_stream_recorded(proxy, upstream):
    chunk = {"id": "s1", "model": "gpt-4o-2024-08-06", "choices": [{"index": 0, "delta": {"content": "hi"}}]}
    final = {
        "id": "s1",
        "model": "gpt-4o-2024-08-06",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
    }
    usage = {
        "id": "s1",
        "model": "gpt-4o-2024-08-06",
        "choices": [],
        "usage": {"prompt_tokens": 9, "completion_tokens": 2},
    }
    upstream.routes["/v1/chat/completions"] = Reply.sse([chunk, chunk, final, usage, "[DONE]"], delay=0.02)
    out = curl(
        proxy,
        "https://api.openai.com/v1/chat/completions",
        {"model": "gpt-4o", "stream": True, "stream_options": {"include_usage": True}},
    )
    assert out.count("data: ") == 5
    (row,) = proxy.rows(wait_for=1)
    assert row["stream"] is True
    assert (row["input_tokens"], row["output_tokens"]) == (9, 2)
    assert row["finish_reasons"] == ["stop"]
    assert row["ttft_ms"] < row["latency_ms"]
