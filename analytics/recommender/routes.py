"""Routes and their shadow evidence, measured from the calls frame.

A route is an app plus the provider and the model its requests ask for (the model the
client asked for, ``routed_from_model`` when llmtap rewrote it). Production traffic is
every call but the evaluation calls (:data:`collector.routing.rules.EVALUATION_ARMS`); the proxy's rewritten
and retried calls are production. Each shadow copy (``shadow_of`` = the original call)
is attributed to its original's route, so evidence and traffic line up.
"""

from __future__ import annotations

import polars as pl

from analytics.dimensions import truncated
from analytics.metrics import is_shadow

ROUTE = ("app", "provider", "incumbent")
#: Copies that answer the live call's request: to a candidate, or to the incumbent itself
#: (its noise floor). Judge calls (``judge``) are spend, not evidence.
EVIDENCE_ARMS = ("shadow", "noise_floor")

#: The model the client asked for, before any rewrite by llmtap.
INCUMBENT = pl.coalesce("routed_from_model", "request_model")


def production(calls: pl.LazyFrame) -> pl.LazyFrame:
    """The calls that served the app (everything but the shadow copies), with ``incumbent``."""
    return calls.filter(~is_shadow()).with_columns(incumbent=INCUMBENT)


def route_profiles(calls: pl.LazyFrame) -> pl.LazyFrame:
    """One row per route: volume, window, hard needs and the mean token mix.

    Hard needs are what any replacement must handle: every request feature seen, the
    largest prompt (input tokens) and the largest answer asked for or given. The mix is
    the mean per request of each token kind, over calls that reported usage."""
    requests = production(calls).filter(pl.col("incumbent").is_not_null())
    return requests.group_by(ROUTE).agg(
        requests=pl.len().cast(pl.Int64),
        first_at=pl.col("started_at").min(),
        last_at=pl.col("started_at").max(),
        features=pl.col("request_features").explode().drop_nulls().unique().sort(),
        largest_prompt_tokens=pl.col("input_tokens").max(),
        largest_output_tokens=pl.max_horizontal(
            pl.col("output_tokens").max(), pl.col("max_output_tokens").max()
        ),
        input_tokens=pl.col("input_tokens").mean(),
        cache_read_tokens=pl.col("cache_read_tokens")
        .fill_null(0)
        .filter(pl.col("input_tokens").is_not_null())
        .mean(),
        cache_write_tokens=pl.col("cache_write_tokens")
        .fill_null(0)
        .filter(pl.col("input_tokens").is_not_null())
        .mean(),
        output_tokens=pl.col("output_tokens").mean(),
        reasoning_tokens=pl.col("reasoning_tokens")
        .fill_null(0)
        .filter(pl.col("output_tokens").is_not_null())
        .mean(),
        cost_usd=pl.col("cost_usd").cast(pl.Float64).sum(),
        streams=pl.col("stream").fill_null(False).sum().cast(pl.Int64),
        attributed=(pl.col("user_id").is_not_null() | pl.col("session_id").is_not_null())
        .sum()
        .cast(pl.Int64),
        active_hours=pl.col("started_at").dt.truncate("1h").n_unique().cast(pl.Int64),
        truncated=truncated().sum().cast(pl.Int64),
    )


def shadow_evidence(calls: pl.LazyFrame) -> pl.LazyFrame:
    """One row per (route, candidate): what the shadow copies showed.

    A sample is a shadow copy that was compared (``agreement`` set) or that failed
    (``error`` set: the candidate could not answer what the incumbent did, a
    disagreement). ``latency_change_ms`` is the median of candidate minus original
    latency over paired calls; ``output_tokens`` and ``reasoning_tokens`` are the
    candidate's own means (its verbosity prices its answers). Rows whose candidate is
    the incumbent itself measure the comparison's noise floor."""
    originals = production(calls).select(
        pl.col("call_id").alias("shadow_of"),
        "app",
        "provider",
        "incumbent",
        pl.col("latency_ms").alias("original_latency_ms"),
        pl.col("input_tokens").alias("original_input_tokens"),
    )
    shadows = calls.filter(
        pl.col("routing_arm").is_in(EVIDENCE_ARMS) & pl.col("shadow_of").is_not_null()
    ).select(
        "shadow_of",
        pl.col("request_model").alias("candidate"),
        "comparison",
        "agreement",
        "error",
        "latency_ms",
        "output_tokens",
        "reasoning_tokens",
        "cost_usd",
    )
    failed = pl.col("error").is_not_null()
    sample = pl.col("agreement").is_not_null() | failed
    return (
        shadows.join(originals, on="shadow_of", how="inner")
        .group_by(*ROUTE, "candidate")
        .agg(
            copies=pl.len().cast(pl.Int64),
            samples=sample.sum().cast(pl.Int64),
            agreements=(pl.col("agreement").fill_null(False) & ~failed).sum().cast(pl.Int64),
            failures=failed.sum().cast(pl.Int64),
            method=pl.col("comparison").drop_nulls().mode().sort().first(),
            latency_change_ms=(pl.col("latency_ms") - pl.col("original_latency_ms")).filter(~failed).median(),
            output_tokens=pl.col("output_tokens").mean(),
            reasoning_tokens=pl.col("reasoning_tokens").fill_null(0).mean(),
            largest_prompt_tokens=pl.col("original_input_tokens").filter(sample).max(),
            shadow_cost_usd=pl.col("cost_usd").cast(pl.Float64).sum(),
        )
    )
