"""The one small interface every provider (API family) module implements.

A provider module owns everything specific to one API family: which hosts and paths
it serves, where the model and stream flag live in a request, and how usage is
reported in a response body or in stream events. It returns usage already normalised
to llmtap's token convention (input includes cache reads and writes, output includes
reasoning), so nothing downstream needs to know provider semantics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(slots=True)
class Usage:
    """Token counts under the contract's convention; None means "not reported"."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None
    reasoning_tokens: int | None = None


@dataclass(slots=True)
class RequestFacts:
    """What the client asked for, read from the request."""

    model: str | None = None
    stream: bool = False


@dataclass(slots=True)
class ResponseFacts:
    """What the provider answered, accumulated from a body or from stream events."""

    model: str | None = None
    usage: Usage | None = None
    usage_raw: dict[str, Any] | None = None
    finish_reasons: list[str] = field(default_factory=list)
    response_id: str | None = None
    error: str | None = None
    #: The stream's terminal event was seen: the client has the whole answer, so a hang-up
    #: after this point (the OpenAI SDK closes right after ``[DONE]``) is not a failure.
    complete: bool = False


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A matched call: which provider and which of its APIs."""

    provider: Provider
    api: str


class Provider(Protocol):
    """One API family. Implementations are plain module-level objects."""

    name: str
    #: Host names served, exact ("api.openai.com") or suffix patterns ("*.openai.azure.com").
    hosts: tuple[str, ...]

    def api_for(self, path: str) -> str | None:
        """The api kind (chat, messages, ...) for a request path, or None if not an LLM call."""

    def read_request(self, api: str, path: str, body: Any) -> RequestFacts:
        """Read the requested model and stream flag from the decoded JSON body."""

    def read_response(self, api: str, body: Any, facts: ResponseFacts) -> None:
        """Fill ``facts`` from a complete decoded JSON response body."""

    def read_event(self, api: str, event: str, data: Any, facts: ResponseFacts) -> None:
        """Update ``facts`` with one decoded server-sent event (its name and JSON data).

        Set ``facts.complete`` on the API's terminal event. (The ``data: [DONE]`` sentinel
        of OpenAI-style streams is recognised for every provider before this is called.)"""


def as_int(value: Any) -> int | None:
    """An integer token count, or None when absent or not a number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def dig(obj: Any, *keys: str) -> Any:
    """Follow nested keys through dicts, returning None at the first gap."""
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def error_message(body: Any) -> str | None:
    """The message of a provider error object ({"error": {...}} or {"type": "error", ...})."""
    err = body.get("error") if isinstance(body, dict) else None
    if err is None:
        return None
    if isinstance(err, dict):
        kind = err.get("type") or err.get("code") or "error"
        msg = err.get("message") or ""
        return f"{kind}: {msg}".strip(": ")
    return str(err)
