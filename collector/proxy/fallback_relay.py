"""The fallback relay: for a call whose route has fallbacks, llmtap sends the request itself.

mitmproxy answers a transport failure (a refused or reset connection) with its own 502,
right after the ``error`` hook and whatever the hook sets (see the README, "Routing"), and it
waits on a silent upstream for as long as the client does. So a call with fallbacks is not
sent upstream by mitmproxy: the fallback stage points it at this relay, a small HTTP/1.1
server on 127.0.0.1 in the proxy's own event loop, with a ticket naming where the call may
go, in order. The relay tries each place with its own client, and the first answer that is
not a failure goes back to mitmproxy **as it arrives** (headers at once, then each chunk of
the body), so mitmproxy and the recorder see one ordinary streamed response and nothing is
buffered. A failure is a transport error, no response head within ``first_byte_timeout_s``,
or a status the rule lists (429 and 5xx by default); each failed attempt is reported to the
stage (which records it as a row). An upstream's ``Retry-After`` and its circuit breaker
(:mod:`collector.routing.breaker`) make the next calls skip it for a while.

When every place fails, the client gets the last failed answer (its status and body), or a
502 naming the last transport error when none answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import h11
import httpx

from collector.routing.breaker import Breaker, retry_after_s
from collector.trust import boundary

__all__ = ["TICKET_HEADER", "Attempt", "Relay", "Target", "Ticket"]

log = logging.getLogger("llmtap.fallback")

#: The request header that tells the relay which ticket a call carries (set by the stage,
#: removed by the relay; the relay listens on 127.0.0.1 only).
TICKET_HEADER = "x-llmtap-relay-ticket"
#: Response headers that describe the connection to the upstream, not the answer.
_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"transfer-encoding", b"proxy-connection", b"te", b"trailer", b"upgrade"}
)
_READ_SIZE = 65536
#: Most bytes of a failed answer kept to give the client when every place fails.
_FAILED_BODY_LIMIT = 1 << 20


@dataclass(frozen=True, slots=True)
class Target:
    """One place a call may go: ``upstream`` names it for the breaker (its host, or URL)."""

    upstream: str
    url: str
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    model: str | None


@dataclass(slots=True)
class Attempt:
    """One try at a target that failed (a successful one is the call itself)."""

    target: Target
    started: float
    ended: float
    status: int | None
    error: str | None
    retry_after_s: float | None
    call_id: str = field(default_factory=lambda: uuid.uuid4().hex)


@dataclass(slots=True)
class Ticket:
    method: str
    targets: list[Target]
    failure_statuses: frozenset[int]
    first_byte_timeout_s: float
    #: A last target that asked to wait at most this long is waited for and tried again.
    max_retry_after_s: float
    attempts: list[Attempt] = field(default_factory=list)
    #: The target whose answer the client got (None until one answered, or when none did).
    served: Target | None = None
    #: What the ticket's opener needs to know of the call when told of an attempt.
    owner: Any = None


class Relay:
    """The relay server. ``on_attempt`` is told of each failed attempt, in the event loop."""

    def __init__(self, breaker: Breaker, on_attempt: Callable[[Ticket, Attempt], None]) -> None:
        self.breaker = breaker
        self.on_attempt = on_attempt
        self.port: int | None = None
        self._tickets: dict[str, Ticket] = {}
        self._server: asyncio.Server | None = None
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        # No environment proxy (it would be llmtap itself), no redirects, no timeouts of its own:
        # the first-byte timeout is the relay's, and a stream may last as long as it lasts.
        self._client = httpx.AsyncClient(trust_env=False, follow_redirects=False, timeout=None)
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._client is not None:
            await self._client.aclose()

    def open_ticket(self, ticket: Ticket) -> str:
        ticket_id = uuid.uuid4().hex
        self._tickets[ticket_id] = ticket
        return ticket_id

    # -- one call -------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            request, _ = await _read_request(conn, reader)
            ticket_id = dict(request.headers).get(TICKET_HEADER.encode(), b"").decode()
            ticket = self._tickets.pop(ticket_id, None)
            if ticket is None:
                await _answer(conn, writer, 421, b'{"error": "llmtap: no such fallback ticket"}')
                return
            await self._relay(ticket, conn, writer)
        except Exception:
            log.exception("llmtap internal error in the fallback relay")
            with contextlib.suppress(Exception):
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    await _answer(conn, writer, 502, b'{"error": "llmtap fallback relay failed"}')
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _relay(self, ticket: Ticket, conn: h11.Connection, writer: asyncio.StreamWriter) -> None:
        assert self._client is not None
        last_failure: tuple[int, list[tuple[bytes, bytes]], bytes] | None = None
        last_error = "no fallback target could be tried"
        for index, target in enumerate(ticket.targets):
            is_last = index == len(ticket.targets) - 1
            if not self.breaker.allows(target.upstream, time.monotonic()):
                last_error = f"{target.upstream} skipped: its circuit breaker is open or it asked to wait"
                continue
            for _ in range(2):  # a last target that asks for a short wait is tried once more
                started = time.time()
                outcome = await self._try(ticket, target)
                if isinstance(outcome, httpx.Response):
                    self.breaker.succeeded(target.upstream)
                    ticket.served = target
                    await _stream(outcome, conn, writer)
                    return
                status, headers, body, error = outcome
                wait = retry_after_s(_header(headers, b"retry-after"), time.time()) if status else None
                attempt = Attempt(target, started, time.time(), status, error, wait)
                ticket.attempts.append(attempt)
                self.breaker.failed(target.upstream, time.monotonic(), wait)
                self.on_attempt(ticket, attempt)
                if status is not None:
                    last_failure = (status, headers, body)
                else:
                    last_error = error or "transport error"
                if not (is_last and wait is not None and wait <= ticket.max_retry_after_s):
                    break
                await asyncio.sleep(wait)
        if last_failure is not None:
            status, headers, body = last_failure
            await _answer(conn, writer, status, body, headers)
        else:
            message = boundary.text(last_error, limit=300).replace('"', "'")
            await _answer(
                conn, writer, 502, f'{{"error": "llmtap: every fallback failed: {message}"}}'.encode()
            )

    async def _try(
        self, ticket: Ticket, target: Target
    ) -> httpx.Response | tuple[int | None, list[tuple[bytes, bytes]], bytes, str | None]:
        """The upstream's response, streaming, when it is not a failure; otherwise (status,
        headers, body, transport error)."""
        assert self._client is not None
        request = self._client.build_request(
            ticket.method, target.url, headers=list(target.headers), content=target.body
        )
        try:
            response = await asyncio.wait_for(
                self._client.send(request, stream=True), ticket.first_byte_timeout_s
            )
        except TimeoutError:
            return None, [], b"", f"no answer within {ticket.first_byte_timeout_s:g} s"
        except httpx.HTTPError as exc:
            return None, [], b"", f"{type(exc).__name__}: {boundary.text(str(exc), limit=200)}"
        if response.status_code not in ticket.failure_statuses:
            return response
        try:
            body = b""
            async for chunk in response.aiter_raw():
                body += chunk
                if len(body) > _FAILED_BODY_LIMIT:
                    break
        except httpx.HTTPError:
            pass
        finally:
            await response.aclose()
        return response.status_code, list(response.headers.raw), body[:_FAILED_BODY_LIMIT], None


async def _read_request(conn: h11.Connection, reader: asyncio.StreamReader) -> tuple[h11.Request, bytes]:
    request: h11.Request | None = None
    body = b""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(_READ_SIZE))
            continue
        if isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += bytes(event.data)
        elif isinstance(event, h11.EndOfMessage):
            assert request is not None
            return request, body
        elif isinstance(event, h11.ConnectionClosed):
            raise ConnectionError("mitmproxy closed the connection to the relay")


async def _stream(response: httpx.Response, conn: h11.Connection, writer: asyncio.StreamWriter) -> None:
    """The upstream's answer to mitmproxy as it arrives: the head, then each raw chunk."""
    try:
        headers = [(k, v) for k, v in response.headers.raw if k.lower() not in _HOP_BY_HOP]
        writer.write(
            conn.send(
                h11.Response(status_code=response.status_code, headers=[*headers, (b"connection", b"close")])
            )
        )
        await writer.drain()
        async for chunk in response.aiter_raw():
            if chunk:
                writer.write(conn.send(h11.Data(data=chunk)))
                await writer.drain()
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()
    finally:
        await response.aclose()


async def _answer(
    conn: h11.Connection,
    writer: asyncio.StreamWriter,
    status: int,
    body: bytes,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    kept = [
        (k, v)
        for k, v in (headers or [(b"content-type", b"application/json")])
        if k.lower() not in _HOP_BY_HOP and k.lower() != b"content-length"
    ]
    kept += [(b"content-length", str(len(body)).encode()), (b"connection", b"close")]
    writer.write(conn.send(h11.Response(status_code=status, headers=kept)))
    writer.write(conn.send(h11.Data(data=body)))
    writer.write(conn.send(h11.EndOfMessage()))
    await writer.drain()


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    return next((v.decode("latin-1") for k, v in headers if k.lower() == name), None)
