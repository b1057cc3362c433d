"""What each LLM call cost, from its usage, its model and the day it was made.

The catalogue is genai-prices' *bundled* data: llmtap never starts its network
auto-update (``genai_prices.UpdatePrices``), so pricing works offline, is reproducible,
and ``price_ref`` can name the exact package version. Per-model overrides from the
config file win over the catalogue.

Money is computed in integers: rates as atto-dollars (1e-18 USD) per token, costs
rounded half-up to nano-dollars (1e-9 USD, the scale of the DECIMAL(18,9) columns).
The proxy (:func:`cost_columns`, per call) and ``llmtap reprice`` (:func:`reprice`, one
SQL UPDATE doing the same integer arithmetic) therefore store identical values for
identical calls, and repricing with unchanged prices changes nothing.

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
from pathlib import Path
from typing import Any, NamedTuple

from collector.providers.base import Usage
from collector.proxy.failopen import failures
from collector.storage.database import LOCK_WAIT_S, connect_writer, read_connection

log = logging.getLogger("llmtap.pricing")

#: USD per million tokens -> atto-USD per token.
_ATTO_PER_MTOK_RATE = 10**12
_ATTO_PER_NANO = 10**9
_MINUTES_PER_DAY = 24 * 60


@dataclass(frozen=True, slots=True)
class Rates:
    """USD per million tokens for one model, as one catalogue entry or override states them.

    ``input`` is required: a model priced in other units only (audio hours, pages) is
    unpriced for llmtap. ``output`` None means output is free (embeddings);
    ``cache_read``/``cache_write`` None cost the input rate; ``reasoning`` None costs
    the output rate.

    ``tiers`` are (threshold, rates): when a call's prompt (``input_tokens``, cache
    included) is above a threshold, ALL its tokens use that tier's rates (the "cliff"
    model providers and genai-prices use, e.g. above 200k tokens for long context).
    Thresholds increase; each tier's rates are complete (not deltas).
    """

    input: Decimal
    output: Decimal | None = None
    cache_read: Decimal | None = None
    cache_write: Decimal | None = None
    reasoning: Decimal | None = None
    tiers: tuple[tuple[int, Rates], ...] = ()
    #: Which catalogue entry and version, or which override, e.g. "genai-prices 0.2.3: openai/gpt-4o".
    ref: str = ""


@dataclass(frozen=True, slots=True)
class Price:
    """The four cost columns of one call; all None when it cannot be priced (never 0)."""

    cost_usd: Decimal | None
    input_cost_usd: Decimal | None
    output_cost_usd: Decimal | None
    price_ref: str | None


UNPRICED = Price(None, None, None, None)


def tier_ref(ref: str, above: int) -> str:
    """The ref of a tier's rates, so a stored price says the long-context rate was used."""
    return f"{ref}, prompt > {above} tokens"


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
            slots = self._days[key] = self._day_slots(prices_id, model, service_tier, utc.date())
        if len(slots) == 1:
            return slots[0]
        minute = utc.hour * 60 + utc.minute
        return next(s for s in slots if s.start <= minute < s.end)

    def _day_slots(
        self, prices_id: str | None, model: str | None, service_tier: str | None, day: date
    ) -> tuple[_Slot, ...]:
        """Rates over one UTC day, split where a time-of-day price changes."""
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

        def at(threshold: int | None) -> dict[str, Decimal | None]:
            """Each key's rate for prompts above ``threshold`` (None: the base rates)."""
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
            return resolved

        thresholds = sorted(
            {t.start for v in by_key.values() if isinstance(v, TieredPrices) for t in v.tiers}
        )
        tiers = tuple((above, Rates(**at(above), ref=tier_ref(ref, above))) for above in thresholds)
        return replace(Rates(**at(None), ref=ref), tiers=tiers)


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


@dataclass(frozen=True, slots=True)
class RepriceResult:
    #: Calls in the window that were recomputed.
    calls: int
    #: ... whose cost columns changed.
    changed: int
    #: Calls in the window with usage but no price (cost_usd NULL).
    unpriced: int


_UTC_START = "(c.started_at AT TIME ZONE 'UTC')"

_RATES_COLUMNS = {
    "provider": "VARCHAR",
    "model": "VARCHAR",
    "service_tier": "VARCHAR",
    "day": "DATE",
    "m_start": "INTEGER",
    "m_end": "INTEGER",
    "above": "BIGINT",
    "below": "BIGINT",
    "r_in": "HUGEINT",
    "r_out": "HUGEINT",
    "d_cr": "HUGEINT",
    "d_cw": "HUGEINT",
    "d_rs": "HUGEINT",
    "ref": "VARCHAR",
    "reported_ref": "VARCHAR",
}


def _nano_to_usd(expr: str) -> str:
    return f"CAST(CAST({expr} AS DECIMAL(38,0)) * 0.000000001 AS DECIMAL(18,9))"


# The same integer arithmetic as PriceBook.price, for every stored call at once: the
# join picks each call's group, time-of-day slot and prompt-size tier from the rates
# table; a provider-reported cost wins and is split in the catalogue's proportions.
_UPDATE = f"""
UPDATE llm_calls SET cost_usd = n.cost_usd, input_cost_usd = n.input_cost_usd,
    output_cost_usd = n.output_cost_usd, price_ref = n.price_ref
FROM (
    WITH j AS (
        SELECT c.rowid AS rid, c.provider_cost_usd AS reported,
            CAST(c.provider_cost_usd * 1000000000 AS HUGEINT) AS t,
            r.r_in IS NOT NULL AND (c.input_tokens IS NOT NULL OR c.output_tokens IS NOT NULL) AS priced,
            r.ref, r.reported_ref,
            greatest(coalesce(c.input_tokens, 0)::HUGEINT * r.r_in
                + coalesce(c.cache_read_tokens, 0)::HUGEINT * r.d_cr
                + coalesce(c.cache_write_tokens, 0)::HUGEINT * r.d_cw, 0) AS a,
            greatest(coalesce(c.output_tokens, 0)::HUGEINT * r.r_out
                + coalesce(c.reasoning_tokens, 0)::HUGEINT * r.d_rs, 0) AS b
        FROM llm_calls c JOIN llmtap_rates r
            ON c.provider IS NOT DISTINCT FROM r.provider
            AND coalesce(c.response_model, c.request_model) IS NOT DISTINCT FROM r.model
            AND c.service_tier IS NOT DISTINCT FROM r.service_tier
            AND CAST({_UTC_START} AS DATE) = r.day
            AND hour({_UTC_START}) * 60 + minute({_UTC_START}) >= r.m_start
            AND hour({_UTC_START}) * 60 + minute({_UTC_START}) < r.m_end
            AND coalesce(c.input_tokens, 0) > r.above
            AND (r.below IS NULL OR coalesce(c.input_tokens, 0) <= r.below)
        WHERE c.started_at >= $since
    ), s AS (
        SELECT *,
            CASE WHEN NOT priced THEN NULL
                WHEN reported IS NULL THEN (a + 500000000) // 1000000000
                WHEN a + b > 0 AND t >= 0 THEN (2 * t * a + a + b) // (2 * (a + b)) END AS in_nano,
            CASE WHEN priced AND reported IS NULL THEN (b + 500000000) // 1000000000 END AS out_nano
        FROM j
    )
    SELECT rid,
        CASE WHEN reported IS NOT NULL THEN reported WHEN priced THEN {_nano_to_usd("in_nano + out_nano")}
            END AS cost_usd,
        {_nano_to_usd("in_nano")} AS input_cost_usd,
        CASE WHEN reported IS NULL THEN {_nano_to_usd("out_nano")} ELSE {_nano_to_usd("t - in_nano")}
            END AS output_cost_usd,
        CASE WHEN reported IS NOT NULL THEN reported_ref WHEN priced THEN ref END AS price_ref
    FROM s
) n
WHERE llm_calls.rowid = n.rid AND (
    llm_calls.cost_usd IS DISTINCT FROM n.cost_usd
    OR llm_calls.input_cost_usd IS DISTINCT FROM n.input_cost_usd
    OR llm_calls.output_cost_usd IS DISTINCT FROM n.output_cost_usd
    OR llm_calls.price_ref IS DISTINCT FROM n.price_ref)
"""


def reprice(
    db_path: Path,
    book: PriceBook,
    prices_ids: Mapping[str, str | None],
    since: datetime | None = None,
) -> RepriceResult:
    """Recompute the cost columns of stored calls (started at or after ``since``) from
    their stored usage, after prices or overrides changed; nothing else is touched.

    Rates are looked up once per distinct (provider, model, service tier, UTC day) while
    only reading the store; the write is then a single UPDATE joined to those rates, so
    the proxy's ingester is held up for as short a time as possible. Calls that arrive
    between the two steps in a group not yet looked up are left as the proxy priced them.
    """
    since = since or datetime(1, 1, 1, tzinfo=UTC)
    groups_sql = f"""
        SELECT provider, coalesce(response_model, request_model), service_tier,
               CAST({_UTC_START} AS DATE) AS day, count(*)
        FROM llm_calls c WHERE c.started_at >= $since GROUP BY ALL
    """
    with read_connection(db_path) as con:
        groups = con.execute(groups_sql, {"since": since}).fetchall()

    columns: dict[str, list[Any]] = {name: [] for name in _RATES_COLUMNS}
    for provider, model, service_tier, day, _ in groups:
        prices_id = prices_ids.get(provider)
        for slot in book._day_slots(prices_id, model, service_tier, day):
            for tier in slot.tiers or (None,):
                row = {
                    "provider": provider,
                    "model": model,
                    "service_tier": service_tier,
                    "day": day,
                    "m_start": slot.start,
                    "m_end": slot.end,
                    "above": tier.above if tier else -1,
                    "below": tier.below if tier else None,
                    "r_in": tier.r_in if tier else None,
                    "r_out": tier.r_out if tier else None,
                    "d_cr": tier.d_cache_read if tier else None,
                    "d_cw": tier.d_cache_write if tier else None,
                    "d_rs": tier.d_reasoning if tier else None,
                    "ref": tier.ref if tier else None,
                    "reported_ref": reported_ref(prices_id),
                }
                for name, value in row.items():
                    columns[name].append(value)

    select = ", ".join(f"unnest(${name}::{ctype}[]) AS {name}" for name, ctype in _RATES_COLUMNS.items())
    unpriced_sql = """
        SELECT count(*) FROM llm_calls WHERE started_at >= $since AND cost_usd IS NULL
            AND (input_tokens IS NOT NULL OR output_tokens IS NOT NULL)
    """
    with connect_writer(db_path, wait=LOCK_WAIT_S) as con:
        con.begin()
        try:
            con.execute(f"CREATE OR REPLACE TEMP TABLE llmtap_rates AS SELECT {select}", columns)
            (changed,) = con.execute(_UPDATE, {"since": since}).fetchone()
            (unpriced,) = con.execute(unpriced_sql, {"since": since}).fetchone()
            con.execute("DROP TABLE llmtap_rates")
            con.commit()
        except BaseException:
            con.rollback()
            raise
    return RepriceResult(calls=sum(g[-1] for g in groups), changed=changed, unpriced=unpriced)
