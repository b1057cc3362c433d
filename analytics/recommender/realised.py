"""What canary rules really saved: their canary arm against their control arm.

The proxy sends a sticky share of a canary rule's callers to the candidate
(``routing_arm = 'canary'``) and records the rest as ``control``; both arms see the same
kind of traffic over the same period, so their difference is the rule's effect. A
canary call that failed and was retried on the original model (the retry's
``retry_of`` = the failed call) counts in the canary arm, retry cost included.
"""

from __future__ import annotations

import polars as pl

from analytics.dimensions import is_error, ok, truncated

ARMS = ("canary", "control")
_MEASURES = ("calls", "usd_per_request", "error_rate", "latency_p50_ms", "truncation_rate")


def realised_savings(calls: pl.LazyFrame) -> pl.DataFrame:
    """One row per canary rule: for each arm (``canary_*``, ``control_*``) calls, $ per
    request, error rate, p50 latency (calls without error) and truncation rate; then
    ``savings_usd`` = (control $/request - canary $/request) x canary calls, the money
    the rule saved over the window (negative: it cost more)."""
    first_tries = pl.col("routing_arm").is_in(ARMS) & pl.col("retry_of").is_null()
    retry_cost = (
        calls.filter(pl.col("retry_of").is_not_null())
        .group_by("retry_of")
        .agg(retry_cost_usd=pl.col("cost_usd").cast(pl.Float64).sum())
    )
    armed = (
        calls.filter(first_tries)
        .join(retry_cost.rename({"retry_of": "call_id"}), on="call_id", how="left")
        .with_columns(
            paid=pl.col("cost_usd").cast(pl.Float64).fill_null(0) + pl.col("retry_cost_usd").fill_null(0)
        )
    )
    per_arm = armed.group_by("routing_rule", "routing_arm").agg(
        calls=pl.len().cast(pl.Int64),
        usd_per_request=pl.col("paid").mean(),
        error_rate=is_error().mean(),
        latency_p50_ms=pl.col("latency_ms").filter(ok()).quantile(0.5, "linear"),
        truncation_rate=truncated().mean(),
    )
    wide = per_arm.collect().pivot(on="routing_arm", index="routing_rule", values=list(_MEASURES))
    columns = [f"{measure}_{arm}" for arm in ARMS for measure in _MEASURES]
    wide = wide.with_columns(pl.lit(None, pl.Float64).alias(c) for c in columns if c not in wide.columns)
    return (
        wide.select(
            "routing_rule",
            *(pl.col(f"{measure}_{arm}").alias(f"{arm}_{measure}") for arm in ARMS for measure in _MEASURES),
        )
        .with_columns(
            savings_usd=(pl.col("control_usd_per_request") - pl.col("canary_usd_per_request"))
            * pl.col("canary_calls")
        )
        .sort("savings_usd", descending=True, nulls_last=True)
    )
