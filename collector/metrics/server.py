"""The metrics endpoint: ``GET /metrics`` on 127.0.0.1, from a thread of the proxy.

A scrape reads the store (:func:`collector.metrics.snapshot.snapshot`: one aggregate query) on
the server's own thread; the proxy's event loop and the calls it carries never wait on it, and
rendering the text cedes the GIL every few series; the answer is encoded once and reused.

The rendered text is kept for :data:`CACHE_S` (longer when the query is slow: ten times what
it took), so several scrapers, or one scraping every 100 ms, do not multiply the work: the
query never takes more than a tenth of a core on average. Scrapes run one at a time; a scrape
arriving while another queries waits for it and shares its answer.

Fail open: a scrape that cannot read the store (locked past
:data:`collector.metrics.snapshot.STORE_WAIT_S`, missing, broken) or hits a bug answers 500
with a one-line reason and logs it once (and again when it changes, and when scrapes work
again); nothing here touches traffic.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from collector.budgets.limits import Budget
from collector.metrics.exposition import CONTENT_TYPE, render
from collector.metrics.labels import LabelBounds
from collector.metrics.snapshot import Failures, snapshot

__all__ = ["CACHE_S", "HOST", "PATH", "MetricsPortError", "MetricsServer", "exposition"]

log = logging.getLogger("llmtap.metrics")

#: Metrics are served on loopback only (see README, Metrics).
HOST = "127.0.0.1"
PATH = "/metrics"
#: Shortest time a rendered answer is reused.
CACHE_S = 1.0
#: A rendered answer is reused for at least this many times the query's duration.
QUERY_SHARE = 10
#: Longest :meth:`MetricsServer.stop` waits for a scrape in progress.
STOP_WAIT_S = 30.0
#: Longest a client may take to send its request.
REQUEST_TIMEOUT_S = 10.0


def exposition(db: Path, bounds: LabelBounds, budgets: Sequence[Budget] = ()) -> tuple[str, float]:
    """One scrape's text from the store at ``db`` and the proxy's ``budgets`` (see
    :func:`collector.metrics.snapshot.snapshot`), and how long its query took in seconds."""
    metrics, query_s = snapshot(db, bounds, budgets)
    return render(metrics), query_s


class MetricsPortError(OSError):
    """The metrics port could not be bound (in use, not allowed); the message says which."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    metrics: MetricsServer

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that hangs up mid-answer is its own business: no traceback on stderr."""
        log.debug("metrics: request from %s failed", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "llmtap-metrics"
    timeout = REQUEST_TIMEOUT_S

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] != PATH:
            self._answer(404, f"not found: llmtap's metrics are at {PATH}\n")
            return
        try:
            body = self.server.metrics.text()
        except Exception as exc:
            self._answer(500, self.server.metrics.failed(exc) + "\n")
            return
        self._answer(200, body, CONTENT_TYPE)

    def _answer(
        self, status: int, body: str | bytes, content_type: str = "text/plain; charset=utf-8"
    ) -> None:
        data = body if isinstance(body, bytes) else body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        """Scrapes are routine: not a line each on the proxy's stderr."""


class MetricsServer:
    """Serves the store's metrics on ``HOST:port`` from a daemon thread.

    Binding happens in the constructor, so a port in use fails at once (MetricsPortError)
    and the proxy can refuse to start, as mitmproxy does for its own port."""

    def __init__(self, db: Path, port: int, budgets: Sequence[Budget] = ()) -> None:
        self.db = db
        self.budgets = tuple(budgets)
        self.bounds = LabelBounds()
        self._lock = threading.Lock()
        self._cached: tuple[float, bytes] | None = None  # (reuse until, monotonic; UTF-8 text)
        self._failures = Failures(log, "llmtap metrics")
        self._query_s = 0.0
        self._closed = False
        try:
            self._httpd = _Server((HOST, port), _Handler)
        except OSError as exc:
            raise MetricsPortError(
                exc.errno, f"cannot serve metrics on {HOST}:{port}: {exc.strerror or exc}"
            ) from exc
        self._httpd.metrics = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="llmtap-metrics", daemon=True)

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}{PATH}"

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, after the scrape in progress, if any: a thread still inside DuckDB
        as the interpreter exits aborts the process."""
        if self._thread.is_alive():
            self._httpd.shutdown()
        self._httpd.server_close()
        if self._lock.acquire(timeout=STOP_WAIT_S):
            self._closed = True
            self._lock.release()

    def text(self) -> bytes:
        """The exposition text (UTF-8), rendered at most once per cache period."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the proxy is stopping")
            now = time.monotonic()
            if self._cached is not None and now < self._cached[0]:
                return self._cached[1]
            body = self._scrape().encode()
            self._cached = (time.monotonic() + max(CACHE_S, QUERY_SHARE * self._query_s), body)
            self._failures.worked()
            return body

    def _scrape(self) -> str:
        body, self._query_s = exposition(self.db, self.bounds, self.budgets)
        return body

    def failed(self, exc: Exception) -> str:
        """The one-line reason a scrape answers 500; logged when it is new."""
        return self._failures.failed(exc)
