"""The OpenAI API family and every OpenAI-compatible provider, against the recorded corpus.

Each corpus interaction is replayed through the provider interface the way the recorder
drives it: match the host and path, read the request body, then read the response body or
feed the event stream through the SSE reader in small chunks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from collector.providers import ProviderRegistry, ResponseFacts
from collector.providers.base import RequestFacts
from collector.providers.openai import OpenAIFamily
from collector.wire.sse import SSEReader
from tests.corpus import CORPUS, TOKENS

PROVIDERS = (
    "openai",
    "azure_openai",
    "mistral",
    "groq",
    "deepseek",
    "openrouter",
    "together",
    "cerebras",
    "huggingface",
    "zai",
)
FILES = sorted(p for name in PROVIDERS for p in (CORPUS / name).glob("*.json"))
REGISTRY = ProviderRegistry()


def _load(relative: str) -> dict[str, Any]:
    return json.loads((CORPUS / relative).read_text())


def _api_of(endpoint_kind: str) -> str:
    """``openai.chat.stream`` -> chat, ``deepseek.responses`` -> responses, ..."""
    return endpoint_kind.split(".")[1]


def _json_or_none(text: str | None) -> Any:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def replay(case: dict[str, Any], chunk_size: int = 37) -> tuple[str, RequestFacts, ResponseFacts]:
    """Run one interaction through the registry and its provider: (api, request, response)."""
    url = urlsplit(case["request"]["url"])
    path = url.path + (f"?{url.query}" if url.query else "")
    endpoint = REGISTRY.match(url.hostname or "", path, case["request"]["method"])
    assert endpoint is not None, url
    provider, api = endpoint.provider, endpoint.api
    request = provider.read_request(api, path, _json_or_none(case["request"]["body"]))
    facts = ResponseFacts()
    response = case["response"]
    content_type = {k.lower(): v for k, v in response["headers"].items()}.get("content-type", "")
    if content_type.lower().startswith("text/event-stream"):
        reader = SSEReader()
        raw = response["body"].encode()
        chunks = [raw[i : i + chunk_size] for i in range(0, len(raw), chunk_size)]
        events = [e for chunk in chunks for e in reader.feed(chunk)] + list(reader.close())
        for event, data in events:
            if data == "[DONE]" or not data.startswith(("{", "[")):
                continue
            provider.read_event(api, event, json.loads(data), facts)
    else:
        provider.read_response(api, _json_or_none(response["body"]), facts)
    return api, request, facts


def test_every_provider_has_corpus_files():
    assert {p.parent.name for p in FILES} == set(PROVIDERS)


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_corpus_interaction(path: Path):
    case = json.loads(path.read_text())
    expected = case["expected"]
    url = urlsplit(case["request"]["url"])
    endpoint = REGISTRY.match(url.hostname or "", url.path, case["request"]["method"])
    assert endpoint is not None
    assert endpoint.provider.name == case["provider"]
    assert endpoint.api == _api_of(case["endpoint_kind"])

    _, request, facts = replay(case)
    assert request.model == expected["request_model"]
    assert request.stream is expected["stream"]
    assert facts.model == expected["model"]
    usage = facts.usage
    got = {f: getattr(usage, f) if usage is not None else None for f in TOKENS}
    assert got == {f: expected[f] for f in TOKENS}
    if expected["provider_usage_raw"] is not None:
        assert facts.usage_raw == expected["provider_usage_raw"]
    if expected["status"] >= 400:
        assert facts.error, "an error body must give its message"
    if usage is not None and usage.output_tokens:
        assert facts.output_chars > 0, "generated text is counted"


@pytest.mark.parametrize("size", [1, 5, 4096])
def test_chunking_does_not_change_a_stream(size: int):
    case = _load("openai/responses_stream_code_exec_cache_reasoning.json")
    _, _, whole = replay(case, chunk_size=len(case["response"]["body"]))
    _, _, chunked = replay(case, chunk_size=size)
    assert chunked == whole


# --- request facts ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("relative", "features"),
    [
        ("openai/chat_basic_gpt35_details.json", []),
        ("openai/chat_json_schema_tool_call.json", ["tools", "structured_output"]),
        ("openai/chat_json_object_tool_call.json", ["tools", "structured_output"]),
        ("openai/chat_audio_preview.json", ["audio"]),
        ("openai/chat_error_400_invalid_image_url.json", ["images"]),
        ("openai/responses_json_schema_parse.json", ["structured_output"]),
        ("openai/responses_tool_calls.json", ["tools"]),
        ("groq/chat_json_schema_gptoss.json", ["structured_output"]),
        ("zai/zai_glm46v_cache_reasoning.json", ["images"]),
        ("together/together_mixtral.json", []),
    ],
)
def test_request_features(relative: str, features: list[str]):
    _, request, _ = replay(_load(relative))
    assert request.features == features


def test_request_limits_and_stream_usage():
    _, request, _ = replay(_load("openai/chat_o3mini_reasoning.json"))
    assert request.max_output_tokens == 100
    assert request.stream_usage_requested is False
    _, request, _ = replay(_load("openrouter/chat_stream_error_chunk.json"))
    assert (request.max_output_tokens, request.stream, request.stream_usage_requested) == (10, True, True)
    _, request, _ = replay(_load("openai/chat_stream_no_include_usage.json"))
    assert (request.stream, request.stream_usage_requested) == (True, False)
    _, request, _ = replay(_load("azure_openai/azure_chat_gpt4o.json"))
    assert request.n == 1
    assert request.prompt_chars > 0


def test_request_other_max_token_fields_and_modalities():
    openai = REGISTRY.match("api.openai.com", "/v1/responses").provider
    body = {"model": "gpt-5", "input": "hi", "instructions": "be brief", "max_output_tokens": 50}
    request = openai.read_request("responses", "/v1/responses", body)
    assert (request.max_output_tokens, request.prompt_chars) == (50, len("hi") + len("be brief"))
    body = {"model": "gpt-4o-audio-preview", "messages": [], "max_tokens": 7, "modalities": ["text", "audio"]}
    request = openai.read_request("chat", "/v1/chat/completions", body)
    assert (request.max_output_tokens, request.features) == (7, ["audio"])
    image = {"role": "user", "content": [{"type": "input_image", "image_url": "https://x/y.png"}]}
    request = openai.read_request("responses", "/v1/responses", {"input": [image]})
    assert request.features == ["images"]
    legacy = openai.read_request("chat", "/v1/chat/completions", {"functions": [{"name": "f"}]})
    assert legacy.features == ["tools"]


def test_prompt_chars_leave_out_inline_media():
    _, request, _ = replay(_load("openai/chat_audio_preview.json"))
    assert 0 < request.prompt_chars < 200, "the base64 audio clip is not prompt text"
    _, request, _ = replay(_load("zai/zai_glm46v_cache_reasoning.json"))
    assert 0 < request.prompt_chars < 500, "the data-URL image is not prompt text"


def test_azure_model_falls_back_to_deployment():
    path = "/openai/deployments/my%20gpt/chat/completions?api-version=2024-02-01"
    endpoint = REGISTRY.match("res.openai.azure.com", path)
    assert endpoint is not None and endpoint.provider.name == "azure_openai"
    azure = endpoint.provider
    assert azure.read_request("chat", path, {"messages": []}).model == "my gpt"
    assert azure.read_request("chat", path, None).model == "my gpt", "read even without a JSON body"
    assert azure.read_request("chat", path, {"model": "gpt-4o"}).model == "gpt-4o"
    assert REGISTRY.for_host("res.cognitiveservices.azure.com") is endpoint.provider
    assert REGISTRY.for_host("openai.azure.com") is None


# --- response facts --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("relative", "error"),
    [
        ("openai/chat_error_404_model_not_found.json", "invalid_request_error: The model `gpt-5.2-proo`"),
        ("openai/responses_stream_error_400.json", "invalid_request_error: Invalid 'temperature'"),
        ("azure_openai/azure_embeddings_error_401.json", "401: Access denied"),
        ("openrouter/chat_error_429.json", "429: Provider returned error"),
        ("deepseek/responses_error_400.json", "invalid_request_error: No tool output"),
        ("groq/chat_stream_error_event_no_usage.json", "invalid_request_error: Tool call validation failed"),
        ("openrouter/chat_stream_error_chunk.json", "400: Token limit reached"),
    ],
)
def test_error_messages(relative: str, error: str):
    _, _, facts = replay(_load(relative))
    assert facts.error is not None and facts.error.startswith(error)


def test_successful_calls_carry_no_error():
    for path in FILES:
        case = json.loads(path.read_text())
        if case["response"]["status"] < 400 and "error" not in path.stem:
            assert replay(case)[2].error is None, path


def test_openrouter_cost_and_cache_writes():
    _, _, facts = replay(_load("openrouter/chat_claude_cache_read_write.json"))
    assert facts.provider_cost_usd == pytest.approx(0.00219855)
    assert facts.usage is not None and facts.usage.cache_write_tokens == 115
    _, _, facts = replay(_load("openrouter/chat_stream_grok4_cache.json"))
    assert facts.provider_cost_usd == pytest.approx(0.00333825)
    _, _, facts = replay(_load("openrouter/chat_stream_error_chunk.json"))
    assert facts.provider_cost_usd == 0.0
    assert facts.finish_reasons == ["length"], "a choice's repeated reason is kept once"
    _, _, facts = replay(_load("openai/chat_basic_gpt35_details.json"))
    assert facts.provider_cost_usd is None


@pytest.mark.parametrize(
    ("relative", "tier"),
    [
        ("openai/chat_gpt5_service_tier.json", "priority"),
        ("openai/chat_stream_include_usage_gpt4o.json", "default"),
        ("openai/responses_stream_reasoning_gpt5.json", "flex"),
        ("openai/responses_stream_basic.json", "default"),
        ("groq/chat_json_schema_gptoss.json", "on_demand"),
        ("mistral/chat_mistral_tiny.json", None),
    ],
)
def test_service_tier(relative: str, tier: str | None):
    assert replay(_load(relative))[2].service_tier == tier


def test_stream_completion_and_finish_reasons():
    _, _, facts = replay(_load("openai/responses_stream_basic.json"))
    assert facts.complete is True
    assert facts.finish_reasons == ["completed"]
    assert facts.response_id is not None and facts.response_id.startswith("resp_")
    assert facts.output_chars > 100
    _, _, facts = replay(_load("openai/chat_stream_include_usage_gpt4o.json"))
    assert facts.complete is False, "chat streams end with [DONE], which the caller handles"
    assert facts.finish_reasons == ["stop"]
    assert facts.output_chars == len("The capital of Mexico is Mexico City.")
    _, _, facts = replay(_load("openai/completions_stream_no_usage.json"))
    assert (facts.finish_reasons, facts.usage) == (["length"], None)
    assert facts.output_chars > 0
    _, _, facts = replay(_load("azure_openai/azure_chat_stream_no_usage.json"))
    assert facts.response_id is not None and facts.response_id.startswith("chatcmpl-")


def test_background_response_has_no_usage_and_no_finish():
    _, _, facts = replay(_load("openai/responses_background_queued_no_usage.json"))
    assert (facts.usage, facts.finish_reasons, facts.service_tier) == (None, [], "auto")


def test_responses_failure_and_error_events():
    openai = REGISTRY.match("api.openai.com", "/v1/responses").provider
    facts = ResponseFacts()
    failed = {
        "status": "failed",
        "model": "gpt-5",
        "error": {"code": "server_error", "message": "boom"},
        "usage": None,
    }
    openai.read_event("responses", "response.failed", {"type": "response.failed", "response": failed}, facts)
    assert (facts.error, facts.complete, facts.finish_reasons) == ("server_error: boom", True, ["failed"])
    facts = ResponseFacts()
    event = {"type": "error", "code": "rate_limit_exceeded", "message": "slow down", "param": None}
    openai.read_event("responses", "error", event, facts)
    assert facts.error == "rate_limit_exceeded: slow down"
    facts = ResponseFacts()
    incomplete = {"status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}}
    openai.read_event("responses", "x", {"type": "response.incomplete", "response": incomplete}, facts)
    assert (facts.complete, facts.finish_reasons) == (True, ["max_output_tokens"])


def test_choices_finishing_out_of_order():
    openai = REGISTRY.match("api.openai.com", "/v1/chat/completions").provider
    facts = ResponseFacts()
    for index, reason in ((1, "length"), (0, "stop")):
        chunk = {"choices": [{"index": index, "delta": {}, "finish_reason": reason}]}
        openai.read_event("chat", "message", chunk, facts)
    assert facts.finish_reasons == ["stop", "length"]


# --- paths, hosts and hostile input ----------------------------------------------------


@pytest.mark.parametrize(
    ("host", "path", "provider", "api"),
    [
        ("api.openai.com", "/v1/chat/completions/", "openai", "chat"),
        ("api.openai.com", "/v1/completions", "openai", "completions"),
        ("api.openai.com", "/v1/responses?x=1", "openai", "responses"),
        ("api.openai.com", "/v1/embeddings", "openai", "embeddings"),
        ("api.groq.com", "/openai/v1/responses", "groq", "responses"),
        ("api.deepseek.com", "/beta/completions", "deepseek", "completions"),
        ("api.z.ai", "/api/paas/v4/chat/completions", "zai", "chat"),
        ("api.together.xyz", "/v1/chat/completions", "together", "chat"),
        ("router.huggingface.co", "/novita/v3/openai/chat/completions", "huggingface", "chat"),
        ("router.huggingface.co", "/v1/chat/completions", "huggingface", "chat"),
        ("codestral.mistral.ai", "/v1/fim/completions", "mistral", "completions"),
        ("x.cognitiveservices.azure.com", "/openai/v1/responses", "azure_openai", "responses"),
        ("api.cerebras.ai", "/v1/models/x", "cerebras", "unknown"),
    ],
)
def test_paths(host: str, path: str, provider: str, api: str):
    endpoint = REGISTRY.match(host, path)
    assert endpoint is not None
    assert (endpoint.provider.name, endpoint.api) == (provider, api)


def test_provider_settings():
    expected = {
        "openai": ("openai", True),
        "azure_openai": ("azure", True),
        "mistral": ("mistral", False),
        "groq": ("groq", False),
        "deepseek": ("deepseek", False),
        "openrouter": ("openrouter", False),
        "together": ("together", False),
        "cerebras": ("cerebras", False),
        "huggingface": (None, False),
        "zai": ("zai", False),
    }
    providers = {p.name: p for p in REGISTRY.providers if isinstance(p, OpenAIFamily)}
    assert {n: (p.prices_id, p.stream_usage_option) for n, p in providers.items()} == expected


@pytest.mark.parametrize(
    ("name", "variable", "headers"),
    [
        ("openai", "OPENAI_API_KEY", {"authorization": "Bearer k"}),
        ("azure_openai", "AZURE_OPENAI_API_KEY", {"api-key": "k"}),
        ("mistral", "MISTRAL_API_KEY", {"authorization": "Bearer k"}),
        ("groq", "GROQ_API_KEY", {"authorization": "Bearer k"}),
        ("deepseek", "DEEPSEEK_API_KEY", {"authorization": "Bearer k"}),
        ("openrouter", "OPENROUTER_API_KEY", {"authorization": "Bearer k"}),
        ("together", "TOGETHER_API_KEY", {"authorization": "Bearer k"}),
        ("cerebras", "CEREBRAS_API_KEY", {"authorization": "Bearer k"}),
        ("huggingface", "HF_TOKEN", {"authorization": "Bearer k"}),
        ("zai", "ZAI_API_KEY", {"authorization": "Bearer k"}),
    ],
)
def test_api_keys(name: str, variable: str, headers: dict[str, str]):
    """Each vendor declares its SDK's key variable and how a request carries the key."""
    (provider,) = (p for p in REGISTRY.providers if p.name == name)
    assert provider.api_key is not None
    assert (provider.api_key.variable, provider.api_key.headers("k")) == (variable, headers)


@pytest.mark.parametrize(
    "value",
    [
        None,
        7,
        "text",
        [],
        {"choices": 5, "usage": [1], "output": {"a": 1}, "status": {"x": 1}, "model": 3},
        {"choices": [{"index": 10**9, "finish_reason": "stop", "delta": 4}], "usage": {"prompt_tokens": "x"}},
        {"choices": [None, {"message": {"tool_calls": 5, "content": [1, {"text": "ab"}]}}]},
        {"type": "response.completed", "response": {"output": 3, "usage": {"input_tokens": True}}},
        {"type": "response.output_text.delta", "delta": 5},
        {"type": "error"},
        {"error": "plain"},
        {"messages": {"a": 1}, "input": 5, "tools": "x", "response_format": ["json_schema"], "text": 3},
        {"modalities": "audio", "stream_options": [], "max_tokens": 1.5, "n": True, "model": 3},
    ],
)
def test_bad_input_raises_nothing(value: Any):
    for provider in REGISTRY.providers:
        if not isinstance(provider, OpenAIFamily):
            continue
        for api in ("chat", "completions", "responses", "embeddings", "unknown"):
            provider.read_request(api, "/openai/deployments/", value)
            provider.read_response(api, value, ResponseFacts())
            provider.read_event(api, "message", value, ResponseFacts())
