"""Acknowledging a request's head at once, so a client's body is not held back by Nagle."""

from __future__ import annotations

import contextlib
import socket

from mitmproxy import ctx, http

from collector.trust.failopen import fail_open


class QuickAck:
    """Acknowledge a request's head at once when its body is still to come.

    urllib3 (so ``requests``) turns Nagle's algorithm back on for connections to a proxy and
    writes a request's head and body separately: the body, a small write, stays in the
    client's kernel until the proxy's kernel acknowledges the head. Linux delays that ACK
    (40 ms at least) on a connection that has already carried a request and answer, so the
    body, and the call, reached the upstream ~44 ms late. The same happens with bare
    mitmproxy: its sockets have TCP_NODELAY (asyncio sets it), but that only governs what the
    proxy sends. Setting TCP_QUICKACK on the client's socket once the head is read sends the
    pending ACK now, and the client sends its body at once. Linux only (other systems lack
    the option); one system call per request with a body.
    """

    def __init__(self) -> None:
        self.enabled = hasattr(socket, "TCP_QUICKACK")

    @fail_open
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if not self.enabled or not _body_follows(flow.request):
            return
        sock = _client_socket(flow)
        if sock is None:
            return
        with contextlib.suppress(OSError):  # the client is gone already: nothing to acknowledge
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)


def _body_follows(request: http.Request) -> bool:
    headers = request.headers
    return "transfer-encoding" in headers or headers.get("content-length", "0") not in ("0", "")


def _client_socket(flow: http.HTTPFlow) -> socket.socket | None:
    """The client connection's TCP socket. mitmproxy has no public way to it: its proxy
    server's connection handler holds the asyncio transport (mitmproxy is pinned, and
    ``tests/test_nagle.py`` fails if this stops finding it). None for connections without
    an OS socket (mitmproxy's WireGuard or local redirect modes)."""
    handler = ctx.master.addons.get("proxyserver").connections.get(flow.client_conn.id)
    io = handler.transports.get(flow.client_conn) if handler is not None else None
    writer = io.writer if io is not None else None
    return writer.get_extra_info("socket") if writer is not None else None
