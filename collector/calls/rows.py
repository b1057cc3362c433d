"""From what the proxy saw of a call to its stored row: parsing, usage, price and span.

Building a row costs ~150 us of CPU per call (two JSON parses, the provider's readers,
pricing, the span, the row's JSON). On the proxy's one event-loop thread that is a tenth
of all the time a call takes there, so the recorder builds rows in flight only when
something needs them in flight: budgets (spend), routing (the rule's copies and their
cost), OTLP export, and the ``metadata``/``redacted`` capture modes (whose bodies must
never be written to disk, not even to the spool). Otherwise it spools the
:class:`Observed` call, and the spool loader builds the row in its own process
(:func:`built_spool_file`). Both paths go through :meth:`RowBuilder.row`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from collector.calls.scores import SCORE_KEY, loadable_score
from collector.calls.spans import SpanRecorder
from collector.pricing.book import PriceBook, cost_columns
from collector.pricing.rates import Rates
from collector.providers import Endpoint, Provider, RequestFacts, ResponseFacts, Usage, builtin_providers
from collector.storage import schema
from collector.storage.schema import (
    CacheMarks,
    CallMetadata,
    Comparison,
    ModelRewrite,
    RoutingMarks,
    part_columns,
)
from collector.trust.boundary import BODY_LIMIT, column_values, json_value
from collector.trust.failopen import failures
from collector.wire.bodies import json_or_none

log = logging.getLogger("llmtap.rows")

#: The key of a spool line that holds an observed call rather than a built row.
OBSERVED_KEY = "observed"
_OBSERVED_PREFIX = b'{"' + OBSERVED_KEY.encode() + b'":'
#: Characters per token assumed when estimating usage the provider did not report.
CHARS_PER_TOKEN = 4


@dataclass(slots=True)
class Observed:
    """One finished call as the proxy saw it: times, status, metadata, routing, and either
    the facts it already read or the (stored) body text to read them from."""

    call_id: str
    started: float
    ended: float
    first_byte: float | None
    provider: str
    api: str
    method: str
    host: str
    path: str
    status_code: int | None
    #: The answer came as an event stream.
    streamed: bool
    traceparent: str | None
    #: What went wrong in transport (the connection), if anything.
    error: str | None
    capture_mode: str
    #: The bodies as stored (secrets already cut out); None in the metadata mode.
    request_text: str | None = None
    response_text: str | None = None
    #: Facts read in flight, or None: the row's builder then reads them from the text.
    request: RequestFacts | None = None
    response: ResponseFacts | None = None
    #: The other stages' parts of the call state (:mod:`collector.proxy.call`), as they were
    #: when the call ended; their fields are columns (:mod:`collector.storage.schema`).
    metadata: CallMetadata = field(default_factory=CallMetadata)
    rewrite: ModelRewrite = field(default_factory=ModelRewrite)
    routing: RoutingMarks = field(default_factory=RoutingMarks)
    comparison: Comparison = field(default_factory=Comparison)
    cache: CacheMarks = field(default_factory=CacheMarks)

    def clean(self, secrets: Sequence[str] = ()) -> None:
        """Pass every field from outside through the boundary (:mod:`collector.trust.boundary`):
        the path, errors, the facts read from streams and every part's fields (the metadata, a
        rule's id...); each filled part is replaced by a cleaned copy, as the flow still holds
        it. The bodies were cleaned as they were kept (:func:`collector.trust.privacy.stored_body`)."""
        for name in _OUTSIDE_FIELDS:
            setattr(self, name, json_value(getattr(self, name), secrets))
        for name, part_type in _PARTS.items():
            part = getattr(self, name)
            values = {column: getattr(part, column) for column in _PART_COLUMNS[name]}
            if any(values.values()):  # a part no stage filled in holds nothing to clean
                setattr(self, name, part_type(**{k: json_value(v, secrets) for k, v in values.items()}))

    def spool_line(self) -> bytes:
        """The spool line that carries this call to the loader, which builds its row."""
        return _ENCODER.encode({OBSERVED_KEY: self}).encode() + b"\n"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Observed:
        request, response = data.pop("request"), data.pop("response")
        parts = {name: data.pop(name, None) for name in _PARTS}
        for name, part in _PARTS.items():
            # An older llmtap's line has the parts' fields at the top level.
            flat = {f.name: data.pop(f.name) for f in fields(part) if f.name in data}
            parts[name] = part(**(parts[name] or flat))
        observed = cls(**data, **parts)
        if request is not None:
            observed.request = RequestFacts(**request)
        if response is not None:
            usage = response.pop("usage")
            observed.response = ResponseFacts(**response, usage=Usage(**usage) if usage is not None else None)
        return observed


#: The fields whose values come from outside (the client, the upstream); the others are
#: llmtap's own (ids, times, flags, the capture mode, the provider matched).
_OUTSIDE_FIELDS = ("method", "host", "path", "traceparent", "error", "request", "response")
#: The other stages' parts, by field name.
_PARTS: dict[str, type] = {
    "metadata": CallMetadata,
    "rewrite": ModelRewrite,
    "routing": RoutingMarks,
    "comparison": Comparison,
    "cache": CacheMarks,
}
_PART_COLUMNS = {name: tuple(f.name for f in fields(part)) for name, part in _PARTS.items()}


def _plain(value: Any) -> Any:
    """JSON for the dataclasses in a spool line (Observed, the facts, Usage) and Decimals."""
    if isinstance(value, Decimal):
        return str(value)
    return {name: getattr(value, name) for name in value.__slots__}


#: One encoder for every line: ``json.dumps`` with options builds a new one per call.
_ENCODER = json.JSONEncoder(default=_plain, separators=(",", ":"))


class RowBuilder:
    """Builds ``llm_calls`` rows (with their span and bodies) from observed calls."""

    def __init__(
        self,
        prices: PriceBook,
        spans: SpanRecorder,
        providers: Mapping[str, Provider] | None = None,
    ) -> None:
        self.prices = prices
        self.spans = spans
        known = providers if providers is not None else {p.name: p for p in builtin_providers()}
        self.providers = dict(known)

    @classmethod
    def offline(cls, price_overrides: Mapping[str, Rates] | None = None) -> RowBuilder:
        """A builder for the spool loader: no OTLP export (the proxy exports in flight)."""
        return cls(PriceBook(price_overrides), SpanRecorder(None))

    def row(self, seen: Observed, secrets: Sequence[str] = ()) -> dict[str, Any]:
        """The row, span and bodies of ``seen``; every column crosses the boundary (with the
        call's ``secrets``, when known) before the span is made of them."""
        endpoint = Endpoint(self.providers[seen.provider], seen.api)
        request = seen.request or endpoint.provider.read_request(
            endpoint.api, seen.path, json_or_none(seen.request_text)
        )
        response = seen.response
        if response is None:
            response = read_response(endpoint, seen.status_code, json_or_none(seen.response_text))
        error = "; ".join(e for e in (seen.error, response.error) if e) or None
        usage, usage_source = estimated_usage(endpoint.api, request, response, seen.status_code)
        call: dict[str, Any] = {
            **_observed_columns(seen),
            # A streaming call: the client asked for a stream (even if the answer was a plain
            # error), or the answer was an event stream.
            "stream": seen.streamed or request.stream,
            "request_model": request.model,
            "response_model": response.model,
            "input_tokens": usage.input_tokens if usage else None,
            "output_tokens": usage.output_tokens if usage else None,
            "cache_read_tokens": usage.cache_read_tokens if usage else None,
            "cache_write_tokens": usage.cache_write_tokens if usage else None,
            "reasoning_tokens": usage.reasoning_tokens if usage else None,
            "usage_source": usage_source,
            "trace_id": None,
            "span_id": None,
            "error": error,
            "finish_reasons": [reason for reason in response.finish_reasons if reason],
            "response_id": response.response_id,
            "usage_raw": response.usage_raw,
            "service_tier": response.service_tier,
            "provider_cost_usd": response.provider_cost_usd,
            "request_features": request.features,
            "max_output_tokens": request.max_output_tokens,
        }
        call.update(
            cost_columns(
                self.prices,
                prices_id=endpoint.provider.prices_id,
                model=response.model or request.model,
                usage=usage,
                service_tier=response.service_tier,
                provider_cost_usd=response.provider_cost_usd,
                when=datetime.fromtimestamp(seen.started, UTC),
            )
        )
        if seen.cache.cache_hit:
            _served_from_cache(call)
        call = column_values(call, schema.LLM_CALLS, secrets)
        call["_start_ns"], call["_end_ns"] = int(seen.started * 1e9), int(seen.ended * 1e9)
        span = self.spans.record(call, seen.traceparent)
        del call["_start_ns"], call["_end_ns"]
        call["span"] = span
        call["body"] = _bodies(seen)
        return call


def _served_from_cache(call: dict[str, Any]) -> None:
    """A call the response cache answered cost nothing; what its answer would have cost from the
    provider (its tokens priced as any call's: the original call's cost, unless prices changed
    since or depend on the time of day) is what the cache saved. The price reference stays: it
    says how the saving was priced."""
    call["cache_saved_usd"] = call["cost_usd"]
    call["cost_usd"] = call["input_cost_usd"] = call["output_cost_usd"] = _ZERO


_ZERO = Decimal(0)


def read_response(endpoint: Endpoint, status_code: int | None, body: Any) -> ResponseFacts:
    """Facts from a whole (non-streamed) response body; an HTTP error without a provider
    error message still counts as an error."""
    facts = ResponseFacts()
    endpoint.provider.read_response(endpoint.api, body, facts)
    if facts.error is None and status_code is not None and status_code >= 400:
        facts.error = f"http {status_code}"
    return facts


def estimated_usage(
    api: str, request: RequestFacts, response: ResponseFacts, status: int | None
) -> tuple[Usage | None, str]:
    """The provider's usage, else an estimate from text lengths for a call that got an
    answer, else nothing."""
    usage = response.usage
    if usage is not None and (usage.input_tokens is not None or usage.output_tokens is not None):
        return usage, "provider"
    if status is None or status >= 400 or not request.prompt_chars:
        return None, "none"
    return (
        Usage(
            input_tokens=math.ceil(request.prompt_chars / CHARS_PER_TOKEN),
            output_tokens=None if api == "embeddings" else math.ceil(response.output_chars / CHARS_PER_TOKEN),
        ),
        "estimated",
    )


def _bodies(seen: Observed) -> dict[str, Any] | None:
    if seen.capture_mode == "metadata":
        return None
    return {
        "capture_mode": seen.capture_mode,
        "request_body": seen.request_text,
        "response_body": seen.response_text,
    }


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def built_spool_file(
    sealed: Path, rows: Callable[[], RowBuilder] | None, set_aside: Callable[[bytes, str], None]
) -> Path:
    """A new ``built-*`` file beside ``sealed`` (the caller deletes it) holding a valid row line
    for each of its lines: observed calls replaced by their rows, every row (and score)
    through the boundary again (a file on disk is outside input too).

    A call whose row cannot be built (a bug) is still stored, with what was observed of it. A
    line that is not a call at all (not JSON, not an object, no call id or start time) is
    handed to ``set_aside`` with the reason, and the rest of the file loads."""
    with open(sealed, "rb") as f:
        data = f.read()
    builder = rows() if rows is not None and _OBSERVED_PREFIX in data else None
    built = sealed.with_name("built-" + sealed.name)
    # Bodies: readable by the owner only, as the spool itself.
    with os.fdopen(os.open(built, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as out:
        for line in data.splitlines(keepends=True):
            if not line.strip():
                continue
            try:
                out.write(row_line(_loadable_row(json.loads(line), builder)))
            except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
                set_aside(line, f"{type(exc).__name__}: {exc}")
    return built


def _loadable_row(data: Any, builder: RowBuilder | None) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ValueError("a spool line must be a JSON object")
    if SCORE_KEY in data:
        return {SCORE_KEY: loadable_score(data[SCORE_KEY])}
    if OBSERVED_KEY in data:
        if builder is None:
            raise ValueError("an observed call and no row builder was given")
        data = _built_row(data[OBSERVED_KEY], builder)
    row = column_values(data, schema.LLM_CALLS)
    if not row["call_id"] or not row["started_at"]:
        raise ValueError("no call_id or no valid started_at")
    body, span = data.get("body"), data.get("span")
    row["body"] = column_values(body, _BODY_COLUMNS, mask_keys=False, limit=BODY_LIMIT) if body else None
    row["span"] = column_values(span, _SPAN_COLUMNS) if span else None
    return row


_BODY_COLUMNS = {c: t for c, t in schema.CALL_BODIES.items() if c != "call_id"}
_SPAN_COLUMNS = {c: t for c, t in schema.SPANS.items() if c != "call_id"}


def _built_row(data: dict[str, Any], builder: RowBuilder) -> dict[str, Any]:
    seen = Observed.from_json(data)
    seen.clean()
    try:
        return builder.row(seen)
    except Exception:
        failures["RowBuilder.row"] += 1
        log.exception("llmtap internal error building the row of call %s; stored as observed", seen.call_id)
        return {**_observed_columns(seen), "body": _bodies(seen)}


def row_line(row: dict[str, Any]) -> bytes:
    """The spool line of a built row (Decimals as text: the loader's columns parse them)."""
    return json.dumps(row, default=str).encode() + b"\n"


def _observed_columns(seen: Observed) -> dict[str, Any]:
    """The row's columns that need no parsing: what a call whose row cannot be built keeps."""
    return {
        "call_id": seen.call_id,
        "started_at": _iso(seen.started),
        "ended_at": _iso(seen.ended),
        "provider": seen.provider,
        "api": seen.api,
        "method": seen.method,
        "host": seen.host,
        "path": seen.path,
        "status_code": seen.status_code,
        "stream": seen.streamed,
        "latency_ms": (seen.ended - seen.started) * 1000.0,
        "ttft_ms": (seen.first_byte - seen.started) * 1000.0 if seen.first_byte else None,
        "error": seen.error,
        "usage_source": "none",
        **{column: value for name in _PARTS for column, value in part_columns(getattr(seen, name)).items()},
    }
