"""What a route costs per 1,000 requests on a model, and what a change saves per month.

The price of a route is its real token mix (mean input, cache reads and writes,
output and reasoning tokens per request) at a model's catalogue rates
(:class:`collector.pricing.book.PriceBook`, with the config's overrides), not the list price
of a token: a route that reads most of its prompt from cache costs far less than its
input count suggests, and a swap loses that cache at first.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from analytics.recommender.catalogue import prices_id
from analytics.recommender.stats import count_interval
from collector.pricing.book import PriceBook
from collector.pricing.rates import Rates

DAYS_PER_MONTH = 30


@dataclass(frozen=True, slots=True)
class TokenMix:
    """Mean tokens per request, in the contract's convention (input includes cache
    reads and writes, output includes reasoning)."""

    input: float
    cache_read: float = 0.0
    cache_write: float = 0.0
    output: float = 0.0
    reasoning: float = 0.0

    def cold(self) -> TokenMix:
        """The same requests with nothing read from or written to a prompt cache."""
        return replace(self, cache_read=0.0, cache_write=0.0)


def cost_per_request(rates: Rates, mix: TokenMix) -> float:
    """USD for one request of ``mix`` at ``rates`` (the tier its mean prompt falls in).

    Cache reads and writes without their own rate cost the input rate, reasoning
    without its own the output rate, as :meth:`PriceBook.price` does."""
    for above, tier in reversed(rates.tiers):
        if mix.input > above:
            rates = tier
            break
    r_in, r_out = float(rates.input), float(rates.output or 0)
    r_cache_read = float(rates.cache_read) if rates.cache_read is not None else r_in
    r_cache_write = float(rates.cache_write) if rates.cache_write is not None else r_in
    r_reasoning = float(rates.reasoning) if rates.reasoning is not None else r_out
    per_million = (
        (mix.input - mix.cache_read - mix.cache_write) * r_in
        + mix.cache_read * r_cache_read
        + mix.cache_write * r_cache_write
        + (mix.output - mix.reasoning) * r_out
        + mix.reasoning * r_reasoning
    )
    return per_million / 1e6


def cost_per_1k(book: PriceBook, provider: str, model: str, mix: TokenMix, when: datetime) -> float | None:
    """USD per 1,000 requests of ``mix`` on ``model`` through ``provider``; None if unpriced."""
    rates = book.rates(prices_id(provider), model, None, when)
    return None if rates is None else 1000 * cost_per_request(rates, mix)


@dataclass(frozen=True, slots=True)
class Volume:
    """A route's requests per month, projected from a window: low, observed, high."""

    low: float
    mid: float
    high: float

    @classmethod
    def project(cls, requests: int, window_days: float, confidence: float) -> Volume:
        """The observed rate scaled to a month, with the count's interval at ``confidence``
        for low and high (a few hours of traffic say little about a month)."""
        scale = DAYS_PER_MONTH / window_days
        low, high = count_interval(requests, confidence)
        return cls(low * scale, requests * scale, high * scale)


@dataclass(frozen=True, slots=True)
class Savings:
    low: float
    mid: float
    high: float

    @classmethod
    def monthly(
        cls, per_1k_now: float, per_1k_after: float, per_1k_after_cold: float, volume: Volume
    ) -> Savings:
        """low: the changed route starts with a cold cache (prompt caches are per model)
        at the low volume; mid: the cache share as now at the observed volume; high: as
        mid at the high volume."""
        saved, saved_cold = (per_1k_now - per_1k_after) / 1000, (per_1k_now - per_1k_after_cold) / 1000
        # A negative saving (a loss) is largest at the high volume, so each bound takes
        # the worse or better of the two volume bounds.
        low = min(saved_cold * volume.low, saved_cold * volume.high)
        high = max(saved * volume.low, saved * volume.high)
        return cls(low, saved * volume.mid, high)
