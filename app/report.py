"""``llmtap report``: a terminal summary of calls, tokens, cost, latency and errors."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from collector.store import read_connection

GROUPS = {
    "model": "coalesce(response_model, request_model, '(unknown)')",
    "provider": "provider",
    "app": "coalesce(app, '(none)')",
    "day": "strftime(started_at AT TIME ZONE 'UTC', '%Y-%m-%d')",
}
HEADERS = ("calls", "input tok", "output tok", "cost $", "p50 ms", "p95 ms", "errors")


def summary(db_path: Path, by: str, since: datetime | None) -> list[tuple]:
    key = GROUPS[by]
    where, params = ("WHERE started_at >= ?", [since]) if since else ("", [])
    query = f"""
        SELECT {key} AS key, count(*), sum(input_tokens), sum(output_tokens), sum(cost_usd),
               quantile_cont(latency_ms, 0.5), quantile_cont(latency_ms, 0.95),
               count(*) FILTER (WHERE error IS NOT NULL)
        FROM llm_calls {where} GROUP BY key ORDER BY 2 DESC, 1
    """
    with read_connection(db_path) as con:
        return con.execute(query, params).fetchall()


def unpriced(db_path: Path, since: datetime | None) -> list[tuple[str, str, int]]:
    """(model, provider, calls) with usage but no price: what to add to ``[prices]``."""
    where = "AND started_at >= ?" if since else ""
    query = f"""
        SELECT coalesce(response_model, request_model, '(unknown)') AS model, provider, count(*) AS calls
        FROM llm_calls
        WHERE cost_usd IS NULL AND (input_tokens IS NOT NULL OR output_tokens IS NOT NULL) {where}
        GROUP BY ALL ORDER BY calls DESC, model, provider
    """
    with read_connection(db_path) as con:
        return con.execute(query, [since] if since else []).fetchall()


def render_unpriced(rows: list[tuple[str, str, int]]) -> str:
    """The unpriced models as an indented table under a note saying how to price them; "" if none."""
    if not rows:
        return ""
    table = _table([("model", "provider", "calls"), *((m, p, f"{n:,}") for m, p, n in rows)])
    return (
        'unpriced models (cost unknown; add [prices."MODEL"] to the config, then `llmtap reprice`):\n'
        + "\n".join("  " + line for line in table.splitlines())
    )


def render(rows: list[tuple], by: str) -> str:
    def fmt(value: object, col: int) -> str:
        if value is None:
            return "-"
        if col == 4:
            return f"{value:,.4f}"
        if isinstance(value, float):
            return f"{value:,.1f}"
        if isinstance(value, int):
            return f"{value:,}"
        return str(value)

    if not rows:
        return "no calls recorded in this window"
    return _table([(by, *HEADERS)] + [tuple(fmt(v, i) for i, v in enumerate(r)) for r in rows])


def _table(table: list[tuple[str, ...]]) -> str:
    """Rows of text as aligned columns (first left, rest right) under a rule."""
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in table
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
