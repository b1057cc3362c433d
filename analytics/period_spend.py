"""Budget burn: what a period has spent so far, how fast, and where it will end.

For the current hour, day, week or month at ``now`` (UTC, as the proxy's budgets count
them: :mod:`collector.budgets.periods`), per scope (``by``: nothing for the whole store,
or e.g. ``app``, ``user``, ``property:team``):

* ``spent_usd``: the exact cost of the calls started in ``[period_start, now)``;
* ``run_rate_usd_per_hour``: spend per hour over ``[rate_from, now)``, where
  ``rate_from`` is the period's start unless ``lookback`` asks for a trailing window
  (e.g. the last hour, which reacts faster to a change and does not need the period to
  be under way; it may reach back before the period);
* ``forecast_usd``: ``spent_usd + run_rate x hours left in the period``, a straight-line
  projection (no daily or weekly seasonality is modelled).

With ``limit_usd``, ``used_share`` and ``forecast_share`` say how much of it is spent
and will be by the period's end. Load the store with ``since`` no later than the
period's start (or ``rate_from``) so every call counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import polars as pl

from analytics.dimensions import as_list
from analytics.metrics import aggregate, count, known_sum
from analytics.source import instant
from collector.budgets.periods import period_window


def burn(
    calls: pl.LazyFrame,
    period: str = "day",
    by: str | Sequence[str] = (),
    now: datetime | str | None = None,
    limit_usd: float | None = None,
    lookback: timedelta | None = None,
) -> pl.DataFrame:
    """Spend so far, run rate and forecast for the ``period`` containing ``now`` (default:
    the current time), per ``by`` scope, biggest spender first."""
    if limit_usd is not None and limit_usd <= 0:
        raise ValueError(f"limit_usd must be positive, got {limit_usd}")
    moment = instant(now) or datetime.now(UTC)
    start, end = period_window(period, moment.timestamp()).bounds()
    rate_from = start if lookback is None else moment - lookback
    started = pl.col("started_at")
    in_period = started >= start
    aggregates = [
        count(in_period).alias("calls"),
        known_sum(pl.col("cost_usd").filter(in_period)).alias("spent_usd"),
        pl.col("cost_usd").filter(started >= rate_from).cast(pl.Float64).sum().alias("_rate_spend"),
    ]
    window = calls.filter((started >= min(start, rate_from)) & (started < moment))
    rate_hours = (moment - rate_from).total_seconds() / 3600
    left_hours = (end - moment).total_seconds() / 3600
    run_rate = pl.col("_rate_spend") / rate_hours if rate_hours > 0 else pl.lit(None, pl.Float64)
    frame = aggregate(window, by, aggregates, "spent_usd").with_columns(
        period_start=pl.lit(start),
        period_end=pl.lit(end),
        run_rate_usd_per_hour=run_rate,
    )
    frame = frame.with_columns(
        forecast_usd=pl.col("spent_usd").cast(pl.Float64) + pl.col("run_rate_usd_per_hour") * left_hours
    )
    frame = frame.select(
        *as_list(by),
        "period_start",
        "period_end",
        "calls",
        "spent_usd",
        "run_rate_usd_per_hour",
        "forecast_usd",
    )
    if limit_usd is not None:
        frame = frame.with_columns(
            limit_usd=pl.lit(float(limit_usd)),
            used_share=pl.col("spent_usd").cast(pl.Float64) / limit_usd,
            forecast_share=pl.col("forecast_usd") / limit_usd,
        )
    return frame.collect()
