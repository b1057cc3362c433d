"""The fallback relay in-process, against real local upstreams (no mocks), and the circuit
breaker's state machine: Retry-After bounds, half-open trials given back, breakers shared
across chains, unlimited upstream connections, exact headers, stalled failure bodies, no
first-byte timeout on the last target, a 503 when every target is skipped, tickets that
expire, and a client that leaves."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from collector.proxy.fallback_relay import TICKET_HEADER, Attempt, Relay, Target, Ticket
from collector.routing import breaker as breakers
from collector.routing.breaker import Breaker, BreakerSettings, retry_after_s
from tests.upstream import FakeUpstream, Received, Reply

PATH = "/v1/chat/completions"
BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()


class Scripted:
    """A TCP server that reads each request, sends ``head`` (nothing by default) and then
    holds the connection open, answering nothing more."""

    def __init__(self, head: bytes = b"") -> None:
        self.head = head
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.held: list[socket.socket] = []
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.recv(65536)
            if self.head:
                conn.sendall(self.head)
            self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


def target(url: str, model: str = "m") -> Target:
    host = url.removeprefix("http://").encode()
    headers = ((b"host", host), (b"content-type", b"application/json"), (b"authorization", b"Bearer sk-t"))
    return Target(f"{url} {model}", url + PATH, headers, BODY, model)


def ticket(*targets: Target, timeout: float = 1.0) -> Ticket:
    return Ticket("POST", list(targets), frozenset({429, 500, 502, 503, 504}), timeout, 0.0)


def answering(text: str, delay: float = 0.0) -> Callable[[Received], Reply]:
    """A route answering ``text`` after ``delay`` seconds before its response head."""

    def reply(received: Received) -> Reply:
        time.sleep(delay)
        return Reply.json({"choices": [{"message": {"content": text}}]})

    return reply


def run(
    test: Callable[[Relay, list[Attempt]], Awaitable[None]], breaker: Breaker | None = None, **relay: Any
) -> list[Attempt]:
    """Run ``test`` with a started relay; the failed attempts it reported."""
    attempts: list[Attempt] = []

    async def main() -> None:
        server = Relay(breaker or Breaker(BreakerSettings()), lambda _, a: attempts.append(a), **relay)
        await server.start()
        try:
            await test(server, attempts)
        finally:
            await server.close()

    asyncio.run(main())
    return attempts


def client(timeout: float = 10.0) -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=None))


async def call(relay: Relay, ticket_id: str, http: httpx.AsyncClient) -> httpx.Response:
    """The call as mitmproxy sends it to the relay."""
    return await http.post(
        f"http://127.0.0.1:{relay.port}{PATH}", headers={TICKET_HEADER: ticket_id}, content=BODY
    )


async def streamed(relay: Relay, ticket_id: str, http: httpx.AsyncClient) -> httpx.Response:
    """The call, its answer's body left to read as it comes."""
    url = f"http://127.0.0.1:{relay.port}{PATH}"
    request = http.build_request("POST", url, headers={TICKET_HEADER: ticket_id}, content=BODY)
    return await http.send(request, stream=True)


def content(response: httpx.Response) -> str:
    return response.json()["choices"][0]["message"]["content"]


# -- the breaker ----------------------------------------------------------------------------


def test_retry_after_is_finite_and_its_skip_capped() -> None:
    assert retry_after_s("1e999", 0) is None and retry_after_s("nan", 0) is None
    assert retry_after_s("-inf", 0) is None
    cap = breakers.MAX_RETRY_AFTER_SKIP_S
    breaker = Breaker(BreakerSettings(cooldown_s=30))
    breaker.failed("a", 0, retry_after_s=86400)  # a day: skipped for the cap only
    assert not breaker.allows("a", cap - 1) and breaker.allows("a", cap + 0.1)
    slow = Breaker(BreakerSettings(cooldown_s=cap * 2))  # a longer cool-down is the cap
    slow.failed("a", 0, retry_after_s=86400)
    assert not slow.allows("a", cap * 2 - 1) and slow.allows("a", cap * 2 + 0.1)


def test_a_half_open_trial_with_no_verdict_is_given_back() -> None:
    breaker = Breaker(BreakerSettings(failures=1, window_s=60, cooldown_s=5))
    breaker.failed("a", 0)
    assert breaker.allows("a", 6)  # the trial
    assert not breaker.allows("a", 6.1)
    breaker.released("a")  # it ended with no verdict (cancelled)
    assert breaker.allows("a", 6.2)


def test_an_upstream_in_two_chains_is_one_breaker() -> None:
    upstreams: breakers.Upstreams = {}
    chat = Breaker(BreakerSettings(failures=2, window_s=60, cooldown_s=30), upstreams)
    batch = Breaker(BreakerSettings(failures=2, window_s=60, cooldown_s=60), upstreams)
    chat.failed("u", 0)
    batch.failed("u", 1)  # the second failure of the same upstream: open, for both chains
    assert not chat.allows("u", 2) and not batch.allows("u", 2)
    chat.failed("v", 0, retry_after_s=10)
    assert not batch.allows("v", 5) and batch.allows("v", 10.1)


# -- the relay ------------------------------------------------------------------------------


def test_a_trial_cut_short_by_the_client_leaving_is_given_back() -> None:
    silent = Scripted()
    breaker = Breaker(BreakerSettings(failures=1, window_s=60, cooldown_s=0.05))
    first = target(silent.url)
    breaker.failed(first.upstream, time.monotonic())

    async def test(relay: Relay, attempts: list[Attempt]) -> None:
        await asyncio.sleep(0.1)  # the cool-down passed: the next call is the trial
        with FakeUpstream() as other:
            other.routes[PATH] = answering("fallback")
            ticket_id = relay.open_ticket(ticket(first, target(other.url), timeout=30))
            async with client(timeout=0.3) as http:
                with pytest.raises(httpx.ReadTimeout):
                    await call(relay, ticket_id, http)  # the client gives up and hangs up
            await asyncio.sleep(0.3)
        assert breaker.allows(first.upstream, time.monotonic())  # the next call is the trial

    try:
        run(test, breaker)
    finally:
        silent.close()


def test_more_than_a_hundred_calls_in_flight_never_wait_for_a_connection() -> None:
    """A healthy upstream taking 1 s to answer 120 calls at once answers all of them: none
    waits for a pooled connection inside its first-byte timeout and falls back."""
    with FakeUpstream() as slow, FakeUpstream() as other:
        slow.server.socket.listen(512)
        slow.routes[PATH] = answering("primary", delay=1.0)
        other.routes[PATH] = answering("fallback")

        async def test(relay: Relay, attempts: list[Attempt]) -> None:
            async with client() as http:
                calls = [
                    call(
                        relay,
                        relay.open_ticket(ticket(target(slow.url), target(other.url), timeout=1.8)),
                        http,
                    )
                    for _ in range(120)
                ]
                answers = await asyncio.gather(*calls)
            assert [content(a) for a in answers] == ["primary"] * 120

        assert run(test) == []
        assert other.received == []


def test_the_relay_sends_exactly_the_clients_headers() -> None:
    with FakeUpstream() as fake:
        fake.routes[PATH] = answering("ok")

        async def test(relay: Relay, attempts: list[Attempt]) -> None:
            async with client() as http:
                assert content(await call(relay, relay.open_ticket(ticket(target(fake.url))), http)) == "ok"

        run(test)
    (sent,) = fake.received
    # no Accept-Encoding (a compressed answer the client never asked for), no User-Agent
    assert set(sent.headers) == {"host", "content-type", "authorization", "content-length"}
    assert sent.body == BODY


def test_a_failed_answer_whose_body_stalls_falls_back() -> None:
    stalling = Scripted(b'HTTP/1.1 500 Internal Server Error\r\ncontent-length: 100\r\n\r\n{"err')
    try:
        with FakeUpstream() as other:
            other.routes[PATH] = answering("fallback")

            async def test(relay: Relay, attempts: list[Attempt]) -> None:
                started = time.monotonic()
                async with client(timeout=5) as http:
                    ticket_id = relay.open_ticket(
                        ticket(target(stalling.url), target(other.url), timeout=0.5)
                    )
                    assert content(await call(relay, ticket_id, http)) == "fallback"
                assert time.monotonic() - started < 3

            (attempt,) = run(test)
    finally:
        stalling.close()
    assert attempt.status == 500 and attempt.error and "stalled" in attempt.error


def test_the_last_target_has_no_first_byte_timeout() -> None:
    """The last target that can be tried is waited for as long as it takes: the last of the
    chain, or one whose later targets are all skipped."""
    with FakeUpstream() as failing, FakeUpstream() as slow:
        failing.routes[PATH] = Reply.json({"error": {"message": "boom"}}, 500)
        slow.routes[PATH] = answering("slow but fine", delay=1.0)
        breaker = Breaker(BreakerSettings())
        skipped = target(failing.url, "skipped")
        breaker.failed(skipped.upstream, time.monotonic(), retry_after_s=60)

        async def test(relay: Relay, attempts: list[Attempt]) -> None:
            async with client() as http:
                last = relay.open_ticket(ticket(target(failing.url), target(slow.url), timeout=0.3))
                assert content(await call(relay, last, http)) == "slow but fine"
                then_skipped = relay.open_ticket(ticket(target(slow.url), skipped, timeout=0.3))
                assert content(await call(relay, then_skipped, http)) == "slow but fine"

        (attempt,) = run(test, breaker)
    assert attempt.status == 500  # the first call's first target; the slow one never failed


def test_when_every_target_is_skipped_the_client_gets_a_503_with_retry_after() -> None:
    with FakeUpstream() as fake:
        fake.routes[PATH] = answering("never asked")
        breaker = Breaker(BreakerSettings())
        first, second = target(fake.url, "a"), target(fake.url, "b")
        breaker.failed(first.upstream, time.monotonic(), retry_after_s=30)
        breaker.failed(second.upstream, time.monotonic(), retry_after_s=7.3)

        async def test(relay: Relay, attempts: list[Attempt]) -> None:
            async with client() as http:
                response = await call(relay, relay.open_ticket(ticket(first, second)), http)
            assert response.status_code == 503
            assert response.headers["retry-after"] == "8"  # the shortest wait, in whole seconds
            error = response.json()["error"]
            assert "skipped" in error["message"] and error["code"] == "llmtap_upstreams_skipped"

        run(test, breaker)
    assert fake.received == []


def test_tickets_expire_and_can_be_discarded() -> None:
    async def test(relay: Relay, attempts: list[Attempt]) -> None:
        lost = relay.open_ticket(ticket(target("http://127.0.0.1:9")))
        await asyncio.sleep(0.2)
        kept = relay.open_ticket(ticket(target("http://127.0.0.1:9")))
        assert list(relay._tickets) == [kept]  # the call that never came: forgotten
        relay.discard(kept)
        assert not relay._tickets
        async with client() as http:
            assert (await call(relay, lost, http)).status_code == 421

    run(test, ticket_ttl_s=0.1)


def test_the_relay_stops_when_the_client_goes(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, "llmtap.fallback")
    silent = Scripted()
    try:
        with FakeUpstream() as other:
            other.routes[PATH] = answering("fallback")

            async def test(relay: Relay, attempts: list[Attempt]) -> None:
                ticket_id = relay.open_ticket(ticket(target(silent.url), target(other.url), timeout=0.5))
                async with client(timeout=0.2) as http:
                    with pytest.raises(httpx.ReadTimeout):
                        await call(relay, ticket_id, http)
                await asyncio.sleep(0.8)  # past the first target's timeout

            assert run(test) == []  # no failed attempt: the first target was not at fault
            assert other.received == []  # and no fallback for an answer nobody would read
    finally:
        silent.close()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("client went" in r.getMessage() for r in caplog.records)


def test_a_client_leaving_mid_stream_is_no_internal_error(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, "llmtap.fallback")
    with FakeUpstream() as fake:
        fake.routes[PATH] = Reply.sse([f"chunk {i}" for i in range(8)], delay=0.15)

        async def test(relay: Relay, attempts: list[Attempt]) -> None:
            async with client() as http:
                response = await streamed(relay, relay.open_ticket(ticket(target(fake.url))), http)
                first = await anext(response.aiter_raw())
                assert first.startswith(b"data: chunk 0")
                await response.aclose()  # the client hangs up mid-stream
            await asyncio.sleep(1.5)  # the rest of the stream's time

        run(test)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_an_upstream_breaking_off_mid_stream_breaks_the_answer_off(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, "llmtap.fallback")
    with FakeUpstream() as fake:
        fake.routes[PATH] = Reply.sse([f"chunk {i}" for i in range(4)], reset_after=1)

        async def test(relay: Relay, attempts: list[Attempt]) -> None:
            async with client() as http:
                response = await streamed(relay, relay.open_ticket(ticket(target(fake.url))), http)
                received = b""
                with pytest.raises(httpx.HTTPError):  # cut, as the upstream's own answer was
                    async for chunk in response.aiter_raw():
                        received += chunk
                await response.aclose()
            assert received.startswith(b"data: chunk 0") and b"chunk 1" not in received

        run(test)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("broke off its answer" in r.getMessage() for r in caplog.records)
