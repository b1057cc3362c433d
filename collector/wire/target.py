"""Pointing a request at another server while it keeps the Host header the app sent.

The target is set on the request's data directly: mitmproxy's ``host``/``port`` setters
rewrite the Host header (then restored) through its header multidict, ~30 us per call, for a
header that must not change anyway. Used by ``--upstream`` and by the fallback stage, which
sends a call to its relay.
"""

from __future__ import annotations

from mitmproxy import http
from mitmproxy.net.http import url

__all__ = ["send_to"]


def send_to(request: http.Request, scheme: str, host: str, port: int) -> None:
    """Send ``request`` to ``scheme://host:port``; its Host header, path and query stay."""
    data = request.data
    data.scheme = scheme.encode()
    data.host = host
    data.port = port
    if data.authority and not (request.is_http2 or request.is_http3):
        # An absolute-form HTTP/1 target (``POST http://host/...``) names the new server;
        # HTTP/2's :authority is the Host header, kept as the app sent it.
        data.authority = url.hostport(scheme, host, port).encode("idna")
