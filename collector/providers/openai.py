"""The OpenAI API family: chat completions, legacy completions, Responses and embeddings.

OpenAI itself is this module's ``PROVIDER``. Every OpenAI-compatible vendor is another
:class:`OpenAIFamily` in its own module that differs only in a few data fields (where
usage sits, which extra keys name cache reads, where the vendor's own cost is), so a new
compatible vendor is a short module and no code here changes.

Usage from this family already follows llmtap's convention: prompt/input tokens include
cached ones and completion/output tokens include reasoning, so counts are read, never summed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from collector.providers.base import (
    FEATURES,
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

#: Path suffixes, so any prefix works (/v1, /openai/v1, /api/paas/v4, /beta, Azure deployments).
#: "/chat/completions" must come before "/completions", which it also ends with.
_PATH_APIS = (
    ("/chat/completions", "chat"),
    ("/completions", "completions"),
    ("/responses", "responses"),
    ("/embeddings", "embeddings"),
)
_MAX_OUTPUT_KEYS = ("max_completion_tokens", "max_tokens", "max_output_tokens")
_PROMPT_KEYS = ("messages", "prompt", "input", "instructions")
_JSON_FORMATS = ("json_schema", "json_object")
#: Content-part keys holding inline media (base64 images, audio, files), which is not prompt text.
_MEDIA_KEYS = frozenset({"image_url", "input_audio", "file_data", "audio"})
#: Chat message (or delta) fields holding generated text.
_MESSAGE_TEXT_KEYS = ("content", "reasoning_content", "reasoning", "refusal")
#: Responses stream events whose ``delta`` is generated text (not audio, not summaries).
_TEXT_DELTA_EVENTS = frozenset(
    {
        "response.output_text.delta",
        "response.refusal.delta",
        "response.reasoning_text.delta",
        "response.function_call_arguments.delta",
    }
)
#: Responses stream events that end the stream; each carries the final response object.
_TERMINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})
#: Response statuses that mean generation stopped (``queued``/``in_progress`` do not).
_FINAL_STATUSES = ("completed", "incomplete", "failed", "cancelled")
#: OpenAI's upper bound on ``n``: a choice index past it is not trusted as a list position.
_MAX_CHOICES = 128


def normalise(raw: dict[str, Any], cache_read_keys: tuple[str, ...] = ()) -> Usage:
    """Usage of either shape the family uses, told apart by its keys (so a call on an
    unrecognised path still reads right): chat-style ``prompt_tokens``/``completion_tokens``
    or Responses-style ``input_tokens``/``output_tokens``.

    ``cache_read_keys`` are top-level keys some vendors use for cache reads instead of
    ``prompt_tokens_details.cached_tokens``; they are read only when that is absent."""
    if "prompt_tokens" not in raw and "input_tokens" in raw:
        return Usage(
            input_tokens=as_int(raw.get("input_tokens")),
            output_tokens=as_int(raw.get("output_tokens")),
            cache_read_tokens=as_int(dig(raw, "input_tokens_details", "cached_tokens")),
            cache_write_tokens=as_int(dig(raw, "input_tokens_details", "cache_write_tokens")),
            reasoning_tokens=as_int(dig(raw, "output_tokens_details", "reasoning_tokens")),
        )
    cache_read = as_int(dig(raw, "prompt_tokens_details", "cached_tokens"))
    for key in cache_read_keys:
        if cache_read is not None:
            break
        cache_read = as_int(raw.get(key))
    return Usage(
        input_tokens=as_int(raw.get("prompt_tokens")),
        output_tokens=as_int(raw.get("completion_tokens")),
        cache_read_tokens=cache_read,
        cache_write_tokens=as_int(dig(raw, "prompt_tokens_details", "cache_write_tokens")),
        reasoning_tokens=as_int(dig(raw, "completion_tokens_details", "reasoning_tokens")),
    )


@dataclass(frozen=True, slots=True)
class OpenAIFamily:
    """One vendor's OpenAI-compatible API. The fields after ``stream_usage_option`` are the
    vendor's quirks, as data; their defaults are OpenAI's own behaviour."""

    name: str
    hosts: tuple[str, ...]
    prices_id: str | None
    api_key: ApiKey | None
    stream_usage_option: bool = False
    #: Where a body or chunk carries usage, tried in order (Groq's legacy streams: x_groq.usage).
    usage_paths: tuple[tuple[str, ...], ...] = (("usage",),)
    #: Top-level usage keys read as cache reads when ``prompt_tokens_details`` has none.
    cache_read_keys: tuple[str, ...] = ()
    #: Usage key holding what the vendor charged, in USD (OpenRouter: "cost").
    cost_key: str | None = None
    #: Finds the model in the path (group 1) when the body names none (Azure deployments).
    path_model: re.Pattern[str] | None = None

    def api_for(self, path: str) -> str | None:
        """The api kind by path suffix; None for paths that are not one of the four APIs."""
        path = _bare_path(path)
        return next((api for suffix, api in _PATH_APIS if path.endswith(suffix)), None)

    def read_request(self, api: str, path: str, body: Any) -> RequestFacts:
        """What the client asked for; every field is read the same way for every api kind."""
        body = body if isinstance(body, dict) else {}
        model = body.get("model")
        if not (isinstance(model, str) and model) and self.path_model is not None:
            match = self.path_model.search(_bare_path(path))
            model = unquote(match.group(1)) if match else None
        return RequestFacts(
            model=model if isinstance(model, str) and model else None,
            stream=body.get("stream") is True,
            features=_features(body),
            max_output_tokens=next(
                (v for key in _MAX_OUTPUT_KEYS if (v := as_int(body.get(key))) is not None), None
            ),
            n=as_int(body.get("n")),
            prompt_chars=_prompt_chars(*(body.get(key) for key in _PROMPT_KEYS)),
            stream_usage_requested=dig(body, "stream_options", "include_usage") is True,
        )

    def read_response(self, api: str, body: Any, facts: ResponseFacts) -> None:
        """A chat/completions/embeddings body or a Responses object (told apart by shape)."""
        if not isinstance(body, dict):
            return
        if (message := error_message(body)) is not None:
            facts.error = message
        self._read_object(body, facts)
        facts.output_chars += _generated_chars(body)

    def read_event(self, api: str, event: str, data: Any, facts: ResponseFacts) -> None:
        """A chat/completions chunk, or a Responses event (``type`` "response.*" or "error")."""
        if not isinstance(data, dict):
            return
        kind = data.get("type")
        if kind == "error" and not isinstance(data.get("error"), dict):
            # A Responses error event: code and message sit at the top level.
            facts.error = error_message({"error": {"code": data.get("code"), "message": data.get("message")}})
        elif isinstance(kind, str) and kind.startswith("response."):
            self._read_responses_event(kind, data, facts)
        else:
            if (message := error_message(data)) is not None:
                facts.error = message  # in-band error chunk (OpenRouter) or error event (Groq)
            self._read_object(data, facts)
            facts.output_chars += _generated_chars(data)

    def limit_error(self, api: str, message: str) -> dict[str, Any]:
        return error_body(message)

    def read_output(self, api: str, body: Any) -> Output:
        """The answer of a chat, completions or Responses body, or of its stream's events."""
        if isinstance(body, list):
            terminal = (e for e in reversed(body) if dig(e, "type") in _TERMINAL_EVENTS)
            final = next((e.get("response") for e in terminal), None)
            return _object_output(final) if isinstance(final, dict) else _chunks_output(body)
        return _object_output(body) if isinstance(body, dict) else Output()

    def prompt_request(self, api: str, path: str, model: str, prompt: str) -> tuple[str, dict[str, Any]]:
        """A chat completion on the same path prefix as the call (``/v1``, ``/api/v1``, ...)."""
        bare = _bare_path(path)
        suffix = next((s for s, kind in _PATH_APIS if kind == api and bare.endswith(s)), "")
        body = {"model": model, "messages": [{"role": "user", "content": prompt}]}
        return bare.removesuffix(suffix) + "/chat/completions", body

    def _read_responses_event(self, kind: str, data: dict[str, Any], facts: ResponseFacts) -> None:
        if kind in _TEXT_DELTA_EVENTS:
            if isinstance(delta := data.get("delta"), str):
                facts.output_chars += len(delta)
        elif isinstance(response := data.get("response"), dict):
            # created/in_progress/completed/...: the response object so far. Its final output
            # repeats the deltas already counted, so only metadata and usage are read here.
            if (message := error_message(response)) is not None:
                facts.error = message
            self._read_object(response, facts)
            if kind in _TERMINAL_EVENTS:
                facts.complete = True

    def _read_object(self, obj: dict[str, Any], facts: ResponseFacts) -> None:
        """Model, id, tier, finish reasons and usage of a body, chunk or response object."""
        if isinstance(model := obj.get("model"), str) and model:
            facts.model = model
        if isinstance(rid := obj.get("id"), str) and rid:
            facts.response_id = rid
        if isinstance(tier := obj.get("service_tier"), str) and tier:
            facts.service_tier = tier
        for position, choice in enumerate(_as_list(obj.get("choices"))):
            if isinstance(choice, dict) and (reason := choice.get("finish_reason")):
                index = as_int(choice.get("index"))
                _set_finish_reason(facts.finish_reasons, position if index is None else index, str(reason))
        status = obj.get("status")
        if isinstance(status, str) and status in _FINAL_STATUSES:
            facts.finish_reasons = [str(dig(obj, "incomplete_details", "reason") or status)]
        for usage_path in self.usage_paths:
            if isinstance(raw := dig(obj, *usage_path), dict):
                facts.usage_raw = raw
                facts.usage = normalise(raw, self.cache_read_keys)
                cost = raw.get(self.cost_key) if self.cost_key else None
                if isinstance(cost, int | float) and not isinstance(cost, bool):
                    facts.provider_cost_usd = float(cost)
                break


def _object_output(obj: dict[str, Any]) -> Output:
    """A chat or completions body (first choice) or a Responses object (its output items)."""
    out = Output()
    choice = dig(obj, "choices", 0)
    if isinstance(choice, dict):
        message = found if isinstance(found := choice.get("message"), dict) else {}
        out.text = _content_text(message.get("content")) or _content_text(choice.get("text"))
        calls = [dig(call, "function") for call in _as_list(message.get("tool_calls"))]
        calls.append(message.get("function_call"))  # the legacy single function call
        out.tool_calls = [
            ToolCall(str(fn["name"]), str(fn.get("arguments") or ""))
            for fn in calls
            if isinstance(fn, dict) and fn.get("name")
        ]
    for item in _as_list(obj.get("output")):
        if not isinstance(item, dict):
            continue
        if item.get("type") == "function_call":
            out.tool_calls.append(ToolCall(str(item.get("name")), str(item.get("arguments") or "")))
        elif item.get("type") == "message":
            out.text += _content_text(item.get("content"))
    return out


def _chunks_output(chunks: list[Any]) -> Output:
    """A chat or completions stream: text deltas joined, tool-call fragments joined by index."""
    text: list[str] = []
    calls: dict[int, list[str]] = {}
    for chunk in chunks:
        choice = dig(chunk, "choices", 0)
        if not isinstance(choice, dict):
            continue
        delta = found if isinstance(found := choice.get("delta"), dict) else {}
        text.append(_content_text(delta.get("content")) or _content_text(choice.get("text")))
        for call in _as_list(delta.get("tool_calls")):
            parts = calls.setdefault(as_int(dig(call, "index")) or 0, ["", ""])
            parts[0] += str(dig(call, "function", "name") or "")
            parts[1] += str(dig(call, "function", "arguments") or "")
    return Output("".join(text), [ToolCall(name, args) for name, args in calls.values() if name])


def _content_text(content: Any) -> str:
    """Message content as text: a string, or the text of its parts (``text``/``output_text``)."""
    if isinstance(content, str):
        return content
    return "".join(str(part.get("text") or "") for part in _as_list(content) if isinstance(part, dict))


def error_body(message: str) -> dict[str, Any]:
    """OpenAI's 429 body, which the openai SDK raises as ``RateLimitError``; the error format
    of every OpenAI-compatible vendor too."""
    error = {"message": message, "type": "rate_limit_exceeded", "param": None, "code": "budget_exceeded"}
    return {"error": error}


def _bare_path(path: str) -> str:
    return path.split("?", 1)[0].split("#", 1)[0].rstrip("/")


def _as_list(value: Any) -> list[Any]:
    """``value`` if it is a JSON array, else empty: iterating anything else could raise."""
    return value if isinstance(value, list) else []


def _set_finish_reason(reasons: list[str], index: int, reason: str) -> None:
    """Keep one reason per choice, at the choice's index: streams may repeat a choice's
    reason (OpenRouter) and, with ``n`` > 1, finish choices out of order."""
    if not 0 <= index < _MAX_CHOICES:
        reasons.append(reason)
        return
    while len(reasons) <= index:
        reasons.append("")
    reasons[index] = reason


def _features(body: dict[str, Any]) -> list[str]:
    part_types = _types_within(body.get("messages"), body.get("input"))
    found = {
        "tools": bool(_as_list(body.get("tools")) or _as_list(body.get("functions"))),
        "structured_output": dig(body, "response_format", "type") in _JSON_FORMATS
        or dig(body, "text", "format", "type") in _JSON_FORMATS,
        "images": bool(part_types & {"image_url", "input_image"}),
        "audio": "input_audio" in part_types or "audio" in _as_list(body.get("modalities")),
    }
    return [feature for feature in FEATURES if found.get(feature)]


def _types_within(*roots: Any) -> set[str]:
    """Every ``type`` named anywhere in the JSON trees (content part kinds such as image_url,
    wherever a message or tool output nests them); iterative, so depth cannot overflow."""
    found: set[str] = set()
    stack = list(roots)
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if isinstance(kind := node.get("type"), str):
                found.add(kind)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


def _prompt_chars(*roots: Any) -> int:
    """Characters of prompt text, like ``text_length`` but leaving out inline media: a base64
    image or audio clip would otherwise count as hundreds of thousands of characters."""
    total = 0
    stack = list(roots)
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            total += len(node)
        elif isinstance(node, dict):
            stack.extend(value for key, value in node.items() if key not in _MEDIA_KEYS)
        elif isinstance(node, list):
            stack.extend(node)
    return total


def _generated_chars(obj: dict[str, Any]) -> int:
    """Characters of generated text in a body or chunk, for estimating usage when none is
    reported: chat messages and deltas (text, reasoning, refusals, tool-call arguments),
    legacy completion text, and Responses output items."""
    chars = 0
    for choice in _as_list(obj.get("choices")):
        if isinstance(choice, dict):
            chars += text_length(choice.get("text"))
            chars += sum(_message_chars(choice.get(key)) for key in ("message", "delta"))
    for item in _as_list(obj.get("output")):
        if isinstance(item, dict):
            chars += text_length(item.get("arguments"))
            chars += sum(_part_chars(part) for part in _as_list(item.get("content")))
    return chars


def _message_chars(message: Any) -> int:
    if not isinstance(message, dict):
        return 0
    chars = sum(text_length(message.get(key)) for key in _MESSAGE_TEXT_KEYS)
    calls = _as_list(message.get("tool_calls"))
    chars += sum(text_length(dig(call, "function", "arguments")) for call in calls)
    return chars + text_length(dig(message, "function_call", "arguments"))


def _part_chars(part: Any) -> int:
    if not isinstance(part, dict):
        return 0
    return text_length(part.get("text")) + text_length(part.get("refusal"))


PROVIDER = OpenAIFamily(
    "openai", ("api.openai.com",), "openai", ApiKey("OPENAI_API_KEY"), stream_usage_option=True
)
