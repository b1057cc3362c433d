"""Google AI Studio's Gemini API (generativelanguage.googleapis.com).

The model is named in the URL (``/v1beta/models/{model}:generateContent``), not in the
body. Gemini reports ``candidatesTokenCount`` *without* ``thoughtsTokenCount``, so the two
are added to reach the convention's output total, and it leaves zero-valued fields out,
so an absent count is "not reported" rather than 0. A stream (``:streamGenerateContent``,
SSE with ``alt=sse``, else one JSON array) repeats ``usageMetadata`` in every chunk; the
last one wins.

Vertex AI speaks the same body format, so :mod:`collector.providers.vertex` reuses the
module-level readers here. The OpenAI-compatible endpoint on the same host
(``/v1beta/openai/chat/completions``) is read by the OpenAI provider's code.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import unquote

from collector.providers import openai
from collector.providers.base import (
    ApiKey,
    Output,
    RequestFacts,
    ResponseFacts,
    ToolCall,
    Usage,
    as_int,
    dig,
    text_length,
)

_CALL = re.compile(r"/(?:models|tunedModels)/([^/:]+):(\w+)$")
_METHOD_APIS = {
    "generateContent": "generate_content",
    "streamGenerateContent": "generate_content",
    "embedContent": "embeddings",
    "batchEmbedContents": "embeddings",
}
_MEDIA_KEYS = frozenset({"inlineData", "inline_data", "fileData", "file_data"})
#: Vertex's ``trafficType`` in the vocabulary the price catalogue uses for tiers.
_TRAFFIC_TIERS = {
    "ON_DEMAND": "standard",
    "ON_DEMAND_FLEX": "flex",
    "ON_DEMAND_PRIORITY": "priority",
    "PROVISIONED_THROUGHPUT": "provisioned_throughput",
}


def normalise(raw: dict[str, Any]) -> Usage:
    """Gemini ``usageMetadata`` under the convention: output = candidates + thoughts."""
    candidates = as_int(raw.get("candidatesTokenCount"))
    thoughts = as_int(raw.get("thoughtsTokenCount"))
    output = None if candidates is None and thoughts is None else (candidates or 0) + (thoughts or 0)
    return Usage(
        input_tokens=as_int(raw.get("promptTokenCount")),
        output_tokens=output,
        cache_read_tokens=as_int(raw.get("cachedContentTokenCount")),
        reasoning_tokens=thoughts,
    )


def service_tier(raw: dict[str, Any]) -> str | None:
    """The tier a response was served at: Gemini's ``serviceTier`` ("standard", "flex",
    ...) or Vertex's ``trafficType`` ("ON_DEMAND_FLEX", ...), in Gemini's lower-case words."""
    if isinstance(traffic := raw.get("trafficType"), str) and traffic:
        return _TRAFFIC_TIERS.get(traffic, traffic.lower())
    if isinstance(tier := raw.get("serviceTier"), str) and tier:
        return tier.lower().removeprefix("service_tier_")
    return None


def request_facts(api: str, body: Any) -> RequestFacts:
    """What a Gemini-format body asks for; the caller fills in the model and stream flag,
    which live in the URL."""
    if not isinstance(body, dict):
        return RequestFacts()
    if api == "embeddings":
        # embedContent has one ``content``; batchEmbedContents a list of such requests.
        contents = [body.get("content"), *(r.get("content") for r in _dicts(body.get("requests")))]
        return RequestFacts(features=_media_features(contents), prompt_chars=text_length(contents))
    config = _field(body, "generationConfig")
    config = config if isinstance(config, dict) else {}
    features = ["tools"] if _field(body, "tools") else []
    mime = _field(config, "responseMimeType")
    if mime == "application/json" or _field(config, "responseSchema") or _field(config, "responseJsonSchema"):
        features.append("structured_output")
    contents = _field(body, "contents")
    system = _field(body, "systemInstruction")
    return RequestFacts(
        features=features + _media_features(contents),
        max_output_tokens=as_int(_field(config, "maxOutputTokens")),
        n=as_int(_field(config, "candidateCount")),
        prompt_chars=text_length(contents) + text_length(system),
    )


def read_body(body: Any, facts: ResponseFacts) -> None:
    """A complete response body: one object, or the JSON array that a stream without
    ``alt=sse`` sends (one element per chunk)."""
    for chunk in body if isinstance(body, list) else [body]:
        if isinstance(chunk, dict):
            read_chunk(chunk, facts)


def read_chunk(chunk: dict[str, Any], facts: ResponseFacts) -> None:
    """One GenerateContentResponse (a whole answer or one stream chunk) or embedding response."""
    if (message := _error_text(chunk)) is not None:
        facts.error = message
    if isinstance(model := chunk.get("modelVersion"), str) and model:
        facts.model = model
    if isinstance(rid := chunk.get("responseId"), str) and rid:
        facts.response_id = rid
    for candidate in _dicts(chunk.get("candidates")):
        for part in _dicts(dig(candidate, "content", "parts")):
            facts.output_chars += text_length(part.get("text")) + text_length(part.get("functionCall"))
        if reason := candidate.get("finishReason"):
            facts.finish_reasons.append(str(reason))
            facts.complete = True
    if block := dig(chunk, "promptFeedback", "blockReason"):
        # The prompt itself was refused: no candidates come, and this is the whole answer.
        facts.finish_reasons.append(str(block))
        facts.error = f"prompt blocked: {block}"
        facts.complete = True
    raw = chunk.get("usageMetadata")
    if isinstance(raw, dict):
        facts.usage_raw = raw
        facts.usage = normalise(raw)
        if tier := service_tier(raw):
            facts.service_tier = tier


def read_output(body: Any) -> Output:
    """The first candidate's text (thoughts left out) and function calls, over every chunk."""
    out = Output()
    for chunk in body if isinstance(body, list) else [body]:
        for part in _dicts(dig(chunk, "candidates", 0, "content", "parts")):
            if isinstance(text := part.get("text"), str) and not part.get("thought"):
                out.text += text
            if isinstance(call := _field(part, "functionCall"), dict):
                out.tool_calls.append(ToolCall(str(call.get("name")), json.dumps(call.get("args") or {})))
    return out


def _error_text(body: dict[str, Any]) -> str | None:
    """Google's ``{"error": {"code", "message", "status"}}``, as "STATUS: message"."""
    err = body.get("error")
    if err is None:
        return None
    if isinstance(err, dict):
        kind = err.get("status") or err.get("code") or "error"
        return f"{kind}: {err.get('message') or ''}".strip(": ")
    return str(err)


def _field(obj: dict[str, Any], name: str) -> Any:
    """A body field by its camelCase name, or by the snake_case spelling the API also accepts."""
    if name in obj:
        return obj[name]
    return obj.get(re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower())


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _media_features(contents: Any) -> list[str]:
    """Which of "images" and "audio" the inline or file parts need, by MIME type, at any depth."""
    found: set[str] = set()
    stack = [contents]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            for key, value in item.items():
                if key in _MEDIA_KEYS and isinstance(value, dict):
                    mime = str(_field(value, "mimeType") or "").lower()
                    if mime.startswith(("image/", "video/", "application/pdf")):
                        found.add("images")
                    elif mime.startswith("audio/"):
                        found.add("audio")
                else:
                    stack.append(value)
    return sorted(found, key=("images", "audio").index)


def error_body(message: str) -> dict[str, Any]:
    """Google's 429 body (Gemini and Vertex), which google-genai raises as a ClientError 429."""
    return {"error": {"code": 429, "message": message, "status": "RESOURCE_EXHAUSTED"}}


class Gemini:
    name = "gemini"
    hosts = ("generativelanguage.googleapis.com",)
    prices_id = "google"
    api_key = ApiKey("GEMINI_API_KEY", header="x-goog-api-key", scheme="")
    stream_usage_option = False

    def api_for(self, path: str) -> str | None:
        clean = path.split("?", 1)[0].rstrip("/")
        if "/openai/" in clean:
            return "chat" if openai.PROVIDER.api_for(clean) == "chat" else None
        if (call := _CALL.search(clean)) is None:
            return None
        return _METHOD_APIS.get(call.group(2))

    def read_request(self, api: str, path: str, body: Any) -> RequestFacts:
        if api == "chat":
            return openai.PROVIDER.read_request(api, path, body)
        facts = request_facts(api, body)
        if (call := _CALL.search(path.split("?", 1)[0].rstrip("/"))) is not None:
            facts.model = unquote(call.group(1))
            facts.stream = call.group(2) == "streamGenerateContent"
        return facts

    def read_response(self, api: str, body: Any, facts: ResponseFacts) -> None:
        if api == "chat":
            openai.PROVIDER.read_response(api, body, facts)
        else:
            read_body(body, facts)

    def read_event(self, api: str, event: str, data: Any, facts: ResponseFacts) -> None:
        if api == "chat":
            openai.PROVIDER.read_event(api, event, data, facts)
        elif isinstance(data, dict):
            read_chunk(data, facts)

    def limit_error(self, api: str, message: str) -> dict[str, Any]:
        return openai.error_body(message) if api == "chat" else error_body(message)

    def read_output(self, api: str, body: Any) -> Output:
        return openai.PROVIDER.read_output(api, body) if api == "chat" else read_output(body)

    def prompt_request(self, api: str, path: str, model: str, prompt: str) -> tuple[str, dict[str, Any]]:
        """A generateContent call on the same API version as the call (``/v1beta``, ...)."""
        version = path.split("?", 1)[0].split("/models/")[0].split("/openai/")[0]
        body = {"contents": [{"role": "user", "parts": [{"text": prompt}]}]}
        return f"{version}/models/{model}:generateContent", body


PROVIDER = Gemini()
