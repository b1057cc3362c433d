"""``--upstream HOST=URL``: send traffic meant for HOST to URL instead.

The request keeps its Host header, path and query (a path in URL is prefixed), so the
call is recorded under the host the app meant to reach.
"""

from __future__ import annotations

from collections.abc import Mapping

from mitmproxy import http

from collector.config import Upstream


class UpstreamRewrite:
    def __init__(self, upstreams: Mapping[str, Upstream]) -> None:
        self.upstreams = dict(upstreams)

    def request(self, flow: http.HTTPFlow) -> None:
        target = self.upstreams.get(flow.request.pretty_host.lower())
        if target is None:
            return
        host_header = flow.request.host_header
        flow.request.scheme = target.scheme
        flow.request.host = target.host
        flow.request.port = target.port
        flow.request.host_header = host_header
        if target.path_prefix:
            flow.request.path = target.path_prefix + flow.request.path
