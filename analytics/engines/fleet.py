"""The fleet store: every sidecar's calls in PostgreSQL (:mod:`collector.fleet.schema`), read
with connectorx, which hands PostgreSQL's binary rows to Arrow in Rust (no Python loop over
rows; several times faster than a cursor), then to Polars without a copy.

Each read is one SQL statement with the needed columns, the time window and the node filter
in its WHERE clause, so the database's ``started_at`` index does the windowing and only those
columns cross the network. connectorx takes no query parameters, so the window's bounds and
the node names are written into the statement as quoted literals (ISO 8601 times from
datetimes, node names with their quotes doubled).

Types come back as PostgreSQL has them (``numeric`` as Decimal(38, 10), ``text[]`` as large
lists); the caller casts them to the frame's schema. ``body_hash`` is the local store's UBIGINT
stored as the bigint with the same bits: it is reinterpreted as unsigned here. The fleet
keeps no request bodies (they stay on the sidecar that recorded them), so the prompt-prefix
evidence of the recommender is not at hand (its caching records say so), and a call's detail
has no bodies.

Before each read a psycopg connection (5 s timeout) checks the database answers: connectorx's
own pool retries an unreachable server for half a minute, logging each attempt, where a
reader should fail at once with one line (:class:`analytics.engines.FleetStoreError`). The
URL's password (or ``PGPASSWORD``, which connectorx does not read: it is put in the URL it
gets) appears in no message: :class:`collector.fleet.postgres.FleetAddress` names the store
redacted and scrubs drivers' messages.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import connectorx as cx
import polars as pl
import psycopg
from psycopg.rows import dict_row

from analytics.engines.base import CALL_SCORES, FleetStoreError, StoredCall, Window
from collector.fleet.postgres import FleetAddress
from collector.fleet.sink import SinkUnavailable
from collector.storage import schema

__all__ = ["FleetStore", "query"]

#: SQL for each column of the calls frame (``c`` is the fleet's llm_calls).
_SELECT: dict[str, str] = {
    **{name: f'c."{name}"' for name in schema.LLM_CALLS},
    "model": "coalesce(c.response_model, c.request_model, '(unknown)')",
    "body_hash": "c.body_hash",
    "node": "c.node",
}
#: Columns of a call's detail that are the fleet's own bookkeeping, not the call's.
_BOOKKEEPING = ("shipped_at",)


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _where(window: Window) -> str:
    clauses = [
        f"c.started_at {op} {_literal(bound.isoformat())}::timestamptz"
        for op, bound in ((">=", window.since), ("<", window.until))
        if bound is not None
    ]
    if window.nodes:
        clauses.append(f"c.node IN ({', '.join(map(_literal, window.nodes))})")
    return f" WHERE {' AND '.join(clauses)}" if clauses else ""


def query(columns: list[str], window: Window, limit: int | None) -> str:
    """The one SQL statement a read of the calls runs (its bounds written in)."""
    select = ", ".join(f'{_SELECT[name]} AS "{name}"' for name in columns)
    return f"SELECT {select} FROM llm_calls c{_where(window)}" + (
        f" LIMIT {int(limit)}" if limit is not None else ""
    )


@dataclass(frozen=True, slots=True)
class FleetStore:
    """The fleet store at ``url`` (a ``postgresql://`` URL; the password in it or in
    ``PGPASSWORD``)."""

    url: str = field(repr=False)

    @property
    def address(self) -> FleetAddress:
        return FleetAddress(self.url)

    @property
    def label(self) -> str:
        return self.address.redacted

    def check(self, window: Window) -> None:
        with self._connection() as conn:
            row = conn.execute("SELECT to_regclass('llm_calls') IS NOT NULL").fetchone()
        if not (row and row[0]):
            raise FleetStoreError(
                f"the fleet store {self.label} holds no llmtap tables yet: they are made when a "
                "sidecar with [fleet] url starts"
            )

    def calls(self, columns: list[str], window: Window, limit: int | None) -> pl.DataFrame:
        frame = self._arrow(query(columns, window, limit))
        if "body_hash" in columns:
            frame = frame.with_columns(pl.col("body_hash").cast(pl.Int64).reinterpret(signed=False))
        return frame

    def scores(self, columns: list[str]) -> pl.DataFrame | None:
        return self._arrow(f"SELECT {', '.join(map(_quoted, columns))} FROM scores")

    def prefix_hashes(self, window: Window, chars: int) -> pl.DataFrame | None:
        return None  # the bodies stay on the sidecars

    def property_keys(self, since: datetime | None) -> list[str]:
        where = _where(Window(since=since))
        sql = (
            "SELECT DISTINCT json_object_keys(c.properties::json) AS key FROM llm_calls c"
            f"{where} {'AND' if where else 'WHERE'} c.properties IS NOT NULL ORDER BY key"
        )
        with self._connection() as conn:
            return [key for (key,) in conn.execute(sql).fetchall()]

    def call(self, call_id: str) -> StoredCall | None:
        with self._connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            row = cur.execute("SELECT * FROM llm_calls WHERE call_id = %s", [call_id]).fetchone()
            if row is None:
                return None
            span = cur.execute("SELECT * FROM spans WHERE call_id = %s", [call_id]).fetchone()
            scored = cur.execute(
                f"SELECT {', '.join(CALL_SCORES)} FROM scores WHERE call_id = %s ORDER BY created_at, name",
                [call_id],
            ).fetchall()
        call = {k: v for k, v in row.items() if k not in _BOOKKEEPING}
        call["body_hash"] = _unsigned(call.get("body_hash"))
        if span is not None:
            span = {k: v for k, v in span.items() if k not in ("call_id", "node")}
            if span["attributes"] is not None:
                span["attributes"] = json.loads(span["attributes"])
        scores = pl.DataFrame([tuple(r.values()) for r in scored], schema=CALL_SCORES, orient="row")
        return StoredCall(call=call, span=span, bodies=None, scores=scores)

    def state(self) -> tuple[int, ...]:
        """The latest call's start (the index answers at once: most new rows start last) and the
        rows PostgreSQL counts as added to the calls and scores (catches a backlog of older calls
        arriving; its statistics lag commits by up to about ten seconds)."""
        with self._connection() as conn:
            row = conn.execute(
                "SELECT (SELECT coalesce(extract(epoch FROM max(started_at)) * 1e6, 0)::bigint"
                " FROM llm_calls), (SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0)::bigint"
                " FROM pg_stat_user_tables WHERE relname IN ('llm_calls', 'scores'))"
            ).fetchone()
        assert row is not None
        return (1, *row)

    def export(self, fmt: str, window: Window, out: Path | None) -> int:
        columns = [*schema.LLM_CALLS, "node"]
        frame = self.calls(columns, window, None).sort("started_at", maintain_order=True)
        target: Any = out if out is not None else sys.stdout.buffer
        if fmt == "jsonl":
            frame.write_ndjson(target)
        elif fmt == "csv":
            # CSV has no lists: written as DuckDB's export writes them, [a, b].
            lists = [name for name, dtype in frame.schema.items() if isinstance(dtype, pl.List)]
            as_text = [pl.format("[{}]", pl.col(name).list.join(", ")) for name in lists]
            frame.with_columns(as_text).write_csv(target)
        elif fmt == "parquet":
            frame.write_parquet(target)
        else:
            raise ValueError(f"format must be one of jsonl, csv, parquet, got {fmt!r}")
        return frame.height

    def _connection(self) -> psycopg.Connection:
        """An autocommit connection in UTC; FleetStoreError within 5 s when there is none."""
        try:
            return self.address.connect("llmtap-reader", autocommit=True)
        except SinkUnavailable as exc:
            raise FleetStoreError(f"cannot reach the fleet store {exc}") from None

    def _arrow(self, sql: str) -> pl.DataFrame:
        self._connection().close()  # fail in 5 s with one line, not after connectorx's retries
        try:
            table = cx.read_sql(_with_password(self.url), sql, return_type="arrow")
        except RuntimeError as exc:
            raise FleetStoreError(f"cannot read the fleet store {self.address.describe(exc)}") from None
        frame = pl.from_arrow(table)
        assert isinstance(frame, pl.DataFrame)
        return frame


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _unsigned(value: int | None) -> int | None:
    return None if value is None else value % 2**64


def _with_password(url: str) -> str:
    """``url`` with ``PGPASSWORD`` put in when it has none of its own: connectorx reads only the
    URL, and the password may be given either way."""
    parts = urlsplit(url)
    password = os.environ.get("PGPASSWORD")
    if parts.password is not None or not password or any(k == "password" for k, _ in parse_qsl(parts.query)):
        return url
    return urlunsplit(parts._replace(query=urlencode([*parse_qsl(parts.query), ("password", password)])))
