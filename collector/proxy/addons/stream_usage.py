"""Exact token counts for OpenAI-style streams whose client did not ask for them.

OpenAI-style chat/completions streams carry usage only when the request sets
``stream_options.include_usage``. When a client streams without it, this addon sets it
on the request that goes upstream and then takes out of the response everything the
option adds, so the client receives exactly the stream it asked for:

* the extra final chunk holding only the usage (``"choices": []``), and
* the ``"usage": null`` member the option adds to every other chunk.

The recorder's stream tee sees the upstream stream before this filter, so the row gets
the provider's own counts. Events are passed on whole: a chunk that ends mid-event waits
for the rest of that event (upstreams send whole events, so in practice nothing waits).
Requests whose signature covers the body (AWS SigV4) are never touched.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

from mitmproxy import http

from collector.proxy.call import CAPTURE_KEY, Capture
from collector.proxy.model_rewrite import is_signed
from collector.trust.failopen import fail_open
from collector.wire.streams import StreamFn, joined

STREAM_APIS = ("chat", "completions")
_EVENT_END = re.compile(rb"\r\n\r\n|\n\n")
_NULL_USAGE = (re.compile(rb',\s*"usage"\s*:\s*null'), re.compile(rb'"usage"\s*:\s*null\s*,\s*'))
INJECTED_KEY = "llmtap.stream_usage"


class StreamUsage:
    def __init__(self, per_provider: Mapping[str, bool] | None = None) -> None:
        #: Config overrides by provider name; otherwise each provider's stream_usage_option.
        self.per_provider = dict(per_provider or {})

    @fail_open
    def request(self, flow: http.HTTPFlow) -> None:
        capture: Capture | None = flow.metadata.get(CAPTURE_KEY)
        if capture is None or not self._applies(capture) or is_signed(flow.request.headers):
            return
        body = json.loads(flow.request.content or b"")  # as it stands: other addons may have changed it
        options = body.get("stream_options")
        if options is None:
            body["stream_options"] = options = {}
        if not isinstance(options, dict) or "include_usage" in options:
            return  # the client chose; respect it
        options["include_usage"] = True
        flow.request.content = json.dumps(body, separators=(",", ":")).encode()
        # The filter edits events, so ask for an uncompressed response.
        flow.request.headers["accept-encoding"] = "identity"
        flow.metadata[INJECTED_KEY] = True

    @fail_open
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        response = flow.response
        if not flow.metadata.get(INJECTED_KEY) or response is None or not callable(response.stream):
            return
        if response.headers.get("content-encoding", "identity").lower() != "identity":
            return  # upstream compressed anyway: pass it through as is
        response.stream = UsageChunkFilter(response.stream)

    def _applies(self, capture: Capture) -> bool:
        provider = capture.endpoint.provider
        return (
            capture.endpoint.api in STREAM_APIS
            and self.per_provider.get(provider.name, provider.stream_usage_option)
            # A body that never names "stream" asks for no stream: known without parsing it.
            and b'"stream"' in capture.request_body
            and capture.request.stream
            and not capture.request.stream_usage_requested
        )


class UsageChunkFilter:
    """Wraps the recorder's stream tee; passes events on without what include_usage added."""

    def __init__(self, inner: StreamFn) -> None:
        self.inner = inner
        self.pending = b""

    def __call__(self, chunk: bytes) -> list[bytes]:
        """The cleaned whole events in ``chunk``. Never an empty ``bytes``: mitmproxy would
        send it as an empty HTTP/1.1 chunk, which ends the response body."""
        data = self.pending + joined(self.inner(chunk))
        if not chunk:  # end of stream: flush whatever is left
            self.pending = b""
            return [piece] if (piece := self._clean(data)) else []
        out = []
        start = 0
        for match in _EVENT_END.finditer(data):
            if piece := self._clean(data[start : match.end()]):
                out.append(piece)
            start = match.end()
        self.pending = data[start:]
        return [b"".join(out)] if out else []

    @staticmethod
    def _clean(event: bytes) -> bytes:
        if b'"usage"' not in event:
            return event
        for line in event.splitlines():
            if line.startswith(b"data:"):
                try:
                    payload = json.loads(line[5:])
                except ValueError:
                    return event
                if isinstance(payload, dict) and payload.get("choices") == [] and payload.get("usage"):
                    return b""  # the usage-only chunk the client did not ask for
        for pattern in _NULL_USAGE:
            event, count = pattern.subn(b"", event, count=1)
            if count:
                break
        return event
