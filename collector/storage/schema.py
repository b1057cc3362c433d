"""Column definitions of llmtap's tables, kept as data.

One definition feeds the CREATE TABLE statements, the spool reader's column types
and the exporter, so they cannot drift apart.

The columns that proxy stages other than the recorder set (the caller's metadata, a model
rewrite, routing, comparison, the response cache) are declared here as the dataclasses those
stages fill in flight (:mod:`collector.proxy.call`): the stage's part of the call state, the
spool line and the row are all made from these fields, so a column of them is spelled once, here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any


@dataclass(slots=True)
class CallMetadata:
    """The caller's ``X-Llmtap-*`` headers (see :mod:`collector.proxy.addons.metadata`)."""

    app: str | None = None
    user_id: str | None = None
    session_id: str | None = None
    properties: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class ModelRewrite:
    """Set when llmtap sent the call to another model (a budget downgrade, a routing rule)."""

    #: The client's model.
    routed_from_model: str | None = None


@dataclass(slots=True)
class RoutingMarks:
    """What the routing rules did with the call (see :mod:`collector.proxy.addons.router`)."""

    #: The rule that acted on this call and the arm it fell in (``canary``, ``control``,
    #: ``enforce``, ``live``, ``shadow``, ``noise_floor``, ``judge``, ``retry``).
    routing_rule: str | None = None
    routing_arm: str | None = None
    #: A shadow copy or judge call: the call_id of the live call it serves; a retry: the failed call's.
    shadow_of: str | None = None
    retry_of: str | None = None


@dataclass(slots=True)
class Comparison:
    """A shadow copy's output compared with its original's (see
    :mod:`collector.proxy.addons.comparison`): the method, and whether they agree."""

    comparison: str | None = None
    agreement: bool | None = None


@dataclass(slots=True)
class CacheMarks:
    """What the response cache did with the call (see :mod:`collector.proxy.addons.cache`):
    nothing (NULL) when no cache applied to it, ``cache_hit`` false for a miss, true for an answer
    served from the cache, with ``cache_of`` the call that fetched that answer from the provider."""

    cache_hit: bool | None = None
    cache_of: str | None = None


#: SQL type per field annotation of the dataclasses above.
_SQL_TYPES = {"str": "VARCHAR", "bool": "BOOLEAN", "dict[str, str]": "JSON"}


def _columns(part: type) -> dict[str, str]:
    return {f.name: _SQL_TYPES[str(f.type).removesuffix(" | None")] for f in fields(part)}


def part_columns(part: Any) -> dict[str, Any]:
    """The columns of one filled part; an empty value (no properties) is stored as NULL."""
    return {f.name: _or_null(getattr(part, f.name)) for f in fields(part)}


def _or_null(value: Any) -> Any:
    return None if value == {} else value


LLM_CALLS: dict[str, str] = {
    "call_id": "VARCHAR",
    "started_at": "TIMESTAMPTZ",
    "ended_at": "TIMESTAMPTZ",
    "provider": "VARCHAR",
    "api": "VARCHAR",
    "method": "VARCHAR",
    "host": "VARCHAR",
    "path": "VARCHAR",
    "status_code": "INTEGER",
    "stream": "BOOLEAN",
    "request_model": "VARCHAR",
    "response_model": "VARCHAR",
    **_columns(ModelRewrite),
    "input_tokens": "BIGINT",
    "output_tokens": "BIGINT",
    "cache_read_tokens": "BIGINT",
    "cache_write_tokens": "BIGINT",
    "reasoning_tokens": "BIGINT",
    "usage_source": "VARCHAR",
    "latency_ms": "DOUBLE",
    "ttft_ms": "DOUBLE",
    "cost_usd": "DECIMAL(18,9)",
    "input_cost_usd": "DECIMAL(18,9)",
    "output_cost_usd": "DECIMAL(18,9)",
    "price_ref": "VARCHAR",
    **_columns(CallMetadata),
    "trace_id": "VARCHAR",
    "span_id": "VARCHAR",
    "error": "VARCHAR",
    # Beyond the contract: kept so later analyses and repricing need no re-capture.
    "finish_reasons": "VARCHAR[]",
    "response_id": "VARCHAR",
    "usage_raw": "JSON",
    "service_tier": "VARCHAR",
    "provider_cost_usd": "DECIMAL(18,9)",
    "request_features": "VARCHAR[]",
    "max_output_tokens": "BIGINT",
    # Routing (the recommender's rules applied by the proxy; see collector/proxy/addons/router.py).
    "routing_rule": "VARCHAR",
    "routing_arm": "VARCHAR",
    "shadow_of": "VARCHAR",
    "retry_of": "VARCHAR",
    "comparison": "VARCHAR",
    "agreement": "BOOLEAN",
    # The response cache (see collector/proxy/addons/cache.py): what it did and, for a hit (whose
    # cost is 0), what the answer would have cost from the provider (its tokens priced).
    **_columns(CacheMarks),
    "cache_saved_usd": "DECIMAL(18,9)",
}

CALL_BODIES: dict[str, str] = {
    "call_id": "VARCHAR",
    "capture_mode": "VARCHAR",
    "request_body": "VARCHAR",
    "response_body": "VARCHAR",
}

SPANS: dict[str, str] = {
    "trace_id": "VARCHAR",
    "span_id": "VARCHAR",
    "parent_span_id": "VARCHAR",
    "call_id": "VARCHAR",
    "name": "VARCHAR",
    "kind": "VARCHAR",
    "start_time": "TIMESTAMPTZ",
    "end_time": "TIMESTAMPTZ",
    "status": "VARCHAR",
    "attributes": "JSON",
}

#: A score of one call's answer, in [0, 1]: from a grader the proxy ran on it, or feedback the
#: app posted (``source``). A grader that could not score leaves ``value`` NULL and says why
#: in ``error``, so failures are counted, not lost (see :mod:`collector.calls.scores`).
SCORES: dict[str, str] = {
    "call_id": "VARCHAR",
    "name": "VARCHAR",
    "value": "DOUBLE",
    "source": "VARCHAR",
    "created_at": "TIMESTAMPTZ",
    "error": "VARCHAR",
}

#: Each spool line is one JSON object: either a call, with the llm_calls columns at the top
#: level plus ``body`` (CALL_BODIES minus call_id, or null) and ``span`` (SPANS minus
#: call_id), or a score: ``{"score": {SCORES columns}}``.
TABLES: dict[str, dict[str, str]] = {
    "llm_calls": LLM_CALLS,
    "call_bodies": CALL_BODIES,
    "spans": SPANS,
    "scores": SCORES,
}


def create_statements() -> list[str]:
    statements = [
        f"CREATE TABLE IF NOT EXISTS {name} ({', '.join(f'{c} {t}' for c, t in cols.items())})"
        for name, cols in TABLES.items()
    ]
    statements.append(
        "CREATE TABLE IF NOT EXISTS spool_ingested (name VARCHAR PRIMARY KEY, rows BIGINT, "
        "ingested_at TIMESTAMPTZ DEFAULT current_timestamp)"
    )
    return statements


def migrate_statements() -> list[str]:
    """Add columns that a store created by an earlier llmtap lacks."""
    return [
        f"ALTER TABLE {name} ADD COLUMN IF NOT EXISTS {column} {ctype}"
        for name, cols in TABLES.items()
        for column, ctype in cols.items()
    ]
