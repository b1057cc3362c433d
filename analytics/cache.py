"""Caching: the providers' prompt caches (:func:`cache_savings`, :func:`cache_rates`) and
llmtap's response cache (:func:`response_cache`), side by side in :func:`cache_summary`.

**Response cache.** An answer llmtap's proxy served from its cache (``cache_hit`` true) cost
nothing; its ``cache_saved_usd`` is what its tokens would have cost from the provider. Beside
that, the waste analysis's duplicates (:func:`analytics.waste.duplicate`: requests answered
successfully before, and paid for again) are what an exact-match cache would still have saved:
with no cache they are the whole opportunity, with one the part it did not catch (requests the
cache does not cover, or that came after an answer expired or was evicted).

**Prompt caches.**

A cache read costs the model's cache-read rate instead of its input rate, so reads
saved ``cache_read_tokens x (input rate - cache read rate)``; cache writes cost extra
on some providers (Anthropic: 1.25x input), ``cache_write_tokens x (cache write rate
- input rate)``. The rates come from the stored rows themselves, so they are the
rates the calls were actually charged, config overrides included:

* per (model, provider, price_ref) -- a price_ref names one catalogue entry, service
  tier and long-context tier, so its rates are fixed -- each priced call says
  ``input_cost_usd = uncached x r_in + cache_read x r_read + cache_write x r_write``
  (uncached = input - cache read - cache write). A least-squares fit of the three
  rates over the group's calls (normal equations, solved by Cramer's rule in Polars)
  recovers them exactly up to the stored costs' rounding to 1e-9 USD. A rate whose
  token count is always zero is not needed and stays null.
* when the fit is not determined (every call read the same share of its prompt from
  cache, so uncached and cached tokens are collinear) or gives a negative rate, the
  group's rates come from the genai-prices catalogue through
  :class:`collector.pricing.book.PriceBook` at the group's latest call (standard service
  tier; the long-context tier that ``price_ref`` names). That is one lookup per such
  group, never per call.
* calls without a price (``input_cost_usd`` NULL) have no rates: their cache reads are
  counted in ``unrated_cache_read_tokens`` and saved nothing that can be stated.

Prices that change with the time of day (DeepSeek's off-peak hours) share a price_ref,
so their fit blends the two rates in proportion to the calls made at each.
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from analytics.dimensions import as_list, group_keys
from analytics.metrics import aggregate, count, known_sum, order, share
from analytics.waste import duplicate

#: Internal key columns (named so they cannot clash with a ``by`` dimension).
_KEYS = ("_model", "_provider", "_price_ref")
_TERMS = ("u", "r", "w")
_RATE_COLUMNS = ("input_rate", "cache_read_rate", "cache_write_rate")
#: Below this, the fit's normal equations count as singular (normalised Gram determinant).
_SINGULAR = 1e-6


def _terms() -> dict[str, pl.Expr]:
    """Per call, the products the fit sums: x x' and x y for x = (u, r, w), y the input
    cost; 0 for calls without a price or usage. (Columns first, then plain sums: Polars
    aggregates those several times faster than filtered products inside the group-by.)"""
    priced = pl.col("input_cost_usd").is_not_null() & pl.col("input_tokens").is_not_null()
    read = pl.col("cache_read_tokens").fill_null(0).cast(pl.Float64)
    write = pl.col("cache_write_tokens").fill_null(0).cast(pl.Float64)
    x = {"u": pl.col("input_tokens").cast(pl.Float64) - read - write, "r": read, "w": write}
    x["y"] = pl.col("input_cost_usd").cast(pl.Float64)
    pairs = [(a, b) for i, a in enumerate(_TERMS) for b in _TERMS[i:]] + [(a, "y") for a in _TERMS]
    return {f"s_{a}{b}": pl.when(priced).then(x[a] * x[b]).otherwise(0.0) for a, b in pairs}


def _solve(moments: pl.LazyFrame) -> pl.LazyFrame:
    """Rates (USD per token) from the summed moments; null where undetermined (which
    includes groups whose priced calls never had uncached input: no input rate).

    A term that never occurs gets a unit diagonal, so its rate solves to 0 and the rest
    of the system stays well posed; its rate is then reported as null.
    """
    c = pl.col
    a11, a22, a33 = (pl.when(c(f"s_{t}{t}") > 0).then(c(f"s_{t}{t}")).otherwise(1.0) for t in _TERMS)
    a12, a13, a23 = c("s_ur"), c("s_uw"), c("s_rw")
    b1, b2, b3 = c("s_uy"), c("s_ry"), c("s_wy")
    det = a11 * (a22 * a33 - a23 * a23) - a12 * (a12 * a33 - a23 * a13) + a13 * (a12 * a23 - a22 * a13)
    solved = {
        "u": b1 * (a22 * a33 - a23 * a23) - a12 * (b2 * a33 - a23 * b3) + a13 * (b2 * a23 - a22 * b3),
        "r": a11 * (b2 * a33 - a23 * b3) - b1 * (a12 * a33 - a23 * a13) + a13 * (a12 * b3 - b2 * a13),
        "w": a11 * (a22 * b3 - a23 * b2) - a12 * (a12 * b3 - b2 * a13) + b1 * (a12 * a23 - a22 * a13),
    }
    rates = {t: pl.when(c(f"s_{t}{t}") > 0).then(solved[t] / det) for t in _TERMS}
    determined = (
        (c("s_uu") > 0)
        & (det / (a11 * a22 * a33) > _SINGULAR)
        & pl.all_horizontal(rates[t].fill_null(0) >= 0 for t in _TERMS)
    )
    return moments.with_columns(
        **{name: pl.when(determined).then(rates[t]) for name, t in zip(_RATE_COLUMNS, _TERMS, strict=True)},
        source=pl.when(determined).then(pl.lit("stored costs")),
    )


def _catalogue(unresolved: pl.DataFrame) -> pl.DataFrame:
    """Catalogue rates for the groups the fit could not determine (one lookup per group)."""
    from collector.pricing.book import PriceBook
    from collector.providers import builtin_providers

    prices_ids = {p.name: p.prices_id for p in builtin_providers()}
    book = PriceBook()
    found: dict[str, list] = {name: [] for name in (*_KEYS, *_RATE_COLUMNS)}
    for model, provider, ref, when in unresolved.select(*_KEYS, "last_started").iter_rows():
        rates = book.rates(prices_ids.get(provider), model, None, when)
        if rates is None:
            continue
        rates = next((tier for _, tier in rates.tiers if tier.ref == ref), rates)
        read, write = (rates.input if r is None else r for r in (rates.cache_read, rates.cache_write))
        per_token = [float(r) / 1e6 for r in (rates.input, read, write)]
        for name, value in zip((*_KEYS, *_RATE_COLUMNS), (model, provider, ref, *per_token), strict=True):
            found[name].append(value)
    schema = {**dict.fromkeys(_KEYS, pl.String), **dict.fromkeys(_RATE_COLUMNS, pl.Float64)}
    return pl.DataFrame(found, schema=schema).with_columns(source=pl.lit("catalogue"))


def _rates(parts: pl.DataFrame) -> pl.DataFrame:
    """Rates per (model, provider, price_ref): fitted, else from the catalogue where needed."""
    moments = [c for c in parts.columns if c.startswith("s_")]
    fitted = _solve(
        parts.lazy().group_by(_KEYS).agg(pl.col(*moments, "priced_calls").sum(), pl.col("last_started").max())
    ).collect()
    needs_rates = (pl.col("s_rr") > 0) | (pl.col("s_ww") > 0)
    unresolved = fitted.filter(pl.col("source").is_null() & needs_rates & pl.col("_price_ref").is_not_null())
    if unresolved.height:
        catalogue = _catalogue(unresolved)
        fitted = fitted.join(
            catalogue, on=list(_KEYS), how="left", suffix="_cat", nulls_equal=True
        ).with_columns(pl.coalesce(name, f"{name}_cat") for name in (*_RATE_COLUMNS, "source"))
    return fitted.select(*_KEYS, "priced_calls", *_RATE_COLUMNS, "source")


def _parts(calls: pl.LazyFrame, by: str | Sequence[str]) -> pl.DataFrame:
    """Token sums and fit moments per (by..., model, provider, price_ref): one scan."""
    keys = [*group_keys(by), pl.col("model").alias("_model"), pl.col("provider").alias("_provider")]
    keys.append(pl.col("price_ref").alias("_price_ref"))
    terms = _terms()
    return (
        calls.with_columns(**terms, _priced=pl.col("input_cost_usd").is_not_null())
        .group_by(keys)
        .agg(
            pl.col("input_tokens", "cache_read_tokens", "cache_write_tokens", *terms).sum(),
            pl.col("_priced").sum().cast(pl.Int64).alias("priced_calls"),
            pl.col("started_at").max().alias("last_started"),
        )
        .collect()
    )


def cache_rates(calls: pl.LazyFrame) -> pl.DataFrame:
    """The rates per (model, provider, price_ref) that :func:`cache_savings` uses, in USD
    per million tokens, with where each came from (``stored costs`` or ``catalogue``)."""
    rates = _rates(_parts(calls, []))
    return (
        rates.filter(pl.col("priced_calls") > 0)
        .select(
            pl.col("_model").alias("model"),
            pl.col("_provider").alias("provider"),
            pl.col("_price_ref").alias("price_ref"),
            "priced_calls",
            *(pl.col(name).mul(1e6).alias(name.replace("rate", "usd_per_mtok")) for name in _RATE_COLUMNS),
            "source",
        )
        .sort(["priced_calls", "model"], descending=[True, False])
    )


def cache_savings(calls: pl.LazyFrame, by: str | Sequence[str] = ("model",)) -> pl.DataFrame:
    """Per group: input tokens, cache reads and writes, the share of input read from
    cache, ``saved_usd`` by reads, ``write_premium_usd`` paid for writes, the net, and
    the cache reads whose rates are unknown (unpriced models)."""
    parts = _parts(calls, by)
    rates = _rates(parts)
    read, write = pl.col("cache_read_tokens"), pl.col("cache_write_tokens")
    saved = read * (pl.col("input_rate") - pl.col("cache_read_rate").fill_null(pl.col("input_rate")))
    premium = write * (pl.col("cache_write_rate").fill_null(pl.col("input_rate")) - pl.col("input_rate"))
    names = as_list(by)
    aggregates = [
        pl.col("input_tokens").sum(),
        read.sum(),
        write.sum(),
        pl.when(read > 0).then(saved).otherwise(0.0).sum().alias("saved_usd"),
        pl.when(write > 0).then(premium).otherwise(0.0).sum().alias("write_premium_usd"),
        read.filter(pl.col("input_rate").is_null()).sum().alias("unrated_cache_read_tokens"),
    ]
    joined = parts.lazy().join(rates.lazy(), on=list(_KEYS), how="left", nulls_equal=True)
    frame = joined.group_by(names).agg(aggregates) if names else joined.select(aggregates)
    frame = frame.with_columns(
        cache_read_share=pl.when(pl.col("input_tokens") > 0).then(read / pl.col("input_tokens")),
        net_saved_usd=pl.col("saved_usd") - pl.col("write_premium_usd"),
    ).select(
        *names,
        "input_tokens",
        "cache_read_tokens",
        "cache_read_share",
        "cache_write_tokens",
        "saved_usd",
        "write_premium_usd",
        "net_saved_usd",
        "unrated_cache_read_tokens",
    )
    return order(frame, by, "saved_usd").collect()


def response_cache(calls: pl.LazyFrame, by: str | Sequence[str] = ("model",)) -> pl.DataFrame:
    """Per group: calls, ``cache_lookups`` (calls the response cache applied to), ``cache_hits``
    and ``cache_hit_rate`` (of lookups), ``cache_saved_usd`` (what the hits would have cost), and
    the waste analysis's ``duplicate_calls`` and ``duplicate_cost_usd`` (paid-for repeats of an
    answered request: what an exact-match cache would have saved beyond that). Most saved first."""
    hit = pl.col("cache_hit").fill_null(False)
    aggregates = [
        count().alias("calls"),
        count(pl.col("cache_hit").is_not_null()).alias("cache_lookups"),
        count(hit).alias("cache_hits"),
        known_sum(pl.col("cache_saved_usd").filter(hit)).alias("cache_saved_usd"),
        count(pl.col("duplicate")).alias("duplicate_calls"),
        known_sum(pl.col("cost_usd").filter(pl.col("duplicate"))).alias("duplicate_cost_usd"),
    ]
    frame = aggregate(calls.with_columns(duplicate=duplicate()), by, aggregates, "cache_saved_usd")
    return (
        frame.with_columns(cache_hit_rate=share("cache_hits", "cache_lookups"))
        .select(
            *as_list(by),
            "calls",
            "cache_lookups",
            "cache_hits",
            "cache_hit_rate",
            "cache_saved_usd",
            "duplicate_calls",
            "duplicate_cost_usd",
        )
        .collect()
    )


def cache_summary(calls: pl.LazyFrame, by: str | Sequence[str] = ("model",)) -> pl.DataFrame:
    """Both caches per group (``llmtap report --show cache``): the share of input read from the
    providers' prompt caches and what that saved net of write premiums
    (``prompt_cache_saved_usd``, see :func:`cache_savings`), then :func:`response_cache`'s
    columns. Most saved by the response cache first."""
    names = as_list(by)
    prompt = cache_savings(calls, by).select(
        *names, "cache_read_share", pl.col("net_saved_usd").alias("prompt_cache_saved_usd")
    )
    response = response_cache(calls, by)
    if names:
        joined = response.join(prompt, on=names, how="left", nulls_equal=True)
    else:
        joined = pl.concat([response, prompt], how="horizontal")
    columns = [*names, "calls", "cache_read_share", "prompt_cache_saved_usd"]
    ordered = joined.select(*columns, *(c for c in response.columns if c not in columns))
    return order(ordered.lazy(), by, "cache_saved_usd").collect()
