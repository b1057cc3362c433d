"""The contract's ``X-Llmtap-*`` request headers: read into the flow, never sent upstream."""

from __future__ import annotations

from dataclasses import dataclass, field
from operator import itemgetter

from mitmproxy import http

PREFIX = "x-llmtap-"
PREFIX_BYTES = PREFIX.encode()
PROPERTY_PREFIX = "x-llmtap-property-"
METADATA_KEY = "llmtap.metadata"


@dataclass(slots=True)
class CallMetadata:
    app: str | None = None
    user_id: str | None = None
    session_id: str | None = None
    properties: dict[str, str] = field(default_factory=dict)


class MetadataHeaders:
    def __init__(self, default_app: str | None = None) -> None:
        self.default_app = default_app

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        meta = CallMetadata(app=self.default_app)
        flow.metadata[METADATA_KEY] = meta
        headers = flow.request.headers
        # Most calls carry none of these headers: a scan of the raw fields tells, at a fraction
        # of what going through ``Headers`` (a case-folded lookup per name) costs.
        if PREFIX_BYTES not in b"\n".join(map(itemgetter(0), headers.fields)).lower():
            return
        names = [name for name in headers if name.lower().startswith(PREFIX)]
        for name in names:
            value = headers[name]
            lower = name.lower()
            if lower == "x-llmtap-app":
                meta.app = value
            elif lower == "x-llmtap-user":
                meta.user_id = value
            elif lower == "x-llmtap-session":
                meta.session_id = value
            elif lower.startswith(PROPERTY_PREFIX):
                meta.properties[name[len(PROPERTY_PREFIX) :].lower()] = value
            del headers[name]
