"""``llmtap reprice``: the cost columns of stored calls recomputed in the store, with the
integer arithmetic of :meth:`collector.pricing.book.PriceBook.price` done by one SQL UPDATE.

Apart from the price book, because the book is imported by the store's loader (it prices
each row it loads) and must not import the store back; this module is the one side of
pricing that reads and writes the store.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from collector.pricing.book import PriceBook, reported_ref
from collector.storage.database import LOCK_WAIT_S, connect_writer, read_connection


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


_ZERO = "CAST(0 AS DECIMAL(18,9))"


# The same integer arithmetic as PriceBook.price, for every stored call at once: the
# join picks each call's group, time-of-day slot and prompt-size tier from the rates
# table; a provider-reported cost wins and is split in the catalogue's proportions. A call the
# response cache answered costs 0 and keeps the price as what it saved (as
# collector.calls.rows prices it).
_UPDATE = f"""
UPDATE llm_calls SET cost_usd = n.cost_usd, input_cost_usd = n.input_cost_usd,
    output_cost_usd = n.output_cost_usd, price_ref = n.price_ref, cache_saved_usd = n.cache_saved_usd
FROM (
    SELECT rid,
        CASE WHEN hit THEN {_ZERO} ELSE priced_cost END AS cost_usd,
        CASE WHEN hit THEN {_ZERO} ELSE priced_input END AS input_cost_usd,
        CASE WHEN hit THEN {_ZERO} ELSE priced_output END AS output_cost_usd,
        price_ref,
        CASE WHEN hit THEN priced_cost END AS cache_saved_usd
    FROM (
    WITH j AS (
        SELECT c.rowid AS rid, coalesce(c.cache_hit, false) AS hit, c.provider_cost_usd AS reported,
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
    SELECT rid, hit,
        CASE WHEN reported IS NOT NULL THEN reported WHEN priced THEN {_nano_to_usd("in_nano + out_nano")}
            END AS priced_cost,
        {_nano_to_usd("in_nano")} AS priced_input,
        CASE WHEN reported IS NULL THEN {_nano_to_usd("out_nano")} ELSE {_nano_to_usd("t - in_nano")}
            END AS priced_output,
        CASE WHEN reported IS NOT NULL THEN reported_ref WHEN priced THEN ref END AS price_ref
    FROM s
    )
) n
WHERE llm_calls.rowid = n.rid AND (
    llm_calls.cost_usd IS DISTINCT FROM n.cost_usd
    OR llm_calls.input_cost_usd IS DISTINCT FROM n.input_cost_usd
    OR llm_calls.output_cost_usd IS DISTINCT FROM n.output_cost_usd
    OR llm_calls.price_ref IS DISTINCT FROM n.price_ref
    OR llm_calls.cache_saved_usd IS DISTINCT FROM n.cache_saved_usd)
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
        for slot in book.day_slots(prices_id, model, service_tier, day):
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
            changed = _one(con.execute(_UPDATE, {"since": since}).fetchone())
            unpriced = _one(con.execute(unpriced_sql, {"since": since}).fetchone())
            con.execute("DROP TABLE llmtap_rates")
            con.commit()
        except BaseException:
            con.rollback()
            raise
    return RepriceResult(calls=sum(g[-1] for g in groups), changed=changed, unpriced=unpriced)


def _one(row: tuple[Any, ...] | None) -> int:
    """The number in the one row an UPDATE or a count(*) returns."""
    assert row is not None
    return int(row[0])
