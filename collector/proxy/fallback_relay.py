"""The fallback relay: for a call whose route has fallbacks, llmtap sends the request itself.

mitmproxy answers a transport failure (a refused or reset connection) with its own 502, right
after the ``error`` hook and whatever the hook sets (see the README, "Routing"), and it waits
on a silent upstream for as long as the client does. So a call with fallbacks is not sent
upstream by mitmproxy: the fallback stage points it at this relay, a small HTTP/1.1 server on
127.0.0.1 in the proxy's own event loop, with a ticket naming where the call may go, in order.
The relay tries each place with its own client, sending exactly the client's headers (none of
its HTTP library's defaults: an ``Accept-Encoding`` the client did not send would get it a
compressed answer it never asked for), and the first answer that is not a failure goes back to
mitmproxy **as it arrives** (headers at once, then each chunk of the body), so mitmproxy and
the recorder see one ordinary streamed response and nothing is buffered. A failure is a
transport error, no response head within ``first_byte_timeout_s``, or a status the rule lists
(429 and 5xx by default); each failed attempt is reported to the stage (which records it as a
row), but the one whose outcome the client gets. The last place that can be tried has no
first-byte timeout: with nothing left to fall back to, it is waited for as long as it takes, as
a call without llmtap would be. A failed answer's body (given to the client when every place
fails) is read for at most ``first_byte_timeout_s``: a failing upstream that stalls must not
hold the call. An upstream's ``Retry-After`` and its circuit breaker
(:mod:`collector.routing.breaker`) make the next calls skip it for a while.

When every place fails, the client gets the last place's failure: its answer (status and body),
or a 502 naming its transport error; the call's own row stands for that attempt. When every
place is skipped (open breakers, ``Retry-After``), it gets a 503 with ``Retry-After`` = the
shortest wait, which the SDKs honour. When the client goes (mitmproxy closes its connection to
the relay), the relay stops: no further place is tried for an answer nobody will read.

A ticket waits at most ``TICKET_TTL_S`` for its call: a call that fails before reaching the
relay must not keep its request in memory (the stage also discards it, :meth:`Relay.discard`,
when the call fails first).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import h11
import httpx

from collector.routing.breaker import Breaker, Permit, retry_after_s
from collector.trust import boundary

__all__ = ["TICKET_HEADER", "TICKET_TTL_S", "Attempt", "Relay", "Target", "Ticket"]

log = logging.getLogger("llmtap.fallback")

#: The request header that tells the relay which ticket a call carries (set by the stage,
#: removed by the relay; the relay listens on 127.0.0.1 only).
TICKET_HEADER = "x-llmtap-relay-ticket"
#: How long a ticket waits for its call: mitmproxy sends it to the relay right after the
#: stage opens it, so a ticket this old belongs to a call that failed on the way.
TICKET_TTL_S = 60.0
#: Response headers that describe the connection to the upstream, not the answer.
_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"transfer-encoding", b"proxy-connection", b"te", b"trailer", b"upgrade"}
)
_READ_SIZE = 65536
#: Most bytes of a failed answer kept to give the client when every place fails.
_FAILED_BODY_LIMIT = 1 << 20
#: Connections mitmproxy may have waiting for the relay to accept them: as many calls as it
#: has in flight on a chain at once (the kernel caps it at its ``somaxconn``).
_BACKLOG = 4096
#: Idle upstream connections kept for reuse; the number of open ones is not limited, so a
#: call never waits for another to finish (a wait that would count against the upstream).
_KEEPALIVE = 100


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


@dataclass(frozen=True, slots=True)
class _Failure:
    """A failed try: the answer (status, headers, what arrived of its body) or the error."""

    status: int | None
    headers: list[tuple[bytes, bytes]]
    body: bytes
    error: str | None
    retry_after_s: float | None


class Relay:
    """The relay server. ``on_attempt`` is told of each failed attempt, in the event loop, but
    the one whose outcome the client gets (the last, when no place answered): the call's own
    row stands for that one."""

    def __init__(
        self,
        breaker: Breaker,
        on_attempt: Callable[[Ticket, Attempt], None],
        ticket_ttl_s: float = TICKET_TTL_S,
    ) -> None:
        self.breaker = breaker
        self.on_attempt = on_attempt
        self.ticket_ttl_s = ticket_ttl_s
        self.port: int | None = None
        #: Open tickets and when each expires, oldest first.
        self._tickets: dict[str, tuple[Ticket, float]] = {}
        self._server: asyncio.Server | None = None
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, backlog=_BACKLOG)
        self.port = self._server.sockets[0].getsockname()[1]
        # No environment proxy (it would be llmtap itself), no redirects, no timeouts of its own:
        # the first-byte timeout is the relay's, and a stream may last as long as it lasts.
        self._client = httpx.AsyncClient(
            trust_env=False,
            follow_redirects=False,
            timeout=None,
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=_KEEPALIVE),
        )
        self._client.headers.clear()  # the client's headers only, none of httpx's defaults
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._client is not None:
            await self._client.aclose()

    def open_ticket(self, ticket: Ticket) -> str:
        now = time.monotonic()
        while self._tickets:  # expire the old ones: in order, so only those are looked at
            oldest, (_, expires) = next(iter(self._tickets.items()))
            if expires > now:
                break
            del self._tickets[oldest]
            log.debug("fallback ticket %s expired: its call never reached the relay", oldest)
        ticket_id = uuid.uuid4().hex
        self._tickets[ticket_id] = (ticket, now + self.ticket_ttl_s)
        return ticket_id

    def discard(self, ticket_id: str) -> None:
        """Forget a ticket whose call will not reach the relay (its flow failed first)."""
        self._tickets.pop(ticket_id, None)

    # -- one call -------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            request = await _read_request(conn, reader)
            ticket_id = dict(request.headers).get(TICKET_HEADER.encode(), b"").decode()
            entry = self._tickets.pop(ticket_id, None)
            if entry is None or entry[1] <= time.monotonic():
                await _answer(conn, writer, 421, _error("no such fallback ticket", "llmtap_no_ticket"))
                return
            await self._until_gone(self._relay(entry[0], conn, writer), reader)
        except (ConnectionError, h11.RemoteProtocolError) as exc:
            log.debug("the fallback relay's client went: %s", exc)
        except Exception:
            log.exception("llmtap internal error in the fallback relay")
            with contextlib.suppress(Exception):
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    await _answer(
                        conn, writer, 502, _error("the fallback relay failed", "llmtap_relay_failed")
                    )
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _until_gone(self, relaying: Coroutine[Any, Any, None], reader: asyncio.StreamReader) -> None:
        """Run ``relaying``, stopping it when mitmproxy closes the connection (the client went):
        no further place is tried and no stream is read for nobody."""
        task = asyncio.ensure_future(relaying)
        gone = asyncio.ensure_future(_closed(reader))
        try:
            await asyncio.wait((task, gone), return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            task.cancel()  # nothing when it is done
        await asyncio.wait((task,))  # a stopped relay closes its upstream response
        if task.cancelled():
            log.debug("the client went: the fallback relay stopped")
            return
        task.result()

    async def _relay(self, ticket: Ticket, conn: h11.Connection, writer: asyncio.StreamWriter) -> None:
        last: _Failure | None = None
        skipped: list[Target] = []
        told = 0  # how many of the ticket's attempts the stage was told of
        for index, target in enumerate(ticket.targets):
            permit = self.breaker.allows(target.upstream, time.monotonic())
            if not permit:
                skipped.append(target)
                continue
            final = self._is_final(ticket, index)
            timeout = None if final else ticket.first_byte_timeout_s
            outcome = await self._attempt(ticket, target, permit, timeout)
            wait = outcome.retry_after_s if isinstance(outcome, _Failure) else None
            if final and wait is not None and wait <= ticket.max_retry_after_s:
                told = self._tell(ticket, told, len(ticket.attempts))
                await asyncio.sleep(wait)  # the last place asked for a short wait: once more
                outcome = await self._attempt(ticket, target, Permit.GRANTED, timeout)
            if not isinstance(outcome, _Failure):
                self._tell(ticket, told, len(ticket.attempts))
                ticket.served = target
                await _stream(outcome, conn, writer, target)
                return
            # Told once another place is tried: the last failure is the client's answer.
            told = self._tell(ticket, told, len(ticket.attempts) - 1)
            last = outcome
        if last is None:
            await self._all_skipped(conn, writer, skipped)
        elif last.status is not None:
            await _answer(conn, writer, last.status, last.body, last.headers)
        else:
            message = f"every fallback failed: {boundary.text(last.error or 'transport error', limit=300)}"
            await _answer(conn, writer, 502, _error(message, "llmtap_fallbacks_failed"))

    def _tell(self, ticket: Ticket, told: int, upto: int) -> int:
        """Tell the stage of the ticket's failed attempts ``told`` to ``upto`` (excluded)."""
        for attempt in ticket.attempts[told:upto]:
            self.on_attempt(ticket, attempt)
        return max(told, upto)

    def _is_final(self, ticket: Ticket, index: int) -> bool:
        """No later target can be tried now (none, or all skipped): nothing to fall back to."""
        now = time.monotonic()
        return all(self.breaker.is_open(t.upstream, now) for t in ticket.targets[index + 1 :])

    async def _attempt(
        self, ticket: Ticket, target: Target, permit: Permit, timeout: float | None
    ) -> httpx.Response | _Failure:
        """One try, its verdict given to the breaker (a failure kept on the ticket); a half-open
        trial that ends without one (cancelled: the client went) is given back."""
        started = time.time()
        try:
            outcome = await self._try(ticket, target, timeout)
        except BaseException:
            if permit is Permit.TRIAL:
                self.breaker.released(target.upstream)
            raise
        if not isinstance(outcome, _Failure):
            self.breaker.succeeded(target.upstream)
            return outcome
        attempt = Attempt(target, started, time.time(), outcome.status, outcome.error, outcome.retry_after_s)
        ticket.attempts.append(attempt)
        self.breaker.failed(target.upstream, time.monotonic(), outcome.retry_after_s)
        return outcome

    async def _try(self, ticket: Ticket, target: Target, timeout: float | None) -> httpx.Response | _Failure:
        """The upstream's response, streaming, when it is not a failure; otherwise the failure."""
        assert self._client is not None
        request = self._client.build_request(
            ticket.method, target.url, headers=list(target.headers), content=target.body or None
        )
        try:
            # No pool wait inside this timeout: the client's connections are not limited.
            response = await asyncio.wait_for(self._client.send(request, stream=True), timeout)
        except TimeoutError:
            return _Failure(None, [], b"", f"no answer within {timeout:g} s", None)
        except httpx.HTTPError as exc:
            return _Failure(
                None, [], b"", f"{type(exc).__name__}: {boundary.text(str(exc), limit=200)}", None
            )
        if response.status_code not in ticket.failure_statuses:
            return response
        headers = list(response.headers.raw)
        try:
            body, error = await _failed_body(response, ticket.first_byte_timeout_s)
        finally:
            await response.aclose()
        wait = retry_after_s(_header(headers, b"retry-after"), time.time())
        return _Failure(response.status_code, headers, body, error, wait)

    async def _all_skipped(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, skipped: list[Target]
    ) -> None:
        """Every place is skipped for now: a 503 whose ``Retry-After`` (the shortest wait, in
        whole seconds) the SDKs honour, instead of a 502 they would retry at once."""
        now = time.monotonic()
        wait = max(1, math.ceil(min((self.breaker.wait_s(t.upstream, now) for t in skipped), default=1.0)))
        names = ", ".join(t.upstream for t in skipped)
        message = (
            f"every upstream of this fallback chain is skipped for now (circuit breaker open or"
            f" Retry-After): {names}; retry in {wait} s"
        )
        headers = [(b"content-type", b"application/json"), (b"retry-after", str(wait).encode())]
        await _answer(
            conn, writer, 503, _error(boundary.text(message, limit=1000), "llmtap_upstreams_skipped"), headers
        )


async def _read_request(conn: h11.Connection, reader: asyncio.StreamReader) -> h11.Request:
    """The request head; its body (the ticket holds the body to send) is read and dropped."""
    request: h11.Request | None = None
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(_READ_SIZE))
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.EndOfMessage):
            assert request is not None
            return request
        elif isinstance(event, h11.ConnectionClosed):
            raise ConnectionError("mitmproxy closed the connection to the relay")


async def _closed(reader: asyncio.StreamReader) -> None:
    """Returns when mitmproxy closes its side of the connection: after its request it sends
    nothing, so the end of the stream means the client went."""
    with contextlib.suppress(ConnectionError):
        while await reader.read(_READ_SIZE):
            pass


async def _failed_body(response: httpx.Response, limit_s: float) -> tuple[bytes, str | None]:
    """What arrives of a failed answer's body within ``limit_s`` (at most
    ``_FAILED_BODY_LIMIT`` bytes), and why it is cut, if it is."""
    body = bytearray()
    error: str | None = None
    try:
        async with asyncio.timeout(limit_s):
            async for chunk in response.aiter_raw():
                body += chunk
                if len(body) > _FAILED_BODY_LIMIT:
                    break
    except TimeoutError:
        error = f"the answer's body stalled: not complete within {limit_s:g} s"
    except httpx.HTTPError as exc:
        error = f"the answer's body broke off: {type(exc).__name__}: {boundary.text(str(exc), limit=200)}"
    return bytes(body[:_FAILED_BODY_LIMIT]), error


async def _stream(
    response: httpx.Response, conn: h11.Connection, writer: asyncio.StreamWriter, target: Target
) -> None:
    """The upstream's answer to mitmproxy as it arrives: the head, then each raw chunk. An
    upstream that breaks off mid-answer breaks the relay's answer off too (a reset), so
    mitmproxy and the client see what they would have seen of the upstream itself."""
    try:
        headers = [(k, v) for k, v in response.headers.raw if k.lower() not in _HOP_BY_HOP]
        writer.write(
            conn.send(
                h11.Response(status_code=response.status_code, headers=[*headers, (b"connection", b"close")])
            )
        )
        await writer.drain()
        try:
            async for chunk in response.aiter_raw():
                if chunk:
                    writer.write(conn.send(h11.Data(data=chunk)))
                    await writer.drain()
        except httpx.HTTPError as exc:
            log.info("%s broke off its answer mid-stream: %s", target.upstream, type(exc).__name__)
            writer.transport.abort()
            return
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()
    finally:
        await response.aclose()


def _error(message: str, code: str) -> bytes:
    """An error body in the OpenAI shape, which every OpenAI-style SDK shows."""
    return json.dumps(
        {"error": {"message": f"llmtap: {message}", "type": "llmtap_fallback", "param": None, "code": code}}
    ).encode()


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
