"""What each dashboard page shows, as plain functions of the store (no Streamlit here).

The pages, their AppTest tests and ``bench/dashboard.py`` all call these, so the figures
a page renders are the figures the benchmark times and the tests check. Each page reads
the store ONCE: it collects the few columns it needs (:func:`snapshot`) and runs the
:mod:`analytics` functions over that in-memory frame, so DuckDB holds the file for one
short scan per page while a proxy may be writing (see :mod:`analytics.source`). The store
is the local one or the fleet's (``llmtap ui --store postgresql://...``): the pages read it
through :mod:`analytics.engines` and never ask which.

A :class:`View` is what the sidebar chose (time window, filters) plus the store's state;
the pages cache on it (``st.cache_data``), so a new call in the store makes a new key
and the page shows it on its next run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

import analytics
from analytics.dimensions import NONE
from analytics.engines import CALL_SCORES, Reader, StoredCall, reader
from analytics.metrics import is_shadow, known_sum, latency_ms
from collector.budgets.periods import period_window
from collector.settings.config import BudgetSpec

#: Sidebar time windows: label -> how far back from now (None: everything stored).
WINDOWS: dict[str, timedelta | None] = {
    "Last 15 minutes": timedelta(minutes=15),
    "Last hour": timedelta(hours=1),
    "Last 24 hours": timedelta(days=1),
    "Last 7 days": timedelta(days=7),
    "Last 30 days": timedelta(days=30),
    "All time": None,
}
DEFAULT_WINDOW = "Last 7 days"

#: Sidebar filters: name -> the frame's column. The node filter is offered only when the store
#: holds several nodes' calls (a fleet store; a local store's calls have none).
FILTER_COLUMNS: dict[str, str] = {
    "app": "app",
    "provider": "provider",
    "model": "model",
    "user": "user_id",
    "node": "node",
}

#: Chart bucket for the span of time the calls cover: the first whose span is at least
#: theirs (a few minutes' demo gets minutes; a month gets days). At most ~200 buckets.
BUCKETS: tuple[tuple[timedelta, str, str], ...] = (
    (timedelta(hours=3), "1m", "minute"),
    (timedelta(days=1), "10m", "10 minutes"),
    (timedelta(days=8), "1h", "hour"),
    (timedelta(days=200), "1d", "day"),
)
LONGEST_BUCKET = ("1w", "week")

#: Periods the Overview puts spend in (UTC; weeks start on Monday).
PERIODS = ("day", "week", "month")


@dataclass(frozen=True, slots=True)
class Filters:
    """The sidebar's filters: per dimension the values kept (empty: all).
    A missing value is spelt ``(none)``, as in :mod:`analytics.dimensions`."""

    app: tuple[str, ...] = ()
    provider: tuple[str, ...] = ()
    model: tuple[str, ...] = ()
    user: tuple[str, ...] = ()
    node: tuple[str, ...] = ()

    def active(self) -> bool:
        return any(getattr(self, name) for name in FILTER_COLUMNS)

    def expr(self) -> pl.Expr:
        """True for the calls the filters keep."""
        kept = [
            pl.col(column).fill_null(NONE).is_in(list(values))
            for name, column in FILTER_COLUMNS.items()
            if (values := getattr(self, name))
        ]
        return pl.all_horizontal(kept) if kept else pl.lit(True)


@dataclass(frozen=True, slots=True)
class View:
    """One page run's question: which store, which calls, and the store's state when asked
    (the cache key that keeps cached pages live).

    ``data_dir`` is the dashboard's own data directory (the proxy's budget alerts are
    there); ``store`` the store read: a local store's path or a fleet store's URL."""

    data_dir: Path
    store: str = field(repr=False)  # a fleet URL may hold a password
    since: datetime | None = None
    filters: Filters = Filters()
    state: tuple[int, ...] = ()

    @property
    def reader(self) -> Reader:
        return reader(self.store)

    def calls(self, since: datetime | str | None = "window") -> pl.LazyFrame:
        """The filtered calls since the window's start (or ``since``), not read yet."""
        start = self.since if since == "window" else since
        return analytics.load(self.store, since=start).filter(self.filters.expr())


def store_state(store: str) -> tuple[int, ...]:
    """A value that changes whenever calls or scores reach ``store``; () when there is no store
    yet (see :meth:`analytics.engines.Reader.state`)."""
    return reader(store).state()


def window_start(label: str, now: datetime) -> datetime | None:
    """The start of the sidebar window ``label`` at ``now``, to the minute (so reruns
    within a minute share cached results)."""
    if label not in WINDOWS:
        raise ValueError(f"unknown time window {label!r}: use one of {', '.join(WINDOWS)}")
    span = WINDOWS[label]
    return None if span is None else (now - span).replace(second=0, microsecond=0)


def bucket_for(first: datetime | None, last: datetime | None) -> tuple[str, str]:
    """The chart bucket (Polars duration, name) for calls started from ``first`` to ``last``."""
    span = (last - first) if first and last else timedelta(0)
    return next(((every, name) for limit, every, name in BUCKETS if span <= limit), LONGEST_BUCKET)


def snapshot(calls: pl.LazyFrame, columns: tuple[str, ...]) -> pl.LazyFrame:
    """``columns`` of ``calls`` read from the store now (one scan), as a LazyFrame for the
    analyses to run on in memory."""
    return calls.select(columns).collect().lazy()


def over_time(calls: pl.LazyFrame, every: str, aggregates: list[pl.Expr]) -> pl.DataFrame:
    """``aggregates`` per time bucket of ``every`` and model, in time order."""
    bucket = pl.col("started_at").dt.truncate(every).alias("bucket")
    return calls.group_by(bucket, "model").agg(aggregates).sort("bucket", "model").collect()


def filter_options(store: str, since: datetime | None) -> dict[str, list[str]]:
    """The values each sidebar filter offers: those present in the window, sorted."""
    frame = analytics.load(store, since=since).select(FILTER_COLUMNS.values()).collect()
    return {
        name: sorted(frame.get_column(column).fill_null(NONE).unique().to_list())
        for name, column in FILTER_COLUMNS.items()
    }


# -- Overview -------------------------------------------------------------------------------

#: ``routing_arm`` and ``shadow_of`` tell shadow copies (evaluation spend) from the app's calls.
SHADOW_COLUMNS = ("routing_arm", "shadow_of")
OVERVIEW_COLUMNS = (
    "started_at",
    "model",
    "cost_usd",
    "input_tokens",
    "output_tokens",
    "error",
    "latency_ms",
    *SHADOW_COLUMNS,
)


@dataclass(frozen=True, slots=True)
class PeriodSpend:
    """Spend in the current UTC ``period``, with the budget on all calls for it, if any."""

    period: str
    spent_usd: float | None
    forecast_usd: float | None
    budget: str | None = None
    limit_usd: float | None = None


@dataclass(frozen=True, slots=True)
class Overview:
    calls: int
    input_tokens: int
    output_tokens: int
    cost_usd: float | None
    errors: int
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    periods: tuple[PeriodSpend, ...]
    #: The chart's bucket name (minute, hour, ...) and cost per bucket and model.
    bucket: str
    spend_over_time: pl.DataFrame

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.calls if self.calls else None


def overall_budget(budgets: tuple[BudgetSpec, ...], period: str) -> BudgetSpec | None:
    """The first budget on every call (no filter, no ``per``) for ``period``."""
    return next(
        (
            spec
            for spec in budgets
            if spec.period == period and not (spec.app or spec.user or spec.properties or spec.per)
        ),
        None,
    )


def overview(view: View, budgets: tuple[BudgetSpec, ...] = (), now: datetime | None = None) -> Overview:
    """The Overview page: totals over the window, spend in the current day, week and month
    (against the budgets on all calls, when no filter is set), and spend over time by model.
    Shadow copies are left out, as in :func:`analytics.summary`: they are evaluation spend.

    One scan reads the window and the current periods together."""
    now = now or datetime.now(UTC)
    period_starts = [period_window(period, now.timestamp()).bounds()[0] for period in PERIODS]
    since = None if view.since is None else min(view.since, *period_starts)
    frame = snapshot(view.calls(since), OVERVIEW_COLUMNS).filter(~is_shadow())
    window = frame if view.since is None else frame.filter(pl.col("started_at") >= view.since)
    totals = analytics.summary(window, by=[]).row(0, named=True)
    span = window.select(first=pl.col("started_at").min(), last=pl.col("started_at").max()).collect()
    every, bucket = bucket_for(span.item(0, "first"), span.item(0, "last"))
    periods = []
    for period in PERIODS:
        burn = analytics.burn(frame, period=period, now=now).row(0, named=True)
        spec = None if view.filters.active() else overall_budget(budgets, period)
        periods.append(
            PeriodSpend(
                period=period,
                spent_usd=_float(burn["spent_usd"]),
                forecast_usd=burn["forecast_usd"],
                budget=spec.name if spec else None,
                limit_usd=float(spec.limit_usd) if spec else None,
            )
        )
    return Overview(
        calls=totals["calls"],
        input_tokens=totals["input_tokens"] or 0,
        output_tokens=totals["output_tokens"] or 0,
        cost_usd=_float(totals["cost_usd"]),
        errors=totals["errors"],
        latency_p50_ms=totals["latency_p50_ms"],
        latency_p95_ms=totals["latency_p95_ms"],
        periods=tuple(periods),
        bucket=bucket,
        spend_over_time=over_time(window, every, [known_sum("cost_usd").cast(pl.Float64).alias("cost_usd")]),
    )


# -- Costs ----------------------------------------------------------------------------------

COST_COLUMNS = (
    "started_at",
    "model",
    "provider",
    "app",
    "user_id",
    "properties",
    "price_ref",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cost_usd",
    "input_cost_usd",
    *SHADOW_COLUMNS,
    # The response cache beside the requests a cache would have served (analytics.response_cache).
    "cache_hit",
    "cache_saved_usd",
    "body_hash",
    "error",
)
#: The Costs page's breakdowns: tab label -> dimension.
COST_DIMENSIONS = {"Model": "model", "Provider": "provider", "App": "app", "User": "user"}


@dataclass(frozen=True, slots=True)
class Costs:
    total_usd: float | None
    #: dimension -> spend table (analytics.spend), including ``property:KEY`` for each key.
    by: dict[str, pl.DataFrame]
    cache: pl.DataFrame
    cache_saved_usd: float
    unpriced: pl.DataFrame
    #: llmtap's response cache by model (analytics.response_cache), and its totals: what its hits
    #: saved, and what repeated requests still cost (what a cache would have saved).
    response_cache: pl.DataFrame
    response_cache_saved_usd: float | None
    duplicate_cost_usd: float | None


def costs(view: View) -> Costs:
    """The Costs page: spend by model, provider, app, user and each property; cache
    savings by model (prompt caches, and llmtap's response cache beside the repeated requests
    it could have served); models with usage but no price."""
    frame = snapshot(view.calls(), COST_COLUMNS)
    dimensions = [*COST_DIMENSIONS.values(), *(f"property:{key}" for key in stored_property_keys(view))]
    cache = analytics.cache_savings(frame, by=["model"])
    total = analytics.spend(frame, by=[]).item(0, "cost_usd")
    response = analytics.response_cache(frame, by=["model"])
    return Costs(
        total_usd=_float(total),
        by={name: analytics.spend(frame, by=[name]) for name in dimensions},
        cache=cache,
        cache_saved_usd=float(cache.get_column("net_saved_usd").sum()),
        unpriced=analytics.unpriced(frame),
        response_cache=response,
        response_cache_saved_usd=_float(response.get_column("cache_saved_usd").sum()),
        duplicate_cost_usd=_float(response.get_column("duplicate_cost_usd").sum()),
    )


def stored_property_keys(view: View) -> list[str]:
    """The metadata property names (``X-Llmtap-Property-*``) of the window's calls."""
    return view.reader.property_keys(view.since)


# -- Latency --------------------------------------------------------------------------------

LATENCY_COLUMNS = (
    "started_at",
    "model",
    "provider",
    "latency_ms",
    "ttft_ms",
    "stream",
    "error",
    "output_tokens",
)


@dataclass(frozen=True, slots=True)
class Latency:
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    ttft_p50_ms: float | None
    #: analytics.latency by model: percentiles, TTFT percentiles, stream speed.
    by_model: pl.DataFrame
    bucket: str
    #: p50 and p95 latency and p50 TTFT per bucket and model.
    over_time: pl.DataFrame


def latency(view: View) -> Latency:
    """The Latency page: percentiles and time to first token by model, and over time."""
    frame = snapshot(view.calls(), LATENCY_COLUMNS)
    overall = analytics.latency(frame, by=[]).row(0, named=True)
    span = frame.select(first=pl.col("started_at").min(), last=pl.col("started_at").max()).collect()
    every, bucket = bucket_for(span.item(0, "first"), span.item(0, "last"))
    streams = pl.col("error").is_null() & pl.col("stream").fill_null(False)
    aggregates = [
        latency_ms(50),
        latency_ms(95),
        pl.col("ttft_ms").filter(streams).quantile(0.5, "linear").alias("ttft_p50_ms"),
    ]
    return Latency(
        latency_p50_ms=overall["latency_p50_ms"],
        latency_p95_ms=overall["latency_p95_ms"],
        ttft_p50_ms=overall["ttft_p50_ms"],
        by_model=analytics.latency(frame, by=["model"]),
        bucket=bucket,
        over_time=over_time(frame, every, aggregates),
    )


# -- Calls ----------------------------------------------------------------------------------

CALL_COLUMNS = (
    "started_at",
    "call_id",
    "provider",
    "model",
    "app",
    "user_id",
    "status_code",
    "stream",
    "input_tokens",
    "output_tokens",
    "latency_ms",
    "ttft_ms",
    "cost_usd",
    "error",
)


def recent_calls(view: View, errors_only: bool = False, limit: int = 500) -> tuple[int, pl.DataFrame]:
    """How many calls match, and the latest ``limit`` of them (newest first)."""
    frame = view.calls().select(CALL_COLUMNS)
    if errors_only:
        frame = frame.filter(pl.col("error").is_not_null())
    matched = frame.collect()
    latest = matched.sort("started_at", descending=True).head(limit)
    return matched.height, latest.with_columns(pl.col("cost_usd").cast(pl.Float64))


#: A call's scores as the Calls page lists them (see :data:`analytics.engines.CALL_SCORES`).
SCORE_SCHEMA = CALL_SCORES
#: One call as the Calls page shows it: its row, span, stored bodies (None in the fleet store:
#: bodies stay on the sidecar that recorded them) and scores.
CallDetail = StoredCall


def call_detail(store: str, call_id: str) -> CallDetail | None:
    """The call ``call_id`` with its span, bodies (as stored under its capture mode) and
    scores; None when there is no such call."""
    return reader(store).call(call_id)


def _float(value: Any) -> float | None:
    return None if value is None else float(value)
