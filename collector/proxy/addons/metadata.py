"""The contract's ``X-Llmtap-*`` request headers: read into the flow, never sent upstream.

``X-Llmtap-Reference`` (the answer the caller expects, for graders that compare with a
reference) is kept for the call in flight only; it is not a column. So are ``X-Llmtap-Cache``
and ``X-Llmtap-Cache-Ttl``, for the response cache (:class:`~collector.proxy.call.CacheDirectives`):
read here because this stage removes every ``X-Llmtap-*`` header before the others run."""

from __future__ import annotations

import math
from operator import itemgetter

from mitmproxy import http

from collector.proxy.call import CACHE_DIRECTIVES_KEY, METADATA_KEY, REFERENCE_KEY, CacheDirectives
from collector.storage.schema import CallMetadata
from collector.trust import boundary

PREFIX = b"x-llmtap-"
PROPERTY_PREFIX = b"x-llmtap-property-"
#: Properties kept per call (later ones are still removed from the request, not stored), and
#: the longest property name kept: one request with 100,000 of them must cost little.
MAX_PROPERTIES = 64
PROPERTY_NAME_LIMIT = 128


class MetadataHeaders:
    def __init__(self, default_app: str | None = None) -> None:
        self.default_app = default_app

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if METADATA_KEY in flow.metadata:
            return  # a call llmtap sends itself carries its original's metadata
        meta = CallMetadata(app=self.default_app)
        flow.metadata[METADATA_KEY] = meta
        headers = flow.request.headers
        fields = headers.fields
        # Most calls carry none of these headers: a scan of the raw fields tells, at a fraction
        # of what going through ``Headers`` (a case-folded lookup per name) costs.
        if PREFIX not in b"\n".join(map(itemgetter(0), fields)).lower():
            return
        # One pass over the raw fields: looking each header up and deleting it through
        # ``Headers`` scans all fields per header, which made 10,000 of them take seconds.
        kept = []
        for name, raw in fields:
            lower = name.lower()
            if not lower.startswith(PREFIX):
                kept.append((name, raw))
                continue
            value = boundary.text(raw.decode("utf-8", "surrogateescape"))
            if lower == b"x-llmtap-app":
                meta.app = value
            elif lower == b"x-llmtap-user":
                meta.user_id = value
            elif lower == b"x-llmtap-session":
                meta.session_id = value
            elif lower == b"x-llmtap-reference":
                flow.metadata[REFERENCE_KEY] = value
            elif lower.startswith(b"x-llmtap-cache"):
                _cache_directive(flow, lower, value)
            elif lower.startswith(PROPERTY_PREFIX) and len(meta.properties) < MAX_PROPERTIES:
                key = lower[len(PROPERTY_PREFIX) :].decode("utf-8", "surrogateescape")
                meta.properties[boundary.text(key, limit=PROPERTY_NAME_LIMIT)] = value
        headers.fields = tuple(kept)


def _cache_directive(flow: http.HTTPFlow, name: bytes, value: str) -> None:
    """``X-Llmtap-Cache: off`` (any case); ``X-Llmtap-Cache-Ttl``: a number of seconds, where 0 or
    less means no answer is young enough (the cache is bypassed); anything else is ignored."""
    directives = flow.metadata.setdefault(CACHE_DIRECTIVES_KEY, CacheDirectives())
    if name == b"x-llmtap-cache":
        directives.off = directives.off or value.strip().lower() == "off"
    elif name == b"x-llmtap-cache-ttl":
        try:
            seconds = float(value.strip())
        except ValueError:
            return
        if math.isnan(seconds):
            return
        if seconds <= 0:
            directives.off = True
        else:
            directives.ttl_s = seconds
