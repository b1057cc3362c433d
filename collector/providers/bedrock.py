"""Amazon Bedrock runtime (``bedrock-runtime.{region}.amazonaws.com``).

The model is only in the URL, URL-encoded (``/model/us.anthropic.claude-...-v1%3A0/converse``);
responses never echo it. Converse reports ``inputTokens`` *without* cache reads and writes,
so they are added to reach the convention's total prompt. Requests are SigV4-signed, so
llmtap never changes them (no stream-usage option).

Streams (``converse-stream``, ``invoke-with-response-stream``) are AWS binary event streams,
framed by :class:`collector.wire.eventstream.EventStreamReader`; each frame arrives here as an
event named by its ``:event-type`` with its JSON payload. ConverseStream ends with a
``metadata`` event holding the usage.

``invoke`` bodies are in the model vendor's own format; they are read on a best-effort
basis: Anthropic's Messages format by the Anthropic provider's code, Amazon Nova's
Converse-like usage, Meta Llama and Amazon Titan counts, OpenAI-format chat, and the
``amazon-bedrock-invocationMetrics`` that Bedrock appends to the last chunk of every
invoke stream. The OpenAI-compatible ``/openai/v1/chat/completions`` endpoint is read by
the OpenAI provider's code.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any
from urllib.parse import unquote

from collector.providers import anthropic, openai
from collector.providers.base import RequestFacts, ResponseFacts, Usage, as_int, dig, text_length

_CALL = re.compile(r"^/model/(.+)/(converse-stream|converse|invoke-with-response-stream|invoke)$")
_OPERATIONS = {
    "converse": ("converse", False),
    "converse-stream": ("converse", True),
    "invoke": ("invoke", False),
    "invoke-with-response-stream": ("invoke", True),
}
#: Converse content blocks that need a multimodal model (documents: only PDFs, see below).
_MEDIA_BLOCKS = {"image": "images", "video": "images", "audio": "audio"}
#: Event types of ConverseStream and InvokeModelWithResponseStream; any other is an error.
_STREAM_EVENTS = frozenset(
    {
        "messageStart",
        "contentBlockStart",
        "contentBlockDelta",
        "contentBlockStop",
        "messageStop",
        "metadata",
        "chunk",
    }
)
_METRICS_KEY = "amazon-bedrock-invocationMetrics"


def normalise(raw: dict[str, Any]) -> Usage:
    """Converse usage (or invoke metrics, which spell the counts ``...TokenCount``) under the
    convention: input = inputTokens + cache reads + cache writes."""
    uncached = _first(raw, "inputTokens", "inputTokenCount")
    cache_read = _first(raw, "cacheReadInputTokens", "cacheReadInputTokenCount")
    cache_write = _first(raw, "cacheWriteInputTokens", "cacheWriteInputTokenCount")
    total_input = None
    if uncached is not None:
        total_input = uncached + (cache_read or 0) + (cache_write or 0)
    return Usage(
        input_tokens=total_input,
        output_tokens=_first(raw, "outputTokens", "outputTokenCount"),
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
    )


def _first(raw: dict[str, Any], *keys: str) -> int | None:
    for key in keys:
        if (value := as_int(raw.get(key))) is not None:
            return value
    return None


def _call(path: str) -> tuple[str, str, bool] | None:
    """(model id, api, stream) for a ``/model/{id}/{operation}`` path."""
    found = _CALL.match(path.split("?", 1)[0].rstrip("/"))
    if found is None:
        return None
    api, stream = _OPERATIONS[found.group(2)]
    return unquote(found.group(1)), api, stream


def _converse_features(body: dict[str, Any]) -> list[str]:
    found = []
    if dig(body, "toolConfig", "tools"):
        found.append("tools")
    if dig(body, "outputConfig", "textFormat"):
        found.append("structured_output")
    kinds = {
        _media_kind(key, value)
        for message in body.get("messages") or ()
        if isinstance(message, dict) and isinstance(message.get("content"), list)
        for block in message["content"]
        if isinstance(block, dict)
        for key, value in block.items()
    }
    return found + [kind for kind in ("images", "audio") if kind in kinds]


def _max_tokens(body: dict[str, Any]) -> int | None:
    """The output cap, wherever the API or model vendor puts it."""
    config = body.get("inferenceConfig")
    if isinstance(config, dict) and (cap := _first(config, "maxTokens", "max_new_tokens")) is not None:
        return cap  # Converse; Nova invoke
    if (cap := _first(body, "max_tokens", "max_gen_len")) is not None:
        return cap  # Anthropic- and OpenAI-style; Llama
    return as_int(dig(body, "textGenerationConfig", "maxTokenCount"))  # Titan


def _media_kind(key: str, value: Any) -> str | None:
    """The feature a Converse content block needs. Documents other than PDFs (txt, csv,
    docx...) reach the model as extracted text, so they need no vision."""
    if key == "document":
        return "images" if isinstance(value, dict) and value.get("format") == "pdf" else None
    return _MEDIA_BLOCKS.get(key)


def _error_text(body: dict[str, Any]) -> str | None:
    """AWS errors are ``{"message": "..."}`` (the type travels in a header); older
    services spell it ``Message``."""
    message = body.get("message", body.get("Message"))
    return message if isinstance(message, str) else None


def error_body(message: str) -> dict[str, Any]:
    """An AWS JSON-protocol throttling error; botocore takes the error code from ``__type``,
    so boto3 raises ``ThrottlingException``."""
    return {"__type": "ThrottlingException", "message": message}


def _set_usage(raw: Any, facts: ResponseFacts) -> None:
    if isinstance(raw, dict):
        facts.usage_raw = raw
        facts.usage = normalise(raw)


class Bedrock:
    name = "bedrock"
    hosts = (
        "bedrock-runtime.*.amazonaws.com",
        "bedrock-runtime-fips.*.amazonaws.com",
        "bedrock-runtime.*.amazonaws.com.cn",
    )
    prices_id = "aws"
    #: Requests are signed with AWS SigV4 over their content: no key alone can authenticate one.
    api_key = None
    stream_usage_option = False

    def api_for(self, path: str) -> str | None:
        clean = path.split("?", 1)[0].rstrip("/")
        if clean.startswith("/openai/"):
            return "chat" if openai.PROVIDER.api_for(clean) == "chat" else None
        call = _call(clean)
        return call[1] if call is not None else None

    def read_request(self, api: str, path: str, body: Any) -> RequestFacts:
        if api == "chat":
            return openai.PROVIDER.read_request(api, path, body)
        call = _call(path)
        model = call[0] if call is not None else None
        if api == "invoke" and model is not None and "anthropic." in model:
            facts = anthropic.PROVIDER.read_request("messages", path, body)
        elif isinstance(body, dict):
            facts = RequestFacts(
                features=_converse_features(body) if api == "converse" else [],
                max_output_tokens=_max_tokens(body),
                prompt_chars=sum(
                    text_length(body.get(k)) for k in ("system", "messages", "prompt", "inputText")
                ),
            )
        else:
            facts = RequestFacts()
        facts.model = model
        facts.stream = call is not None and call[2]
        return facts

    def read_response(self, api: str, body: Any, facts: ResponseFacts) -> None:
        if api == "chat":
            openai.PROVIDER.read_response(api, body, facts)
        elif not isinstance(body, dict):
            return
        elif "output" not in body and (message := _error_text(body)) is not None:
            facts.error = message
        elif api == "converse":
            self._read_converse(body, facts)
        else:
            _read_invoke(body, facts, stream=False)

    def read_event(self, api: str, event: str, data: Any, facts: ResponseFacts) -> None:
        if api == "chat":
            openai.PROVIDER.read_event(api, event, data, facts)
            return
        if not isinstance(data, dict):
            return
        if event not in _STREAM_EVENTS:
            # An exception frame, named by its type (throttlingException, ...).
            if (message := _error_text(data)) is not None:
                facts.error = f"{event}: {message}"
        elif api == "converse":
            self._read_converse_event(event, data, facts)
        elif event == "chunk" and isinstance(encoded := data.get("bytes"), str):
            try:
                payload = json.loads(base64.b64decode(encoded, validate=True))
            except ValueError:  # binascii.Error, JSONDecodeError and UnicodeDecodeError alike
                return
            if isinstance(payload, dict):
                _read_invoke(payload, facts, stream=True)

    def limit_error(self, api: str, message: str) -> dict[str, Any]:
        return openai.error_body(message) if api == "chat" else error_body(message)

    @staticmethod
    def _read_converse(body: dict[str, Any], facts: ResponseFacts) -> None:
        if reason := body.get("stopReason"):
            facts.finish_reasons.append(str(reason))
        for block in dig(body, "output", "message", "content") or ():
            if isinstance(block, dict):
                facts.output_chars += text_length(block.get("text")) + text_length(block.get("toolUse"))
        _set_usage(body.get("usage"), facts)
        if isinstance(tier := dig(body, "serviceTier", "type"), str):
            facts.service_tier = tier

    @staticmethod
    def _read_converse_event(event: str, data: dict[str, Any], facts: ResponseFacts) -> None:
        if event == "contentBlockDelta":
            delta = data.get("delta") or {}
            facts.output_chars += (
                text_length(delta.get("text"))
                + text_length(dig(delta, "reasoningContent", "text"))
                + text_length(dig(delta, "toolUse", "input"))
            )
        elif event == "messageStop":
            if reason := data.get("stopReason"):
                facts.finish_reasons.append(str(reason))
        elif event == "metadata":
            # The last event of a ConverseStream: the usage, after messageStop.
            _set_usage(data.get("usage"), facts)
            if isinstance(tier := dig(data, "serviceTier", "type"), str):
                facts.service_tier = tier
            facts.complete = True


def _read_invoke(body: dict[str, Any], facts: ResponseFacts, stream: bool) -> None:
    """One invoke response body or decoded stream chunk, in whichever vendor format it is."""
    anthropic_format = isinstance(kind := body.get("type"), str)
    if anthropic_format:  # a Messages response, or one event of a Messages stream
        if stream:
            anthropic.PROVIDER.read_event("messages", str(kind), body, facts)
        else:
            anthropic.PROVIDER.read_response("messages", body, facts)
    elif isinstance(body.get("choices"), list):  # OpenAI chat format (gpt-oss and others)
        if stream:
            openai.PROVIDER.read_event("chat", "message", body, facts)
        else:
            openai.PROVIDER.read_response("chat", body, facts)
    else:
        _read_invoke_counts(body, facts)
    metrics = body.get(_METRICS_KEY)
    if isinstance(metrics, dict):
        # Bedrock's own counts for the whole call, on the last chunk of an invoke stream.
        # They beat per-chunk vendor counts (Llama's prompt count is null after the first
        # chunk); only Anthropic's own usage, which splits out the cache, is kept over them.
        facts.complete = True
        if not (anthropic_format and facts.usage is not None):
            _set_usage(metrics, facts)


def _read_invoke_counts(body: dict[str, Any], facts: ResponseFacts) -> None:
    """Usage and finish reason of the other vendors' invoke formats."""
    for key in ("stopReason", "stop_reason", "finish_reason"):
        if isinstance(reason := body.get(key), str):
            facts.finish_reasons.append(reason)
    results = [r for r in body.get("results") or () if isinstance(r, dict)]  # Titan text
    facts.finish_reasons += [str(r["completionReason"]) for r in results if r.get("completionReason")]
    usage = body.get("usage")
    if isinstance(usage, dict) and "inputTokens" in usage:  # Nova
        _set_usage(usage, facts)
    elif "prompt_token_count" in body and "generation_token_count" in body:  # Llama
        raw = {key: body[key] for key in ("prompt_token_count", "generation_token_count")}
        facts.usage_raw = raw
        facts.usage = Usage(
            input_tokens=as_int(raw["prompt_token_count"]),
            output_tokens=as_int(raw["generation_token_count"]),
        )
    elif "inputTextTokenCount" in body:  # Titan text and embeddings
        counts = [as_int(r.get("tokenCount")) for r in results]
        facts.usage_raw = {"inputTextTokenCount": body["inputTextTokenCount"]}
        facts.usage = Usage(
            input_tokens=as_int(body["inputTextTokenCount"]),
            output_tokens=sum(c or 0 for c in counts) if counts and None not in counts else None,
        )


PROVIDER = Bedrock()
