"""The local store: one sidecar's DuckDB file, read through DuckDB only while a query runs.

DuckDB lets one process write the file, and the proxy's ingester needs it about twice a
second, so every read opens the store read-only (:func:`collector.storage.database.read_connection`),
runs ONE query and closes it before anything else happens (see :mod:`analytics.source`).

``body_hash`` is computed here from ``call_bodies``: DuckDB's ``hash(host, path,
hash(request_body))`` (a UBIGINT), NULL when no body was stored. The fleet store keeps the
same 64 bits per call (see :mod:`collector.fleet.schema`), so both engines agree on it.
``node`` is NULL: a local store's calls belong to no fleet node, whether or not its sidecar
ships them (the fleet store is where nodes are told apart).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from analytics.engines.base import CALL_SCORES, StoredCall, Window
from collector.settings.paths import Paths, resolve_data_dir
from collector.storage import schema
from collector.storage.database import read_connection
from collector.storage.export import export_calls

__all__ = ["LocalStore", "query"]

#: SQL for each column of the calls frame (``c`` is llm_calls, ``b`` call_bodies).
_SELECT: dict[str, str] = {
    **{name: f'c."{name}"' for name in schema.LLM_CALLS},
    **{name: f'c."{name}"::VARCHAR' for name, sql_type in schema.LLM_CALLS.items() if sql_type == "JSON"},
    "model": "coalesce(c.response_model, c.request_model, '(unknown)')",
    "body_hash": "CASE WHEN b.body_hash IS NOT NULL THEN hash(c.host, c.path, b.body_hash) END",
    "node": "NULL::VARCHAR",
}

#: The prompt part of a stored JSON request body (see analytics.recommender.opportunities).
_PROMPT_PART = " || ".join(
    f"coalesce(json_extract(b.request_body, '$.{key}')::VARCHAR, '')"
    for key in ("system", "tools", "messages", "contents", "input")
)
_PREFIXES = """
SELECT call_id,
    CASE WHEN length(prompt) >= {chars} THEN hash(left(prompt, {chars})) END AS prefix_hash
FROM (
    SELECT b.call_id, {prompt} AS prompt FROM call_bodies b JOIN llm_calls c USING (call_id)
    WHERE b.request_body IS NOT NULL AND json_valid(b.request_body) {window}
)
"""


def _bounds(window: Window) -> tuple[list[str], list[datetime]]:
    """The window's conditions on ``c.started_at`` and their parameters (``since`` first)."""
    if window.nodes:
        raise ValueError(
            "a node filter needs the fleet store (--store postgresql://...): a local store's calls "
            "have no node"
        )
    pairs = [
        (clause, bound)
        for clause, bound in (("c.started_at >= ?", window.since), ("c.started_at < ?", window.until))
        if bound
    ]
    return [clause for clause, _ in pairs], [bound for _, bound in pairs]


def query(columns: list[str], window: Window, limit: int | None) -> tuple[str, list[datetime]]:
    """The one SQL statement a read of the calls runs, and its parameters.

    ``call_bodies`` is joined only when ``body_hash`` is wanted."""
    select = ", ".join(f'{_SELECT[name]} AS "{name}"' for name in columns)
    source = "llm_calls c"
    if "body_hash" in columns:
        # Hashing the bodies before the join keeps the request text out of the join's
        # hash table (a third faster than joining the bodies themselves).
        source += (
            " LEFT JOIN (SELECT call_id, hash(request_body) AS body_hash FROM call_bodies"
            " WHERE request_body IS NOT NULL) b ON b.call_id = c.call_id"
        )
    clauses, params = _bounds(window)
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    sql = f"SELECT {select} FROM {source}{where}" + (f" LIMIT {int(limit)}" if limit is not None else "")
    return sql, params


@dataclass(frozen=True, slots=True)
class LocalStore:
    """The DuckDB store at ``db``."""

    db: Path

    @classmethod
    def of(cls, data: str | Path | None) -> LocalStore:
        """The store of a data directory (None: ``$LLMTAP_DATA_DIR``, else ``~/.llmtap``), or
        ``data`` itself when it names the ``.duckdb`` file."""
        path = Path(data).expanduser() if data is not None else resolve_data_dir(None)
        return cls(path if path.suffix == ".duckdb" else Paths(path).db)

    @property
    def label(self) -> str:
        return str(self.db)

    def check(self, window: Window) -> None:
        _bounds(window)
        if not self.db.exists():
            raise FileNotFoundError(
                f"no llmtap store at {self.db}: start `llmtap proxy` (or pass --data-dir)"
            )

    def calls(self, columns: list[str], window: Window, limit: int | None) -> pl.DataFrame:
        sql, params = query(columns, window, limit)
        with read_connection(self.db) as con:
            con.execute("SET TimeZone = 'UTC'")
            con.execute("SET produce_arrow_string_view = true")
            table = con.sql(sql, params=params).to_arrow_table()
        return _frame(table)

    def scores(self, columns: list[str]) -> pl.DataFrame | None:
        select = ", ".join(f'"{name}"' for name in columns)
        with read_connection(self.db) as con:
            con.execute("SET TimeZone = 'UTC'")
            if not _has_scores(con):
                return None
            table = con.sql(f"SELECT {select} FROM scores").to_arrow_table()
        return _frame(table)

    def prefix_hashes(self, window: Window, chars: int) -> pl.DataFrame | None:
        clauses, params = _bounds(window)
        bounded = "".join(f" AND {clause}" for clause in clauses)
        sql = _PREFIXES.format(chars=int(chars), prompt=_PROMPT_PART, window=bounded)
        with read_connection(self.db) as con:
            table = con.sql(sql, params=params).to_arrow_table()
        return _frame(table)

    def property_keys(self, since: datetime | None) -> list[str]:
        where, params = ("WHERE started_at >= ? AND", [since]) if since else ("WHERE", [])
        sql = (
            f"SELECT DISTINCT unnest(json_keys(properties)) AS key FROM llm_calls {where} "
            "properties IS NOT NULL ORDER BY key"
        )
        with read_connection(self.db) as con:
            return [key for (key,) in con.execute(sql, params).fetchall()]

    def call(self, call_id: str) -> StoredCall | None:
        with read_connection(self.db) as con:
            con.execute("SET TimeZone = 'UTC'")
            row = _one(con, "SELECT * FROM llm_calls WHERE call_id = ?", call_id)
            if row is None:
                return None
            span = _one(con, "SELECT * EXCLUDE (call_id) FROM spans WHERE call_id = ?", call_id)
            bodies = _one(con, "SELECT * EXCLUDE (call_id) FROM call_bodies WHERE call_id = ?", call_id)
            scores = _call_scores(con, call_id)
        if span is not None and span["attributes"] is not None:
            span["attributes"] = json.loads(span["attributes"])
        return StoredCall(call=row, span=span, bodies=bodies, scores=scores)

    def state(self) -> tuple[int, ...]:
        """Size and modification time of the file and its write-ahead log: they change whenever
        the proxy's ingester adds calls."""
        parts = [path.stat() for path in (self.db, self.db.with_name(self.db.name + ".wal")) if path.exists()]
        return tuple(n for stat in parts for n in (stat.st_size, stat.st_mtime_ns))

    def export(self, fmt: str, window: Window, out: Path | None) -> int:
        self.check(window)
        return export_calls(self.db, fmt, window.since, window.until, out)


def _frame(table: Any) -> pl.DataFrame:
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return frame


def _has_scores(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether the store has a scores table (a store an llmtap without scores made has none, and
    a read-only connection cannot add it)."""
    return bool(con.execute("SELECT 1 FROM information_schema.tables WHERE table_name = 'scores'").fetchall())


def _call_scores(con: duckdb.DuckDBPyConnection, call_id: str) -> pl.DataFrame:
    if not _has_scores(con):
        return pl.DataFrame(schema=CALL_SCORES)
    rows = con.execute(
        f"SELECT {', '.join(CALL_SCORES)} FROM scores WHERE call_id = ? ORDER BY created_at, name", [call_id]
    ).fetchall()
    return pl.DataFrame(rows, schema=CALL_SCORES, orient="row")


def _one(con: duckdb.DuckDBPyConnection, sql: str, *params: Any) -> dict[str, Any] | None:
    cursor = con.execute(sql, list(params))
    row = cursor.fetchone()
    return None if row is None else dict(zip([d[0] for d in cursor.description], row, strict=True))
