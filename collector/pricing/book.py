"""What each LLM call cost, from its usage, its model and the day it was made.

The catalogue is genai-prices' *bundled* data: llmtap never starts its network
auto-update (``genai_prices.UpdatePrices``), so pricing works offline, is reproducible,
and ``price_ref`` can name the exact package version. Per-model overrides from the
config file win over the catalogue.

Money is computed in integers: rates as atto-dollars (1e-18 USD) per token, costs
rounded half-up to nano-dollars (1e-9 USD, the scale of the DECIMAL(18,9) columns).
The proxy (:func:`cost_columns`, per call) and ``llmtap reprice``
(:func:`collector.pricing.reprice.reprice`, one SQL UPDATE doing the same integer
arithmetic) therefore store identical values for identical calls, and repricing with
unchanged prices changes nothing. This module knows nothing of the store: the store's
loader prices rows with it, so it must not import the store back.

Token convention (the contract's): input includes cache reads and writes, output
includes reasoning. A cache read or write without its own rate costs the input rate;
reasoning costs the output rate unless the model prices it separately.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, NamedTuple

from collector.pricing.rates import Rates, tier_ref
from collector.providers.base import Usage
from collector.trust.failopen import failures

log = logging.getLogger("llmtap.pricing")

#: USD per million tokens -> atto-USD per token.
_ATTO_PER_MTOK_RATE = 10**12
_ATTO_PER_NANO = 10**9
_MINUTES_PER_DAY = 24 * 60


@dataclass(frozen=True, slots=True)
class Price:
    """The four cost columns of one call; all None when it cannot be priced (never 0)."""

    cost_usd: Decimal | None
    input_cost_usd: Decimal | None
    output_cost_usd: Decimal | None
    price_ref: str | None


UNPRICED = Price(None, None, None, None)


def reported_ref(prices_id: str | None) -> str:
    """price_ref of a call whose cost the provider reported itself (OpenRouter's usage.cost)."""
    return f"provider-reported ({prices_id or 'provider'} usage.cost)"


class _Tier(NamedTuple):
    """One tier of Rates in integer form: atto-USD per token, cache/reasoning as deltas."""

    above: int  # applies when input tokens > above (-1 for the base rates)
    below: int | None  # ... and <= below (the next tier's threshold), None for the last
    r_in: int
    r_out: int
    d_cache_read: int  # cache-read rate minus input rate
    d_cache_write: int
    d_reasoning: int  # reasoning rate minus output rate
    ref: str


class _Slot(NamedTuple):
    """Rates valid for a span of minutes of one UTC day (DeepSeek's off-peak hours split days)."""

    start: int  # minute of the UTC day, inclusive
    end: int  # exclusive
    rates: Rates | None
    tiers: tuple[_Tier, ...]


_UNPRICED_DAY = (_Slot(0, _MINUTES_PER_DAY, None, ()),)


def _atto(rate: Decimal) -> int:
    return int((rate * _ATTO_PER_MTOK_RATE).to_integral_value(ROUND_HALF_UP))


def _compile(rates: Rates) -> tuple[_Tier, ...]:
    levels = [(-1, rates), *rates.tiers]
    compiled = []
    for i, (above, r) in enumerate(levels):
        r_in = _atto(r.input)
        r_out = _atto(r.output) if r.output is not None else 0
        compiled.append(
            _Tier(
                above=above,
                below=levels[i + 1][0] if i + 1 < len(levels) else None,
                r_in=r_in,
                r_out=r_out,
                d_cache_read=_atto(r.cache_read) - r_in if r.cache_read is not None else 0,
                d_cache_write=_atto(r.cache_write) - r_in if r.cache_write is not None else 0,
                d_reasoning=_atto(r.reasoning) - r_out if r.reasoning is not None else 0,
                ref=r.ref,
            )
        )
    return tuple(compiled)


def _nano(usd: Decimal | float) -> int:
    """USD (a float from a JSON body, or a Decimal) as whole nano-dollars, half-up."""
    value = usd if isinstance(usd, Decimal) else Decimal(repr(usd))
    return int((value * _ATTO_PER_NANO).to_integral_value(ROUND_HALF_UP))


def _usd(nano: int) -> Decimal:
    return Decimal(nano).scaleb(-9)


def _round_atto(atto: int) -> int:
    return (atto + _ATTO_PER_NANO // 2) // _ATTO_PER_NANO


def _split(total_nano: int, a: int, b: int) -> int:
    """The input part of a provider-reported total, in the catalogue's input:output ratio, half-up."""
    return (2 * total_nano * a + a + b) // (2 * (a + b))


def _price_context(service_tier: str | None) -> dict[str, str] | None:
    """genai-prices' request context for the tier a response reports.

    The catalogue keys OpenAI/Google flex and priority as {"service_tier": ...} and the
    batch discount as {"processing": "batch"}; other values ("default", Anthropic's
    "standard") match no variant and leave the standard prices."""
    if not service_tier:
        return None
    tier = service_tier.lower()
    return {"processing": "batch"} if tier == "batch" else {"service_tier": tier}


def _utc_minute(t: time) -> int:
    offset = t.utcoffset()
    minutes = t.hour * 60 + t.minute - (int(offset.total_seconds()) // 60 if offset else 0)
    return minutes % _MINUTES_PER_DAY


class PriceBook:
    """Rates per (provider, model, service tier, day), from overrides then the catalogue.

    A genai-prices lookup takes 0.1-1 ms (a miss scans every model), far too slow for
    the proxy's request path, so each answer, including "no price", is cached per
    UTC day; after the first call of a model on a day, :meth:`price` is integer
    arithmetic only.

    Importing the catalogue takes about 0.4 s. It happens here, when the proxy starts,
    rather than on its first call (which would stall every flow in flight), and not at
    module import, so commands that never price anything do not pay for it.
    """

    def __init__(self, overrides: Mapping[str, Rates] | None = None) -> None:
        import genai_prices
        from genai_prices.data import providers
        from genai_prices.data_snapshot import DataSnapshot

        self._overrides = dict(overrides or {})
        self._days: dict[tuple[str | None, str | None, str | None, date], tuple[_Slot, ...]] = {}
        self._models: dict[tuple[str | None, str], Any] = {}
        # Our own snapshot of the bundled data: never one fetched by an UpdatePrices that
        # other code in the process might have started.
        self._snapshot = DataSnapshot(providers=providers, from_auto_update=False)
        self._version = genai_prices.__version__

    def rates(
        self, prices_id: str | None, model: str, service_tier: str | None, when: datetime
    ) -> Rates | None:
        """The rates that price a call of ``model`` made at ``when``, or None if it has no known price."""
        return self._slot(prices_id, model, service_tier, when).rates

    def price(
        self,
        *,
        prices_id: str | None,
        model: str | None,
        usage: Usage | None,
        service_tier: str | None,
        provider_cost_usd: Decimal | float | None,
        when: datetime,
    ) -> Price:
        """The cost of one call. A provider-reported cost wins (split into input and output
        parts in the catalogue's proportions when the model has a catalogue price)."""
        reported = _nano(provider_cost_usd) if provider_cost_usd is not None else None
        tiers: tuple[_Tier, ...] = ()
        if usage is not None and (usage.input_tokens is not None or usage.output_tokens is not None):
            tiers = self._slot(prices_id, model, service_tier, when).tiers
        if usage is None or not tiers:
            if reported is None:
                return UNPRICED
            return Price(_usd(reported), None, None, reported_ref(prices_id))
        prompt = usage.input_tokens or 0
        tier = tiers[0]
        for candidate in reversed(tiers):
            if prompt > candidate.above:
                tier = candidate
                break
        a = max(
            prompt * tier.r_in
            + (usage.cache_read_tokens or 0) * tier.d_cache_read
            + (usage.cache_write_tokens or 0) * tier.d_cache_write,
            0,
        )
        b = max((usage.output_tokens or 0) * tier.r_out + (usage.reasoning_tokens or 0) * tier.d_reasoning, 0)
        if reported is None:
            in_nano, out_nano = _round_atto(a), _round_atto(b)
            return Price(_usd(in_nano + out_nano), _usd(in_nano), _usd(out_nano), tier.ref)
        if a + b == 0 or reported < 0:
            return Price(_usd(reported), None, None, reported_ref(prices_id))
        in_nano = _split(reported, a, b)
        return Price(_usd(reported), _usd(in_nano), _usd(reported - in_nano), reported_ref(prices_id))

    def _slot(
        self, prices_id: str | None, model: str | None, service_tier: str | None, when: datetime
    ) -> _Slot:
        utc = when.astimezone(UTC) if when.tzinfo is not None else when
        key = (prices_id, model, service_tier, utc.date())
        slots = self._days.get(key)
        if slots is None:
            slots = self._days[key] = self.day_slots(prices_id, model, service_tier, utc.date())
        if len(slots) == 1:
            return slots[0]
        minute = utc.hour * 60 + utc.minute
        return next(s for s in slots if s.start <= minute < s.end)

    def day_slots(
        self, prices_id: str | None, model: str | None, service_tier: str | None, day: date
    ) -> tuple[_Slot, ...]:
        """Rates over one UTC day, split where a time-of-day price changes (also what
        ``reprice`` joins the stored calls to)."""
        if model is None:
            return _UNPRICED_DAY
        if (override := self._overrides.get(model)) is not None:
            return (_Slot(0, _MINUTES_PER_DAY, override, _compile(override)),)
        found = self._find(prices_id, model)
        if found is None:
            return _UNPRICED_DAY
        provider, info = found
        # genai-prices applies variants only to a provider's own models, not to fallbacks
        # (Azure pricing an OpenAI model); do the same.
        context = _price_context(service_tier) if any(info is m for m in provider.models) else None
        starts = sorted({0, *self._time_of_day_boundaries(info)})
        slots: list[_Slot] = []
        for start, end in zip(starts, [*starts[1:], _MINUTES_PER_DAY], strict=True):
            moment = datetime.combine(day, time(start // 60, start % 60), UTC)
            rates = self._catalogue_rates(provider, info, context, service_tier, moment)
            if slots and slots[-1].rates == rates:
                slots[-1] = slots[-1]._replace(end=end)
            else:
                slots.append(_Slot(start, end, rates, _compile(rates) if rates else ()))
        return tuple(slots)

    def _find(self, prices_id: str | None, model: str) -> Any:
        key = (prices_id, model)
        if key not in self._models:
            try:
                self._models[key] = self._snapshot.find_provider_model(model, None, prices_id, None)
            except LookupError:
                self._models[key] = None
        return self._models[key]

    @staticmethod
    def _time_of_day_boundaries(info: Any) -> set[int]:
        from genai_prices.types import TimeOfDateConstraint

        constraints = [c.constraint for c in info.prices] if isinstance(info.prices, list) else []
        constraints += [v.constraint for v in info.price_variants or ()]
        return {
            _utc_minute(t)
            for c in constraints
            if isinstance(c, TimeOfDateConstraint)
            for t in (c.start_time, c.end_time)
        }

    def _catalogue_rates(
        self,
        provider: Any,
        info: Any,
        context: dict[str, str] | None,
        service_tier: str | None,
        when: datetime,
    ) -> Rates | None:
        from genai_prices.types import TieredPrices

        prices = info.get_prices(when, context)
        ref = f"genai-prices {self._version}: {provider.id}/{info.id}"
        if context and prices != info.get_prices(when):
            ref += f" ({service_tier} tier)"
        by_key = {
            "input": prices.input_mtok,
            "output": prices.output_mtok,
            "cache_read": prices.cache_read_mtok,
            "cache_write": prices.cache_write_mtok,
            "reasoning": prices.output_reasoning_mtok,
        }
        if by_key["input"] is None:
            return None

        def at(threshold: int | None, ref: str) -> Rates:
            """The rates for prompts above ``threshold`` (None: the base rates)."""
            resolved: dict[str, Decimal | None] = {}
            for key, value in by_key.items():
                if isinstance(value, TieredPrices):
                    rate = value.base
                    for tier in value.tiers:  # sorted by start
                        if threshold is not None and tier.start <= threshold:
                            rate = tier.price
                    resolved[key] = rate
                else:
                    resolved[key] = value
            assert resolved["input"] is not None  # checked above; a tier never drops it
            return Rates(
                input=resolved["input"],
                output=resolved["output"],
                cache_read=resolved["cache_read"],
                cache_write=resolved["cache_write"],
                reasoning=resolved["reasoning"],
                ref=ref,
            )

        thresholds = sorted(
            {t.start for v in by_key.values() if isinstance(v, TieredPrices) for t in v.tiers}
        )
        tiers = tuple((above, at(above, tier_ref(ref, above))) for above in thresholds)
        return replace(at(None, ref), tiers=tiers)


def cost_columns(
    book: PriceBook,
    *,
    prices_id: str | None,
    model: str | None,
    usage: Usage | None,
    service_tier: str | None,
    provider_cost_usd: Decimal | float | None,
    when: datetime,
) -> dict[str, Decimal | str | None]:
    """The cost columns of one llm_calls row: what the recorder calls for every call.

    Never raises: a bug in pricing must cost a call its price, not its row (it is
    logged and counted like any fail-open error)."""
    try:
        price = book.price(
            prices_id=prices_id,
            model=model,
            usage=usage,
            service_tier=service_tier,
            provider_cost_usd=provider_cost_usd,
            when=when,
        )
    except Exception:
        failures["pricing"] += 1
        log.exception("llmtap internal error pricing %s; the call is stored unpriced", model)
        price = UNPRICED
    return {
        "cost_usd": price.cost_usd,
        "input_cost_usd": price.input_cost_usd,
        "output_cost_usd": price.output_cost_usd,
        "price_ref": price.price_ref,
    }
