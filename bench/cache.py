"""What the response cache costs and gives: a hit's latency against a miss's proxy overhead.

    uv run python bench/cache.py [--markdown] [--requests N] [--rounds N] [--how https|reverse]

One keep-alive connection (CONNECT + TLS by default, as an ``HTTPS_PROXY`` client) sends the
OpenAI SDK's chat request, plain and streamed (20 events, sent at once), to the fast local
upstream of ``bench/_common.py``, request after request:

* ``direct``: to the upstream itself (TLS), unique bodies: the latency with no proxy;
* ``llmtap, no cache``: the real ``llmtap proxy`` without ``[cache]``, unique bodies;
* ``llmtap, miss``: ``llmtap proxy`` with ``[cache]``, unique bodies: every call a miss (looked
  up, fetched, stored);
* ``llmtap, hit``: the same proxy, one body repeated: every call after the first a hit, answered
  from the cache without contacting the upstream.

A miss's proxy overhead is its p50 minus direct's; a hit does all its work in the proxy, so its
whole p50 is its overhead. Target: a hit adds at most 1 ms p50 over a miss's proxy overhead
(``hit p50 - (miss p50 - direct p50) <= 1 ms``). The runs alternate in rounds; latencies of all
rounds are pooled. ``miss vs no cache`` is what having the cache costs a call it cannot serve;
with one connection the p50s move by a few tenths of a millisecond between runs, so the CPU
columns say it better: the proxy process's CPU time per request (all its threads and its spool
loader child: the cache's writer thread counts) and its main thread's alone (mitmproxy's event
loop, where lookups happen), from /proc.

Then, in this process, the cache stage's own hooks on mitmproxy test flows (no sockets): the
microseconds a miss and a hit cost the event loop in the stage itself (key, lookup, replayed
response or recording and storing), p50 and mean of 2,000 calls each (the writer thread runs
meanwhile, as in the proxy).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shutil
import socket
import ssl
import sys
import time
from pathlib import Path

from _common import (
    HOST,
    Bench,
    Reader,
    ca_bundle,
    check_quiet,
    child_pids,
    client_context,
    connect,
    log,
    machine_line,
    percentile,
    request_bytes,
    stored_rows,
    table,
)

TARGET_MS = 1.0
CONFIG = "[cache]\nttl_s = 3600\nmax_mb = 64\n"
STREAM_HEADERS = "x-bench-events: 20\r\nx-bench-interval-ms: 0\r\naccept: text/event-stream\r\n"
_unique = itertools.count()


def body(stream: bool, unique: bool) -> bytes:
    """The chat request; ``unique``: with a number no other request has, so it misses."""
    text = f"Say hello in one word. ({next(_unique)})" if unique else "Say hello in one word."
    request: dict[str, object] = {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are a terse assistant."},
            {"role": "user", "content": text},
        ],
        "max_tokens": 16,
    }
    if stream:
        request["stream"] = True
    return json.dumps(request, separators=(",", ":")).encode()


def run(how: str, port: int, ctx: ssl.SSLContext | None, stream: bool, unique: bool, n: int) -> list[float]:
    """``n`` requests one after another on one connection (after 20 unmeasured ones); each one's
    latency in ms, from its first byte sent to its last byte read."""
    sock: socket.socket = connect(how, ("127.0.0.1", port), ctx)
    reader = Reader(sock)
    extra = STREAM_HEADERS if stream else ""
    latencies = []
    try:
        for i in range(n + 20):
            request = request_bytes(body(stream, unique), extra)
            t0 = time.perf_counter()
            sock.sendall(request)
            status, headers = reader.head()
            reader.body(headers)
            t1 = time.perf_counter()
            if status != 200:
                raise RuntimeError(f"status {status}")
            state = headers.get(b"x-llmtap-cache")
            if i >= 20:
                latencies.append((t1 - t0) * 1000)
                if how != "direct-tls" and state is not None and state != (b"miss" if unique else b"hit"):
                    raise RuntimeError(f"expected {'misses' if unique else 'hits'}, got {state!r}")
    finally:
        sock.close()
    return latencies


def cpu_seconds(pid: int, loop_only: bool = False) -> float:
    """utime + stime of ``pid``'s threads and live children, or of its main thread alone."""
    paths = (
        [f"/proc/{pid}/task/{pid}/stat"]
        if loop_only
        else [f"/proc/{p}/stat" for p in (pid, *child_pids(pid))]
    )
    ticks = 0
    for path in paths:
        with contextlib.suppress(FileNotFoundError):  # a child may exit meanwhile
            fields = Path(path).read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def hook_costs(markdown: bool) -> str:
    """The cache stage's hooks, timed per call on test flows (see the module's docstring)."""
    import tempfile

    from _common import MODEL, sse_event
    from mitmproxy import http
    from mitmproxy.test import tflow

    from collector.calls.spans import SpanRecorder
    from collector.pricing.book import PriceBook
    from collector.providers import ProviderRegistry
    from collector.proxy.addons.cache import ResponseCache
    from collector.proxy.addons.metadata import MetadataHeaders
    from collector.proxy.addons.recorder import Recorder
    from collector.proxy.call import CAPTURE_KEY
    from collector.settings.config import CacheSettings
    from collector.storage.spool import Spool

    tmp = Path(tempfile.mkdtemp(prefix="llmtap-bench-cache-"))
    cache = ResponseCache(CacheSettings(), tmp / "cache.sqlite3")
    metadata, recorder = (
        MetadataHeaders(),
        Recorder(ProviderRegistry(), Spool(tmp / "spool"), SpanRecorder(None), PriceBook()),
    )
    answer = json.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": MODEL,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "Hello."}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 24, "completion_tokens": 2, "total_tokens": 26},
        }
    ).encode()
    events = [sse_event("tok", None, False) for _ in range(19)] + [
        sse_event(None, "stop", False),
        b"data: [DONE]\n\n",
    ]
    headers = {"authorization": "Bearer sk-bench-0123456789abcdef", "content-type": "application/json"}

    def flow(stream: bool, unique: bool) -> http.HTTPFlow:
        f = tflow.tflow()
        url = f"https://{HOST}/v1/chat/completions"
        f.request = http.Request.make("POST", url, body(stream, unique), headers)
        metadata.requestheaders(f)
        recorder.request(f)
        return f

    def call(stream: bool, unique: bool) -> float:
        f = flow(stream, unique)
        t0 = time.perf_counter()
        cache.request(f)
        spent = time.perf_counter() - t0
        if f.response is None:  # a miss: the upstream's answer comes
            kind = "text/event-stream" if stream else "application/json"
            f.response = http.Response.make(200, b"" if stream else answer, {"content-type": kind})
            if stream:  # the stages inside the cache's wrapper (the recorder's tee...) are not timed
                f.response.stream = _passed_on
            t0 = time.perf_counter()
            cache.responseheaders(f)
            spent += time.perf_counter() - t0
            if stream:
                for chunk in [*events, b""]:
                    t0 = time.perf_counter()
                    f.response.stream(chunk)  # type: ignore[operator]
                    spent += time.perf_counter() - t0
                capture = f.metadata[CAPTURE_KEY]
                capture.response.complete = capture.streamed = True  # as the recorder's tee would have
        else:
            recorder.responseheaders(f)
            t0 = time.perf_counter()
            cache.responseheaders(f)
            spent += time.perf_counter() - t0
        recorder.response(f)
        t0 = time.perf_counter()
        cache.response(f)
        return (spent + time.perf_counter() - t0) * 1e6

    rows = []
    try:
        for stream in (False, True):
            call(stream, False)  # the answer the hits replay
            cache.store.flush()
            misses = sorted(call(stream, True) for _ in range(2000))
            cache.store.flush()
            hits = sorted(call(stream, False) for _ in range(2000))
            kind = "stream (20 events)" if stream else "plain JSON"
            rows.append(
                (
                    kind,
                    f"{percentile(misses, 50):.0f}",
                    f"{percentile(hits, 50):.0f}",
                    f"{sum(misses) / len(misses):.0f}",
                    f"{sum(hits) / len(hits):.0f}",
                )
            )
    finally:
        cache.store.close()
        shutil.rmtree(tmp, ignore_errors=True)
    header = ("answer", "miss: p50 us", "hit: p50 us", "miss: mean us", "hit: mean us")
    return table(header, rows, markdown)


def _passed_on(chunk: bytes) -> bytes:
    return chunk


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--markdown", action="store_true", help="print Markdown")
    parser.add_argument("--requests", type=int, default=400, help="measured requests per run (default 400)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per path (default 3)")
    parser.add_argument("--how", choices=("https", "reverse"), default="https", help="client style")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    args = parser.parse_args()

    quiet = check_quiet()
    started = time.monotonic()
    rows, verdicts = [], []
    with Bench(keep=args.keep) as bench:
        cached_dir, plain_dir = bench.tmp / "cached", bench.tmp / "plain"
        bundle = ca_bundle(cached_dir)
        shutil.copytree(cached_dir / "ca", plain_dir / "ca")  # one CA: one client context for all
        upstream = bench.upstream(tls_for=cached_dir / "ca")
        url = f"http://127.0.0.1:{upstream.port}"
        cached = bench.llmtap(cached_dir, url, config=CONFIG)
        plain = bench.llmtap(plain_dir, url)
        ctx = client_context(bundle)
        direct = ("direct-tls", upstream.extra["tls_port"])
        paths = {
            "direct": (*direct, True),
            "llmtap, no cache": (args.how, plain.port, True),
            "llmtap, miss": (args.how, cached.port, True),
            "llmtap, hit": (args.how, cached.port, False),
        }
        pids = {"llmtap, no cache": plain.pid, "llmtap, miss": cached.pid, "llmtap, hit": cached.pid}
        for stream in (False, True):
            kind = "stream (20 events)" if stream else "plain JSON"
            log(f"{kind}: {args.rounds} rounds of {args.requests} requests per path")
            pooled: dict[str, list[float]] = {name: [] for name in paths}
            cpu: dict[str, list[float]] = {name: [0.0, 0.0] for name in paths}
            for r in range(args.rounds):
                order = list(paths) if r % 2 == 0 else list(reversed(paths))
                for name in order:
                    how, port, unique = paths[name]
                    pid = pids.get(name)
                    before = (cpu_seconds(pid), cpu_seconds(pid, loop_only=True)) if pid else (0.0, 0.0)
                    client = ctx if how != "reverse" else None
                    pooled[name] += run(how, port, client, stream, unique, args.requests)
                    if pid:
                        cpu[name][0] += cpu_seconds(pid) - before[0]
                        cpu[name][1] += cpu_seconds(pid, loop_only=True) - before[1]
            p50 = {name: percentile(sorted(lat), 50) for name, lat in pooled.items()}
            p99 = {name: percentile(sorted(lat), 99) for name, lat in pooled.items()}
            overhead = p50["llmtap, miss"] - p50["direct"]
            added = p50["llmtap, hit"] - overhead
            for name in paths:
                note = ""
                if name == "llmtap, miss":
                    versus = p50[name] - p50["llmtap, no cache"]
                    note = f"proxy overhead {overhead:.2f} ms; vs no cache {versus:+.2f} ms"
                elif name == "llmtap, hit":
                    note = f"{added:+.2f} ms over a miss's proxy overhead"
                elif name == "llmtap, no cache":
                    note = f"proxy overhead {p50[name] - p50['direct']:.2f} ms"
                handled = args.rounds * (args.requests + 20)
                per_request = [
                    f"{seconds / handled * 1e6:.0f}" if name in pids else "-" for seconds in cpu[name]
                ]
                latency = (f"{p50[name]:.2f}", f"{p99[name]:.2f}")
                rows.append((kind, name, *latency, *per_request, len(pooled[name]), note))
            verdict = "met" if added <= TARGET_MS else "NOT met"
            verdicts.append(
                f"{kind}: a hit's p50 is {p50['llmtap, hit']:.2f} ms against a miss's proxy overhead of "
                f"{overhead:.2f} ms: {added:+.2f} ms (target <= {TARGET_MS:g} ms): {verdict}"
            )
        sent = 2 * args.rounds * (args.requests + 20)
        stored = {
            "with cache": stored_rows(cached_dir / "llmtap.duckdb", 2 * sent),
            "without": stored_rows(plain_dir / "llmtap.duckdb", sent),
        }
    elapsed = time.monotonic() - started

    out = [f"{'Machine' if args.markdown else 'machine'}: {machine_line()}; {quiet}", ""]
    header = ("answer", "path", "p50 ms", "p99 ms", "proxy CPU us/req", "event loop us/req", "requests", "")
    out += [table(header, rows, args.markdown), ""]
    out += [f"{'- ' if args.markdown else ''}{line}" for line in verdicts]
    out += [
        "",
        "The cache stage's own hooks, in process (2,000 calls each; the writer thread runs meanwhile):",
        "",
        hook_costs(args.markdown),
    ]
    out += [
        "",
        f"Client: {args.how} ({'CONNECT ' + HOST + ':443 + TLS' if args.how == 'https' else 'plain HTTP'}), "
        f"one keep-alive connection; {args.rounds} rounds x {args.requests} requests per path and answer "
        f"(+20 unmeasured each); rows stored: {stored['with cache']:,} (cache) and {stored['without']:,} "
        f"(no cache) of {2 * sent:,} and {sent:,} sent; {elapsed:.0f} s in all.",
    ]
    print("\n".join(out))


if __name__ == "__main__":
    sys.exit(main())
