"""The one query a scrape runs: the store's totals per label set, in a single scan.

Metrics are computed from the store, not counted in the proxy: the totals then equal what
``llmtap report`` and the dashboard say, survive restarts, and cost the request path
nothing. The query scans ``llm_calls`` once and groups by the raw label values
(provider, api, requested model, app, error kind), summing each histogram's cumulative
bucket counts as it goes; a second, small stage over those groups replaces label values
beyond their cap (:class:`collector.metrics.labels.LabelBounds`) with "other", so a client
sending a new app name with every call yields a bounded result, not one row per call.

Only production calls count: the proxy's own evaluation calls (``routing_arm`` in
:data:`collector.routing.rules.EVALUATION_ARMS`, or ``shadow_of`` set) are spend on
choosing a model, which ``analytics.shadow_spend`` reports; the analytics' spend and
summary leave them out the same way. Retries and fallback attempts are production: they are
the client's call (see :data:`collector.routing.rules.FALLBACK_ARM`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import duckdb

from collector.calls.error_kinds import CLIENT_DISCONNECT, UPSTREAM_RESET
from collector.routing.rules import EVALUATION_ARMS, FALLBACK_ARM

__all__ = [
    "COLUMNS",
    "HISTOGRAMS",
    "LABELS",
    "MAX_RAW_GROUPS",
    "MONEY",
    "SECONDS_BUCKETS",
    "TOKEN_BUCKETS",
    "Group",
    "build_query",
    "error_kind_sql",
    "raw_query",
    "read_groups",
    "store_columns",
]

#: ``gen_ai.client.token.usage`` bucket bounds, as the OpenTelemetry GenAI conventions advise.
TOKEN_BUCKETS: tuple[int, ...] = tuple(4**i for i in range(14))
#: ``gen_ai.client.operation.duration`` (and time to first chunk) bucket bounds in seconds,
#: as the conventions advise: 0.01 doubling to 81.92.
SECONDS_BUCKETS: tuple[float, ...] = (
    0.01,
    0.02,
    0.04,
    0.08,
    0.16,
    0.32,
    0.64,
    1.28,
    2.56,
    5.12,
    10.24,
    20.48,
    40.96,
    81.92,
)
#: The same bounds in whole milliseconds, compared with the stored ``latency_ms`` and
#: ``ttft_ms`` (exact, where ``ms / 1000 <= 0.01`` would meet float rounding).
_MS_BOUNDS: tuple[int, ...] = tuple(10 * 2**i for i in range(len(SECONDS_BUCKETS)))

#: The labels whose values come from traffic and are capped (the store's column for each).
LABELS: dict[str, str] = {"provider": "provider", "model": "request_model", "app": "app"}


def error_kind_sql(status: str = "status_code", error: str = "error") -> str:
    """SQL for why an erroring call failed (NULL for calls without error): the rules of
    :mod:`collector.calls.error_kinds`, in their order."""
    return (
        f"CASE WHEN {error} IS NULL THEN NULL"
        f" WHEN regexp_matches({error}, '{CLIENT_DISCONNECT}') THEN 'client_disconnect'"
        f" WHEN {status} IS NULL OR ({status} < 400 AND regexp_matches({error}, '{UPSTREAM_RESET}'))"
        " THEN 'upstream_reset'"
        f" WHEN {status} = 429 THEN 'rate_limited'"
        f" WHEN {status} BETWEEN 400 AND 499 THEN 'http_4xx'"
        f" WHEN {status} >= 500 THEN 'http_5xx'"
        " ELSE 'in_band' END"
    )


#: The histograms, each with ``NAME_count``, ``NAME_sum`` and a cumulative count per bound.
HISTOGRAMS: dict[str, tuple[int | float, ...]] = {
    "input": TOKEN_BUCKETS,
    "output": TOKEN_BUCKETS,
    "duration": SECONDS_BUCKETS,
    "ttft": SECONDS_BUCKETS,
}
#: Sums of money: exact decimals.
MONEY = ("cost_usd", "cache_saved_usd")
#: The sums of each result row, in order (see :class:`Group`).
COLUMNS: tuple[str, ...] = (
    "calls",
    "cost_usd",
    "fallbacks",
    "cache_hits",
    "cache_saved_usd",
    *(
        column
        for name, bounds in HISTOGRAMS.items()
        for column in (f"{name}_count", f"{name}_sum", *(f"{name}_le_{i}" for i in range(len(bounds))))
    ),
)


def _histogram(name: str, column: str, bounds: Sequence[int]) -> list[str]:
    """``name_count``, ``name_sum`` and one cumulative ``name_le_I`` count per bound."""
    return [
        f"count({column}) AS {name}_count",
        f"sum({column}) AS {name}_sum",
        *(f"count_if({column} <= {bound}) AS {name}_le_{i}" for i, bound in enumerate(bounds)),
    ]


def _aggregates(columns: set[str]) -> list[str]:
    """Per group, :data:`COLUMNS`: calls, cost, retries, cache hits and savings, and the
    histograms of tokens (input, output), duration and time to first chunk."""
    cache_hit = "count_if(cache_hit)" if "cache_hit" in columns else "0"
    cache_saved = "sum(cache_saved_usd)" if "cache_saved_usd" in columns else "NULL::DECIMAL(18,9)"
    # A stream's time to first chunk; a failed stream's "first chunk" is often its error.
    ttft = "CASE WHEN stream AND error IS NULL THEN ttft_ms END"
    aggregates = [
        "count(*) AS calls",
        "sum(cost_usd) AS cost_usd",
        # A call a fallback answered has no error and retry_of set (the first attempt), or no
        # retry_of when the targets before it were skipped (their breakers open); a routing
        # rule's retry with the client's model (arm "retry") has retry_of set too.
        f"count_if(error IS NULL AND (retry_of IS NOT NULL OR routing_arm = '{FALLBACK_ARM}')) AS fallbacks",
        f"{cache_hit} AS cache_hits",
        f"{cache_saved} AS cache_saved_usd",
        *_histogram("input", "input_tokens", TOKEN_BUCKETS),
        *_histogram("output", "output_tokens", TOKEN_BUCKETS),
        *_histogram("duration", "latency_ms", _MS_BOUNDS),
        *_histogram("ttft", ttft, _MS_BOUNDS),
    ]
    assert tuple(_alias(a) for a in aggregates) == COLUMNS
    return aggregates


def _alias(expression: str) -> str:
    return expression.rsplit(" AS ", 1)[1]


@dataclass(frozen=True, slots=True)
class Group:
    """One row of the result: its label values (None: the call had none; ``other`` names the
    labels whose value was over its cap) and its sums, in the order of :data:`COLUMNS`
    (money as Decimal, a sum over no value as 0)."""

    provider: str | None
    model: str | None
    app: str | None
    other: frozenset[str]
    api: str | None
    error_kind: str | None
    values: tuple[Any, ...]

    def __getitem__(self, name: str) -> Any:
        return self.values[COLUMNS.index(name)]


def _fetchable(name: str, expression: str) -> str:
    """A sum typed for a cheap fetch: converting the result to Python objects holds the GIL
    (the proxy's event loop waits), and DuckDB's HUGEINT and DECIMAL convert slowly (~15 ms
    for a few hundred rows). Counts fit BIGINT; token and time sums go as DOUBLE (what
    Prometheus keeps; exact below 2**53); money as text, rendered as stored."""
    if name in MONEY:
        return f"({expression})::VARCHAR"
    if name.endswith("_sum"):
        return f"({expression})::DOUBLE"
    return f"coalesce({expression}, 0)::BIGINT"


def _production() -> str:
    arms = ", ".join(f"'{arm}'" for arm in EVALUATION_ARMS)
    return f"shadow_of IS NULL AND (routing_arm IS NULL OR routing_arm NOT IN ({arms}))"


def _raw_labels() -> str:
    return ", ".join(f"{column} AS {label}" for label, column in LABELS.items())


def raw_query(columns: set[str]) -> str:
    """The usual scrape's SQL: the sums per raw label values (provider, model, app, api, error
    kind), at most ``$limit`` rows; the caps are applied in Python (:func:`read_groups`)."""
    sums = [_fetchable(_alias(a), a.rsplit(" AS ", 1)[0]) + f" AS {_alias(a)}" for a in _aggregates(columns)]
    return (
        f"SELECT {_raw_labels()}, api, {error_kind_sql()} AS error_kind, {', '.join(sums)}"
        f" FROM llm_calls WHERE {_production()} GROUP BY ALL LIMIT $limit"
    )


def build_query(columns: set[str]) -> str:
    """The scrape's SQL when the raw label values are too many to fetch (a client sending a
    new app name with every call): the caps applied in SQL. Its parameters, per label of
    :data:`LABELS`: ``kept_LABEL`` (the values shown so far) and ``free_LABEL`` (how many
    more may be admitted, the most called first)."""
    aggregates = _aggregates(columns)
    # Per label, the values admitted now: the most called of those not shown yet, as a list.
    admitted = [
        f"new_{label} AS (SELECT list(v) AS v FROM (SELECT {label} AS v FROM grouped"
        f" WHERE {label} IS NOT NULL AND NOT list_contains($kept_{label}::VARCHAR[], {label})"
        f" GROUP BY {label} ORDER BY sum(calls) DESC, {label} LIMIT $free_{label}))"
        for label in LABELS
    ]
    # Per group and label: shown (no value, shown before, or admitted now) or "other".
    kept = [
        f"({label} IS NULL OR list_contains($kept_{label}::VARCHAR[], {label})"
        f" OR list_contains(coalesce((SELECT v FROM new_{label}), []), {label})) AS {label}_kept"
        for label in LABELS
    ]
    shown = [f"CASE WHEN {label}_kept THEN {label} END AS {label}" for label in LABELS]
    flags = [f"NOT {label}_kept AS {label}_other" for label in LABELS]
    sums = [f"{_fetchable(_alias(a), f'sum({_alias(a)})')} AS {_alias(a)}" for a in aggregates]
    return (
        f"WITH grouped AS (SELECT {_raw_labels()}, api, {error_kind_sql()} AS error_kind,"
        f" {', '.join(aggregates)} FROM llm_calls WHERE {_production()} GROUP BY ALL), "
        + ", ".join(admitted)
        + f", marked AS (SELECT *, {', '.join(kept)} FROM grouped)"
        + f" SELECT {', '.join([*shown, *flags])}, api, error_kind, {', '.join(sums)}"
        " FROM marked GROUP BY ALL"
    )


def store_columns(con: duckdb.DuckDBPyConnection) -> set[str]:
    """The columns ``llm_calls`` has (none when the table does not exist yet). ``PRAGMA
    table_info`` costs under a millisecond on a fresh connection, where ``information_schema``
    and ``duckdb_columns()`` cost about 20 (they read the whole catalogue), on every scrape."""
    try:
        rows = con.execute("PRAGMA table_info('llm_calls')").fetchall()
    except duckdb.CatalogException:
        return set()
    return {row[1] for row in rows}


#: Most raw label sets fetched as they are; past it the caps are applied in SQL instead.
MAX_RAW_GROUPS = 2000


def read_groups(
    con: duckdb.DuckDBPyConnection,
    kept: Mapping[str, Sequence[str]],
    free: Mapping[str, int],
    max_raw: int = MAX_RAW_GROUPS,
) -> list[Group]:
    """The production calls' sums per label set, each label's values limited to those in
    ``kept`` plus at most ``free`` more (the most called first); empty for a store without
    ``llm_calls``.

    Usually the raw sums are fetched (a few hundred rows) and capped here: the one-stage query
    plans in half the time of the two-stage one, on every scrape. When there are more than
    ``max_raw`` raw label sets, the two-stage query caps them in SQL, so what is fetched
    stays small however many values traffic made up."""
    columns = store_columns(con)
    if not columns:
        return []
    rows = con.execute(raw_query(columns), {"limit": max_raw + 1}).fetchall()
    if len(rows) <= max_raw:
        return _capped(rows, kept, free)
    params: dict[str, Any] = {}
    for label in LABELS:
        params[f"kept_{label}"] = list(kept[label])
        params[f"free_{label}"] = free[label]
    groups = []
    for row in con.execute(build_query(columns), params).fetchall():
        provider, model, app, *flags, api, error_kind = row[:8]
        other = frozenset(label for label, flag in zip(LABELS, flags, strict=True) if flag)
        groups.append(Group(provider, model, app, other, api, error_kind, _values(row[8:])))
    return groups


def _values(sums: Sequence[Any]) -> tuple[Any, ...]:
    values = [0 if value is None else value for value in sums]
    for i in _MONEY_AT:
        values[i] = Decimal(values[i])
    return tuple(values)


_MONEY_AT = [COLUMNS.index(name) for name in MONEY]
_CALLS_AT = COLUMNS.index("calls")


def _capped(
    rows: Sequence[tuple[Any, ...]], kept: Mapping[str, Sequence[str]], free: Mapping[str, int]
) -> list[Group]:
    """Raw rows (provider, model, app, api, error kind, sums) with the caps applied as the
    two-stage query applies them: per label, the values kept so far, then the most called
    others while there is room (ties by value), the rest None and flagged ``other``; rows that
    become alike are summed."""
    shown: dict[str, set[str]] = {}
    for i, label in enumerate(LABELS):
        before = set(kept[label])
        calls: dict[str, int] = {}
        for row in rows:
            value = row[i]
            if value is not None and value not in before:
                calls[value] = calls.get(value, 0) + row[5 + _CALLS_AT]
        ranked = sorted(calls, key=lambda value: (-calls[value], value))
        shown[label] = before | set(ranked[: free[label]])
    merged: dict[tuple[Any, ...], list[Any]] = {}
    for row in rows:
        labels: list[str | None] = []
        other = []
        for i, label in enumerate(LABELS):
            value = row[i]
            if value is None or value in shown[label]:
                labels.append(value)
            else:
                labels.append(None)
                other.append(label)
        key = (*labels, frozenset(other), row[3], row[4])
        values = _values(row[5:])
        if key in merged:
            merged[key] = [a + b for a, b in zip(merged[key], values, strict=True)]
        else:
            merged[key] = list(values)
    return [
        Group(provider, model, app, other, api, error_kind, tuple(values))
        for (provider, model, app, other, api, error_kind), values in merged.items()
    ]
