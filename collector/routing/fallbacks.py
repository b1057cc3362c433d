"""Fallback chains, declared in the config as::

    [fallbacks.chat]
    match = { model = "gpt-4o", app = "checkout" }    # model required; app, provider optional
    to = [
      "gpt-4o-mini",                                  # another model, same host and key
      { url = "https://openrouter.ai/api/v1", model = "openai/gpt-4o", api_key_env = "OPENROUTER_API_KEY" },
      { url = "https://acme.openai.azure.com/openai/v1", model = "gpt-4o",
        api_key_env = "AZURE_OPENAI_API_KEY", api_key_header = "api-key" },
    ]
    on_status = [429, 500, 502, 503, 504]   # answers that count as failures (the default)
    first_byte_timeout_s = 30               # no response head by then: a failure
    max_retry_after_s = 5                   # the last target may be waited for this long, once
    breaker = { failures = 5, window_s = 60, cooldown_s = 30 }

A call the chain matches goes first where it was going; on a failure (a transport error, no
answer head in time, or a listed status) the next target is tried, and so on (see
:mod:`collector.proxy.fallback_relay`). A target on another host gets that host's key from
``api_key_env``, sent as ``api_key_header`` says (``Authorization: Bearer`` by default; Azure
OpenAI's ``api-key``, or ``x-api-key`` as Anthropic's API takes it); the client's own
credentials never leave for another host. With the variable unset the target is skipped.
The URL's query is kept (Azure's ``api-version``). Requests signed over their body (AWS
SigV4) are never re-sent anywhere.
"""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, Strict, field_validator

from collector.routing.breaker import BreakerSettings
from collector.settings.validation import HttpUrl, Seconds, Table, Text

__all__ = ["DEFAULT_FAILURE_STATUSES", "BreakerTable", "FallbackTable", "HostTarget", "Match"]

DEFAULT_FAILURE_STATUSES = (429, 500, 502, 503, 504)


class Match(Table):
    model: Text
    app: Text | None = None
    provider: Text | None = None

    def covers(self, model: str | None, app: str | None, provider: str) -> bool:
        return (
            model == self.model
            and (self.app is None or app == self.app)
            and (self.provider is None or provider == self.provider)
        )


class HostTarget(Table):
    """Another host speaking the same API: ``url`` is its API base (what replaces the call's
    own base, e.g. ``https://openrouter.ai/api/v1`` for ``https://api.openai.com/v1``)."""

    url: HttpUrl
    model: Text
    api_key_env: Annotated[
        str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="an environment variable name")
    ]
    api_key_header: Literal["authorization", "api-key", "x-api-key"] = "authorization"

    def credential(self, key: str) -> tuple[bytes, bytes]:
        """The header carrying ``key`` to this host: ``Authorization: Bearer KEY``, or the key
        as the value of ``api-key`` (Azure OpenAI) or ``x-api-key``."""
        if self.api_key_header == "authorization":
            return b"authorization", f"Bearer {key}".encode()
        return self.api_key_header.encode(), key.encode()

    @property
    def upstream(self) -> str:
        """``scheme://host:port``, as the stage names the call's own upstream, so a host that is
        one chain's first target and another's fallback has one circuit breaker."""
        parts = urlsplit(self.url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return f"{parts.scheme}://{parts.hostname}:{port}"


class BreakerTable(Table):
    failures: Annotated[int, Strict(), Field(ge=1, description="a positive whole number")] = 5
    window_s: Seconds = 60.0
    cooldown_s: Seconds = 30.0

    def settings(self) -> BreakerSettings:
        return BreakerSettings(self.failures, self.window_s, self.cooldown_s)


class FallbackTable(Table):
    """A ``[fallbacks."NAME"]`` table."""

    match: Match = Field(description="a mapping with at least 'model'")
    to: list[Text | HostTarget] = Field(
        min_length=1, description='a list of models or {url, model, api_key_env} tables, e.g. ["gpt-4o-mini"]'
    )
    on_status: tuple[int, ...] = Field(
        default=DEFAULT_FAILURE_STATUSES, description="a list of HTTP statuses, e.g. [429, 500, 503]"
    )
    first_byte_timeout_s: Seconds = 30.0
    max_retry_after_s: Annotated[
        float, Field(ge=0, allow_inf_nan=False, description="a number of seconds")
    ] = 5.0
    breaker: BreakerTable = Field(default_factory=BreakerTable, description="a table like {failures = 5}")

    @field_validator("on_status")
    @classmethod
    def _statuses(cls, statuses: tuple[int, ...]) -> tuple[int, ...]:
        if any(not 400 <= status <= 599 for status in statuses):
            raise ValueError("statuses that count as failures are from 400 to 599")
        return statuses
