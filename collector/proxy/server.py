"""Embeds mitmproxy with llmtap's addons and runs it until told to stop.

Only LLM API hosts (built-in providers, config hosts, ``--upstream`` hosts) are
intercepted; mitmproxy's ``allow_hosts`` makes every other CONNECT tunnel a plain TCP
pass-through, so those hosts see the client's own TLS handshake byte for byte.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import re
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mitmproxy import options
from mitmproxy.tools.dump import DumpMaster

from collector.calls.spans import SpanRecorder
from collector.metrics import MetricsServer
from collector.pricing.book import PriceBook
from collector.providers import ProviderRegistry
from collector.proxy.addons.budget_guard import Budgets
from collector.proxy.addons.cache import ResponseCache
from collector.proxy.addons.comparison import CopyComparison
from collector.proxy.addons.fallback import Fallbacks
from collector.proxy.addons.feedback import FeedbackEndpoint
from collector.proxy.addons.grading import Grading
from collector.proxy.addons.metadata import MetadataHeaders
from collector.proxy.addons.quickack import QuickAck
from collector.proxy.addons.recorder import Recorder
from collector.proxy.addons.router import Router
from collector.proxy.addons.stream_usage import StreamUsage
from collector.proxy.addons.upstream import UpstreamRewrite
from collector.proxy.certs import ensure_ca
from collector.proxy.pipeline import Pipeline
from collector.routing.location import proxy_rules
from collector.settings.config import Settings
from collector.storage.database import ensure_schema
from collector.storage.loader import IngestWorker
from collector.storage.spool import Spool
from collector.trust.private import private_dir, tighten

if TYPE_CHECKING:
    from collector.metrics.otlp import OtlpMetrics

log = logging.getLogger("llmtap.proxy")


@dataclass(frozen=True, slots=True)
class Listening:
    url: str
    port: int
    ca_bundle: Path


class _Ready:
    """Reports the listening address once mitmproxy's servers are up."""

    def __init__(self, master: DumpMaster, callback: Callable[[int], None]) -> None:
        self.master = master
        self.callback = callback

    def running(self) -> None:
        server = self.master.addons.get("proxyserver")
        port = server.listen_addrs()[0][1]
        self.callback(port)


class LlmtapProxy:
    """One proxy instance: mitmproxy master, recorder, spool and ingester."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        paths = settings.paths
        private_dir(paths.data_dir)
        self.ca_bundle = ensure_ca(paths)
        try:
            ensure_schema(paths.db)
        except Exception as exc:  # the ingester retries; traffic must not wait on the store
            log.error("store %s not ready (%s); calls are spooled until it is", paths.db, exc)
        tighten(paths.data_dir)  # a directory an older llmtap made readable to all
        self.registry = ProviderRegistry(extra_hosts=settings.extra_hosts)
        self.spool = Spool(paths.spool)
        self.ingester = IngestWorker(self.spool, paths.db, settings.prices, settings.fleet)
        self.spans = SpanRecorder(settings.otlp_endpoint)
        self.recorder = Recorder(
            self.registry,
            self.spool,
            self.spans,
            PriceBook(settings.prices),
            settings.capture,
            rows_in_flight=bool(settings.budgets),  # budgets count each call's cost as it ends
        )
        self.budgets = (
            Budgets(settings.budgets, paths.budget_alerts, settings.fleet) if settings.budgets else None
        )
        self.router = Router(proxy_rules(settings), settings.routing.noise_floor_fraction)
        # No [cache] table, no stage: a cache that is off costs nothing.
        self.cache = ResponseCache(settings.cache, paths.cache) if settings.cache is not None else None
        self.master: DumpMaster | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.listening: Listening | None = None
        self.ready = threading.Event()
        #: After :meth:`close`: whether every spooled call reached the store.
        self.stored_all: bool | None = None
        #: The Prometheus endpoint (``--metrics-port``), once :meth:`serve` has bound it.
        self.metrics: MetricsServer | None = None
        #: The OTLP metrics export (an OTLP endpoint is set), once :meth:`serve` has started it.
        self.otlp_metrics: OtlpMetrics | None = None

    def _stages(self) -> list[object]:
        """The pipeline's stages, in the order each mitmproxy event reaches them. Each stage
        is one concern (:mod:`collector.proxy.addons`); they share the call's state through
        ``flow.metadata`` (:mod:`collector.proxy.call`), and the order is why that works."""
        s = self.settings
        return [
            # First: the client's request body must not wait on llmtap's work.
            QuickAck(),
            # Before any stage that reads calls: a feedback post is answered by the proxy
            # itself (it never goes upstream), and the call ids it accepts are the ones the
            # recorder (below) gave clients.
            FeedbackEndpoint(self.spool, s.paths.db),
            # Before the recorder: the caller's metadata is part of every call's row.
            MetadataHeaders(s.default_app),
            # Before the recorder: a copy's verdict is part of the copy's own row, which the
            # recorder writes at ``response``.
            CopyComparison(s.routing.judge_model),
            # Makes the call's capture, which every stage below reads.
            self.recorder,
            # Before the router: a call a budget blocked or downgraded is not routed; before the
            # upstream stages, so a blocked call never leaves.
            *([self.budgets] if self.budgets is not None else []),
            # After the recorder (its capture and, at ``response``, the cost its spend caps count).
            self.router,
            # After the router: a rewritten call or a copy is graded for its client's model
            # (the route's); after the recorder: the row is written before grading starts.
            Grading(s.graders, self.spool, s.routing.judge_model, quote_graders=s.capture != "metadata"),
            # After any model rewrite: it edits the request as it will go upstream.
            StreamUsage(s.stream_usage),
            # After budgets and the router: a call they answered (a block) or sent to another model
            # is not cached. After stream usage: a miss's stream is stored exactly as the client
            # received it, after stream usage took out what it added (its responseheaders wraps
            # the stream first). Before the upstream rewrite: a hit goes nowhere.
            *([self.cache] if self.cache is not None else []),
            # Last on the request: where the request, as the stages left it, is sent.
            UpstreamRewrite(s.upstreams),
            # After the upstream rewrite: a call with a fallback chain goes first where it was
            # going, through llmtap's relay, which falls back on a failure (transport included).
            *([Fallbacks(s.fallbacks, self.spool, self.recorder.rows)] if s.fallbacks else []),
        ]

    def _configure(self, opts: options.Options) -> None:
        s = self.settings
        allow = self.registry.host_patterns()
        allow += [rf"^{re.escape(host)}(:\d+)?$" for host in s.upstreams]
        opts.update(
            listen_host=s.listen_host,
            listen_port=s.listen_port,
            confdir=str(s.paths.ca_dir),
            allow_hosts=allow,
            connection_strategy="lazy",
        )

    async def serve(self, on_ready: Callable[[Listening], None] | None = None) -> None:
        """Run until :meth:`shutdown` (or SIGINT/SIGTERM when on the main thread). A metrics
        port that cannot be bound raises MetricsPortError before the proxy listens."""
        self.loop = asyncio.get_running_loop()
        if self.settings.metrics_port is not None:
            # Off the event loop: scrapes query the store on the server's own thread.
            budgets = self.budgets.budgets if self.budgets is not None else ()
            self.metrics = MetricsServer(self.settings.paths.db, self.settings.metrics_port, budgets).start()
        if self.settings.otlp_metrics_endpoint is not None:
            # Imported here: the OpenTelemetry SDK's metrics stay out of proxies that do not export.
            from collector.metrics.otlp import OtlpMetrics

            self.otlp_metrics = OtlpMetrics(
                self.settings.paths.db,
                self.settings.otlp_metrics_endpoint,
                self.settings.otlp_metrics_interval_s,
                self.budgets.budgets if self.budgets is not None else (),
            ).start()
        opts = options.Options()
        master = DumpMaster(opts, with_termlog=False, with_dumper=False)
        self._configure(opts)  # after DumpMaster: its addons declare most options
        self.master = master
        # mitmproxy exits when anything logs an error during start-up. Its own errors (a port
        # in use) should stop it; llmtap's (a broken store, a spool it cannot load yet) must
        # not: the proxy then serves traffic and says what it could not do.
        master.addons.get("errorcheck").logger.addFilter(_not_llmtap)

        def ready(port: int) -> None:
            host = self.settings.listen_host
            self.listening = Listening(f"http://{host}:{port}", port, self.ca_bundle)
            self.ready.set()
            if on_ready is not None:
                on_ready(self.listening)

        # One addon for mitmproxy (see collector.proxy.pipeline); the start-up report rides in it.
        master.addons.add(Pipeline(*self._stages(), _Ready(master, ready)))
        self.loop.set_exception_handler(_ignore_cancelled)
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.loop.add_signal_handler(sig, master.shutdown)
        # Calls a killed proxy left in the spool count towards budgets and shadow spend caps.
        self.ingester.run_once()
        if self.budgets is not None:
            self.budgets.resume(self.settings.paths.db)
        self.router.spend.resume(self.settings.paths.db)
        self.ingester.start()
        # What start-up loaded (price catalogue, modules, providers) lives as long as the proxy:
        # kept out of the collector, every collection while serving scans far fewer objects.
        gc.freeze()
        try:
            await master.run()
        finally:
            # Frozen objects are never collected, not even at interpreter exit: DuckDB's bindings
            # would then report them as leaked ("nanobind: leaked ... instances").
            gc.unfreeze()
            self.ready.set()

    def shutdown(self) -> None:
        """Ask a running proxy (from any thread) to stop."""
        if self.master is not None and self.loop is not None:
            self.loop.call_soon_threadsafe(self.master.shutdown)

    def close(self, timeout: float = 15.0) -> bool:
        """Flush spans and load every spooled call into the store. False if some are left."""
        if self.metrics is not None:
            self.metrics.stop()
        self.spans.shutdown()
        saved = self.stored_all = self.ingester.stop(timeout)
        if self.otlp_metrics is not None:
            self.otlp_metrics.stop()  # after the store has every call: the last export counts them
        if not saved:
            log.error(
                "some calls could not be written to %s yet; they stay in %s and are loaded at the next start",
                self.settings.paths.db,
                self.settings.paths.spool,
            )
        return saved


class ProxyStartError(RuntimeError):
    """The proxy could not start (e.g. its port is taken); the message says why."""


@contextmanager
def serving_in_background(settings: Settings) -> Iterator[LlmtapProxy]:
    """A proxy serving on a background thread of this process, for commands that drive
    traffic themselves (``llmtap run``, ``llmtap demo``, ``llmtap evaluate``). Raises
    ProxyStartError if it does not start. On exit it stops and stores every call; calls it
    could not store stay in the spool and :meth:`LlmtapProxy.close` logs why."""
    proxy = LlmtapProxy(settings)
    failure: list[BaseException] = []

    def serve() -> None:
        try:
            asyncio.run(proxy.serve())
        except BaseException as exc:  # raised on the caller's thread below
            failure.append(exc)
            proxy.ready.set()

    thread = threading.Thread(target=serve, name="llmtap-proxy", daemon=True)
    thread.start()
    proxy.ready.wait()
    if failure or proxy.listening is None:
        raise ProxyStartError(f"proxy did not start: {failure[0] if failure else 'unknown'}")
    try:
        yield proxy
    finally:
        proxy.shutdown()
        thread.join()
        proxy.close()


def _not_llmtap(record: logging.LogRecord) -> bool:
    return not record.name.startswith("llmtap")


def _ignore_cancelled(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    """Open client connections are cancelled at shutdown; asyncio (3.12.1) logs that as an
    error in a callback. Everything else goes to the default handler."""
    if isinstance(context.get("exception"), asyncio.CancelledError):
        return
    loop.default_exception_handler(context)
