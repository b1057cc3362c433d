"""The fleet store's tables in PostgreSQL, derived from the local store's declared columns.

Every column is declared once, in :mod:`collector.storage.schema`; this module maps those
declarations to PostgreSQL types and adds what the fleet needs on top:

* ``node``: the sidecar that recorded the row (``[fleet] node``, by default the host name);
* ``llm_calls.body_hash``: the request's hash as the waste analysis uses it (see below),
  shipped instead of the bodies, which stay on the sidecar that recorded them;
* ``llm_calls.shipped_at``: when the row arrived (the shipper's lag is measured with it);
* ``scores.score_id``: a digest of the score's content, its key (a score has no id of its own).

Types: VARCHAR is ``text``, TIMESTAMPTZ ``timestamptz`` (both keep microseconds), DECIMAL(18,9)
``numeric(18,9)`` (exact), VARCHAR[] ``text[]``, and JSON is **text**, not jsonb: jsonb
reorders keys and respaces the document, so ``properties`` (which the analyses read as
text and parse) would differ from the local store's byte for byte, and jsonb refuses the
``\\u0000`` escape that a hostile header can put in a property. Queries that need a JSON
field cast (``properties::json ->> 'name'``). PostgreSQL text cannot hold a NUL character,
which DuckDB's can: the shipper stores U+FFFD in its place (the one value that may differ).

``body_hash`` is DuckDB's ``hash(host, path, hash(request_body))`` (a UBIGINT, see
``analytics/source.py``), stored as the bigint with the same 64 bits (two's complement): a
reader gets the local value back with Polars' ``reinterpret(signed=False)``. NULL when no body
was stored (capture mode ``metadata``).

Keys: ``llm_calls`` and ``spans`` on ``call_id`` (one span per call), ``scores`` on
``score_id``; so shipping a row twice stores it once.

Schema changes are versioned: :data:`MIGRATIONS` run in order, each once, recorded in
``llmtap_schema``, all under one transaction-scoped advisory lock, so any number of
sidecars starting against an empty database create it once. A column added to the local
declarations is added here too, by the same mechanism (recorded by the digest of the
declared columns), so the two cannot drift apart.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
from psycopg import sql

from collector.storage import schema as local

__all__ = [
    "EXTRA_COLUMNS",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "TABLES",
    "Migration",
    "ensure_schema",
    "pg_type",
]

log = logging.getLogger("llmtap.fleet")

#: DuckDB type (as :mod:`collector.storage.schema` spells it) to PostgreSQL type.
_PG_TYPES = {
    "VARCHAR": "text",
    "JSON": "text",
    "TIMESTAMPTZ": "timestamptz",
    "INTEGER": "integer",
    "BIGINT": "bigint",
    "BOOLEAN": "boolean",
    "DOUBLE": "double precision",
    "DECIMAL(18,9)": "numeric(18,9)",
    "VARCHAR[]": "text[]",
}


def pg_type(duckdb_type: str) -> str:
    """The PostgreSQL type of a column declared with ``duckdb_type``."""
    return _PG_TYPES[duckdb_type]


#: Columns the fleet tables have beyond the local ones (PostgreSQL types).
EXTRA_COLUMNS: dict[str, dict[str, str]] = {
    "llm_calls": {
        "node": "text NOT NULL",
        "body_hash": "bigint",
        "shipped_at": "timestamptz NOT NULL DEFAULT clock_timestamp()",
    },
    "spans": {"node": "text NOT NULL"},
    "scores": {"node": "text NOT NULL", "score_id": "text NOT NULL"},
}

_KEYS = {"llm_calls": ("call_id",), "spans": ("call_id",), "scores": ("score_id",)}


def _table(name: str) -> dict[str, str]:
    declared = {column: pg_type(ctype) for column, ctype in local.TABLES[name].items()}
    for column in _KEYS[name]:
        if column in declared:
            declared[column] += " NOT NULL"
    return {**declared, **EXTRA_COLUMNS[name]}


#: The fleet tables: name to column to PostgreSQL type (with constraints).
TABLES: dict[str, dict[str, str]] = {name: _table(name) for name in ("llm_calls", "spans", "scores")}


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema change: applied once per database, in version order."""

    version: int
    what: str
    apply: Callable[[psycopg.Connection], None]


def _create_tables(conn: psycopg.Connection) -> None:
    for name, columns in TABLES.items():
        definition = sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(column), sql.SQL(ctype))
            for column, ctype in columns.items()
        )
        key = sql.SQL(", ").join(map(sql.Identifier, _KEYS[name]))
        conn.execute(
            sql.SQL("CREATE TABLE IF NOT EXISTS {} ({}, PRIMARY KEY ({}))").format(
                sql.Identifier(name), definition, key
            )
        )
    # The time window every reading query and the fleet budgets filter on.
    conn.execute("CREATE INDEX IF NOT EXISTS llm_calls_started_at ON llm_calls (started_at)")
    conn.execute("CREATE INDEX IF NOT EXISTS llm_calls_node_started_at ON llm_calls (node, started_at)")


#: Every change of the fleet schema, oldest first. Columns added to the local declarations
#: need no entry: :func:`ensure_schema` adds them (see :func:`_declared_digest`).
MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "llm_calls, spans and scores from collector.storage.schema, with node", _create_tables),
)
SCHEMA_VERSION = MIGRATIONS[-1].version

#: The advisory lock key that serialises schema changes ("llmtap" in ASCII, as a bigint).
_LOCK_KEY = int.from_bytes(b"llmtap", "big")


def _declared_digest() -> str:
    """A digest of the declared columns: a new local column changes it, and the next start adds it."""
    return hashlib.sha256(json.dumps(TABLES, sort_keys=True).encode()).hexdigest()[:16]


def _up_to_date(conn: psycopg.Connection, digest: str) -> bool:
    row = conn.execute("SELECT to_regclass('llmtap_schema') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return False
    row = conn.execute("SELECT max(version), bool_or(digest = %s) FROM llmtap_schema", [digest]).fetchone()
    return row is not None and (row[0] or 0) >= SCHEMA_VERSION and bool(row[1])


def ensure_schema(conn: psycopg.Connection) -> int:
    """Bring the fleet tables to :data:`SCHEMA_VERSION` and the declared columns; returns the
    number of migrations applied (0 when the database was up to date, the usual case, which
    takes no lock). Safe to call from many sidecars at once.

    ``conn`` must not be inside a transaction; its own commits and rolls back what it did."""
    digest = _declared_digest()
    up_to_date = _up_to_date(conn, digest)
    conn.rollback()  # end the read's transaction (non-autocommit connections), so the block below commits
    if up_to_date:
        return 0
    applied = 0
    with conn.transaction():
        # Held to the end of this transaction: the other sidecars wait here, then see it done.
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK_KEY])
        conn.execute(
            "CREATE TABLE IF NOT EXISTS llmtap_schema (version integer NOT NULL, digest text NOT NULL, "
            "what text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now(), "
            "PRIMARY KEY (version, digest))"
        )
        row = conn.execute("SELECT coalesce(max(version), 0) FROM llmtap_schema").fetchone()
        current = row[0] if row else 0
        for migration in MIGRATIONS:
            if migration.version > current:
                migration.apply(conn)
                conn.execute(
                    "INSERT INTO llmtap_schema (version, digest, what) VALUES (%s, %s, %s)",
                    [migration.version, digest, migration.what],
                )
                applied += 1
                log.info("fleet store: schema version %d applied (%s)", migration.version, migration.what)
        row = conn.execute("SELECT 1 FROM llmtap_schema WHERE digest = %s", [digest]).fetchone()
        if row is None:
            _add_declared_columns(conn)
            conn.execute(
                "INSERT INTO llmtap_schema (version, digest, what) VALUES (%s, %s, %s)",
                [SCHEMA_VERSION, digest, "columns added to the local declarations"],
            )
            applied += 1
    return applied


def _add_declared_columns(conn: psycopg.Connection) -> None:
    """Columns declared since the tables were made (each ``ADD COLUMN IF NOT EXISTS``). A NOT
    NULL constraint is left off: rows shipped before the column existed have no value."""
    for name, columns in TABLES.items():
        for column, ctype in columns.items():
            plain = ctype.replace(" NOT NULL", "") if column not in _KEYS[name] else ctype
            conn.execute(
                sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}").format(
                    sql.Identifier(name), sql.Identifier(column), sql.SQL(plain)
                )
            )
