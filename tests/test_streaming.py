"""Streams go through the proxy incrementally, and compressed streams reach the client byte for byte.

Timings are measured on the client side, once straight to the local upstream and once
through the real ``llmtap proxy`` (HTTPS, trusting llmtap's CA bundle), for the same
scripted stream: 50 events, 20 ms apart (~1 s in all). Margins are generous for a slow
2-core CI machine but still far below what a buffering proxy would show.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
import zlib
from collections.abc import Callable, Iterator

import brotli
import httpx
import pytest
import zstandard

from tests.proxyproc import ProxyProcess
from tests.upstream import Reply

CHAT = "/v1/chat/completions"
N_EVENTS = 50
DELAY = 0.02
MODEL = "gpt-4o-mini-2024-07-18"
USAGE = {
    "prompt_tokens": 31,
    "completion_tokens": 48,
    "total_tokens": 79,
    "prompt_tokens_details": {"cached_tokens": 16},
}


def chat_events(n: int) -> list[str | dict]:
    """An OpenAI chat stream of ``n`` events: content deltas, a usage chunk, then [DONE]."""
    base = {"id": "chatcmpl-stream", "object": "chat.completion.chunk", "created": 1754688908, "model": MODEL}
    events: list[str | dict] = [
        {**base, "choices": [{"index": 0, "delta": {"content": f"tok{i} "}, "finish_reason": None}]}
        for i in range(n - 3)
    ]
    events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    events.append({**base, "choices": [], "usage": USAGE})
    events.append("[DONE]")
    assert len(events) == n
    return events


def proxied_client(proxy) -> httpx.Client:
    ctx = ssl.create_default_context(cafile=str(proxy.data_dir / "ca-bundle.pem"))
    return httpx.Client(proxy=proxy.url, verify=ctx, trust_env=False, timeout=30)


def direct_client() -> httpx.Client:
    return httpx.Client(trust_env=False, timeout=30)


def event_arrivals(client: httpx.Client, base: str) -> list[float]:
    """Seconds from sending the request until each complete SSE event reached the client.

    A first request to a non-LLM path (answered 404, not recorded) sets up the connection
    (and through the proxy, the CONNECT tunnel and TLS), so the timing compares the stream
    itself rather than a TLS handshake against a plain local connection.
    """
    assert client.get(base + "/v1/models").status_code == 404
    url = base + CHAT
    body = {"model": "gpt-4o-mini", "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.monotonic()
    arrivals: list[float] = []
    buffer = b""
    with client.stream("POST", url, json=body) as response:
        assert response.status_code == 200
        for data in response.iter_raw():
            now = time.monotonic() - t0
            buffer += data
            complete = buffer.count(b"\n\n")
            arrivals += [now] * (complete - len(arrivals))
    assert buffer.endswith(b"data: [DONE]\n\n")
    return arrivals


def test_stream_reaches_client_incrementally(proxy, upstream):
    upstream.routes[CHAT] = Reply.sse(chat_events(N_EVENTS), delay=DELAY)
    with direct_client() as client:
        direct = event_arrivals(client, upstream.url)
    with proxied_client(proxy) as client:
        proxied = event_arrivals(client, "https://api.openai.com")
    assert len(direct) == len(proxied) == N_EVENTS
    total = direct[-1]
    assert total > (N_EVENTS - 1) * DELAY  # the upstream really paced the stream (~1 s)

    # The first event through the proxy comes about as soon as it does directly,
    # long before the stream ends.
    assert proxied[0] - direct[0] < 0.1, (proxied[0], direct[0])
    assert proxied[0] < 0.25 * total, (proxied[0], total)
    # Events trickle in over the whole stream, not in one burst at the end.
    assert proxied[-1] - proxied[0] > 0.6 * (N_EVENTS - 1) * DELAY, proxied
    first_half = sum(1 for t in proxied if t < proxied[0] + (proxied[-1] - proxied[0]) / 2)
    assert 10 <= first_half <= N_EVENTS - 10, proxied
    # Each event is passed on as it arrives, never held back behind later ones.
    # (The two runs' pacing drifts apart a little on a busy machine, hence the margin.)
    lag = max(p - d for p, d in zip(proxied, direct, strict=True))
    assert lag < 0.3, [round(p - d, 3) for p, d in zip(proxied, direct, strict=True)]

    (row,) = proxy.rows(wait_for=1)
    assert (row["stream"], row["status_code"], row["response_model"]) == (True, 200, MODEL)
    assert (row["input_tokens"], row["output_tokens"], row["cache_read_tokens"]) == (31, 48, 16)
    # The recorded first byte is the first event, not the end of the stream.
    assert row["ttft_ms"] < 0.25 * row["latency_ms"], (row["ttft_ms"], row["latency_ms"])


class _Zstd:
    def __init__(self) -> None:
        self._c = zstandard.ZstdCompressor().compressobj()

    def chunk(self, data: bytes) -> bytes:
        return self._c.compress(data) + self._c.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)

    def last(self, data: bytes) -> bytes:
        return self._c.compress(data) + self._c.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH)


class _Zlib:
    def __init__(self, wbits: int) -> None:
        self._c = zlib.compressobj(wbits=wbits)

    def chunk(self, data: bytes) -> bytes:
        return self._c.compress(data) + self._c.flush(zlib.Z_SYNC_FLUSH)

    def last(self, data: bytes) -> bytes:
        return self._c.compress(data) + self._c.flush(zlib.Z_FINISH)


class _Brotli:
    def __init__(self) -> None:
        self._c = brotli.Compressor()

    def chunk(self, data: bytes) -> bytes:
        return self._c.process(data) + self._c.flush()

    def last(self, data: bytes) -> bytes:
        return self._c.process(data) + self._c.finish()


# encoding -> (incremental compressor, client-side incremental decompressor)
CODECS: dict[str, tuple[Callable, Callable]] = {
    "gzip": (lambda: _Zlib(zlib.MAX_WBITS | 16), lambda: zlib.decompressobj(zlib.MAX_WBITS | 16).decompress),
    "deflate": (lambda: _Zlib(zlib.MAX_WBITS), lambda: zlib.decompressobj().decompress),
    "br": (_Brotli, lambda: brotli.Decompressor().process),
    "zstd": (_Zstd, lambda: zstandard.ZstdDecompressor().decompressobj().decompress),
}


def compressed_stream(encoding: str, events: list[str | dict]) -> tuple[list[bytes], bytes]:
    """The SSE stream compressed as one body, flushed after every event; (wire chunks, plain text)."""
    plain = Reply.sse(events).chunks
    assert plain is not None
    make, _ = CODECS[encoding]
    comp = make()
    chunks = [comp.chunk(ev) for ev in plain[:-1]] + [comp.last(plain[-1])]
    return chunks, b"".join(plain)


@pytest.mark.parametrize("encoding", list(CODECS))
def test_compressed_stream_passes_unchanged(proxy, upstream, encoding):
    n = 20
    chunks, plain = compressed_stream(encoding, chat_events(n))
    # Every flush made the events so far decodable on their own: the stream really is incremental.
    assert CODECS[encoding][1]()(chunks[0]) == plain[: plain.index(b"\n\n") + 2]
    upstream.routes[CHAT] = Reply(
        chunks=chunks,
        delay=DELAY,
        headers={"content-type": "text/event-stream; charset=utf-8", "content-encoding": encoding},
    )

    raw = b""
    decode = CODECS[encoding][1]()
    decoded = b""
    first_event_at = None
    body = {"model": "gpt-4o-mini", "stream": True, "stream_options": {"include_usage": True}}
    with proxied_client(proxy) as client:
        t0 = time.monotonic()
        headers = {"accept-encoding": encoding}
        with client.stream("POST", "https://api.openai.com" + CHAT, json=body, headers=headers) as response:
            assert response.status_code == 200
            assert response.headers["content-encoding"] == encoding
            for data in response.iter_raw():
                raw += data
                decoded += decode(data)
                if first_event_at is None and b"\n\n" in decoded:
                    first_event_at = time.monotonic() - t0
        total = time.monotonic() - t0

    # The client got the upstream's compressed bytes exactly, and could decode them as they came.
    assert raw == b"".join(chunks)
    assert decoded == plain
    assert first_event_at is not None and first_event_at < 0.5 * total, (first_event_at, total)

    (row,) = proxy.rows(wait_for=1)
    assert (row["stream"], row["status_code"], row["error"]) == (True, 200, None)
    assert (row["request_model"], row["response_model"]) == ("gpt-4o-mini", MODEL)
    assert (row["input_tokens"], row["output_tokens"], row["cache_read_tokens"]) == (31, 48, 16)
    assert row["usage_source"] == "provider"
    assert row["finish_reasons"] == ["stop"]


def test_client_hanging_up_mid_stream_is_recorded_as_error(proxy, upstream):
    upstream.routes[CHAT] = Reply.sse(chat_events(N_EVENTS), delay=DELAY)
    body = {"model": "gpt-4o-mini", "stream": True}
    with (
        proxied_client(proxy) as client,
        client.stream("POST", "https://api.openai.com" + CHAT, json=body) as response,
    ):
        buffer = b""
        for data in response.iter_raw():
            buffer += data
            if buffer.count(b"\n\n") >= 3:
                break  # leave after 3 of 50 events: closing the stream drops the connection
    (row,) = proxy.rows(wait_for=1)
    assert (row["stream"], row["status_code"], row["response_model"]) == (True, 200, MODEL)
    assert row["error"] and "disconnect" in row["error"].lower(), row["error"]
    assert row["input_tokens"] is None  # the usage chunk was never sent
    assert row["latency_ms"] < 0.5 * N_EVENTS * DELAY * 1000


@pytest.fixture
def late_end_upstream() -> Iterator[str]:
    """A raw HTTP/1.1 upstream whose chunked body ends 300 ms after the stream's final ``[DONE]``.

    Real providers' terminating zero-length chunk can trail the last event by a few
    packets; this makes that gap long enough to be deterministic.
    """
    chunks = Reply.sse(chat_events(5)).chunks
    assert chunks is not None and chunks[-1] == b"data: [DONE]\n\n"
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                try:
                    data = b""
                    while b"\r\n\r\n" not in data:
                        data += conn.recv(65536)
                    head, _, body = data.partition(b"\r\n\r\n")
                    length = next(
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    )
                    while len(body) < length:
                        body += conn.recv(65536)
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                        b"transfer-encoding: chunked\r\n\r\n"
                    )
                    for chunk in chunks:
                        conn.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    time.sleep(0.3)
                    conn.sendall(b"0\r\n\r\n")
                except OSError:
                    pass

    threading.Thread(target=serve, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


def test_client_closing_after_done_is_not_an_error(tmp_path, late_end_upstream):
    """The sync openai SDK stops reading at ``data: [DONE]`` and closes the response at once,
    without waiting for the end of the chunked body. The call is complete (every event and
    the usage reached the client), so it must not be recorded as a failed call."""
    proxy = ProxyProcess(tmp_path / "data", {"api.openai.com": late_end_upstream}).start()
    try:
        body = {"model": "gpt-4o-mini", "stream": True, "stream_options": {"include_usage": True}}
        with (
            proxied_client(proxy) as client,
            client.stream("POST", "https://api.openai.com" + CHAT, json=body) as response,
        ):
            buffer = b""
            for data in response.iter_raw():
                buffer += data
                if b"data: [DONE]\n\n" in buffer:
                    break  # as openai's Stream.__stream__ does, then response.close()
        assert buffer.count(b"data: ") == 5
        (row,) = proxy.rows(wait_for=1)
        assert (row["stream"], row["status_code"], row["response_model"]) == (True, 200, MODEL)
        assert (row["input_tokens"], row["output_tokens"], row["cache_read_tokens"]) == (31, 48, 16)
        assert row["error"] is None, row["error"]
    finally:
        assert proxy.stop() == 0, proxy.log.read_text()
