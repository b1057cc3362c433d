"""Money spent on calls that did not need to happen, or whose answer was unusable.

Three kinds, flagged per call by :func:`waste_flags` and summed by :func:`waste`:

* **duplicate**: the same request (same ``body_hash``: host, path and body) was
  already answered successfully earlier; an exact-match response cache would have
  served it, so its whole cost is what such a cache would have saved. In a group of
  identical requests that all succeeded that is every call but the first; calls before
  the first success are not counted (a cache cannot serve an answer it never got), nor
  are answers llmtap's response cache served (``cache_hit``: they cost nothing, see
  :func:`analytics.cache.response_cache`). For requests sampled at a temperature above 0,
  serving a cached answer changes behaviour, so read the figure as an upper bound.
* **retried failure**: a call with an error that was followed, within ``retry_within``
  (default 10 minutes), by the next call with the same app, requested model and body;
  ``retries`` counts them and ``failed_attempt_cost_usd`` is what the failed attempts
  cost (usually only streams that broke after generating something).
* **truncated**: the answer was cut off at the output limit (see
  :data:`analytics.dimensions.TRUNCATION_REASONS`); its cost bought an incomplete answer.

Duplicates and retries need stored request bodies: with capture mode ``metadata``
``body_hash`` is NULL and both are zero. ``wasted_cost_usd`` counts a call once even if
it is flagged more than once.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import polars as pl

from analytics.dimensions import is_error, ok, truncated
from analytics.metrics import aggregate, count, known_sum, share

RETRY_WITHIN = timedelta(minutes=10)


def duplicate() -> pl.Expr:
    """A paid-for repeat of a request answered before: started after the earliest success with
    its ``body_hash`` (a masked minimum over the body's calls), and not served by the response
    cache (see the module's docstring)."""
    c = pl.col
    first_success = pl.when(ok()).then(c("started_at")).min().over("body_hash")
    repeat = c("body_hash").is_not_null() & (c("started_at") > first_success)
    return (repeat & ~c("cache_hit").fill_null(False)).fill_null(False)


def waste_flags(calls: pl.LazyFrame, retry_within: timedelta = RETRY_WITHIN) -> pl.LazyFrame:
    """``calls`` with boolean columns ``duplicate``, ``retried_failure``, ``truncated``
    and ``wasted`` (any of them), rows in their original order, for drilling into the
    calls behind :func:`waste`.

    * duplicate: see :func:`duplicate`.
    * retried failure: in (app, request_model, body_hash; started_at) order, a failure
      whose next call has the same key and started within ``retry_within``. The order is
      a permutation column (an arg-sort by time, then a stable arg-sort by a hash of the
      key: two one-key sorts are several times faster than one sort on both), the
      comparison runs on columns gathered through it, and the flags go back through the
      inverse permutation, so the frame is never reordered. A window function per key,
      or a self-join (which makes Polars' streaming engine read the store twice), is
      several times slower over a million distinct bodies.
    """
    c = pl.col
    frame = calls.with_columns(
        _by_time=c("started_at").arg_sort(),
        _key=pl.struct("app", "request_model", "body_hash").hash(),
        _failed=is_error() & c("body_hash").is_not_null(),
        duplicate=duplicate(),
    ).with_columns(
        _by_key=c("_by_time").gather(pl.arg_sort_by(c("_key").gather(c("_by_time")), maintain_order=True))
    )
    key, start = c("_key").gather(c("_by_key")), c("started_at").gather(c("_by_key"))
    retried_soon = (key == key.shift(-1)) & (start.shift(-1) - start <= retry_within)
    return (
        frame.with_columns(
            _retried=(c("_failed").gather(c("_by_key")) & retried_soon).fill_null(False),
            _from_key=c("_by_key").arg_sort(),
        )
        .with_columns(retried_failure=c("_retried").gather(c("_from_key")), truncated=truncated())
        .with_columns(wasted=c("duplicate") | c("retried_failure") | c("truncated"))
        .drop("_by_time", "_key", "_failed", "_by_key", "_retried", "_from_key")
    )


def waste(
    calls: pl.LazyFrame, by: str | Sequence[str] = ("app",), retry_within: timedelta = RETRY_WITHIN
) -> pl.DataFrame:
    """Per group: calls and cost, then count and cost of duplicates, retries (and their
    failed attempts' cost), truncated calls, and the wasted total and its share of cost."""
    cost = pl.col("cost_usd")
    aggregates = [
        count().alias("calls"),
        known_sum(cost).alias("cost_usd"),
        count(pl.col("duplicate")).alias("duplicate_calls"),
        known_sum(cost.filter(pl.col("duplicate"))).alias("duplicate_cost_usd"),
        count(pl.col("retried_failure")).alias("retries"),
        known_sum(cost.filter(pl.col("retried_failure"))).alias("failed_attempt_cost_usd"),
        count(pl.col("truncated")).alias("truncated_calls"),
        known_sum(cost.filter(pl.col("truncated"))).alias("truncated_cost_usd"),
        known_sum(cost.filter(pl.col("wasted"))).alias("wasted_cost_usd"),
    ]
    frame = aggregate(waste_flags(calls, retry_within), by, aggregates, "wasted_cost_usd")
    return frame.with_columns(wasted_share=share("wasted_cost_usd", "cost_usd")).collect()
