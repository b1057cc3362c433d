"""Unit tests: the incremental SSE reader and provider matching."""

from __future__ import annotations

import pytest

from collector.providers import ProviderRegistry
from collector.wire.sse import SSEReader

STREAM = (
    'event: message_start\r\ndata: {"a": 1}\r\n\r\n'
    ": keep-alive comment\n\n"
    "data: line one\ndata: line two\n\n"
    "event: ping\ndata: {}\n\n"
    "data: caf\u00e9 \u2603\n\n"
    "data: [DONE]\n\n"
).encode()
EXPECTED = [
    ("message_start", '{"a": 1}'),
    ("message", "line one\nline two"),
    ("ping", "{}"),
    ("message", "caf\u00e9 \u2603"),
    ("message", "[DONE]"),
]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, len(STREAM)])
def test_sse_reader_any_chunking(size):
    reader = SSEReader()
    events = []
    for i in range(0, len(STREAM), size):
        events += list(reader.feed(STREAM[i : i + size]))
    events += list(reader.close())
    assert events == EXPECTED


def test_sse_reader_final_event_without_blank_line():
    reader = SSEReader()
    assert list(reader.feed(b"data: a\n\ndata: b")) == [("message", "a")]
    assert list(reader.close()) == [("message", "b")]


def test_registry_matches_hosts_and_paths():
    registry = ProviderRegistry(extra_hosts={"llm.internal.example": "openai"})
    assert registry.match("api.openai.com", "/v1/chat/completions").api == "chat"
    assert registry.match("api.anthropic.com", "/v1/messages?beta=true").provider.name == "anthropic"
    assert registry.match("llm.internal.example", "/v1/chat/completions").provider.name == "openai"
    assert registry.match("api.openai.com", "/v1/models", "GET") is None
    assert registry.match("api.openai.com", "/v1/something/new").api == "unknown"
    assert registry.match("example.com", "/v1/chat/completions") is None


def test_registry_rejects_unknown_provider_in_config():
    with pytest.raises(ValueError, match="unknown provider 'nope'"):
        ProviderRegistry(extra_hosts={"x.example": "nope"})


def test_wildcard_hosts():
    registry = ProviderRegistry(extra_hosts={"llm-*.corp.example": "anthropic"})
    assert registry.for_host("llm-eu-west-1.corp.example").name == "anthropic"
    assert registry.for_host("llm-.corp.example") is None
    assert registry.for_host("evil.example/llm-x.corp.example") is None


def test_allow_host_patterns_are_anchored():
    import re

    patterns = ProviderRegistry().host_patterns()
    assert any(re.search(p, "api.openai.com:443") for p in patterns)
    assert not any(re.search(p, "api.openai.com.evil.example:443") for p in patterns)
    assert not any(re.search(p, "pypi.org:443") for p in patterns)
