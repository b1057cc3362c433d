"""What fallback chains did: the attempts that failed and the calls a fallback answered.

The proxy records each failed attempt of a chain as its own row (``routing_arm`` "fallback",
``routing_rule`` "fallback:NAME") and the call the client got its answer from with
``retry_of`` = the first attempt (see ``collector/proxy/addons/fallback.py``). A chain
whose first target answered leaves no trace: that call is ordinary.
"""

from __future__ import annotations

import polars as pl

from analytics.dimensions import error_kind, ok
from collector.routing.rules import FALLBACK_ARM

__all__ = ["fallbacks"]


def fallbacks(calls: pl.LazyFrame) -> pl.DataFrame:
    """One row per chain: ``failed_attempts`` (and how many were transport failures, no HTTP
    answer at all), ``answered_by_fallback`` (calls a later target answered), the models that
    answered them, and the first and last failure's time; the busiest chain first."""
    chained = calls.filter(pl.col("routing_arm") == FALLBACK_ARM).with_columns(
        chain=pl.col("routing_rule").str.strip_prefix("fallback:")
    )
    answered = ok()  # a failed attempt's row has its error
    return (
        chained.group_by("chain")
        .agg(
            failed_attempts=(~answered).sum().cast(pl.Int64),
            transport_failures=(~answered & pl.col("status_code").is_null()).sum().cast(pl.Int64),
            error_kinds=error_kind().filter(~answered).drop_nulls().unique().sort(),
            answered_by_fallback=answered.sum().cast(pl.Int64),
            answered_by=pl.col("request_model").filter(answered).drop_nulls().unique().sort(),
            first_failure_at=pl.col("started_at").filter(~answered).min(),
            last_failure_at=pl.col("started_at").filter(~answered).max(),
        )
        .sort("failed_attempts", "chain", descending=[True, False])
        .collect()
    )
