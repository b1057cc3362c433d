"""One reading of the store's metrics, shared by the Prometheus endpoint and the OTLP export,
and the one-line account of why a reading failed.

A reading runs on a thread of the proxy (the endpoint's or the exporter's), never on the
event loop, and keeps small where it shares the process with it: the query runs on one
DuckDB thread (the event loop keeps a core) with the GIL released; its result is fetched in
types that convert in about 2 ms; turning groups into metrics cedes the GIL every few series
(:func:`collector.metrics.model.cede`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import duckdb

from collector.budgets.limits import Budget
from collector.metrics.families import families
from collector.metrics.labels import LabelBounds
from collector.metrics.model import Metric
from collector.metrics.query import read_groups
from collector.storage.database import read_connection
from collector.trust.boundary import text

__all__ = ["STORE_WAIT_S", "Failures", "snapshot"]

#: Longest wait for the loader to let go of the store; Prometheus' default scrape timeout is 10 s.
STORE_WAIT_S = 5.0


def snapshot(db: Path, bounds: LabelBounds, budgets: Sequence[Budget] = ()) -> tuple[list[Metric], float]:
    """Every metric from the store at ``db`` (label values as ``bounds`` allow, admitting new
    ones) and the proxy's ``budgets``, plus how long the query took, in seconds (also shown as
    the gauge ``llmtap_metrics_query_seconds``)."""
    started = time.monotonic()
    with read_connection(db, STORE_WAIT_S) as con:
        con.execute("SET threads = 1")  # the other core stays the event loop's
        groups = read_groups(con, bounds.kept_lists(), bounds.free())
    query_s = time.monotonic() - started
    query = Metric(
        "llmtap_metrics_query_seconds",
        "llmtap.metrics.query.duration",
        "s",
        "gauge",
        "How long this reading's query of the store took",
    )
    query.add((), round(query_s, 6))
    return [*families(groups, bounds, budgets, time.time()), query], query_s


class Failures:
    """Why readings fail, logged when the reason is new (and once when they work again), not
    at every scrape or export: a store locked for a minute is one line, not sixty."""

    def __init__(self, log: logging.Logger, what: str) -> None:
        self.log = log
        self.what = what
        self.reason: str | None = None

    def failed(self, exc: Exception) -> str:
        """The one-line reason (what fails, the exception's type and first line, bounded)."""
        first_line = next(iter(str(exc).splitlines()), "")
        reason = f"{self.what} unavailable: {type(exc).__name__}: {text(first_line, limit=200)}"
        if reason != self.reason:
            self.reason = reason
            # The store's own errors (locked, missing, broken) say it all; anything else is a bug.
            bug = not isinstance(exc, duckdb.Error | OSError)
            self.log.error(
                "%s (traffic unaffected; logged again only if the reason changes)",
                reason,
                exc_info=exc if bug else None,
            )
        return reason

    def worked(self) -> None:
        if self.reason is not None:
            self.log.info("%s work again", self.what)
            self.reason = None
