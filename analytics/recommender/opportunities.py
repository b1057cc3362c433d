"""Savings that keep the model: provider prompt caching and the batch APIs.

Prompt caching pays where requests share a long prefix (system prompt, tools, leading
messages) yet little of their input is read from cache. Requests are compared by a hash
of the first :data:`PREFIX_CHARS` characters of their prompt part (system, tools and
messages / contents / input of the stored JSON body; about :data:`PREFIX_TOKENS`
tokens, the smallest prefix OpenAI and Anthropic cache; each engine computes the hash, see
:meth:`analytics.engines.Reader.prefix_hashes`). Only the hashed part is counted as
cacheable, so the estimate is a floor. Without stored bodies (capture mode ``metadata``, or
the fleet store, which keeps none) the repeats cannot be seen, and the record says so.

The batch APIs (half price at most providers, answers within 24 hours) suit routes that
no one waits on: no streamed call, no call naming a user or session, and traffic spread
over at least :data:`MIN_ACTIVE_HOURS` hours rather than one burst.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime

import polars as pl

from analytics.engines import Reader, Window
from analytics.recommender.catalogue import batch_discount, prices_id
from analytics.recommender.record import Kind, Recommendation
from analytics.recommender.route_costs import Savings
from analytics.recommender.routes import ROUTE, production
from analytics.recommender.swaps import Route
from collector.pricing.book import PriceBook

PREFIX_CHARS = 4096
PREFIX_TOKENS = 1024
#: A route is worth caching when this share of its requests repeat an earlier prefix ...
MIN_REPEAT_SHARE = 0.2
#: ... while less than this share of its input tokens is read from cache today.
MAX_CACHED_SHARE = 0.1
MIN_ACTIVE_HOURS = 3


def prefix_hashes(store: Reader, since: datetime | None, until: datetime | None) -> pl.DataFrame | None:
    """(call_id, prefix_hash) of every call with a stored JSON body; the hash is null when
    its prompt part is shorter than :data:`PREFIX_CHARS`. None when the store keeps no bodies
    (the fleet store: they stay on the sidecars)."""
    return store.prefix_hashes(Window(since, until), PREFIX_CHARS)


def prefix_repeats(calls: pl.LazyFrame, prefixes: pl.DataFrame) -> pl.DataFrame:
    """Per route with stored bodies: calls with a body, calls repeating an earlier long
    prefix, distinct long prefixes, and the share of input tokens read from cache."""
    hashed = production(calls).join(prefixes.lazy(), on="call_id", how="inner")
    long_prefix = pl.col("prefix_hash").is_not_null()
    return (
        hashed.group_by(ROUTE)
        .agg(
            with_body=pl.len().cast(pl.Int64),
            repeats=(long_prefix.sum() - pl.col("prefix_hash").drop_nulls().n_unique()).cast(pl.Int64),
            prefixes=pl.col("prefix_hash").drop_nulls().n_unique().cast(pl.Int64),
            cached_share=pl.col("cache_read_tokens").sum() / pl.col("input_tokens").sum(),
        )
        .collect()
    )


def prompt_caching(
    route: Route, repeats: dict | None, book: PriceBook, confidence: float
) -> Iterator[Recommendation]:
    """A caching record for ``route`` when its repeats would pay (``repeats``: its row of
    :func:`prefix_repeats`, None when no body of it is stored)."""
    if route.mix.input < PREFIX_TOKENS or route.mix.cache_read > MAX_CACHED_SHARE * route.mix.input:
        return
    base = _record(route, "prompt_caching", confidence)
    if repeats is None:
        yield replace(
            base,
            status="needs_evidence",
            reason=f"prompts average {route.mix.input:.0f} tokens with little read from cache, but no "
            "request body is at hand (capture = metadata, or the fleet store) to show whether their "
            "prefixes repeat",
        )
        return
    rates = book.rates(prices_id(route.provider), route.incumbent, None, route.window_end)
    if rates is None or rates.cache_read is None or rates.cache_read >= rates.input:
        return
    share = repeats["repeats"] / repeats["with_body"]
    if share < MIN_REPEAT_SHARE:
        return
    write_premium = float((rates.cache_write or rates.input) - rates.input)
    saved_per_request = (
        PREFIX_TOKENS
        * (
            share * float(rates.input - rates.cache_read)
            - repeats["prefixes"] / repeats["with_body"] * write_premium
        )
        / 1e6
    )
    if saved_per_request <= 0:
        return
    after = route.cost_per_1k - 1000 * saved_per_request
    savings = Savings.monthly(route.cost_per_1k, after, after, route.volume)
    yield replace(
        base,
        status="recommended",
        reason=f"{share:.0%} of requests repeat an earlier {PREFIX_TOKENS}+-token prefix, yet "
        f"{repeats['cached_share'] or 0:.0%} of input is read from cache: put the shared part first "
        "and mark it cacheable (Anthropic cache_control; OpenAI caches identical prefixes itself)",
        cost_per_1k_candidate_usd=after,
        monthly_savings_usd_low=savings.low,
        monthly_savings_usd_mid=savings.mid,
        monthly_savings_usd_high=savings.high,
    )


def batch_api(route: Route, confidence: float) -> Iterator[Recommendation]:
    """A batch-API record for ``route`` when no one waits on its answers."""
    discount = batch_discount(route.provider)
    if discount is None or route.streams or route.attributed or route.active_hours < MIN_ACTIVE_HOURS:
        return
    after = route.cost_per_1k * (1 - discount)
    savings = Savings.monthly(route.cost_per_1k, after, after, route.volume)
    yield replace(
        _record(route, "batch_api", confidence),
        status="recommended",
        reason="not interactive: no streamed call, no user or session, calls over "
        f"{route.active_hours} hours; {route.provider}'s batch API takes {discount:.0%} off "
        "for answers within 24 hours",
        cost_per_1k_candidate_usd=after,
        monthly_savings_usd_low=savings.low,
        monthly_savings_usd_mid=savings.mid,
        monthly_savings_usd_high=savings.high,
        risks=("answers arrive within 24 hours, not at once",),
    )


def _record(route: Route, kind: Kind, confidence: float) -> Recommendation:
    return Recommendation(
        kind=kind,
        status="needs_evidence",
        reason="",
        app=route.app,
        provider=route.provider,
        incumbent=route.incumbent,
        candidate=None,
        requests_seen=route.requests,
        shadow_samples=0,
        agreement=None,
        agreement_lower_bound=None,
        confidence=confidence,
        method=None,
        cost_per_1k_incumbent_usd=route.cost_per_1k,
        cost_per_1k_candidate_usd=None,
        monthly_savings_usd_low=0.0,
        monthly_savings_usd_mid=0.0,
        monthly_savings_usd_high=0.0,
        latency_change_ms=None,
        risks=(),
        window_start=route.window_start,
        window_end=route.window_end,
        features=route.features,
    )
