"""One OpenTelemetry span per call, under the GenAI semantic conventions.

Each span is made after the call ends (with its real start and end times); its ids go on
the call's row, and the span row is spooled and stored with it. Without an OTLP endpoint
the row is built directly (ids drawn as the SDK draws them, the parent read from the
``traceparent`` header by the W3C rules): going through the OpenTelemetry SDK costs ~25 us
per call on the proxy's event loop for a span nobody exports. With an endpoint the SDK
makes the span and its batch processor exports it in the background.
"""

from __future__ import annotations

import random
import re
from decimal import Decimal
from typing import Any, NamedTuple

from opentelemetry.trace import SpanKind, Status, StatusCode

#: The GenAI operation name for each api kind.
OPERATIONS = {
    "chat": "chat",
    "messages": "chat",
    "responses": "chat",
    "converse": "chat",
    "generate_content": "generate_content",
    "completions": "text_completion",
    "embeddings": "embeddings",
}

#: Span attribute for each llm_calls column that has one.
ATTRIBUTES = {
    "provider": "gen_ai.provider.name",
    "request_model": "gen_ai.request.model",
    "response_model": "gen_ai.response.model",
    "response_id": "gen_ai.response.id",
    "input_tokens": "gen_ai.usage.input_tokens",
    "output_tokens": "gen_ai.usage.output_tokens",
    "cache_read_tokens": "gen_ai.usage.cache_read.input_tokens",
    "cache_write_tokens": "gen_ai.usage.cache_creation.input_tokens",
    "reasoning_tokens": "gen_ai.usage.reasoning.output_tokens",
    "finish_reasons": "gen_ai.response.finish_reasons",
    "host": "server.address",
    "status_code": "http.response.status_code",
    "cost_usd": "llmtap.cost_usd",
    "call_id": "llmtap.call_id",
    "app": "llmtap.app",
    "ttft_ms": "llmtap.ttft_ms",
    "cache_hit": "llmtap.cache_hit",
    "cache_saved_usd": "llmtap.cache_saved_usd",
}

#: Whether the call was a stream (the GenAI conventions' attribute, set only on streams:
#: "if unset, the request is assumed to be non-streaming").
STREAM_ATTRIBUTE = "gen_ai.request.stream"

#: A W3C ``traceparent`` value: version, trace id, parent span id, flags.
TRACEPARENT = re.compile(r"^[ \t]*([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?[ \t]*$")


class SpanIds(NamedTuple):
    trace_id: str
    span_id: str
    parent_span_id: str | None


class SpanRecorder:
    def __init__(self, otlp_endpoint: str | None = None) -> None:
        """``otlp_endpoint``: the full OTLP/HTTP traces URL (``Settings.otlp_endpoint``), or None."""
        self._exporter = OtlpExporter(otlp_endpoint) if otlp_endpoint else None

    @property
    def exporting(self) -> bool:
        """Spans leave this process over OTLP as calls end."""
        return self._exporter is not None

    def record(self, call: dict[str, Any], traceparent: str | None) -> dict[str, Any]:
        """Make the span for ``call`` (and export it if configured); set its ids on ``call``;
        return the span row."""
        operation = OPERATIONS.get(call["api"] or "", call["api"] or "request")
        name = f"{operation} {call['request_model'] or ''}".strip()
        attributes: dict[str, Any] = {"gen_ai.operation.name": operation}
        for column, attribute in ATTRIBUTES.items():
            value = call.get(column)
            if isinstance(value, Decimal):
                value = float(value)  # OpenTelemetry attributes take no Decimal
            if value is not None and value != []:
                attributes[attribute] = value
        if call.get("stream"):
            attributes[STREAM_ATTRIBUTE] = True
        if call["error"]:
            attributes["error.type"] = _error_type(call)
        if self._exporter is not None:
            ids = self._exporter.export(name, attributes, call, traceparent)
        else:
            ids = new_span_ids(traceparent)
        call["trace_id"], call["span_id"] = ids.trace_id, ids.span_id
        return {
            "trace_id": ids.trace_id,
            "span_id": ids.span_id,
            "parent_span_id": ids.parent_span_id,
            "name": name,
            "kind": "CLIENT",
            "start_time": call["started_at"],  # the same instants, already formatted
            "end_time": call["ended_at"],
            "status": "ERROR" if call["error"] else "UNSET",
            "attributes": attributes,
        }

    def shutdown(self) -> None:
        if self._exporter is not None:
            self._exporter.shutdown()


def parse_traceparent(header: str) -> tuple[int, int] | None:
    """The (trace id, span id) of a valid ``traceparent``, as the SDK's propagator judges it."""
    match = TRACEPARENT.match(header)
    if match is None:
        return None
    version, trace_hex, span_hex, _flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest):
        return None
    trace_id, span_id = int(trace_hex, 16), int(span_hex, 16)
    if not trace_id or not span_id:
        return None
    return trace_id, span_id


def new_span_ids(traceparent: str | None) -> SpanIds:
    """Fresh ids for a span, in the parent's trace when ``traceparent`` is valid."""
    parent = parse_traceparent(traceparent) if traceparent else None
    span_id = random.getrandbits(64) or 1
    if parent is None:
        return SpanIds(f"{random.getrandbits(128) or 1:032x}", f"{span_id:016x}", None)
    return SpanIds(f"{parent[0]:032x}", f"{span_id:016x}", f"{parent[1]:016x}")


class OtlpExporter:
    """Spans made and exported over OTLP/HTTP by the OpenTelemetry SDK (batched, in the background)."""

    def __init__(self, traces_url: str) -> None:
        # Imported here: the SDK and the exporter are only loaded into a proxy that exports.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        # As resolved by collector.settings.config.otlp_url: a traces-only endpoint is used as is.
        self._provider = TracerProvider(resource=Resource.create({"service.name": "llmtap"}))
        self._provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_url)))
        self._tracer = self._provider.get_tracer("llmtap")
        self._propagator = TraceContextTextMapPropagator()

    def export(
        self, name: str, attributes: dict[str, Any], call: dict[str, Any], traceparent: str | None
    ) -> SpanIds:
        parent = self._propagator.extract({"traceparent": traceparent}) if traceparent else None
        span = self._tracer.start_span(
            name, context=parent, kind=SpanKind.CLIENT, attributes=attributes, start_time=call["_start_ns"]
        )
        if call["error"]:
            span.set_status(Status(StatusCode.ERROR, call["error"]))
        span.end(end_time=call["_end_ns"])
        ctx = span.get_span_context()
        parent_ctx = getattr(span, "parent", None)
        return SpanIds(
            f"{ctx.trace_id:032x}",
            f"{ctx.span_id:016x}",
            f"{parent_ctx.span_id:016x}" if parent_ctx else None,
        )

    def shutdown(self) -> None:
        self._provider.shutdown()


def _error_type(call: dict[str, Any]) -> str:
    status = call.get("status_code")
    if status is not None and status >= 400:
        return str(status)
    return call["error"].split(":", 1)[0]
