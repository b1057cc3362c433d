"""Spend, latency, errors and truncations, grouped by any dimensions.

Every function takes the LazyFrame of :func:`analytics.load` and ``by`` (dimension
names, see :mod:`analytics.dimensions`), and returns a DataFrame with one row per group
(one row in all when ``by`` is empty). They share their aggregation expressions, so a
figure means the same in every table: ``calls`` counts every call, ``errors`` those
with ``error`` set, and latency percentiles are over calls without error (a 429 or a
client hang-up is fast for reasons that say nothing about the model's speed).

Shadow copies (the routing recommender's evidence: ``routing_arm`` ``shadow``,
``noise_floor`` or ``judge``) are spend on evaluation, not on serving the app:
:func:`spend` and :func:`summary` leave them out unless ``include_shadow``, and
:func:`shadow_spend` reports them apart.

Sums of money stay exact decimals (``Decimal(38, 9)``, equal to DuckDB's ``sum``). Sums
of money and of token counts are null, not 0, when no call in the group reported a value
(no price, or no count of that kind of token), as DuckDB's ``sum`` is. Percentiles interpolate
linearly between ranks, as DuckDB's ``quantile_cont``.
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from analytics.dimensions import (
    as_list,
    error_kind,
    group_keys,
    is_error,
    ok,
    time_keys,
    truncated,
)
from collector.calls.error_kinds import ERROR_KINDS
from collector.routing.rules import EVALUATION_ARMS

DEFAULT_BY = ("model",)
PERCENTILES = (50, 90, 95, 99)
TOKEN_COLUMNS = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)


def count(condition: pl.Expr | None = None) -> pl.Expr:
    """How many calls (satisfy ``condition``), as Int64 so differences cannot wrap."""
    return (pl.len() if condition is None else condition.sum()).cast(pl.Int64)


def known_sum(column: pl.Expr | str) -> pl.Expr:
    """The sum of a column's known values; null when no value in the group is known.

    Polars sums nothing (or only nulls) to 0, which would claim a fact: an embeddings call
    reports no output tokens and an unpriced call has no cost, and their sums are unknown,
    not zero. Money stays exact (decimal sums)."""
    expr = pl.col(column) if isinstance(column, str) else column
    return pl.when(expr.count() > 0).then(expr.sum())


def share(part: str, whole: str) -> pl.Expr:
    """``part / whole`` of two aggregated columns, as a float (null when ``whole`` is 0)."""
    whole_value = pl.col(whole).cast(pl.Float64)
    return pl.when(whole_value != 0).then(pl.col(part).cast(pl.Float64) / whole_value)


def spend_aggregates() -> list[pl.Expr]:
    """calls, the five token sums, cost_usd, and unpriced_calls (usage but no price)."""
    has_usage = pl.col("input_tokens").is_not_null() | pl.col("output_tokens").is_not_null()
    return [
        count().alias("calls"),
        *(known_sum(c).alias(c) for c in TOKEN_COLUMNS),
        known_sum("cost_usd").alias("cost_usd"),
        count(pl.col("cost_usd").is_null() & has_usage).alias("unpriced_calls"),
    ]


def latency_ms(q: int) -> pl.Expr:
    """The ``q``th latency percentile of calls without error (shared by summary and latency)."""
    return pl.col("latency_ms").filter(ok()).quantile(q / 100, "linear").alias(f"latency_p{q}_ms")


def aggregate(
    calls: pl.LazyFrame, by: str | Sequence[str], aggregates: list[pl.Expr], rank_by: str | None
) -> pl.LazyFrame:
    """Group ``calls`` by ``by`` (or aggregate them all when it is empty), then order:
    time buckets ascending, then ``rank_by`` descending, then the other keys."""
    keys = group_keys(by)
    frame = calls.group_by(keys).agg(aggregates) if keys else calls.select(aggregates)
    return order(frame, by, rank_by)


def order(frame: pl.LazyFrame, by: str | Sequence[str], rank_by: str | None) -> pl.LazyFrame:
    """Time buckets first and ascending (a time series reads in order), then ``rank_by``
    descending (biggest first), then the remaining keys (ties in a stable order)."""
    names, times = as_list(by), time_keys(by)
    columns = [*times, *([rank_by] if rank_by else []), *(n for n in names if n not in times)]
    if not columns:
        return frame
    descending = [False] * len(times) + ([True] if rank_by else []) + [False] * (len(names) - len(times))
    return frame.sort(columns, descending=descending, nulls_last=True)


def is_shadow() -> pl.Expr:
    """A call the proxy made to evaluate a model (``EVALUATION_ARMS``), not for the app."""
    return pl.col("routing_arm").is_in(EVALUATION_ARMS).fill_null(False) | pl.col("shadow_of").is_not_null()


def spend(
    calls: pl.LazyFrame, by: str | Sequence[str] = DEFAULT_BY, *, include_shadow: bool = False
) -> pl.DataFrame:
    """Calls, tokens (input, output, cache read and write, reasoning) and cost per group,
    most expensive first (time buckets in time order); production only unless ``include_shadow``."""
    calls = calls if include_shadow else calls.filter(~is_shadow())
    return aggregate(calls, by, spend_aggregates(), "cost_usd").collect()


SHADOW_BY = ("app", "routing_rule", "model")


def shadow_spend(calls: pl.LazyFrame, by: str | Sequence[str] = SHADOW_BY) -> pl.DataFrame:
    """What shadow evaluation cost: :func:`spend` of the shadow copies alone (by default
    per app, rule and candidate model)."""
    return aggregate(calls.filter(is_shadow()), by, spend_aggregates(), "cost_usd").collect()


def summary(
    calls: pl.LazyFrame, by: str | Sequence[str] = DEFAULT_BY, *, include_shadow: bool = False
) -> pl.DataFrame:
    """The report's overview: calls, input and output tokens, cost, p50 and p95 latency, errors;
    production only unless ``include_shadow``."""
    calls = calls if include_shadow else calls.filter(~is_shadow())
    aggregates = [
        count().alias("calls"),
        known_sum("input_tokens").alias("input_tokens"),
        known_sum("output_tokens").alias("output_tokens"),
        known_sum("cost_usd").alias("cost_usd"),
        latency_ms(50),
        latency_ms(95),
        count(is_error()).alias("errors"),
    ]
    return aggregate(calls, by, aggregates, "cost_usd").collect()


def latency(calls: pl.LazyFrame, by: str | Sequence[str] = ("provider", "model")) -> pl.DataFrame:
    """Latency, time to first token and streaming speed per group, over calls without error.

    ``latency_pXX_ms`` are over all such calls; ``ttft_pXX_ms`` over streams only (for a
    plain response the first byte is the whole answer); ``output_tokens_per_s_p50`` and
    ``_p10`` (the slow tail) are per-stream ``output_tokens / (latency - ttft)``, over
    streams that produced tokens after their first byte.
    """
    stream = ok() & pl.col("stream").fill_null(False)
    generating_s = (pl.col("latency_ms") - pl.col("ttft_ms")) / 1000
    rate = (pl.col("output_tokens") / generating_s).filter(
        stream & (pl.col("output_tokens") > 0) & (generating_s > 0)
    )
    aggregates = [
        count(ok()).alias("ok_calls"),
        *(latency_ms(q) for q in PERCENTILES),
        count(stream).alias("ok_streams"),
        *(
            pl.col("ttft_ms").filter(stream).quantile(q / 100, "linear").alias(f"ttft_p{q}_ms")
            for q in PERCENTILES
        ),
        rate.quantile(0.5, "linear").alias("output_tokens_per_s_p50"),
        rate.quantile(0.1, "linear").alias("output_tokens_per_s_p10"),
    ]
    return aggregate(calls, by, aggregates, "ok_calls").collect()


def errors(calls: pl.LazyFrame, by: str | Sequence[str] = ("provider", "model")) -> pl.DataFrame:
    """Calls, errors, error rate and a count per error kind (the columns of ERROR_KINDS,
    which add up to ``errors``) per group, most errors first. Group by ``status_class``
    or ``error_kind`` for other cuts."""
    kind = error_kind()
    aggregates = [
        count().alias("calls"),
        count(is_error()).alias("errors"),
        is_error().mean().alias("error_rate"),
        *(count(kind == name).alias(name) for name in ERROR_KINDS),
    ]
    return aggregate(calls, by, aggregates, "errors").collect()


def truncations(calls: pl.LazyFrame, by: str | Sequence[str] = DEFAULT_BY) -> pl.DataFrame:
    """Answers cut off at the output limit per group: how many, their share of calls, the
    output tokens and the money spent on them."""
    cut = truncated()
    aggregates = [
        count().alias("calls"),
        count(cut).alias("truncated"),
        cut.mean().alias("truncated_share"),
        known_sum(pl.col("output_tokens").filter(cut)).alias("truncated_output_tokens"),
        known_sum(pl.col("cost_usd").filter(cut)).alias("truncated_cost_usd"),
    ]
    return aggregate(calls, by, aggregates, "truncated").collect()


def unpriced(calls: pl.LazyFrame) -> pl.DataFrame:
    """(model, provider, calls) of calls with usage but no price: what to add to ``[prices]``."""
    has_usage = pl.col("input_tokens").is_not_null() | pl.col("output_tokens").is_not_null()
    return (
        calls.filter(pl.col("cost_usd").is_null() & has_usage)
        .group_by("model", "provider")
        .agg(count().alias("calls"))
        .sort(["calls", "model", "provider"], descending=[True, False, False])
        .collect()
    )
