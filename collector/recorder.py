"""The capture addon: turns each LLM call passing through the proxy into one stored row.

Hooks, in the order mitmproxy calls them:

* ``request``: match the host and path to a provider; read the model and stream flag.
* ``responseheaders``: for an event stream, install a :class:`StreamTee` so each chunk
  goes on to the client at once while a copy is parsed for usage.
* ``response`` / ``error``: finish the call: build the row and its span and append it to
  the spool. mitmproxy runs ``response`` before the client is sent the end of the
  response, so a call the client has fully received is always already spooled.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Protocol

from mitmproxy import http

from collector import privacy
from collector.decoding import Decoder, decoder_for
from collector.eventstream import EventStreamReader
from collector.failopen import fail_open, failures
from collector.headers import first_header, intended_host
from collector.metadata import METADATA_KEY, CallMetadata
from collector.pricing import PriceBook, cost_columns
from collector.providers import Endpoint, ProviderRegistry, RequestFacts, ResponseFacts, Usage
from collector.spans import SpanRecorder
from collector.spool import Spool
from collector.sse import SSEReader

log = logging.getLogger("llmtap.recorder")

CAPTURE_KEY = "llmtap.capture"
#: Most of one body kept in the ``full``/``redacted`` capture modes; the rest is cut.
BODY_LIMIT = 8 * 1024 * 1024


@dataclass(slots=True)
class Capture:
    """Everything known about one call while it is in flight."""

    endpoint: Endpoint
    method: str
    host: str
    path: str
    started: float
    metadata: CallMetadata
    traceparent: str | None
    secrets: list[str]
    #: The body as the client sent it (addons may change what goes upstream).
    request_body: bytes = b""
    request: RequestFacts = field(default_factory=RequestFacts)
    response: ResponseFacts = field(default_factory=ResponseFacts)
    streamed: bool = False
    first_byte: float | None = None
    stream_body: bytearray | None = None
    completed_at: float | None = None
    done: bool = False
    #: Set when the call is finished, for addons that act on spend (budgets).
    cost_usd: Decimal | None = None
    #: The client's model when an addon sent the call to another one (budget downgrades).
    routed_from_model: str | None = None
    #: Known from the start so that other calls (shadow copies, retries) can refer to it.
    call_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    #: Set by the routing addon: the rule that acted on this call and the arm it fell in
    #: (``canary``, ``control``, ``enforce``, ``shadow``, ``retry``).
    routing_rule: str | None = None
    routing_arm: str | None = None
    #: A shadow copy: the call_id of the live call it copies; a retry: the failed call's.
    shadow_of: str | None = None
    retry_of: str | None = None
    #: A shadow copy's output compared with its original's: the method, and whether they agree.
    comparison: str | None = None
    agreement: bool | None = None


class EventReader(Protocol):
    """Turns a stream's bytes, chunk by chunk, into ``(event, data)`` pairs."""

    def feed(self, chunk: bytes) -> Iterator[tuple[str, str]]: ...

    def close(self) -> Iterator[tuple[str, str]]: ...


#: Stream framings llmtap reads, by content type.
STREAM_READERS: dict[str, Callable[[], EventReader]] = {
    "text/event-stream": SSEReader,
    "application/vnd.amazon.eventstream": EventStreamReader,
}


class StreamTee:
    """``flow.response.stream`` callable: passes every chunk through untouched, parses a copy."""

    def __init__(self, capture: Capture, reader: EventReader, content_encoding: str, keep_body: bool) -> None:
        self.capture = capture
        self.reader = reader
        self.decoder: Decoder | None = decoder_for(content_encoding)
        if keep_body:
            capture.stream_body = bytearray()

    def __call__(self, chunk: bytes) -> bytes:
        capture = self.capture
        if chunk and capture.first_byte is None:
            capture.first_byte = time.time()
        if self.decoder is not None:
            try:
                self._parse(chunk)
            except Exception:
                self.decoder = None  # stop parsing this stream; keep forwarding it
                failures["StreamTee"] += 1
                log.exception("llmtap could not parse a stream; it is forwarded unchanged")
        return chunk

    def _parse(self, chunk: bytes) -> None:
        assert self.decoder is not None
        text = self.decoder.decompress(chunk) if chunk else b""
        body = self.capture.stream_body
        if body is not None and len(body) < BODY_LIMIT:
            body += text[: BODY_LIMIT - len(body)]
        events = self.reader.feed(text) if chunk else self.reader.close()
        endpoint = self.capture.endpoint
        facts = self.capture.response
        for event, data in events:
            if data == "[DONE]":
                facts.complete = True
                continue
            if not data.startswith(("{", "[")):
                continue  # other non-JSON sentinels
            try:
                payload = json.loads(data)
            except ValueError:
                continue  # one malformed event must not stop reading the rest
            endpoint.provider.read_event(endpoint.api, event, payload, facts)
        if facts.complete and self.capture.completed_at is None:
            self.capture.completed_at = time.time()


class Recorder:
    def __init__(
        self,
        registry: ProviderRegistry,
        spool: Spool,
        spans: SpanRecorder,
        prices: PriceBook,
        capture_mode: str = "full",
    ) -> None:
        self.registry = registry
        self.spool = spool
        self.spans = spans
        self.prices = prices
        self.capture_mode = capture_mode
        self.calls_recorded = 0

    @fail_open
    def request(self, flow: http.HTTPFlow) -> None:
        req = flow.request
        host = intended_host(req)
        endpoint = self.registry.match(host, req.path, req.method)
        if endpoint is None:
            return
        capture = Capture(
            endpoint=endpoint,
            method=req.method,
            host=host,
            path=privacy.clean_path(req.path),
            started=req.timestamp_start,
            metadata=flow.metadata.get(METADATA_KEY) or CallMetadata(),
            traceparent=first_header(req, b"traceparent"),
            secrets=privacy.secret_values(req.data.headers.fields, req.path),
        )
        capture.request_body = req.content or b""
        body = json_or_none(capture.request_body)
        capture.request = endpoint.provider.read_request(endpoint.api, req.path, body)
        flow.metadata[CAPTURE_KEY] = capture

    @fail_open
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        capture: Capture | None = flow.metadata.get(CAPTURE_KEY)
        if capture is None or flow.response is None:
            return
        content_type = flow.response.headers.get("content-type", "").split(";")[0].strip().lower()
        reader = STREAM_READERS.get(content_type)
        if reader is None:
            return
        try:
            tee = StreamTee(
                capture,
                reader(),
                flow.response.headers.get("content-encoding", ""),
                # Binary framings are not kept as body text.
                keep_body=self.capture_mode != "metadata" and reader is SSEReader,
            )
        except ValueError as exc:
            log.warning("stream of %s not parsed: %s", capture.host, exc)
            flow.response.stream = True
        else:
            flow.response.stream = tee
        capture.streamed = True

    @fail_open
    def response(self, flow: http.HTTPFlow) -> None:
        capture: Capture | None = flow.metadata.get(CAPTURE_KEY)
        if capture is None or capture.done or flow.response is None:
            return
        if not capture.streamed:
            body = json_or_none(_content(flow.response))
            capture.endpoint.provider.read_response(capture.endpoint.api, body, capture.response)
            if capture.response.error is None and flow.response.status_code >= 400:
                capture.response.error = f"http {flow.response.status_code}"
        self._finish(flow, capture, error=None)

    @fail_open
    def error(self, flow: http.HTTPFlow) -> None:
        capture: Capture | None = flow.metadata.get(CAPTURE_KEY)
        if capture is None or capture.done:
            return
        if capture.completed_at is not None:
            self._finish(flow, capture, error=None)  # the client already had the whole answer
            return
        message = flow.error.msg if flow.error else "unknown error"
        self._finish(flow, capture, error=message)

    def _finish(self, flow: http.HTTPFlow, capture: Capture, error: str | None) -> None:
        capture.done = True
        ended = time.time()
        if error is None and flow.response is not None:
            ended = flow.response.timestamp_end or capture.completed_at or ended
        facts = capture.response
        error = "; ".join(e for e in (error, facts.error) if e) or None
        usage, usage_source = _usage(capture, flow.response.status_code if flow.response else None)
        first_byte = capture.first_byte
        if first_byte is None and flow.response is not None:
            first_byte = flow.response.timestamp_start
        call: dict[str, Any] = {
            "call_id": capture.call_id,
            "started_at": _iso(capture.started),
            "ended_at": _iso(ended),
            "provider": capture.endpoint.provider.name,
            "api": capture.endpoint.api,
            "method": capture.method,
            "host": capture.host,
            "path": capture.path,
            "status_code": flow.response.status_code if flow.response is not None else None,
            # A streaming call: the client asked for a stream (even if the answer was a plain
            # error), or the answer was an event stream.
            "stream": capture.streamed or capture.request.stream,
            "request_model": capture.request.model,
            "response_model": facts.model,
            "routed_from_model": capture.routed_from_model,
            "input_tokens": usage.input_tokens if usage else None,
            "output_tokens": usage.output_tokens if usage else None,
            "cache_read_tokens": usage.cache_read_tokens if usage else None,
            "cache_write_tokens": usage.cache_write_tokens if usage else None,
            "reasoning_tokens": usage.reasoning_tokens if usage else None,
            "usage_source": usage_source,
            "latency_ms": (ended - capture.started) * 1000.0,
            "ttft_ms": (first_byte - capture.started) * 1000.0 if first_byte else None,
            "app": capture.metadata.app,
            "user_id": capture.metadata.user_id,
            "session_id": capture.metadata.session_id,
            "properties": capture.metadata.properties or None,
            "trace_id": None,
            "span_id": None,
            "error": error,
            "finish_reasons": [reason for reason in facts.finish_reasons if reason],
            "response_id": facts.response_id,
            "usage_raw": facts.usage_raw,
            "service_tier": facts.service_tier,
            "provider_cost_usd": facts.provider_cost_usd,
            "request_features": capture.request.features,
            "max_output_tokens": capture.request.max_output_tokens,
            "routing_rule": capture.routing_rule,
            "routing_arm": capture.routing_arm,
            "shadow_of": capture.shadow_of,
            "retry_of": capture.retry_of,
            "comparison": capture.comparison,
            "agreement": capture.agreement,
            "_start_ns": int(capture.started * 1e9),
            "_end_ns": int(ended * 1e9),
        }
        call.update(
            cost_columns(
                self.prices,
                prices_id=capture.endpoint.provider.prices_id,
                model=facts.model or capture.request.model,
                usage=usage,
                service_tier=facts.service_tier,
                provider_cost_usd=facts.provider_cost_usd,
                when=datetime.fromtimestamp(capture.started, UTC),
            )
        )
        capture.cost_usd = call["cost_usd"]
        span = self.spans.record(call, capture.traceparent)
        del call["_start_ns"], call["_end_ns"]
        call["span"] = span
        call["body"] = self._bodies(flow, capture)
        self.spool.append(json.dumps(call, default=str).encode() + b"\n")
        self.calls_recorded += 1

    def _bodies(self, flow: http.HTTPFlow, capture: Capture) -> dict[str, Any] | None:
        mode = self.capture_mode
        if mode == "metadata":
            return None
        if capture.streamed:
            response_raw = bytes(capture.stream_body) if capture.stream_body is not None else None
        else:
            response_raw = _content(flow.response)[:BODY_LIMIT] if flow.response else None
        request_raw = capture.request_body[:BODY_LIMIT]
        return {
            "capture_mode": mode,
            "request_body": privacy.stored_body(request_raw, mode, capture.secrets),
            "response_body": privacy.stored_body(response_raw, mode, capture.secrets),
        }


#: Characters per token assumed when estimating usage the provider did not report.
CHARS_PER_TOKEN = 4


def _usage(capture: Capture, status: int | None) -> tuple[Usage | None, str]:
    """The provider's usage, else an estimate from text lengths for a call that got an
    answer, else nothing."""
    usage = capture.response.usage
    if usage is not None and (usage.input_tokens is not None or usage.output_tokens is not None):
        return usage, "provider"
    if status is None or status >= 400 or not capture.request.prompt_chars:
        return None, "none"
    embeddings = capture.endpoint.api == "embeddings"
    return (
        Usage(
            input_tokens=math.ceil(capture.request.prompt_chars / CHARS_PER_TOKEN),
            output_tokens=None if embeddings else math.ceil(capture.response.output_chars / CHARS_PER_TOKEN),
        ),
        "estimated",
    )


def _content(message: http.Message | None) -> bytes:
    """Decoded body (gzip, br, zstd undone), or the raw bytes if decoding fails."""
    if message is None:
        return b""
    try:
        return message.get_content(strict=False) or b""
    except ValueError:
        return message.raw_content or b""


def json_or_none(raw: bytes | None) -> Any:
    """A body decoded as JSON, or None when it is not JSON (bad input is never an error)."""
    if not raw or raw[:1] not in (b"{", b"[", b" ", b"\n", b"\r", b"\t"):
        return None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()
