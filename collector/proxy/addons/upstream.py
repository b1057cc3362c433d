"""``--upstream HOST=URL``: sending an LLM host's traffic to another server.

``--upstream HOST=URL`` sends traffic meant for HOST to URL instead. The request keeps its
Host header, path and query (a path in URL is prefixed), so the call is recorded under the
host the app meant to reach (:func:`collector.wire.target.send_to`).
"""

from __future__ import annotations

from collections.abc import Mapping

from mitmproxy import http

from collector.settings.config import Upstream
from collector.wire.headers import intended_host
from collector.wire.target import send_to


class UpstreamRewrite:
    def __init__(self, upstreams: Mapping[str, Upstream]) -> None:
        self.upstreams = dict(upstreams)

    def request(self, flow: http.HTTPFlow) -> None:
        request = flow.request
        target = self.upstreams.get(intended_host(request))
        if target is None:
            return
        send_to(request, target.scheme, target.host, target.port)
        if target.path_prefix:
            request.data.path = target.path_prefix.encode() + request.data.path
