"""Routing rules across the fleet: one rules document in the fleet store, which every
sidecar's proxy follows through its usual hot reload.

The document is the rules file's YAML, byte for byte (:func:`collector.routing.rules.dump_rules`),
in the one row of ``routing_rules`` with a ``version`` that each write increments and the
time it was written. ``llmtap recommend --write-rules --store postgresql://...`` (or the
dashboard on the fleet store) merges drafted rules into it as into a file.

A proxy reads it through :class:`FleetRulesFeed`: a daemon thread fetches the row every
:data:`POLL_S` seconds (never on the event loop), and the router's watch
(:class:`collector.proxy.addons.router.RulesWatch`) sees its version change as it sees a file's.
The feed fails open: while the database cannot be read it keeps the last document it read,
and says so once (and once when it is back). Until the fleet store holds a document (none
written yet, or not reachable since the start) the sidecar's own rules file applies, so
turning fleet mode on never drops the rules a sidecar already had.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import psycopg

from collector.fleet.postgres import FleetAddress
from collector.fleet.sink import SinkUnavailable
from collector.routing.rules import RulesError, RulesFile

__all__ = ["POLL_S", "TABLE", "FleetRulesFeed", "FleetRulesTable", "ensure_rules_table"]

log = logging.getLogger("llmtap.fleet")

#: Seconds between a proxy's reads of the fleet's rules: how long a written rule takes, at
#: most, to reach every sidecar (plus the router's one-second check).
POLL_S = 5.0
TABLE = "routing_rules"
#: One row (``id`` 1): the fleet has one rules document.
_DDL = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    id smallint PRIMARY KEY CHECK (id = 1),
    document text NOT NULL,
    version bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
)
"""
#: Serialises the table's creation ("llmtap-rules" in ASCII, truncated to a bigint): concurrent
#: CREATE TABLE IF NOT EXISTS can fail on PostgreSQL's catalog.
_LOCK_KEY = int.from_bytes(b"lt-rules", "big")
_WRITE = f"""
INSERT INTO {TABLE} (id, document, version) VALUES (1, %s, 1)
ON CONFLICT (id) DO UPDATE SET document = EXCLUDED.document, version = {TABLE}.version + 1,
    updated_at = now()
"""


def ensure_rules_table(conn: psycopg.Connection) -> None:
    """Create ``routing_rules`` unless it exists; safe from many writers at once."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK_KEY])
        conn.execute(_DDL)


@dataclass(frozen=True, slots=True)
class FleetRulesTable:
    """The fleet's rules document, read and written directly (a command's one-off use; the
    proxy reads through :class:`FleetRulesFeed`). Errors are RulesError, one line, with the
    store named by its redacted URL."""

    url: str = field(repr=False)

    @property
    def label(self) -> str:
        return f"{TABLE} in {FleetAddress(self.url).redacted}"

    def fetch(self) -> tuple[int, str] | None:
        """(version, document), or None when no document was written yet."""
        with self._connection() as conn, self._errors():
            if conn.execute("SELECT to_regclass(%s)", [TABLE]).fetchone() == (None,):
                return None
            row = conn.execute(f"SELECT version, document FROM {TABLE} WHERE id = 1").fetchone()
        return None if row is None else (row[0], row[1])

    def version(self) -> Hashable:
        fetched = self.fetch()
        return None if fetched is None else fetched[0]

    def text(self) -> str | None:
        fetched = self.fetch()
        return None if fetched is None else fetched[1]

    def write(self, text: str) -> None:
        with self._connection() as conn, self._errors():
            ensure_rules_table(conn)
            conn.execute(_WRITE, [text])

    def _connection(self) -> psycopg.Connection:
        try:
            return FleetAddress(self.url).connect("llmtap-rules", autocommit=True)
        except SinkUnavailable as exc:
            raise RulesError(f"cannot reach the fleet's rules: {exc}") from None

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """A database error as RulesError, scrubbed of the password."""
        try:
            yield
        except psycopg.Error as exc:
            raise RulesError(f"the fleet's rules: {FleetAddress(self.url).describe(exc)}") from None


class FleetRulesFeed:
    """The fleet's rules for a proxy: polled off the event loop, the sidecar's rules file
    (``fallback``) until the fleet holds a document (see the module docstring)."""

    def __init__(self, url: str, fallback: RulesFile, poll_s: float = POLL_S) -> None:
        self.table = FleetRulesTable(url)
        self.fallback = fallback
        self.poll_s = poll_s
        self._fetched: tuple[int, str] | None = None
        self._failing = False
        self._started = False
        self._stopped = threading.Event()
        self._lock = threading.Lock()

    @property
    def label(self) -> str:
        return self.table.label if self._fetched is not None else self.fallback.label

    def version(self) -> Hashable:
        self._start()
        fetched = self._fetched
        return ("fleet", fetched[0]) if fetched is not None else ("file", self.fallback.version())

    def text(self) -> str | None:
        fetched = self._fetched
        return fetched[1] if fetched is not None else self.fallback.text()

    def refresh(self) -> None:
        """Read the fleet's document once; on failure keep the last one (logged once)."""
        try:
            fetched = self.table.fetch()
        except RulesError as exc:
            if not self._failing:
                log.warning("%s; keeping the rules in use until it answers", exc)
                self._failing = True
            return
        if self._failing:
            log.warning("fleet rules: the fleet store answers again")
            self._failing = False
        if fetched is not None:  # a document once read is never dropped for "none"
            self._fetched = fetched

    def _start(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
        threading.Thread(target=self._poll, name="llmtap-fleet-rules", daemon=True).start()

    def close(self) -> None:
        """Stop polling (a proxy's feed polls for the proxy's life, on a daemon thread)."""
        self._stopped.set()

    def _poll(self) -> None:
        while not self._stopped.is_set():
            self.refresh()
            self._stopped.wait(self.poll_s)
