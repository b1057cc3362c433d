"""Cohere's chat and embed APIs (v2, and v1 on a best-effort basis).

Usage comes from ``usage.tokens`` (v1: ``meta.tokens``), the tokens the model actually
saw, not ``billed_units``, which leaves out the prompt template and so undercounts.
``usage.cached_tokens`` is the part of the input read from cache. No model is echoed.
A v2 stream is server-sent events; its ``message-end`` event holds the finish reason and
the usage. (v1 streams are newline-delimited JSON, not SSE, and are not read.)
"""

from __future__ import annotations

from typing import Any

from collector.providers.base import ApiKey, RequestFacts, ResponseFacts, Usage, as_int, dig, text_length

_PATH_APIS = {"chat": "chat", "embed": "embeddings", "rerank": "rerank"}


def normalise(raw: dict[str, Any], billed_fallback: bool = False) -> Usage:
    """Cohere usage (v2 ``usage`` or v1 ``meta``) under the convention, which its
    ``tokens`` already follow. Embed responses carry only ``billed_units``, which for
    them is the count (``billed_fallback``)."""
    tokens = raw.get("tokens")
    if not isinstance(tokens, dict) and billed_fallback:
        tokens = raw.get("billed_units")
    tokens = tokens if isinstance(tokens, dict) else {}
    return Usage(
        input_tokens=as_int(tokens.get("input_tokens")),
        output_tokens=as_int(tokens.get("output_tokens")),
        cache_read_tokens=as_int(raw.get("cached_tokens")),
    )


def _features(api: str, body: dict[str, Any]) -> list[str]:
    found = []
    if body.get("tools"):
        found.append("tools")
    if isinstance(fmt := body.get("response_format"), dict) and fmt.get("type") in ("json_object", "json"):
        found.append("structured_output")
    kinds = {
        part.get("type")
        for message in body.get("messages") or body.get("inputs") or ()
        if isinstance(message, dict) and isinstance(message.get("content"), list)
        for part in message["content"]
        if isinstance(part, dict)
    }
    if "image_url" in kinds or (api == "embeddings" and body.get("images")):
        found.append("images")
    return found


def _set_usage(raw: Any, facts: ResponseFacts, billed_fallback: bool = False) -> None:
    if isinstance(raw, dict):
        facts.usage_raw = raw
        facts.usage = normalise(raw, billed_fallback)


def _finish(reason: Any, facts: ResponseFacts) -> None:
    if reason:
        facts.finish_reasons.append(str(reason))
        if reason == "ERROR":
            facts.error = facts.error or "generation failed (finish_reason ERROR)"


class Cohere:
    name = "cohere"
    hosts = ("api.cohere.com", "api.cohere.ai")
    prices_id = "cohere"
    api_key = ApiKey("CO_API_KEY")
    stream_usage_option = False

    def api_for(self, path: str) -> str | None:
        parts = path.split("?", 1)[0].strip("/").split("/")
        if len(parts) == 2 and parts[0] in ("v1", "v2"):
            return _PATH_APIS.get(parts[1])
        return None

    def read_request(self, api: str, path: str, body: Any) -> RequestFacts:
        if not isinstance(body, dict):
            return RequestFacts()
        model = body.get("model")
        # v2 prompt: messages; v1: message + chat_history + preamble; embed: texts/inputs.
        prompt_keys = ("messages", "message", "chat_history", "preamble", "texts", "inputs", "query")
        return RequestFacts(
            model=model if isinstance(model, str) else None,
            stream=body.get("stream") is True,
            features=_features(api, body),
            max_output_tokens=as_int(body.get("max_tokens")),
            prompt_chars=sum(text_length(body.get(key)) for key in prompt_keys),
        )

    def read_response(self, api: str, body: Any, facts: ResponseFacts) -> None:
        if not isinstance(body, dict):
            return
        if isinstance(message := body.get("message"), str):  # errors: {"id", "message"}
            facts.error = message
            return
        if isinstance(rid := body.get("id") or body.get("generation_id"), str):
            facts.response_id = rid
        _finish(body.get("finish_reason"), facts)
        facts.output_chars += text_length(dig(body, "message", "content")) + text_length(body.get("text"))
        if isinstance(usage := body.get("usage"), dict):
            _set_usage(usage, facts)
        else:  # v1 chat and embed put the counts in ``meta``
            _set_usage(body.get("meta"), facts, billed_fallback=api == "embeddings")

    def read_event(self, api: str, event: str, data: Any, facts: ResponseFacts) -> None:
        if not isinstance(data, dict):
            return
        kind = data.get("type") or event
        if kind == "message-start" and isinstance(rid := data.get("id"), str):
            facts.response_id = rid
        elif kind in ("content-delta", "tool-plan-delta", "tool-call-delta"):
            message = dig(data, "delta", "message") or {}
            facts.output_chars += text_length(message.get("content")) + text_length(message.get("tool_plan"))
            facts.output_chars += text_length(dig(message, "tool_calls", "function", "arguments"))
        elif kind == "message-end":
            _finish(dig(data, "delta", "finish_reason"), facts)
            _set_usage(dig(data, "delta", "usage"), facts)
            facts.complete = True
        elif isinstance(message := data.get("message"), str):
            facts.error = message

    def limit_error(self, api: str, message: str) -> dict[str, Any]:
        """Cohere's error body; its SDK raises ``TooManyRequestsError`` for any 429."""
        return {"message": message}


PROVIDER = Cohere()
