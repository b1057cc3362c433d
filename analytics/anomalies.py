"""Hours or days whose spend, call count or error rate is far off the recent norm.

Per time bucket (and per ``by`` group), the metric is compared with the same metric
over the ``window`` buckets before it (not including it, so a spike does not raise its
own baseline) by a robust z-score (Iglewicz and Hoaglin's modified z):

    z = (value - median) / scale,  scale = MAD / 0.6745

where MAD is the window's median absolute deviation from its median. When more than
half the window is identical (MAD 0, e.g. a mostly idle app) the scale is
1.2533 x the mean absolute deviation instead, and when the whole window is constant any
change is infinitely far off. Median and MAD ignore a few earlier outliers, unlike a
mean and standard deviation. For ``error_rate`` the scale is at least the binomial
standard error of the bucket's rate at the baseline rate (taken as at least one error
per bucket), so one failure among few calls is not an anomaly; buckets with fewer than
``min_calls`` calls have no error rate.

Empty buckets count as zero spend and zero calls, from a group's first bucket to the
last bucket in the data. A bucket needs a quarter of the window (and at least 3
buckets) of history to be scored. Buckets with ``|z| >= threshold`` (3.5 by default,
the usual cut for the modified z) are anomalies. Daily or weekly seasonality is not
modelled: a window of a week of hours mixes nights and days and so widens the norm.
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from analytics.dimensions import TIME_BUCKETS, as_list, is_error
from analytics.metrics import aggregate, count

METRICS = ("cost", "calls", "error_rate")
#: Buckets of history per bucket size: a week of hours, four weeks of days, a quarter of weeks, a year.
DEFAULT_WINDOW = {"hour": 168, "day": 28, "week": 13, "month": 12}
_MAD_SCALE = 0.6745
_MEAN_AD_SCALE = 1.2533


def _value(metric: str, min_calls: int) -> pl.Expr:
    if metric == "cost":
        return pl.col("cost_usd")
    if metric == "calls":
        return pl.col("calls").cast(pl.Float64)
    return pl.when(pl.col("calls") >= min_calls).then(pl.col("errors") / pl.col("calls"))


def _scale(metric: str) -> pl.Expr:
    robust = (
        pl.when(pl.col("mad") > 0)
        .then(pl.col("mad") / _MAD_SCALE)
        .when(pl.col("mean_ad") > 0)
        .then(pl.col("mean_ad") * _MEAN_AD_SCALE)
        .otherwise(0.0)
    )
    if metric != "error_rate":
        return robust
    rate = pl.max_horizontal(pl.col("baseline"), 1 / pl.col("calls"))
    return pl.max_horizontal(robust, (rate * (1 - rate) / pl.col("calls")).sqrt())


def anomalies(
    calls: pl.LazyFrame,
    metric: str = "cost",
    bucket: str = "hour",
    by: str | Sequence[str] = (),
    window: int | None = None,
    threshold: float = 3.5,
    min_calls: int = 20,
    all_buckets: bool = False,
) -> pl.DataFrame:
    """The buckets whose ``metric`` (cost, calls or error_rate) is an anomaly, with their
    calls, errors, cost, value, baseline (the window's median) and robust z; every bucket
    when ``all_buckets``. Ordered by group, then time."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if bucket not in TIME_BUCKETS:
        raise ValueError(f"bucket must be one of {', '.join(TIME_BUCKETS)}, got {bucket!r}")
    names = as_list(by)
    window = window or DEFAULT_WINDOW[bucket]
    every = TIME_BUCKETS[bucket]
    per_bucket = aggregate(
        calls,
        [*names, bucket],
        [
            count().alias("calls"),
            count(is_error()).alias("errors"),
            pl.col("cost_usd").cast(pl.Float64).sum().alias("cost_usd"),
        ],
        None,
    ).collect()
    first = pl.col(bucket).min().alias("_first")
    starts = per_bucket.group_by(names).agg(first) if names else per_bucket.select(first)
    last = pl.lit(per_bucket[bucket].max(), dtype=per_bucket.schema[bucket])
    grid = (
        starts.lazy()
        .filter(pl.col("_first").is_not_null())  # no calls at all: no buckets
        .with_columns(pl.datetime_ranges("_first", last, interval=every).alias(bucket))
        .explode(bucket)
        .drop("_first")
    )
    series = (
        grid.join(per_bucket.lazy(), on=[*names, bucket], how="left", nulls_equal=True)
        .with_columns(pl.col("calls", "errors").fill_null(0), pl.col("cost_usd").fill_null(0.0))
        .with_columns(value=_value(metric, min_calls))
        .sort(*names, bucket)
        .collect()
    )
    deviation = (pl.col("value") - pl.col("value").median()).abs()
    baselines = series.rolling(
        index_column=bucket, period=f"{window}{every[1:]}", closed="left", group_by=names or None
    ).agg(
        baseline=pl.col("value").median(),
        mad=deviation.median(),
        mean_ad=deviation.mean(),
        history=pl.col("value").count(),
    )
    off = pl.col("value") - pl.col("baseline")
    scale = _scale(metric)
    z = (
        pl.when(pl.col("history") < max(3, window // 4))
        .then(None)
        .when(scale > 0)
        .then(off / scale)
        .when(off == 0)
        .then(0.0)
        .otherwise(off.sign() * float("inf"))
    )
    scored = (
        series.join(baselines, on=[*names, bucket], how="left", nulls_equal=True)
        .with_columns(robust_z=z)
        .with_columns(anomaly=(pl.col("robust_z").abs() >= threshold).fill_null(False))
        .select(*names, bucket, "calls", "errors", "cost_usd", "value", "baseline", "robust_z", "anomaly")
    )
    return scored if all_buckets else scored.filter(pl.col("anomaly"))
