"""Shared pieces of the proxy benchmarks (overhead, streaming, durability).

Also runnable, as the separate processes the benchmarks start::

    python bench/_common.py upstream --ready FILE [--tls-cert PEM --tls-key PEM]
    python bench/_common.py bare --port P --confdir DIR --upstream HOST=URL --ready FILE
    python bench/_common.py load --how HOW --addr HOST:PORT --conns N --duration S ...

* ``upstream``: a fast asyncio HTTP/1.1 keep-alive server standing in for an OpenAI-style
  API: ``POST`` with ``"stream": true`` gets a chunked SSE stream (event count, spacing and
  size set by ``x-bench-*`` request headers), any other request a small chat completion
  JSON with usage and a unique id.
* ``bare``: mitmproxy with none of llmtap's addons, but the same master (``DumpMaster``),
  options (``allow_hosts`` from llmtap's provider registry, ``connection_strategy=lazy``,
  the same CA directory) and llmtap's own ``--upstream`` rewrite addon; event streams are
  streamed (``flow.response.stream = True``) as llmtap does, instead of buffered.
* ``load``: keep-alive client threads in one process sending the same chat request,
  directly or through a proxy (plain HTTP with the proxy as the target, or CONNECT + TLS as
  ``HTTPS_PROXY`` clients do); prints one JSON line of latency figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import hashlib
import itertools
import json
import os
import platform
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
THIS = Path(__file__).resolve()
HOST = "api.openai.com"
CHAT_PATH = "/v1/chat/completions"
CHAT_BODY = json.dumps(
    {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are a terse assistant."},
            {"role": "user", "content": "Say hello in one word."},
        ],
        "max_tokens": 16,
    },
    separators=(",", ":"),
).encode()
MODEL = "gpt-4o-mini-2024-07-18"


# -- machine and output -------------------------------------------------------------------


def machine() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        from mitmproxy.version import VERSION as mitm
    except ImportError:  # pragma: no cover
        mitm = "?"
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "mitmproxy": mitm,
        "os": f"{platform.system()} {platform.release()}",
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def machine_line() -> str:
    m = machine()
    return (
        f"{m['cpu']}, {m['cores']} cores, Python {m['python']}, mitmproxy {m['mitmproxy']}, "
        f"{m['os']}, {m['date']}"
    )


def table(header: Sequence[str], rows: Sequence[Sequence[object]], markdown: bool) -> str:
    cells = [[str(c) for c in header], *[[str(c) for c in row] for row in rows]]
    if markdown:
        lines = ["| " + " | ".join(cells[0]) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in cells[1:]]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


def cpu_busy(seconds: float = 1.0) -> float:
    """Share of the whole machine's CPU time that was busy over ``seconds`` (from /proc/stat)."""

    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]

    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    return 1.0 - (idle1 - idle0) / max(1, total1 - total0)


def check_quiet() -> str:
    """One line saying how busy the machine was just before the run (others' load skews it)."""
    busy = cpu_busy(1.0)
    if busy > 0.15:
        log(f"warning: the machine is {busy:.0%} busy before the run; figures will be skewed")
    return f"machine {busy:.0%} busy in the second before the run"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- process memory -----------------------------------------------------------------------


def rss(pid: int) -> int:
    """Resident memory (VmRSS, bytes) of ``pid`` plus its live child processes (llmtap's spool
    loader runs in one), so that memory moved there still counts."""
    total = 0
    for proc in (str(pid), *child_pids(pid)):
        with contextlib.suppress(FileNotFoundError):  # a child may exit meanwhile
            for line in Path(f"/proc/{proc}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def child_pids(pid: int) -> list[str]:
    """The live child processes of ``pid`` (of all its threads; a thread that ends while they
    are read has none left)."""
    children: list[str] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children += (task / "children").read_text().split()
        except FileNotFoundError:
            continue
    return children


# -- processes ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_file(path: Path, proc: subprocess.Popen, timeout: float, what: str, log_path: Path) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and (text := path.read_text()).endswith("\n"):
            return text.strip()
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    tail = log_path.read_text()[-3000:] if log_path.exists() else ""
    raise RuntimeError(f"{what} did not start (exit {proc.poll()}); log:\n{tail}")


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log_path: Path
    port: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        return self.popen.returncode

    def kill9(self) -> None:
        if self.popen.poll() is None:
            os.kill(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)


class Bench(contextlib.ExitStack):
    """Temp dir plus every process started; all stopped and removed on exit."""

    def __init__(self, keep: bool = False) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="llmtap-bench-"))
        self.procs: list[Proc] = []
        self.keep = keep
        self.callback(self._cleanup)

    def _cleanup(self) -> None:
        for p in reversed(self.procs):
            with contextlib.suppress(Exception):
                p.stop(10)
        if self.keep:
            log(f"kept {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _spawn(self, name: str, args: list[str], ready: Path, timeout: float = 60.0) -> Proc:
        log_path = self.tmp / f"{name}-{len(self.procs)}.log"
        with open(log_path, "ab") as log_file:
            popen = subprocess.Popen(
                args, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT
            )
        proc = Proc(name, popen, log_path)
        self.procs.append(proc)
        try:
            proc.extra["ready"] = _wait_file(ready, popen, timeout, name, log_path)
        except RuntimeError:
            proc.stop(5)
            raise
        return proc

    def upstream(self, tls_for: Path | None = None) -> Proc:
        """The fast upstream; with ``tls_for`` (a CA dir) also a TLS port with a certificate
        for api.openai.com issued by that CA. ``extra``: port, tls_port."""
        ready = self.tmp / f"upstream-{len(self.procs)}.ready"
        args = [sys.executable, str(THIS), "upstream", "--ready", str(ready)]
        if tls_for is not None:
            cert, key = issue_cert(tls_for, self.tmp)
            args += ["--tls-cert", str(cert), "--tls-key", str(key)]
        proc = self._spawn("upstream", args, ready)
        ports = json.loads(proc.extra["ready"])
        proc.port = ports["port"]
        proc.extra.update(ports)
        return proc

    def llmtap(
        self,
        data_dir: Path,
        upstream_url: str,
        config: str | None = None,
        port: int = 0,
        extra_args: Sequence[str] = (),
    ) -> Proc:
        """The real ``llmtap proxy`` command (``config``: the text of its config file)."""
        port = port or free_port()
        args = [sys.executable, "-m", "app.cli", "proxy", "--data-dir", str(data_dir), "--port", str(port)]
        args += ["--upstream", f"{HOST}={upstream_url}", *extra_args]
        if config is not None:
            cfg = self.tmp / f"llmtap-{port}.toml"
            cfg.write_text(config)
            args += ["--config", str(cfg)]
        log_path = self.tmp / f"llmtap-{port}-{len(self.procs)}.log"
        with open(log_path, "ab") as log_file:
            popen = subprocess.Popen(
                args, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT
            )
        proc = Proc("llmtap", popen, log_path, port)
        self.procs.append(proc)
        deadline = time.monotonic() + 60
        while "listening on" not in log_path.read_text():
            if popen.poll() is not None or time.monotonic() > deadline:
                proc.stop(5)
                raise RuntimeError(f"llmtap did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.05)
        return proc

    def bare(self, confdir: Path, upstream_url: str, noop_addons: int = 0) -> Proc:
        """mitmproxy without llmtap's addons (see the module doc)."""
        port = free_port()
        ready = self.tmp / f"bare-{port}.ready"
        args = [sys.executable, str(THIS), "bare", "--port", str(port), "--confdir", str(confdir)]
        args += ["--upstream", f"{HOST}={upstream_url}", "--ready", str(ready)]
        args += ["--noop-addons", str(noop_addons)]
        proc = self._spawn("bare", args, ready)
        proc.port = port
        return proc


def stored_rows(db: Path, expect: int, timeout: float = 15.0) -> int:
    """Rows in ``llm_calls``, waiting (up to ``timeout``) for the ingester to reach ``expect``."""
    from collector.storage.database import read_connection

    deadline = time.monotonic() + timeout
    while True:
        try:
            with read_connection(db) as con:
                (n,) = con.execute("SELECT count(*) FROM llm_calls").fetchone()
        except Exception:  # not created yet
            n = 0
        if n >= expect or time.monotonic() > deadline:
            return n
        time.sleep(0.25)


def ca_bundle(data_dir: Path) -> Path:
    """llmtap's CA (created if needed) and its client bundle, as `llmtap proxy` makes them."""
    from collector.proxy.certs import ensure_ca
    from collector.settings.paths import Paths

    return ensure_ca(Paths(data_dir))


def issue_cert(ca_dir: Path, out_dir: Path) -> tuple[Path, Path]:
    """A certificate for api.openai.com signed by the CA in ``ca_dir`` (for the direct TLS case)."""
    from cryptography.hazmat.primitives import serialization
    from mitmproxy.certs import CertStore

    store = CertStore.from_store(ca_dir, "mitmproxy", 2048)
    entry = store.get_cert(HOST, [])
    cert = out_dir / "upstream-cert.pem"
    key = out_dir / "upstream-key.pem"
    cert.write_bytes(entry.cert.to_pem())
    key.write_bytes(
        entry.privatekey.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return cert, key


def run_load(
    how: str,
    port: int,
    conns: int,
    duration: float,
    warmup: float,
    ca: Path | None = None,
    ids_out: Path | None = None,
    lat_out: Path | None = None,
    rate: float = 0.0,
) -> dict:
    """Run the load client as its own process and return its figures."""
    proc = start_load(how, port, conns, duration, warmup, ca, ids_out, lat_out, rate=rate)
    return finish_client(proc, duration + warmup + 60)


def start_load(
    how: str,
    port: int,
    conns: int,
    duration: float,
    warmup: float,
    ca: Path | None = None,
    ids_out: Path | None = None,
    lat_out: Path | None = None,
    progress: bool = False,
    rate: float = 0.0,
) -> subprocess.Popen:
    """Start the load client; with ``progress`` it prints ``progress N`` (calls done) lines
    on stderr every second; with ``rate`` each connection sends that many requests/s."""
    args = [sys.executable, str(THIS), "load", "--how", how, "--addr", f"127.0.0.1:{port}"]
    args += ["--conns", str(conns), "--duration", str(duration), "--warmup", str(warmup), "--rate", str(rate)]
    for flag, value in (("--ca", ca), ("--ids-out", ids_out), ("--lat-out", lat_out)):
        if value is not None:
            args += [flag, str(value)]
    if progress:
        args.append("--progress")
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def finish_client(proc: subprocess.Popen, timeout: float) -> dict:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"client failed ({proc.returncode}):\n{err[-3000:]}")
    return json.loads(out.strip().splitlines()[-1])


def run_streams(
    how: str,
    port: int,
    conns: int,
    streams: int,
    ca: Path | None = None,
    events: int = 200,
    interval_ms: float = 10.0,
    event_bytes: int = 0,
    keep_times: bool = True,
) -> dict:
    """Run the streaming client as its own process and return its figures."""
    args = [sys.executable, str(THIS), "stream", "--how", how, "--addr", f"127.0.0.1:{port}"]
    args += ["--conns", str(conns), "--streams", str(streams), "--events", str(events)]
    args += ["--interval-ms", str(interval_ms), "--event-bytes", str(event_bytes)]
    if ca is not None:
        args += ["--ca", str(ca)]
    if not keep_times:
        args.append("--no-times")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    return finish_client(proc, 120 + streams * events * interval_ms / 1000)


# -- HTTP client pieces (blocking sockets) -------------------------------------------------


#: The headers the OpenAI Python SDK (3.x) sends with a chat completion.
SDK_HEADERS = (
    f"Host: {HOST}\r\nAccept-Encoding: gzip, deflate, br, zstd\r\nConnection: keep-alive\r\n"
    "authorization: Bearer sk-bench-0123456789abcdef0123456789abcdef\r\naccept: application/json\r\n"
    "content-type: application/json\r\nuser-agent: OpenAI/Python 3.54.0\r\nx-stainless-lang: python\r\n"
    "x-stainless-package-version: 3.54.0\r\nx-stainless-os: Linux\r\nx-stainless-arch: x64\r\n"
    "x-stainless-runtime: CPython\r\nx-stainless-runtime-version: 3.12.1\r\nx-stainless-async: false\r\n"
    "x-stainless-retry-count: 0\r\nx-stainless-read-timeout: 600\r\n"
)


def request_bytes(body: bytes = CHAT_BODY, extra_headers: str = "") -> bytes:
    """A chat completion request as the OpenAI Python SDK sends it."""
    return (
        f"POST {CHAT_PATH} HTTP/1.1\r\n{SDK_HEADERS}{extra_headers}Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def client_context(ca: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def connect(how: str, addr: tuple[str, int], ctx: ssl.SSLContext | None) -> socket.socket:
    """A connection ready for requests to api.openai.com.

    ``direct``: plain TCP to the upstream; ``direct-tls``: TLS to the upstream's TLS port;
    ``reverse``: plain HTTP to the proxy as if it were the API (origin-form, Host header);
    ``https``: CONNECT api.openai.com:443 through the proxy, then TLS (HTTPS_PROXY style).
    """
    sock = socket.create_connection(addr, timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if how in ("direct", "reverse"):
        return sock
    if how == "https":
        sock.sendall(f"CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}:443\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            data = sock.recv(4096)
            if not data:
                raise ConnectionError("proxy closed during CONNECT")
            head += data
        if not head.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")):
            raise ConnectionError(f"CONNECT refused: {head[:80]!r}")
    assert ctx is not None
    return ctx.wrap_socket(sock, server_hostname=HOST)


class Reader:
    """Reads HTTP/1.1 responses off one keep-alive connection."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    def _fill(self) -> None:
        data = self.sock.recv(262144)
        if not data:
            raise ConnectionError("connection closed")
        self.buf += data

    def head(self) -> tuple[int, dict[bytes, bytes]]:
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            self._fill()
        lines = bytes(self.buf[:end]).split(b"\r\n")
        del self.buf[: end + 4]
        status = int(lines[0].split(b" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        return status, headers

    def body(self, headers: dict[bytes, bytes]) -> bytes:
        if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            return b"".join(self.chunks())
        length = int(headers.get(b"content-length", b"0"))
        while len(self.buf) < length:
            self._fill()
        body = bytes(self.buf[:length])
        del self.buf[:length]
        return body

    def chunks(self) -> Iterator[bytes]:
        """The de-chunked pieces of a chunked body as they arrive (HTTP chunks may be cut
        across reads: each yielded piece is what is available so far)."""
        while True:
            while (eol := self.buf.find(b"\r\n")) < 0:
                self._fill()
            size = int(bytes(self.buf[:eol]).split(b";")[0], 16)
            del self.buf[: eol + 2]
            if size == 0:
                while (eol := self.buf.find(b"\r\n")) < 0:
                    self._fill()
                del self.buf[: eol + 2]  # no trailers expected
                return
            remaining = size
            while remaining:
                if not self.buf:
                    self._fill()
                take = min(remaining, len(self.buf))
                yield bytes(self.buf[:take])
                del self.buf[:take]
                remaining -= take
            while len(self.buf) < 2:
                self._fill()
            del self.buf[:2]


def response_id(body: bytes) -> str | None:
    i = body.find(b'"id":"')
    if i < 0:
        return None
    j = body.find(b'"', i + 6)
    return body[i + 6 : j].decode()


# -- load client (subprocess) -------------------------------------------------------------


def load_main(args: argparse.Namespace) -> None:
    host, port = args.addr.rsplit(":", 1)
    addr = (host, int(port))
    ctx = client_context(Path(args.ca)) if args.ca else None
    req = request_bytes()
    keep_ids = args.ids_out is not None
    start = time.perf_counter() + 0.2  # threads connect first, then start together
    measure_from = start + args.warmup
    stop_at = measure_from + args.duration
    results: list[tuple[list[float], list[str], int, int]] = []
    lock = threading.Lock()
    counts = [0] * args.conns

    def worker(slot: int) -> None:
        lat: list[float] = []
        ids: list[str] = []
        errors = 0
        done = 0
        sock: socket.socket | None = None
        reader: Reader | None = None
        while time.perf_counter() < start:
            time.sleep(0.001)
        # Paced: sends spread over the connections, one every 1/rate s on each; a late send
        # does not make the next one early (no bursts to catch up).
        interval = 1.0 / args.rate if args.rate else 0.0
        next_send = start + interval * slot / args.conns
        while (now := time.perf_counter()) < stop_at:
            if interval:
                if next_send > now:
                    time.sleep(next_send - now)
                next_send = max(next_send + interval, time.perf_counter())
            try:
                if sock is None:
                    sock = connect(args.how, addr, ctx)
                    reader = Reader(sock)
                assert reader is not None
                t0 = time.perf_counter()
                sock.sendall(req)
                status, headers = reader.head()
                body = reader.body(headers)
                t1 = time.perf_counter()
                if status != 200:
                    raise ConnectionError(f"status {status}: {body[:200]!r}")
                done += 1
                counts[slot] = done
                if keep_ids:
                    ids.append(response_id(body) or "?")
                if t0 >= measure_from and t1 <= stop_at:
                    lat.append(t1 - t0)
            except (OSError, ConnectionError, ValueError) as exc:
                errors += 1
                if errors <= 3:
                    print(f"load: {type(exc).__name__}: {exc}", file=sys.stderr)
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.close()
                sock = None
                time.sleep(min(0.05, max(0.0, stop_at - now)))
        if sock is not None:
            sock.close()
        with lock:
            results.append((lat, ids, errors, done))

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(args.conns)]
    for t in threads:
        t.start()
    if args.progress:
        while any(t.is_alive() for t in threads):
            print(f"progress {sum(counts)}", file=sys.stderr, flush=True)
            time.sleep(1.0)
    for t in threads:
        t.join()
    lat = sorted(x for r in results for x in r[0])
    if args.lat_out:
        Path(args.lat_out).write_text("".join(f"{x * 1e6:.1f}\n" for x in lat))
    errors = sum(r[2] for r in results)
    total = sum(r[3] for r in results)
    if keep_ids:
        Path(args.ids_out).write_text("".join(f"{i}\n" for r in results for i in r[1]))
    out = {
        "how": args.how,
        "conns": args.conns,
        "count": len(lat),
        "total": total,
        "errors": errors,
        "rps": len(lat) / args.duration,
        "p50_ms": percentile(lat, 50) * 1000,
        "p90_ms": percentile(lat, 90) * 1000,
        "p99_ms": percentile(lat, 99) * 1000,
        "max_ms": (lat[-1] * 1000) if lat else float("nan"),
        "cpu_s": time.process_time(),
    }
    print(json.dumps(out))


# -- streaming client (subprocess) --------------------------------------------------------


def stream_main(args: argparse.Namespace) -> None:
    """Per connection: one plain request (so TLS and the upstream connection are set up), then
    ``--streams`` streamed chat calls one after another, timing each SSE event's arrival."""
    host, port = args.addr.rsplit(":", 1)
    addr = (host, int(port))
    ctx = client_context(Path(args.ca)) if args.ca else None
    body = json.dumps(
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Count."}], "stream": True},
        separators=(",", ":"),
    ).encode()
    extra = (
        f"x-bench-events: {args.events}\r\nx-bench-interval-ms: {args.interval_ms}\r\n"
        f"x-bench-event-bytes: {args.event_bytes}\r\naccept: text/event-stream\r\n"
    )
    req = request_bytes(body, extra)
    barrier = threading.Barrier(args.conns)
    lock = threading.Lock()
    ttfe: list[float] = []
    gaps: list[float] = []
    hashes: set[str] = set()
    totals = {"events": 0, "bytes": 0, "streams": 0, "seconds": 0.0}

    def worker() -> None:
        sock = connect(args.how, addr, ctx)
        reader = Reader(sock)
        sock.sendall(request_bytes())
        _, headers = reader.head()
        reader.body(headers)
        barrier.wait()
        for _ in range(args.streams):
            digest = hashlib.sha256()
            arrivals: list[float] = []
            pending = b""
            size = 0
            t0 = time.perf_counter()
            sock.sendall(req)
            status, headers = reader.head()
            if status != 200:
                raise RuntimeError(f"status {status}")
            for piece in reader.chunks():
                now = time.perf_counter()
                digest.update(piece)
                size += len(piece)
                pending += piece
                n = pending.count(b"\n\n")
                if n:
                    arrivals.extend([now] * n)
                    pending = pending[pending.rfind(b"\n\n") + 2 :]
            t1 = time.perf_counter()
            with lock:
                totals["events"] += len(arrivals)
                totals["bytes"] += size
                totals["streams"] += 1
                totals["seconds"] += t1 - t0
                hashes.add(digest.hexdigest())
                if not args.no_times and arrivals:
                    ttfe.append(arrivals[0] - t0)
                    scheduled = arrivals[: args.events]  # the upstream's timed events (not [DONE])
                    gaps.extend(b - a for a, b in itertools.pairwise(scheduled))
        sock.close()

    failures: list[BaseException] = []

    def guarded() -> None:
        try:
            worker()
        except BaseException as exc:
            failures.append(exc)
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.abort()

    threads = [threading.Thread(target=guarded, daemon=True) for _ in range(args.conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise SystemExit(f"stream client failed: {failures[0]!r}")
    ttfe.sort()
    gaps.sort()
    ms = 1000.0
    print(
        json.dumps(
            {
                **totals,
                "hashes": sorted(hashes),
                "ttfe_ms": [x * ms for x in ttfe],
                "ttfe_p50_ms": percentile(ttfe, 50) * ms,
                "ttfe_p99_ms": percentile(ttfe, 99) * ms,
                "gap_count": len(gaps),
                "gap_p1_ms": percentile(gaps, 1) * ms,
                "gap_p50_ms": percentile(gaps, 50) * ms,
                "gap_p99_ms": percentile(gaps, 99) * ms,
                "gap_max_ms": (gaps[-1] * ms) if gaps else float("nan"),
            }
        )
    )


# -- fast upstream (subprocess) -----------------------------------------------------------

#: Response headers shaped like OpenAI's (fewer of them: only their count and size matter).
_JSON_HEAD = (
    b"HTTP/1.1 200 OK\r\ndate: Sun, 23 Nov 2025 14:00:00 GMT\r\ncontent-type: application/json\r\n"
    b"access-control-expose-headers: X-Request-ID\r\nopenai-organization: bench\r\n"
    b"openai-processing-ms: 312\r\nopenai-version: 2020-10-01\r\n"
    b"x-ratelimit-limit-requests: 10000\r\nx-ratelimit-limit-tokens: 200000\r\n"
    b"x-ratelimit-remaining-requests: 9999\r\nx-ratelimit-remaining-tokens: 199975\r\n"
    b"x-ratelimit-reset-requests: 8.64s\r\nx-ratelimit-reset-tokens: 7ms\r\n"
    b"x-request-id: req_0123456789abcdef0123456789abcdef\r\ncontent-length: %d\r\n\r\n"
)
_JSON_BODY = (
    b'{"id":"chatcmpl-%s","object":"chat.completion","created":1700000000,"model":"' + MODEL.encode() + b'",'
    b'"choices":[{"index":0,"message":{"role":"assistant","content":"Hello."},"logprobs":null,'
    b'"finish_reason":"stop"}],"usage":{"prompt_tokens":24,"completion_tokens":2,"total_tokens":26,'
    b'"prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}},'
    b'"service_tier":"default","system_fingerprint":"fp_bench"}'
)
_SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
    b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
)


def sse_event(content: str | None, finish: str | None, usage_null: bool) -> bytes:
    delta = {"content": content} if content is not None else {}
    chunk: dict = {
        "id": "chatcmpl-stream",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    if usage_null:
        chunk["usage"] = None
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class UpstreamProtocol(asyncio.Protocol):
    counter = 0
    prefix = f"{os.getpid()}-".encode()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buf = b""
        self.busy = False
        self.can_write = asyncio.Event()
        self.can_write.set()
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.can_write.set()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._process()

    def _process(self) -> None:
        while not self.busy:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            length = 0
            i = head.find(b"\r\ncontent-length:")
            if i >= 0:
                j = head.find(b"\r\n", i + 2)
                length = int(head[i + 17 : j if j >= 0 else None])
            total = end + 4 + length
            if len(self.buf) < total:
                return
            body = self.buf[end + 4 : total]
            self.buf = self.buf[total:]
            if b'"stream":true' in body or b'"stream": true' in body:
                self.busy = True
                asyncio.get_running_loop().create_task(self._stream(head, body))
                return
            UpstreamProtocol.counter += 1
            payload = _JSON_BODY % (self.prefix + b"%d" % UpstreamProtocol.counter)
            self.transport.write(_JSON_HEAD % len(payload) + payload)

    async def _stream(self, head: bytes, body: bytes) -> None:
        def header(name: bytes, default: float) -> float:
            i = head.find(b"\r\n" + name + b":")
            if i < 0:
                return default
            j = head.find(b"\r\n", i + 2)
            return float(head[i + len(name) + 3 : j if j >= 0 else None])

        events = int(header(b"x-bench-events", 200))
        interval = header(b"x-bench-interval-ms", 10) / 1000
        size = int(header(b"x-bench-event-bytes", 0))
        usage = b'"include_usage":true' in body or b'"include_usage": true' in body
        content = ("x" * size) if size else "tok"
        middle = _chunk(sse_event(content, None, usage))
        last = sse_event(None, "stop", usage)
        if usage:
            final = {
                "id": "chatcmpl-stream",
                "object": "chat.completion.chunk",
                "created": 1700000000,
                "model": MODEL,
                "choices": [],
                "usage": {"prompt_tokens": 24, "completion_tokens": events, "total_tokens": 24 + events},
            }
            last += b"data: " + json.dumps(final, separators=(",", ":")).encode() + b"\n\n"
        last += b"data: [DONE]\n\n"
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        self.transport.write(_SSE_HEAD)
        try:
            for i in range(events - 1):
                if interval:
                    delay = t0 + i * interval - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                await self.can_write.wait()
                if self.transport.is_closing():
                    return
                self.transport.write(middle)
            if interval:
                await asyncio.sleep(max(0.0, t0 + (events - 1) * interval - loop.time()))
            self.transport.write(_chunk(last) + b"0\r\n\r\n")
        finally:
            self.busy = False
        self._process()


def upstream_main(args: argparse.Namespace) -> None:
    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(UpstreamProtocol, "127.0.0.1", 0, backlog=1024)
        ports = {"port": server.sockets[0].getsockname()[1]}
        if args.tls_cert:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(args.tls_cert, args.tls_key)
            ctx.set_alpn_protocols(["http/1.1"])
            tls = await loop.create_server(UpstreamProtocol, "127.0.0.1", 0, ssl=ctx, backlog=1024)
            ports["tls_port"] = tls.sockets[0].getsockname()[1]
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        Path(args.ready).write_text(json.dumps(ports) + "\n")
        await stop.wait()

    asyncio.run(serve())


# -- bare mitmproxy (subprocess) ----------------------------------------------------------


class StreamEventStreams:
    """Stream SSE responses chunk by chunk (mitmproxy buffers whole bodies by default);
    llmtap does the same for every event stream it records."""

    def responseheaders(self, flow) -> None:
        if flow.response is not None:
            ctype = flow.response.headers.get("content-type", "")
            if ctype.split(";")[0].strip().lower() == "text/event-stream":
                flow.response.stream = True


class NoopAddon:
    """Has the HTTP hooks llmtap's addons have, doing nothing: what dispatch alone costs."""

    def __init__(self, number: int) -> None:
        self.name = f"noop{number}"  # mitmproxy wants a unique name per addon

    def requestheaders(self, flow) -> None:
        pass

    def request(self, flow) -> None:
        pass

    def responseheaders(self, flow) -> None:
        pass

    def response(self, flow) -> None:
        pass

    def error(self, flow) -> None:
        pass


def bare_main(args: argparse.Namespace) -> None:
    import logging
    import re

    from mitmproxy import options
    from mitmproxy.tools.dump import DumpMaster

    from collector.providers import ProviderRegistry
    from collector.proxy.addons.upstream import UpstreamRewrite
    from collector.settings.config import parse_upstream_flag

    logging.basicConfig(level=logging.INFO, format="bare: %(levelname)s %(message)s")
    for noisy in ("mitmproxy", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    upstreams = dict(parse_upstream_flag(u) for u in args.upstream)

    class Ready:
        def __init__(self, master: DumpMaster) -> None:
            self.master = master

        def running(self) -> None:
            port = self.master.addons.get("proxyserver").listen_addrs()[0][1]
            Path(args.ready).write_text(json.dumps({"port": port}) + "\n")

    async def serve() -> None:
        opts = options.Options()
        master = DumpMaster(opts, with_termlog=False, with_dumper=False)
        allow = ProviderRegistry().host_patterns()
        allow += [rf"^{re.escape(host)}(:\d+)?$" for host in upstreams]
        opts.update(
            listen_host="127.0.0.1",
            listen_port=args.port,
            confdir=args.confdir,
            allow_hosts=allow,
            connection_strategy="lazy",
        )
        noop = [NoopAddon(i) for i in range(args.noop_addons)]
        master.addons.add(*noop, UpstreamRewrite(upstreams), StreamEventStreams(), Ready(master))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, master.shutdown)
        await master.run()

    asyncio.run(serve())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("upstream")
    p.add_argument("--ready", required=True)
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.set_defaults(func=upstream_main)
    p = sub.add_parser("bare")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--confdir", required=True)
    p.add_argument("--upstream", action="append", default=[])
    p.add_argument("--ready", required=True)
    p.add_argument("--noop-addons", type=int, default=0, help="extra do-nothing addons (dispatch cost)")
    p.set_defaults(func=bare_main)
    p = sub.add_parser("load")
    p.add_argument("--how", choices=["direct", "direct-tls", "reverse", "https"], required=True)
    p.add_argument("--addr", required=True)
    p.add_argument("--conns", type=int, default=1)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--ca")
    p.add_argument("--ids-out")
    p.add_argument("--lat-out")
    p.add_argument("--progress", action="store_true")
    p.add_argument(
        "--rate", type=float, default=0.0, help="requests/s per connection (default 0: back to back)"
    )
    p.set_defaults(func=load_main)
    p = sub.add_parser("stream")
    p.add_argument("--how", choices=["direct", "direct-tls", "reverse", "https"], required=True)
    p.add_argument("--addr", required=True)
    p.add_argument("--conns", type=int, default=1)
    p.add_argument("--streams", type=int, default=5, help="streams per connection, one after another")
    p.add_argument("--events", type=int, default=200)
    p.add_argument("--interval-ms", type=float, default=10.0)
    p.add_argument("--event-bytes", type=int, default=0)
    p.add_argument("--ca")
    p.add_argument("--no-times", action="store_true", help="only totals (for huge streams)")
    p.set_defaults(func=stream_main)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
