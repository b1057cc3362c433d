"""The one small interface every provider (API family) module implements.

A provider module owns everything specific to one API family: which hosts and paths
it serves, how a request carries an API key, what a request asks for, and how usage is
reported in a response body or in stream events. It returns usage already normalised to
llmtap's token convention (input includes cache reads and writes, output includes
reasoning), so nothing downstream needs to know provider semantics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

#: Request features the routing recommender must respect (``RequestFacts.features``).
FEATURES = ("tools", "structured_output", "images", "audio")


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
    #: Subset of FEATURES the request uses.
    features: list[str] = field(default_factory=list)
    max_output_tokens: int | None = None
    #: Completions asked for (OpenAI ``n``, Gemini ``candidateCount``); None if not set.
    n: int | None = None
    #: Characters of prompt text (messages, system, input...), for estimating usage.
    prompt_chars: int = 0
    #: OpenAI-style streams: the client already set ``stream_options.include_usage``.
    stream_usage_requested: bool = False


@dataclass(slots=True)
class ResponseFacts:
    """What the provider answered, accumulated from a body or from stream events."""

    model: str | None = None
    usage: Usage | None = None
    usage_raw: dict[str, Any] | None = None
    finish_reasons: list[str] = field(default_factory=list)
    response_id: str | None = None
    error: str | None = None
    #: Service tier the response reports (OpenAI "default"/"flex"/"priority", ...).
    service_tier: str | None = None
    #: Cost in USD as reported by the provider itself (OpenRouter ``usage.cost``).
    provider_cost_usd: float | None = None
    #: Characters of generated text seen, for estimating usage when none is reported.
    output_chars: int = 0
    #: The stream's terminal event was seen: the client has the whole answer, so a hang-up
    #: after this point (the OpenAI SDK closes right after ``[DONE]``) is not a failure.
    complete: bool = False


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One tool call a model asked for: the tool's name and its arguments as JSON text."""

    name: str
    arguments: str


@dataclass(slots=True)
class Output:
    """What a model answered, in a form the routing comparisons share across API families:
    its text (JSON text when structured output was asked for) and its tool calls."""

    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ApiKey:
    """Where a provider's API key comes from, and how a request carries it: what llmtap
    needs to send a request that has no key of its own (``llmtap evaluate`` resends stored
    calls, and secrets are never stored)."""

    #: The environment variable holding the key: the one the provider's official SDK reads.
    variable: str
    header: str = "authorization"
    #: What precedes the key in ``header`` ("Bearer " for an authorization header).
    scheme: str = "Bearer "
    #: Headers the provider requires besides the key (a stored request keeps no header).
    required: tuple[tuple[str, str], ...] = ()

    def headers(self, key: str) -> dict[str, str]:
        """The headers that authenticate a request with ``key``."""
        return {self.header: self.scheme + key, **dict(self.required)}


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A matched call: which provider and which of its APIs."""

    provider: Provider
    api: str


class Provider(Protocol):
    """One API family at one vendor. Implementations are plain module-level objects."""

    #: The contract's provider name (openai, anthropic, gemini, ...).
    name: str
    #: Host names served, exact ("api.openai.com") or suffix patterns ("*.openai.azure.com").
    hosts: tuple[str, ...]
    #: genai-prices provider id used to price this provider's calls; None: find by model.
    prices_id: str | None
    #: How a request authenticates with a plain API key; None when requests are signed
    #: (Bedrock's SigV4) or carry OAuth tokens (Vertex), which llmtap cannot make from a key.
    api_key: ApiKey | None
    #: Accepts OpenAI's ``stream_options.include_usage`` on chat/completions streams, so
    #: llmtap may add it when the client did not (and hide the extra chunk from the client).
    stream_usage_option: bool

    def api_for(self, path: str) -> str | None:
        """The api kind (chat, messages, ...) for a request path, or None if not an LLM API."""

    def read_request(self, api: str, path: str, body: Any) -> RequestFacts:
        """Read what the client asked for from the decoded JSON body (None if not JSON).

        ``api`` may be "unknown" (a POST to an unrecognised path on this provider's host):
        read what you can, raise nothing."""

    def read_response(self, api: str, body: Any, facts: ResponseFacts) -> None:
        """Fill ``facts`` from a complete decoded JSON response body (None if not JSON)."""

    def read_event(self, api: str, event: str, data: Any, facts: ResponseFacts) -> None:
        """Update ``facts`` with one decoded server-sent event (its name and JSON data).

        Set ``facts.complete`` on the API's terminal event. (The ``data: [DONE]`` sentinel
        of OpenAI-style streams is recognised for every provider before this is called.)"""

    def limit_error(self, api: str, message: str) -> dict[str, Any]:
        """The JSON body of a 429 in this API's own error format, so that its SDKs raise
        their usual rate-limit error when llmtap answers a call itself (a budget block)."""


class OutputReader(Protocol):
    """Optional for a provider: what its answers say, for routing's shadow comparisons.
    Providers without it are never shadow-compared (the copy is still recorded)."""

    def read_output(self, api: str, body: Any) -> Output:
        """The answer in a complete decoded JSON body, or in a stream given as the list of
        its decoded event payloads (in order)."""

    def prompt_request(self, api: str, path: str, model: str, prompt: str) -> tuple[str, dict[str, Any]]:
        """The path and JSON body of a plain one-message text request to ``model`` on this
        provider's host, given the path of one of its calls: how the LLM judge is asked."""


def as_int(value: Any) -> int | None:
    """An integer token count, or None when absent or not a number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def dig(obj: Any, *keys: str | int) -> Any:
    """Follow nested keys (or list indexes) through JSON, returning None at the first gap."""
    for key in keys:
        if isinstance(obj, dict) and isinstance(key, str):
            obj = obj.get(key)
        elif isinstance(obj, list) and isinstance(key, int) and -len(obj) <= key < len(obj):
            obj = obj[key]
        else:
            return None
    return obj


def text_length(value: Any) -> int:
    """Characters of text in a JSON value (all strings, recursively), for usage estimates."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(text_length(v) for v in value.values())
    if isinstance(value, list):
        return sum(text_length(v) for v in value)
    return 0


def error_message(body: Any) -> str | None:
    """The message of a provider error object ({"error": {...}} or {"type": "error", ...})."""
    err = body.get("error") if isinstance(body, dict) else None
    if err is None:
        return None
    if isinstance(err, dict):
        kind = err.get("type") or err.get("code") or err.get("status") or "error"
        msg = err.get("message") or ""
        return f"{kind}: {msg}".strip(": ")
    return str(err)
