"""Unit tests: the Gemini, Vertex, Bedrock and Cohere providers against the recorded corpus,
plus the AWS event-stream reader that Bedrock streams need."""

from __future__ import annotations

import base64
import json
import struct
import zlib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from collector.providers import ProviderRegistry, ResponseFacts
from collector.wire.eventstream import EventStreamReader
from collector.wire.sse import SSEReader
from tests.corpus import CORPUS, TOKENS, normalised

PROVIDERS = ("gemini", "vertex", "bedrock", "cohere")
FILES = sorted(f for p in PROVIDERS for f in (CORPUS / p).glob("*.json"))
APIS = {
    "gemini.generate": "generate_content",
    "gemini.stream": "generate_content",
    "gemini.embed": "embeddings",
    "vertex.generate": "generate_content",
    "vertex.stream": "generate_content",
    "bedrock.converse": "converse",
    "cohere.chat": "chat",
    "cohere.chat.stream": "chat",
}
REGISTRY = ProviderRegistry()


def _load(name: str) -> dict[str, Any]:
    return json.loads((CORPUS / name).read_text())


def _endpoint(case: dict[str, Any]):
    url = urlsplit(case["request"]["url"])
    path = url.path + (f"?{url.query}" if url.query else "")
    return REGISTRY.match(url.hostname, path, case["request"]["method"]), path


def _request(case: dict[str, Any]):
    endpoint, path = _endpoint(case)
    body = case["request"]["body"]
    return endpoint.provider.read_request(endpoint.api, path, json.loads(body) if body else None)


def _replay(case: dict[str, Any], chunk_size: int = 7) -> ResponseFacts:
    """Feed the recorded response through the provider as the recorder would."""
    endpoint, _ = _endpoint(case)
    facts = ResponseFacts()
    response = case["response"]
    raw = (response["body"] or "").encode()
    if response["headers"].get("content-type", "").startswith("text/event-stream"):
        reader = SSEReader()
        events = [e for i in range(0, len(raw), chunk_size) for e in reader.feed(raw[i : i + chunk_size])]
        for event, data in [*events, *reader.close()]:
            try:
                payload = json.loads(data)
            except ValueError:
                continue
            endpoint.provider.read_event(endpoint.api, event, payload, facts)
    else:
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        endpoint.provider.read_response(endpoint.api, body, facts)
    return facts


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_corpus_file(path: Path):
    case = json.loads(path.read_text())
    expected = case["expected"]
    endpoint, _ = _endpoint(case)
    assert endpoint is not None
    assert endpoint.provider.name == case["provider"]
    assert endpoint.api == APIS[case["endpoint_kind"]]
    request = _request(case)
    assert request.model == expected["request_model"]
    assert request.stream is expected["stream"]
    facts = _replay(case)
    assert facts.model == expected["model"]
    usage = facts.usage
    got = {key: getattr(usage, key) if usage else None for key in TOKENS}
    assert got == normalised(case["provider"], expected)
    if expected["provider_usage_raw"] is not None:
        assert facts.usage_raw == expected["provider_usage_raw"]
    if expected["status"] >= 400:
        assert facts.error
    elif expected["stream"]:
        assert facts.complete, "the stream's terminal chunk must mark the call complete"
        assert facts.finish_reasons
        assert facts.output_chars > 0


@pytest.mark.parametrize("size", [1, 3, 64, 100_000])
def test_gemini_stream_last_chunk_wins_at_any_chunking(size):
    facts = _replay(_load("gemini/stream_20flash_prompt_count_changes.json"), chunk_size=size)
    assert (facts.usage.input_tokens, facts.usage.output_tokens) == (13, 8)
    assert facts.finish_reasons == ["STOP"]
    assert facts.response_id == "w1peaMz6INOvnvgPgYfPiQY"


def test_gemini_output_is_thoughts_when_candidates_left_out():
    facts = _replay(_load("gemini/generate_max_tokens_no_candidates_count.json"))
    assert (facts.usage.output_tokens, facts.usage.reasoning_tokens) == (2, 2)
    assert facts.finish_reasons == ["MAX_TOKENS"]
    assert _request(_load("gemini/generate_max_tokens_no_candidates_count.json")).max_output_tokens == 5


def test_gemini_safety_and_tool_use_prompt_tokens():
    blocked = _replay(_load("gemini/generate_safety_blocked.json"))
    assert blocked.usage.output_tokens is None and blocked.finish_reasons == ["SAFETY"]
    # toolUsePromptTokenCount is reported apart and not added to the prompt (see INDEX.md).
    web = _replay(_load("gemini/generate_web_fetch_raw_body.json"))
    assert (web.usage.input_tokens, web.usage.output_tokens) == (32, 88)


@pytest.mark.parametrize(
    ("name", "features"),
    [
        ("gemini/generate_function_call.json", ["tools"]),
        ("gemini/generate_json_native_output_20flash.json", ["structured_output"]),
        ("gemini/generate_implicit_cache_video.json", ["images"]),
        ("gemini/stream_3flash_code_exec.json", ["tools"]),
        ("gemini/generate_25flash_basic.json", []),
        ("bedrock/converse_claude_cache_read.json", ["tools"]),  # its document is txt, not PDF
        ("bedrock/converse_nova.json", []),
        ("cohere/chat_v2.json", []),
    ],
)
def test_request_features(name, features):
    assert _request(_load(name)).features == features


def test_gemini_request_facts():
    provider = REGISTRY.for_host("generativelanguage.googleapis.com")
    body = {
        "system_instruction": {"parts": [{"text": "Be brief."}]},
        "contents": [
            {
                "role": "user",
                "parts": [{"text": "Hi"}, {"inline_data": {"mime_type": "audio/wav", "data": ""}}],
            }
        ],
        "generation_config": {
            "candidate_count": 2,
            "max_output_tokens": 64,
            "response_schema": {"type": "OBJECT"},
        },
    }
    facts = provider.read_request("generate_content", "/v1/tunedModels/my-tune:generateContent", body)
    assert facts.model == "my-tune"
    assert facts.features == ["structured_output", "audio"]
    assert (facts.n, facts.max_output_tokens, facts.stream) == (2, 64, False)
    # text_length counts every string: role and MIME type included.
    assert facts.prompt_chars == len("Be brief.") + len("user") + len("Hi") + len("audio/wav")
    embed = provider.read_request("embeddings", "/v1beta/models/text-embedding-004:embedContent", None)
    assert embed.model == "text-embedding-004"


def test_gemini_errors_in_body_and_stream():
    facts = _replay(_load("gemini/generate_error_404_model.json"))
    assert facts.error.startswith("NOT_FOUND: models/gemini-3.6-flahs is not found")
    provider = REGISTRY.for_host("generativelanguage.googleapis.com")
    facts = ResponseFacts()
    provider.read_event("generate_content", "message", {"error": {"code": 429, "message": "slow"}}, facts)
    assert facts.error == "429: slow"
    facts = ResponseFacts()
    provider.read_response(
        "generate_content", {"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}}, facts
    )
    assert facts.error == "prompt blocked: PROHIBITED_CONTENT"
    assert facts.finish_reasons == ["PROHIBITED_CONTENT"]


def test_gemini_json_array_stream():
    """Without ``alt=sse`` a stream is one JSON array, read whole as a body."""
    case = _load("gemini/stream_25flash_live_usage.json")
    chunks = [json.loads(d) for _, d in SSEReader().feed(case["response"]["body"].encode())]
    facts = ResponseFacts()
    REGISTRY.for_host("generativelanguage.googleapis.com").read_response("generate_content", chunks, facts)
    assert (facts.usage.input_tokens, facts.usage.output_tokens, facts.service_tier) == (18, 115, "standard")


def test_gemini_openai_compatible_endpoint():
    endpoint = REGISTRY.match("generativelanguage.googleapis.com", "/v1beta/openai/chat/completions")
    assert (endpoint.provider.name, endpoint.api) == ("gemini", "chat")
    body = {"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": "hi"}]}
    assert (
        endpoint.provider.read_request("chat", "/v1beta/openai/chat/completions", body).model == body["model"]
    )
    facts = ResponseFacts()
    answer = {
        "model": "gemini-2.5-flash",
        "usage": {"prompt_tokens": 3, "completion_tokens": 5},
        "choices": [],
    }
    endpoint.provider.read_response("chat", answer, facts)
    assert (facts.usage.input_tokens, facts.usage.output_tokens) == (3, 5)


@pytest.mark.parametrize(
    ("name", "tier"),
    [
        ("vertex/vertex_generate_20flash.json", "standard"),
        ("vertex/vertex_generate_flex_3flash.json", "flex"),
        ("vertex/vertex_stream_flex_3flash.json", "flex"),
        ("gemini/generate_cached_content.json", "standard"),
        ("gemini/generate_25flash_basic.json", None),
    ],
)
def test_service_tier(name, tier):
    assert _replay(_load(name)).service_tier == tier


@pytest.mark.parametrize(
    ("host", "path", "api"),
    [
        (
            "us-central1-aiplatform.googleapis.com",
            "/v1/projects/p/locations/us-central1/publishers/google/models/gemini-2.5-pro:streamGenerateContent?alt=sse",
            "generate_content",
        ),
        (
            "aiplatform.googleapis.com",
            "/v1/publishers/google/models/gemini-2.5-flash:generateContent",
            "generate_content",
        ),
        (
            "europe-west4-aiplatform.googleapis.com",
            "/v1/projects/p/locations/europe-west4/endpoints/123:generateContent",
            "generate_content",
        ),
        (
            "us-east5-aiplatform.googleapis.com",
            "/v1/projects/p/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-5@20250929:streamRawPredict",
            "messages",
        ),
        (
            "us-central1-aiplatform.googleapis.com",
            "/v1/projects/p/locations/us-central1/publishers/mistralai/models/mistral-small-2503:rawPredict",
            "chat",
        ),
        (
            "us-central1-aiplatform.googleapis.com",
            "/v1/projects/p/locations/us-central1/endpoints/openapi/chat/completions",
            "chat",
        ),
        (
            "us-central1-aiplatform.googleapis.com",
            "/v1/projects/p/locations/us-central1/publishers/google/models/text-embedding-005:predict",
            "embeddings",
        ),
        (
            "us-central1-aiplatform.googleapis.com",
            "/v1/projects/p/locations/us-central1/publishers/google/models/gemini-2.5-flash:countTokens",
            "unknown",
        ),
    ],
)
def test_vertex_paths(host, path, api):
    endpoint = REGISTRY.match(host, path)
    assert (endpoint.provider.name, endpoint.api) == ("vertex", api)


def test_vertex_anthropic_partner_model():
    provider = REGISTRY.for_host("us-east5-aiplatform.googleapis.com")
    path = (
        "/v1/projects/p/locations/l/publishers/anthropic/models/claude-sonnet-4-5@20250929:streamRawPredict"
    )
    body = {"anthropic_version": "vertex-2023-10-16", "max_tokens": 100, "stream": True, "messages": []}
    request = provider.read_request("messages", path, body)
    assert (request.model, request.stream, request.max_output_tokens) == (
        "claude-sonnet-4-5@20250929",
        True,
        100,
    )
    facts = ResponseFacts()
    start = {
        "type": "message_start",
        "message": {
            "model": "claude-sonnet-4-5-20250929",
            "usage": {"input_tokens": 10, "cache_read_input_tokens": 90, "output_tokens": 1},
        },
    }
    provider.read_event("messages", "message_start", start, facts)
    provider.read_event(
        "messages", "message_delta", {"type": "message_delta", "usage": {"output_tokens": 7}}, facts
    )
    provider.read_event("messages", "message_stop", {"type": "message_stop"}, facts)
    assert (facts.model, facts.usage.input_tokens, facts.usage.output_tokens) == (
        "claude-sonnet-4-5-20250929",
        100,
        7,
    )
    assert facts.complete


def test_vertex_embedding_predict():
    provider = REGISTRY.for_host("us-central1-aiplatform.googleapis.com")
    path = "/v1/projects/p/locations/us-central1/publishers/google/models/text-embedding-005:predict"
    request = provider.read_request(
        "embeddings", path, {"instances": [{"content": "hello"}, {"content": "hi"}]}
    )
    assert (request.model, request.prompt_chars) == ("text-embedding-005", 7)
    body = {
        "predictions": [
            {"embeddings": {"statistics": {"token_count": 2, "truncated": False}, "values": [0.1]}},
            {"embeddings": {"statistics": {"token_count": 1, "truncated": False}, "values": [0.2]}},
        ],
        "metadata": {"billableCharacterCount": 7},
    }
    facts = ResponseFacts()
    provider.read_response("embeddings", body, facts)
    assert (facts.usage.input_tokens, facts.usage.output_tokens) == (3, None)


@pytest.mark.parametrize(
    ("host", "path", "api", "model", "stream"),
    [
        (
            "bedrock-runtime.eu-west-1.amazonaws.com",
            "/model/amazon.nova-pro-v1%3A0/converse-stream",
            "converse",
            "amazon.nova-pro-v1:0",
            True,
        ),
        (
            "bedrock-runtime.us-west-2.amazonaws.com",
            "/model/arn%3Aaws%3Abedrock%3Aus-west-2%3A1%3Ainference-profile%2Fus.meta.llama3-3-70b-instruct-v1%3A0/invoke",
            "invoke",
            "arn:aws:bedrock:us-west-2:1:inference-profile/us.meta.llama3-3-70b-instruct-v1:0",
            False,
        ),
        (
            "bedrock-runtime-fips.us-east-1.amazonaws.com",
            "/model/anthropic.claude-3-haiku-20240307-v1%3A0/invoke-with-response-stream",
            "invoke",
            "anthropic.claude-3-haiku-20240307-v1:0",
            True,
        ),
    ],
)
def test_bedrock_paths(host, path, api, model, stream):
    endpoint = REGISTRY.match(host, path)
    assert (endpoint.provider.name, endpoint.api) == ("bedrock", api)
    request = endpoint.provider.read_request(api, path, {"messages": []})
    assert (request.model, request.stream) == (model, stream)


def test_bedrock_error_message():
    assert (
        _replay(_load("bedrock/converse_error_400.json")).error == "The provided model identifier is invalid."
    )


def test_bedrock_converse_request_facts():
    provider = REGISTRY.for_host("bedrock-runtime.us-east-1.amazonaws.com")
    body = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"text": "Hi"},
                    {"audio": {"format": "mp3", "source": {}}},
                    {"document": {"format": "pdf", "name": "d", "source": {}}},
                ],
            }
        ],
        "system": [{"text": "Be brief."}],
        "inferenceConfig": {"maxTokens": 256},
        "toolConfig": {"tools": [{"toolSpec": {"name": "f"}}]},
        "outputConfig": {"textFormat": {"type": "json_schema"}},
    }
    facts = provider.read_request("converse", "/model/amazon.nova-lite-v1%3A0/converse", body)
    assert facts.features == ["tools", "structured_output", "images", "audio"]
    assert facts.max_output_tokens == 256


# --- AWS event streams -------------------------------------------------------------------


def _frame(headers: dict[str, str], payload: bytes) -> bytes:
    """Encode one event-stream frame (string headers only), as AWS sends it."""
    raw_headers = b"".join(
        bytes([len(name)]) + name.encode() + b"\x07" + struct.pack(">H", len(value)) + value.encode()
        for name, value in headers.items()
    )
    total = 12 + len(raw_headers) + len(payload) + 4
    prelude = struct.pack(">II", total, len(raw_headers))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    body = prelude + raw_headers + payload
    return body + struct.pack(">I", zlib.crc32(body))


def _event(kind: str, payload: dict[str, Any]) -> bytes:
    headers = {":event-type": kind, ":content-type": "application/json", ":message-type": "event"}
    return _frame(headers, json.dumps(payload).encode())


CONVERSE_FRAMES = [
    _event("messageStart", {"p": "abc", "role": "assistant"}),
    _event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hello"}, "p": "ab"}),
    _event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": " there"}, "p": "a"}),
    _event("contentBlockStop", {"contentBlockIndex": 0, "p": "abcd"}),
    _event("messageStop", {"p": "abcdef", "stopReason": "end_turn"}),
    _event(
        "metadata",
        {
            "metrics": {"latencyMs": 512},
            "p": "ab",
            "usage": {"cacheReadInputTokens": 100, "inputTokens": 7, "outputTokens": 3, "totalTokens": 110},
        },
    ),
]
CONVERSE_STREAM = b"".join(CONVERSE_FRAMES)


def _read_stream(data: bytes, size: int) -> list[tuple[str, str]]:
    reader = EventStreamReader()
    events = [e for i in range(0, len(data), size) for e in reader.feed(data[i : i + size])]
    return events + list(reader.close())


@pytest.mark.parametrize("size", [1, 5, 13, 200, len(CONVERSE_STREAM)])
def test_eventstream_reader_any_chunking(size):
    events = _read_stream(CONVERSE_STREAM, size)
    assert [name for name, _ in events] == [
        "messageStart",
        "contentBlockDelta",
        "contentBlockDelta",
        "contentBlockStop",
        "messageStop",
        "metadata",
    ]
    assert json.loads(events[1][1])["delta"] == {"text": "Hello"}


def test_bedrock_converse_stream_usage():
    provider = REGISTRY.for_host("bedrock-runtime.us-east-1.amazonaws.com")
    facts = ResponseFacts()
    for event, data in _read_stream(CONVERSE_STREAM, 9):
        provider.read_event("converse", event, json.loads(data), facts)
    assert (facts.usage.input_tokens, facts.usage.output_tokens, facts.usage.cache_read_tokens) == (
        107,
        3,
        100,
    )
    assert facts.finish_reasons == ["end_turn"]
    assert facts.output_chars == len("Hello there")
    assert facts.complete
    assert facts.model is None


def test_bedrock_stream_exception_frame():
    headers = {":exception-type": "throttlingException", ":message-type": "exception"}
    frame = _frame(headers, b'{"message":"Too many requests, please wait."}')
    facts = ResponseFacts()
    provider = REGISTRY.for_host("bedrock-runtime.us-east-1.amazonaws.com")
    for event, data in _read_stream(b"".join(CONVERSE_FRAMES[:2]) + frame, 64):
        provider.read_event("converse", event, json.loads(data), facts)
    assert facts.error == "throttlingException: Too many requests, please wait."
    assert not facts.complete


def test_bedrock_stream_error_frame_carries_its_message_in_headers():
    headers = {":message-type": "error", ":error-code": "InternalFailure", ":error-message": "boom"}
    facts = ResponseFacts()
    provider = REGISTRY.for_host("bedrock-runtime.us-east-1.amazonaws.com")
    for event, data in _read_stream(CONVERSE_FRAMES[0] + _frame(headers, b""), 3):
        provider.read_event("converse", event, json.loads(data), facts)
    assert facts.error == "InternalFailure: boom"


def test_eventstream_reader_rejects_garbage():
    with pytest.raises(ValueError):
        list(EventStreamReader().feed(b"data: {} not an event stream\n\n"))
    corrupt = bytearray(CONVERSE_STREAM)
    corrupt[30] ^= 0xFF
    with pytest.raises(ValueError):
        _read_stream(bytes(corrupt), 1000)


def test_bedrock_invoke_stream_anthropic_chunks():
    """invoke-with-response-stream wraps each vendor event in base64 ``chunk`` frames."""

    def chunk(payload: dict[str, Any]) -> bytes:
        return _event("chunk", {"bytes": base64.b64encode(json.dumps(payload).encode()).decode(), "p": "x"})

    message = {"model": "claude-3-haiku-20240307", "usage": {"input_tokens": 12, "output_tokens": 1}}
    metrics = {
        "inputTokenCount": 12,
        "outputTokenCount": 9,
        "invocationLatency": 800,
        "firstByteLatency": 300,
    }
    stream = b"".join(
        [
            chunk({"type": "message_start", "message": message}),
            chunk({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}}),
            chunk(
                {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 9}}
            ),
            chunk({"type": "message_stop", "amazon-bedrock-invocationMetrics": metrics}),
        ]
    )
    provider = REGISTRY.for_host("bedrock-runtime.us-east-1.amazonaws.com")
    facts = ResponseFacts()
    for event, data in _read_stream(stream, 17):
        provider.read_event("invoke", event, json.loads(data), facts)
    assert (facts.usage.input_tokens, facts.usage.output_tokens) == (12, 9)
    assert facts.finish_reasons == ["end_turn"]
    assert facts.complete


def test_bedrock_invoke_llama_stream_uses_invocation_metrics():
    provider = REGISTRY.for_host("bedrock-runtime.us-east-1.amazonaws.com")
    facts = ResponseFacts()
    chunks = [
        {"generation": "Hi", "prompt_token_count": 20, "generation_token_count": 1, "stop_reason": None},
        {
            "generation": "!",
            "prompt_token_count": None,
            "generation_token_count": 2,
            "stop_reason": "stop",
            "amazon-bedrock-invocationMetrics": {"inputTokenCount": 20, "outputTokenCount": 2},
        },
    ]
    for payload in chunks:
        encoded = base64.b64encode(json.dumps(payload).encode()).decode()
        provider.read_event("invoke", "chunk", {"bytes": encoded}, facts)
    assert (facts.usage.input_tokens, facts.usage.output_tokens) == (20, 2)
    assert facts.finish_reasons == ["stop"]


def test_bedrock_invoke_bodies():
    provider = REGISTRY.for_host("bedrock-runtime.us-east-1.amazonaws.com")
    nova = {
        "output": {"message": {"content": [{"text": "x"}]}},
        "stopReason": "end_turn",
        "usage": {"inputTokens": 5, "outputTokens": 2, "cacheReadInputTokenCount": 10},
    }
    titan = {
        "inputTextTokenCount": 4,
        "results": [{"tokenCount": 6, "outputText": "x", "completionReason": "FINISH"}],
    }
    anthropic_message = {
        "type": "message",
        "model": "claude-3-haiku-20240307",
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 5, "cache_creation_input_tokens": 20, "output_tokens": 2},
    }
    for body, want in [
        (nova, (15, 2, "end_turn")),
        (titan, (4, 6, "FINISH")),
        (anthropic_message, (25, 2, "end_turn")),
    ]:
        facts = ResponseFacts()
        provider.read_response("invoke", body, facts)
        assert (facts.usage.input_tokens, facts.usage.output_tokens, facts.finish_reasons[0]) == want


@pytest.mark.parametrize(
    ("name", "variable", "headers"),
    [
        ("anthropic", "ANTHROPIC_API_KEY", {"x-api-key": "k", "anthropic-version": "2023-06-01"}),
        ("gemini", "GEMINI_API_KEY", {"x-goog-api-key": "k"}),
        ("cohere", "CO_API_KEY", {"authorization": "Bearer k"}),
        ("bedrock", None, None),
        ("vertex", None, None),
    ],
)
def test_api_keys(name: str, variable: str | None, headers: dict[str, str] | None):
    """Keyed providers declare their SDK's key variable and header; signed (Bedrock) and
    OAuth (Vertex) requests cannot be made from a key, so those declare none."""
    (provider,) = (p for p in REGISTRY.providers if p.name == name)
    key = provider.api_key
    assert (key and key.variable, key and key.headers("k")) == (variable, headers)


def test_cohere_paths_and_embed():
    assert REGISTRY.match("api.cohere.ai", "/v1/chat").api == "chat"
    assert REGISTRY.match("api.cohere.com", "/v2/embed").api == "embeddings"
    provider = REGISTRY.for_host("api.cohere.com")
    request = provider.read_request(
        "embeddings", "/v2/embed", {"model": "embed-v4.0", "texts": ["hello"], "input_type": "search_query"}
    )
    assert (request.model, request.prompt_chars) == ("embed-v4.0", 5)
    facts = ResponseFacts()
    body = {"id": "e1", "embeddings": {"float": [[0.1]]}, "meta": {"billed_units": {"input_tokens": 2}}}
    provider.read_response("embeddings", body, facts)
    assert (facts.usage.input_tokens, facts.usage.output_tokens) == (2, None)


def test_cohere_request_and_errors():
    provider = REGISTRY.for_host("api.cohere.com")
    body = {
        "model": "command-a-vision-07-2025",
        "max_tokens": 50,
        "response_format": {"type": "json_object"},
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:"}}]}],
    }
    facts = provider.read_request("chat", "/v2/chat", body)
    assert facts.features == ["tools", "structured_output", "images"]
    assert facts.max_output_tokens == 50
    error = ResponseFacts()
    provider.read_response("chat", {"id": "x", "message": "invalid api token"}, error)
    assert error.error == "invalid api token" and error.usage is None
    v1 = ResponseFacts()
    provider.read_response(
        "chat",
        {
            "text": "hi",
            "generation_id": "g",
            "finish_reason": "COMPLETE",
            "meta": {
                "billed_units": {"input_tokens": 3, "output_tokens": 1},
                "tokens": {"input_tokens": 70, "output_tokens": 2},
            },
        },
        v1,
    )
    assert (v1.usage.input_tokens, v1.usage.output_tokens, v1.response_id) == (70, 2, "g")
