"""Anthropic's Messages API.

Anthropic reports ``input_tokens`` *without* cache reads and writes, so they are added
to reach the convention's total prompt. In streams, ``message_start`` carries the
initial usage and each ``message_delta`` carries cumulative counts that override it.
"""

from __future__ import annotations

import json
from typing import Any

from collector.providers.base import (
    ApiKey,
    Output,
    RequestFacts,
    ResponseFacts,
    ToolCall,
    Usage,
    as_int,
    dig,
    error_message,
    text_length,
)


def normalise(raw: dict[str, Any]) -> Usage:
    uncached = as_int(raw.get("input_tokens"))
    cache_read = as_int(raw.get("cache_read_input_tokens"))
    cache_write = as_int(raw.get("cache_creation_input_tokens"))
    total_input = None
    if uncached is not None:
        total_input = uncached + (cache_read or 0) + (cache_write or 0)
    return Usage(
        input_tokens=total_input,
        output_tokens=as_int(raw.get("output_tokens")),
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        reasoning_tokens=as_int(dig(raw, "output_tokens_details", "thinking_tokens")),
    )


def _features(body: dict[str, Any]) -> list[str]:
    found = []
    if body.get("tools"):
        found.append("tools")
    if body.get("output_format") or dig(body, "output_config", "format"):
        found.append("structured_output")
    kinds = {
        part.get("type")
        for message in body.get("messages") or ()
        if isinstance(message, dict) and isinstance(message.get("content"), list)
        for part in message["content"]
        if isinstance(part, dict)
    }
    if kinds & {"image", "document"}:
        found.append("images")
    return found


def error_body(message: str) -> dict[str, Any]:
    """Anthropic's 429 body, which the anthropic SDK raises as ``RateLimitError``."""
    return {"type": "error", "error": {"type": "rate_limit_error", "message": message}}


class AnthropicMessages:
    name = "anthropic"
    hosts = ("api.anthropic.com",)
    prices_id = "anthropic"
    api_key = ApiKey(
        "ANTHROPIC_API_KEY", header="x-api-key", scheme="", required=(("anthropic-version", "2023-06-01"),)
    )
    stream_usage_option = False

    def api_for(self, path: str) -> str | None:
        path = path.split("?", 1)[0].rstrip("/")
        return "messages" if path.endswith("/v1/messages") else None

    def read_request(self, api: str, path: str, body: Any) -> RequestFacts:
        if not isinstance(body, dict):
            return RequestFacts()
        model = body.get("model")
        return RequestFacts(
            model=model if isinstance(model, str) else None,
            stream=body.get("stream") is True,
            features=_features(body),
            max_output_tokens=as_int(body.get("max_tokens")),
            prompt_chars=text_length(body.get("system")) + text_length(body.get("messages")),
        )

    def read_response(self, api: str, body: Any, facts: ResponseFacts) -> None:
        if not isinstance(body, dict):
            return
        facts.error = error_message(body)
        self._read_message(body, facts)
        facts.output_chars += text_length(body.get("content"))

    def read_event(self, api: str, event: str, data: Any, facts: ResponseFacts) -> None:
        if not isinstance(data, dict):
            return
        kind = data.get("type") or event
        if kind == "content_block_delta":
            delta = data.get("delta") or {}
            facts.output_chars += text_length(delta.get("text") or delta.get("thinking"))
        elif kind == "message_start" and isinstance(data.get("message"), dict):
            self._read_message(data["message"], facts)
        elif kind == "message_delta":
            if reason := dig(data, "delta", "stop_reason"):
                facts.finish_reasons.append(str(reason))
            if isinstance(delta_usage := data.get("usage"), dict):
                # Delta counts are cumulative and override message_start's, key by key.
                merged = {**(facts.usage_raw or {}), **delta_usage}
                facts.usage_raw = merged
                facts.usage = normalise(merged)
        elif kind == "message_stop":
            facts.complete = True
        elif kind == "error":
            facts.error = error_message(data) or "stream error"

    def limit_error(self, api: str, message: str) -> dict[str, Any]:
        return error_body(message)

    def read_output(self, api: str, body: Any) -> Output:
        """Text and tool_use blocks of a message, or of its stream's content block events."""
        if isinstance(body, dict):
            return _blocks_output(body.get("content"))
        blocks: dict[int, dict[str, Any]] = {}
        for event in body if isinstance(body, list) else []:
            index = as_int(dig(event, "index")) or 0
            if dig(event, "type") == "content_block_start" and isinstance(event.get("content_block"), dict):
                blocks[index] = {**event["content_block"], "text": "", "partial_json": ""}
            elif dig(event, "type") == "content_block_delta" and index in blocks:
                delta = event.get("delta") or {}
                blocks[index]["text"] += str(delta.get("text") or "")
                blocks[index]["partial_json"] += str(delta.get("partial_json") or "")
        for block in blocks.values():
            if block.get("type") == "tool_use":
                block["input"] = block.pop("partial_json") or "{}"
        return _blocks_output(list(blocks.values()))

    def prompt_request(self, api: str, path: str, model: str, prompt: str) -> tuple[str, dict[str, Any]]:
        body = {"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": prompt}]}
        return path.split("?", 1)[0], body

    @staticmethod
    def _read_message(message: dict[str, Any], facts: ResponseFacts) -> None:
        if isinstance(model := message.get("model"), str) and model:
            facts.model = model
        if isinstance(mid := message.get("id"), str):
            facts.response_id = mid
        if reason := message.get("stop_reason"):
            facts.finish_reasons.append(str(reason))
        raw = message.get("usage")
        if isinstance(raw, dict):
            facts.usage_raw = dict(raw)
            facts.usage = normalise(raw)
            if isinstance(tier := raw.get("service_tier"), str):
                facts.service_tier = tier


def _blocks_output(blocks: Any) -> Output:
    """Text blocks joined; tool_use blocks as calls (``input`` is JSON, or JSON text from a stream)."""
    out = Output()
    for block in blocks if isinstance(blocks, list) else []:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text":
            out.text += str(block.get("text") or "")
        elif block.get("type") == "tool_use":
            arguments = block.get("input")
            text = arguments if isinstance(arguments, str) else json.dumps(arguments)
            out.tool_calls.append(ToolCall(str(block.get("name")), text))
    return out


PROVIDER = AnthropicMessages()
