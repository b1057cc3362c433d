"""One OpenTelemetry span per call, under the GenAI semantic conventions.

Spans are built with the OpenTelemetry SDK after the call ends (with its real start
and end times), so their ids go on the call's row and the span itself is spooled and
stored with it. When an OTLP endpoint is configured they are also exported in the
background by the SDK's batch processor.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode, format_span_id, format_trace_id
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

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
}

_propagator = TraceContextTextMapPropagator()


class SpanRecorder:
    def __init__(self, otlp_endpoint: str | None = None) -> None:
        self._provider = TracerProvider(resource=Resource.create({"service.name": "llmtap"}))
        if otlp_endpoint:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            endpoint = otlp_endpoint.rstrip("/")
            if not endpoint.endswith("/v1/traces"):
                endpoint += "/v1/traces"
            self._provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        self._tracer = self._provider.get_tracer("llmtap")

    def record(self, call: dict[str, Any], traceparent: str | None) -> dict[str, Any]:
        """Create and end the span for ``call``; set its ids on ``call``; return the span row."""
        parent = _propagator.extract({"traceparent": traceparent}) if traceparent else None
        operation = OPERATIONS.get(call["api"] or "", call["api"] or "request")
        name = f"{operation} {call['request_model'] or ''}".strip()
        attributes: dict[str, Any] = {"gen_ai.operation.name": operation}
        for column, attribute in ATTRIBUTES.items():
            value = call.get(column)
            if isinstance(value, Decimal):
                value = float(value)  # OpenTelemetry attributes take no Decimal
            if value is not None and value != []:
                attributes[attribute] = value
        if call["error"]:
            attributes["error.type"] = _error_type(call)
        span = self._tracer.start_span(
            name,
            context=parent,
            kind=SpanKind.CLIENT,
            attributes=attributes,
            start_time=call["_start_ns"],
        )
        if call["error"]:
            span.set_status(Status(StatusCode.ERROR, call["error"]))
        span.end(end_time=call["_end_ns"])
        ctx = span.get_span_context()
        call["trace_id"] = format_trace_id(ctx.trace_id)
        call["span_id"] = format_span_id(ctx.span_id)
        parent_ctx = getattr(span, "parent", None)
        return {
            "trace_id": call["trace_id"],
            "span_id": call["span_id"],
            "parent_span_id": format_span_id(parent_ctx.span_id) if parent_ctx else None,
            "name": name,
            "kind": "CLIENT",
            "start_time": _iso(call["_start_ns"]),
            "end_time": _iso(call["_end_ns"]),
            "status": "ERROR" if call["error"] else "UNSET",
            "attributes": attributes,
        }

    def shutdown(self) -> None:
        self._provider.shutdown()


def _error_type(call: dict[str, Any]) -> str:
    status = call.get("status_code")
    if status is not None and status >= 400:
        return str(status)
    return call["error"].split(":", 1)[0]


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat()
