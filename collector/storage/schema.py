"""Column definitions of llmtap's tables, kept as data.

One definition feeds the CREATE TABLE statements, the spool reader's column types
and the exporter, so they cannot drift apart.
"""

from __future__ import annotations

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
    "routed_from_model": "VARCHAR",
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
    "app": "VARCHAR",
    "user_id": "VARCHAR",
    "session_id": "VARCHAR",
    "properties": "JSON",
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

#: Each spool line is one JSON object: the llm_calls columns at the top level, plus
#: ``body`` (CALL_BODIES minus call_id, or null) and ``span`` (SPANS minus call_id).
TABLES: dict[str, dict[str, str]] = {
    "llm_calls": LLM_CALLS,
    "call_bodies": CALL_BODIES,
    "spans": SPANS,
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
