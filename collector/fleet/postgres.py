"""The PostgreSQL fleet store: connections that never hang for long, error messages without
the password, and the sink that stores batches exactly once.

A batch is written in one transaction: each table's rows are COPYed into a temporary staging
table, then ``INSERT INTO table SELECT ... FROM staging ON CONFLICT DO NOTHING``; the keys
(``call_id``; a score's content digest) make a batch written twice land once. Scores get
their key here, ``md5`` of their columns' text (the session's time zone is UTC so the text of
``created_at`` is fixed).

The password (from the URL or ``PGPASSWORD``) is never logged, stored, or put in a message:
:class:`FleetAddress` carries the URL as a secret, names the store by its redacted URL, and
:meth:`FleetAddress.scrub` takes the password out of any driver message (libpq quotes parts
of a malformed URL in its errors).
"""

from __future__ import annotations

import logging
import os
from urllib.parse import parse_qsl, unquote, urlsplit

import psycopg
from psycopg import sql

from collector.fleet import schema
from collector.fleet.sink import Batch, SinkRefused, SinkUnavailable
from collector.settings.config import redacted_url
from collector.storage import schema as local

__all__ = ["CONNECT_TIMEOUT_S", "FleetAddress", "PostgresSink"]

log = logging.getLogger("llmtap.fleet")

#: Longest wait for a connection; a statement (a batch, a budget query) may take this long
#: ten times over before the server cancels it; an unresponsive peer is detected by TCP in
#: about as long (tcp_user_timeout and keepalives), so nothing waits on a hung database for ever.
CONNECT_TIMEOUT_S = 5


class FleetAddress:
    """The fleet store's URL, kept secret: it connects, and it is named only redacted."""

    def __init__(self, url: str) -> None:
        self._url = url
        self.redacted = redacted_url(url)
        self._secrets = sorted(_secrets_of(url), key=len, reverse=True)

    def connect(self, application: str, autocommit: bool = False) -> psycopg.Connection:
        """A connection, or SinkUnavailable (with a message safe to log)."""
        try:
            return psycopg.connect(
                self._url,
                autocommit=autocommit,
                connect_timeout=CONNECT_TIMEOUT_S,
                application_name=application,
                keepalives=1,
                keepalives_idle=10,
                keepalives_interval=5,
                keepalives_count=3,
                tcp_user_timeout=CONNECT_TIMEOUT_S * 6 * 1000,
                options=f"-c statement_timeout={CONNECT_TIMEOUT_S * 10 * 1000} -c TimeZone=UTC",
            )
        except psycopg.Error as exc:
            raise SinkUnavailable(self.describe(exc)) from None

    def scrub(self, text: str) -> str:
        """``text`` with the URL shown redacted and the password (any form of it) as ``***``."""
        text = text.replace(self._url, self.redacted)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def describe(self, exc: BaseException) -> str:
        """An error as it may be logged: the store's redacted URL and the scrubbed message."""
        message = " ".join(str(exc).split()) or type(exc).__name__
        return f"{self.redacted}: {self.scrub(message)}"


def _secrets_of(url: str) -> set[str]:
    """Every form the password may take in a message: as written in the URL, decoded, from
    ``password=`` parameters and from ``PGPASSWORD``."""
    found: set[str] = set()
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    if ":" in userinfo:
        raw = userinfo.partition(":")[2]
        found |= {raw, unquote(raw)}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in ("password", "sslpassword"):
            found.add(value)
    for query_part in parts.query.split("&"):
        key, _, raw = query_part.partition("=")
        if key in ("password", "sslpassword"):
            found.add(raw)
    if env := os.environ.get("PGPASSWORD"):
        found.add(env)
    return {secret for secret in found if secret}


def _staging_columns(table: str, columns: tuple[str, ...]) -> sql.Composable:
    types = {**{c: schema.pg_type(t) for c, t in local.TABLES[table].items()}, "body_hash": "bigint"}
    return sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(column), sql.SQL(types[column])) for column in columns
    )


class PostgresSink:
    """Batches into the fleet tables of one PostgreSQL database (see the module docstring)."""

    def __init__(self, address: FleetAddress) -> None:
        self.address = address
        self.where = address.redacted
        self._conn: psycopg.Connection | None = None

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            conn = self.address.connect("llmtap-shipper")
            try:
                schema.ensure_schema(conn)
            except psycopg.Error as exc:
                conn.close()
                raise self._failure(exc) from None
            self._conn = conn
        return self._conn

    def ensure_schema(self) -> None:
        self._connection()

    def write(self, batch: Batch) -> None:
        conn = self._connection()
        try:
            with conn.transaction():
                for table, rows in batch.tables.items():
                    if rows.values:
                        self._insert(conn, table, rows.columns, rows.values, batch.node)
        except psycopg.Error as exc:
            raise self._failure(exc) from None

    def _failure(self, exc: psycopg.Error) -> Exception:
        message = self.address.describe(exc)
        if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError) or (
            self._conn is not None and self._conn.closed
        ):
            self.close()
            return SinkUnavailable(message)
        return SinkRefused(message)

    def _insert(
        self, conn: psycopg.Connection, table: str, columns: tuple[str, ...], values: list, node: str
    ) -> None:
        staging = sql.Identifier(f"llmtap_stage_{table}")
        conn.execute(
            sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} ({}) ON COMMIT DELETE ROWS").format(
                staging, _staging_columns(table, columns)
            )
        )
        names = sql.SQL(", ").join(map(sql.Identifier, columns))
        with conn.cursor().copy(sql.SQL("COPY {} ({}) FROM STDIN").format(staging, names)) as copy:
            for value in values:
                copy.write_row(value)
        targets = [*columns, "node"]
        selected: list[sql.Composable] = [*map(sql.Identifier, columns), sql.Placeholder()]
        if table == "scores":
            targets.append("score_id")
            # A score's key: the digest of its columns' text (it has no id of its own).
            selected.append(sql.SQL("md5(row({})::text)").format(names))
        conn.execute(
            sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} ON CONFLICT DO NOTHING").format(
                sql.Identifier(table),
                sql.SQL(", ").join(map(sql.Identifier, targets)),
                sql.SQL(", ").join(selected),
                staging,
            ),
            [node],
        )

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except psycopg.Error as exc:  # closing a broken connection: nothing left to save
                log.debug("fleet: closing the connection: %s", self.address.describe(exc))
