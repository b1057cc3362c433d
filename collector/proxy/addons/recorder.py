"""The capture addon: turns each LLM call passing through the proxy into one stored row.

Hooks, in the order mitmproxy calls them:

* ``request``: match the host and path to a provider; read the model and stream flag.
* ``responseheaders``: tell the client the call's id (``X-Llmtap-Call-Id``, which feedback
  refers to); for an event stream, install a :class:`StreamTee` so each chunk goes on to
  the client at once while a copy is parsed for usage.
* ``response`` / ``error``: finish the call: build the row and its span and append it to
  the spool. mitmproxy runs ``response`` before the client is sent the end of the
  response, so a call the client has fully received is always already spooled. An event
  stream that reached the proxy whole (an answer the response cache served: mitmproxy sends
  a response set before the upstream was asked in one piece, never through ``stream``) is read
  through its tee here.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Protocol

from mitmproxy import http

from collector.calls.rows import Observed, RowBuilder, read_response, row_line
from collector.calls.spans import SpanRecorder
from collector.pricing.book import PriceBook
from collector.providers import ProviderRegistry, ResponseFacts
from collector.proxy.call import (
    CACHE_KEY,
    CACHED_USAGE_KEY,
    CAPTURE_KEY,
    COMPARISON_KEY,
    REWRITE_KEY,
    ROUTING_KEY,
    Capture,
    keeps_answer_text,
    metadata_of,
)
from collector.storage.spool import Spool
from collector.trust import privacy
from collector.trust.boundary import BODY_LIMIT
from collector.trust.failopen import fail_open, failures
from collector.wire.bodies import json_or_none
from collector.wire.decoding import Decoder, decoder_for
from collector.wire.eventstream import EventStreamReader
from collector.wire.headers import decoded_body, first_header, intended_host
from collector.wire.sse import SSEReader

log = logging.getLogger("llmtap.recorder")

#: The response header that tells the client its call's id.
CALL_ID_HEADER = "X-Llmtap-Call-Id"
#: Where the other stages' parts of the call state are, by Observed field.
_PARTS = {"rewrite": REWRITE_KEY, "routing": ROUTING_KEY, "comparison": COMPARISON_KEY, "cache": CACHE_KEY}
#: The call's StreamTee (the recorder's own: ``flow.response.stream`` may be another stage's wrapper).
_TEE_KEY = "llmtap.recorder.tee"


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
    """Records every LLM call. ``rows_in_flight`` says that something in this process needs
    each call's row (its cost) when the call ends, such as budgets; otherwise rows are built
    in flight only when the call or the capture mode needs it (see :mod:`collector.calls.rows`)."""

    def __init__(
        self,
        registry: ProviderRegistry,
        spool: Spool,
        spans: SpanRecorder,
        prices: PriceBook,
        capture_mode: str = "full",
        rows_in_flight: bool = False,
    ) -> None:
        self.registry = registry
        self.spool = spool
        self.rows = RowBuilder(prices, spans, {p.name: p for p in registry.providers})
        self.capture_mode = capture_mode
        # Only the full mode may write bodies to the spool before the row is built (the
        # redacted mode's masking happens while building); spans leave from this process.
        self.rows_in_flight = rows_in_flight or capture_mode != "full" or spans.exporting
        self.calls_recorded = 0

    @fail_open
    def request(self, flow: http.HTTPFlow) -> None:
        req = flow.request
        host = intended_host(req)
        endpoint = self.registry.match(host, req.path, req.method)
        if endpoint is None:
            return
        secrets = privacy.secret_values(req.data.headers.fields, req.path)
        withheld = len(secrets) > privacy.MAX_SECRET_VALUES
        if withheld:
            log.warning("a call to %s carries %d secret values; its bodies are not kept", host, len(secrets))
        capture = Capture(
            endpoint=endpoint,
            method=req.method,
            host=host,
            path=privacy.clean_path(req.path),
            started=req.timestamp_start,
            traceparent=first_header(req, b"traceparent"),
            secrets=secrets,
            keep_bodies=self.capture_mode != "metadata" and not withheld,
        )
        capture.request_body = decoded_body(req)
        flow.metadata[CAPTURE_KEY] = capture

    @fail_open
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        capture: Capture | None = flow.metadata.get(CAPTURE_KEY)
        if capture is None or flow.response is None:
            return
        flow.response.headers[CALL_ID_HEADER] = capture.call_id
        content_type = first_header(flow.response, b"content-type") or ""
        reader = STREAM_READERS.get(content_type.split(";")[0].strip().lower())
        if reader is None:
            return
        try:
            tee = StreamTee(
                capture,
                reader(),
                first_header(flow.response, b"content-encoding") or "",
                # Binary framings are not kept as body text; a stream whose answer is compared
                # keeps its text in every mode (stored only when the mode keeps bodies).
                keep_body=reader is SSEReader and (capture.keep_bodies or keeps_answer_text(flow)),
            )
        except ValueError as exc:
            log.warning("stream of %s not parsed: %s", capture.host, exc)
            flow.response.stream = True
        else:
            flow.response.stream = tee
            flow.metadata[_TEE_KEY] = tee
        capture.streamed = True

    @fail_open
    def response(self, flow: http.HTTPFlow) -> None:
        capture: Capture | None = flow.metadata.get(CAPTURE_KEY)
        if capture is None or capture.done or flow.response is None:
            return
        if capture.first_byte is None and (tee := flow.metadata.get(_TEE_KEY)) is not None:
            _read_whole(flow.response, capture, tee)
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
        response = flow.response
        ended = time.time()
        if error is None and response is not None:
            ended = response.timestamp_end or capture.completed_at or ended
        first_byte = capture.first_byte
        if first_byte is None and response is not None:
            first_byte = response.timestamp_start
        body = decoded_body(response) if response is not None and not capture.streamed else None
        if capture.streamed and capture.response.usage is None:
            _usage_when_fetched(flow, capture)
        seen = Observed(
            call_id=capture.call_id,
            started=capture.started,
            ended=ended,
            first_byte=first_byte,
            provider=capture.endpoint.provider.name,
            api=capture.endpoint.api,
            method=capture.method,
            host=capture.host,
            path=capture.path,
            status_code=response.status_code if response is not None else None,
            streamed=capture.streamed,
            traceparent=capture.traceparent,
            error=error,
            capture_mode=self.capture_mode,
            request=capture.parsed_request,
            response=capture.response if capture.streamed else None,
            metadata=metadata_of(flow),
        )
        # The other stages' parts, when they acted on this call.
        for name, key in _PARTS.items():
            if (part := flow.metadata.get(key)) is not None:
                setattr(seen, name, part)
        self._keep_bodies(seen, capture, body)
        # Routing's calls need their cost now (spend caps); a body over the limit is cut when
        # kept, so it must be read whole now.
        in_flight = (
            self.rows_in_flight
            or not capture.keep_bodies  # the loader would have nothing to read the facts from
            or ROUTING_KEY in flow.metadata
            or len(capture.request_body) > BODY_LIMIT
            or (body is not None and len(body) > BODY_LIMIT)
        )
        if in_flight:
            seen.request = capture.request
            if seen.response is None:
                capture.response = read_response(capture.endpoint, seen.status_code, json_or_none(body))
                seen.response = capture.response
        # Everything below (spool line, row, span) is made of what crossed the boundary.
        seen.clean(capture.secrets)
        if in_flight:
            row = self.rows.row(seen, capture.secrets)
            capture.cost_usd = row["cost_usd"]
            line = row_line(row)
        else:
            line = seen.spool_line()
        self.spool.append(line)
        self.calls_recorded += 1

    def _keep_bodies(self, seen: Observed, capture: Capture, body: bytes | None) -> None:
        mode = self.capture_mode
        if not capture.keep_bodies:
            return
        if capture.streamed:
            response_raw = bytes(capture.stream_body) if capture.stream_body is not None else None
        else:
            response_raw = body[:BODY_LIMIT] if body is not None else None
        seen.request_text = privacy.stored_body(capture.request_body[:BODY_LIMIT], mode, capture.secrets)
        seen.response_text = privacy.stored_body(response_raw, mode, capture.secrets)


def _read_whole(response: http.Response, capture: Capture, tee: StreamTee) -> None:
    """Read an event stream that reached the proxy in one piece (a cached answer) as if it had
    streamed: its first byte left with the response's head."""
    if raw := response.raw_content:
        capture.first_byte = response.timestamp_start
        tee(raw)
        tee(b"")


def _usage_when_fetched(flow: http.HTTPFlow, capture: Capture) -> None:
    """A cached stream replayed without usage (its first client did not ask for it, so the
    stream-usage stage took it out) gets the usage the provider reported when it was fetched."""
    cached: ResponseFacts | None = flow.metadata.get(CACHED_USAGE_KEY)
    if cached is not None:
        facts = capture.response
        facts.usage, facts.usage_raw = cached.usage, cached.usage_raw
        facts.provider_cost_usd = facts.provider_cost_usd or cached.provider_cost_usd
