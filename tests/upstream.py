"""A real local HTTP server standing in for LLM providers in tests.

Each route answers with a scripted :class:`Reply`: a body sent at once, or a list of
chunks sent one by one with delays (for event streams), optionally compressed, or
cut off mid-stream. A route may instead be a callable taking the :class:`Received`
request and returning a :class:`Reply` (e.g. for a unique id per response). Every
request received is kept for assertions.
"""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    chunks: list[bytes] | None = None  # streamed with chunked transfer encoding
    delay: float = 0.0  # seconds before each chunk
    headers: dict[str, str] = field(default_factory=dict)
    reset_after: int | None = None  # close the socket after this many chunks

    @classmethod
    def json(cls, obj: Any, status: int = 200, gzip_body: bool = False) -> Reply:
        body = json.dumps(obj).encode()
        headers = {"content-type": "application/json"}
        if gzip_body:
            body = gzip.compress(body)
            headers["content-encoding"] = "gzip"
        return cls(status=status, body=body, headers=headers)

    @classmethod
    def sse(cls, events: list[str | tuple[str, Any]], delay: float = 0.0, **kw: Any) -> Reply:
        """Events as ``data`` payloads (str or JSON-able), or ``(event_name, data)`` pairs."""
        chunks = []
        for ev in events:
            name, data = ev if isinstance(ev, tuple) else (None, ev)
            payload = data if isinstance(data, str) else json.dumps(data)
            prefix = f"event: {name}\n" if name else ""
            chunks.append(f"{prefix}data: {payload}\n\n".encode())
        headers = {"content-type": "text/event-stream", **kw.pop("headers", {})}
        return cls(chunks=chunks, delay=delay, headers=headers, **kw)


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class FakeUpstream:
    def __init__(self) -> None:
        self.routes: dict[str, Reply | Callable[[Received], Reply]] = {}
        self.received: list[Received] = []
        self.default = Reply.json({"error": {"message": "no route"}}, status=404)
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                received = Received(
                    self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body
                )
                upstream.received.append(received)
                reply = upstream.routes.get(self.path.split("?")[0], upstream.default)
                if callable(reply):
                    reply = reply(received)
                self.send_response(reply.status)
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                if reply.chunks is None:
                    self.send_header("content-length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                    return
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                self.wfile.flush()
                for i, chunk in enumerate(reply.chunks):
                    if reply.reset_after is not None and i >= reply.reset_after:
                        # SO_LINGER 0: closing sends a TCP RST. The socket only really closes
                        # once rfile lets go of it too; and end the keep-alive loop, which
                        # would otherwise wait for a next request on the half-dead socket.
                        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                        self.close_connection = True
                        self.rfile.close()
                        self.connection.close()
                        return
                    if reply.delay:
                        time.sleep(reply.delay)
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

            do_POST = do_GET = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
