"""OpenAI's chat completions API, and the usage shape every OpenAI-compatible API shares."""

from __future__ import annotations

from typing import Any

from collector.providers.base import (
    RequestFacts,
    ResponseFacts,
    Usage,
    as_int,
    dig,
    error_message,
)

_PATH_APIS = {"/chat/completions": "chat"}


def usage_from_chat(raw: dict[str, Any]) -> Usage:
    """OpenAI chat usage already follows the convention: prompt includes cached, completion
    includes reasoning."""
    return Usage(
        input_tokens=as_int(raw.get("prompt_tokens")),
        output_tokens=as_int(raw.get("completion_tokens")),
        cache_read_tokens=as_int(dig(raw, "prompt_tokens_details", "cached_tokens")),
        cache_write_tokens=as_int(dig(raw, "prompt_tokens_details", "cache_write_tokens")),
        reasoning_tokens=as_int(dig(raw, "completion_tokens_details", "reasoning_tokens")),
    )


class OpenAIChat:
    """Chat completions: ``usage`` in the body, or in the final chunk of a stream."""

    def __init__(self, name: str, hosts: tuple[str, ...], prices_id: str | None) -> None:
        self.name = name
        self.hosts = hosts
        self.prices_id = prices_id
        self.stream_usage_option = True

    def api_for(self, path: str) -> str | None:
        path = path.split("?", 1)[0].rstrip("/")
        for suffix, api in _PATH_APIS.items():
            if path.endswith(suffix):
                return api
        return None

    def read_request(self, api: str, path: str, body: Any) -> RequestFacts:
        if not isinstance(body, dict):
            return RequestFacts()
        model = body.get("model")
        return RequestFacts(
            model=model if isinstance(model, str) else None,
            stream=body.get("stream") is True,
        )

    def read_response(self, api: str, body: Any, facts: ResponseFacts) -> None:
        if not isinstance(body, dict):
            return
        facts.error = error_message(body)
        self._read_chunk(body, facts)

    def read_event(self, api: str, event: str, data: Any, facts: ResponseFacts) -> None:
        if not isinstance(data, dict):
            return
        if (message := error_message(data)) is not None:
            facts.error = message
        self._read_chunk(data, facts)

    @staticmethod
    def _read_chunk(body: dict[str, Any], facts: ResponseFacts) -> None:
        if isinstance(model := body.get("model"), str) and model:
            facts.model = model
        if isinstance(rid := body.get("id"), str):
            facts.response_id = rid
        for choice in body.get("choices") or ():
            if isinstance(choice, dict) and (reason := choice.get("finish_reason")):
                facts.finish_reasons.append(str(reason))
        raw = body.get("usage")
        if isinstance(raw, dict):
            facts.usage_raw = raw
            facts.usage = usage_from_chat(raw)


PROVIDER = OpenAIChat("openai", ("api.openai.com",), "openai")
