"""The shipper: a thread of the loader process that sends the outbox to the fleet store.

It runs beside the loading, never in its way: the loader stores a spool file in DuckDB and
leaves a unit in the outbox (:mod:`collector.fleet.outbox`), nudges this thread and goes on;
the thread reads ready units (Parquet, through an in-memory DuckDB: the store's file is never
opened here) and writes them to the :class:`~collector.fleet.sink.Sink` in batches of up to
:data:`MAX_BATCH_ROWS` rows, one transaction each, deleting a unit once its rows are committed.
A hung or stopped database therefore delays only shipping: the proxy never waits on it (it
runs in another process), nor does loading (another thread, and no lock is shared).

While the store is unreachable the units pile up on disk; the log says so once, and once when
it is back; the thread retries with a growing pause (up to :data:`MAX_RETRY_S`). A batch the
store refuses (a value it cannot take) is retried unit by unit, then row by row, and rows it
still refuses are set aside, as JSON lines, in the outbox's ``.refused`` directory (logged),
so one bad value never stops shipping.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

import duckdb

from collector.fleet.outbox import REFUSED_DIR, TABLE_FILES, Outbox
from collector.fleet.sink import Batch, Rows, Sink, SinkRefused, SinkUnavailable
from collector.storage import schema
from collector.trust.private import private_dir

__all__ = ["MAX_BATCH_ROWS", "MAX_RETRY_S", "POLL_S", "Shipper"]

log = logging.getLogger("llmtap.fleet")

#: Rows written per transaction (at most; a unit is never split).
MAX_BATCH_ROWS = 5000
#: Longest pause between attempts while the store is unreachable.
MAX_RETRY_S = 5.0
#: How often the outbox is looked at without a nudge (units other processes left: a stopping
#: proxy's last batch, ``llmtap feedback import``).
POLL_S = 2.0

#: PostgreSQL text cannot hold NUL; the fleet store gets U+FFFD in its place.
_NUL_FREE = "replace({}, chr(0), '\ufffd')"
_SELECT_BY_TYPE = {
    "VARCHAR": _NUL_FREE,
    "JSON": _NUL_FREE.format("{}::VARCHAR"),
    "VARCHAR[]": "list_transform({}, lambda x: " + _NUL_FREE.format("x") + ")",
}
#: DuckDB's UBIGINT hash as the bigint with the same 64 bits (see collector.fleet.schema).
_SIGNED_HASH = (
    "CASE WHEN body_hash >= 9223372036854775808 THEN (body_hash::HUGEINT - 18446744073709551616)::BIGINT "
    "ELSE body_hash::BIGINT END"
)


def _select(table: str) -> tuple[tuple[str, ...], str]:
    """The columns of one table's file and the SQL reading them ready for the sink."""
    declared = schema.TABLES[table]
    columns = tuple(declared) + (("body_hash",) if table == "llm_calls" else ())
    exprs = [
        _SIGNED_HASH if c == "body_hash" else _SELECT_BY_TYPE.get(declared[c], "{}").format(c)
        for c in columns
    ]
    return columns, f"SELECT {', '.join(exprs)} FROM read_parquet(?)"


_SELECTS = {table: _select(table) for table in TABLE_FILES}


class Shipper:
    """Ships one data directory's outbox to one sink (see the module docstring)."""

    def __init__(self, outbox: Outbox, sink: Sink, node: str) -> None:
        self.outbox = outbox
        self.sink = sink
        self.node = node
        #: Rows the store has committed (refused ones not counted), for logs and tests.
        self.shipped = 0
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._deadline = 0.0
        self._down: str | None = None
        self._reader: duckdb.DuckDBPyConnection | None = None
        self._thread = threading.Thread(target=self._run, name="llmtap-fleet-shipper", daemon=True)

    def start(self) -> Shipper:
        log.info("fleet: shipping to %s as node %r", self.sink.where, self.node)
        self._thread.start()
        return self

    def nudge(self) -> None:
        """A unit is ready: ship it now rather than at the next poll."""
        self._wake.set()

    def stop(self, grace: float) -> None:
        """Ship what is ready for up to ``grace`` seconds, then stop; what is left stays in the
        outbox for the next start."""
        self._deadline = time.monotonic() + grace
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(grace + 1.0)
        self.sink.close()

    def _run(self) -> None:
        delay = 0.0
        while True:
            self._wake.wait(delay)
            self._wake.clear()
            shipped_all = self.ship_ready()
            if self._stopping.is_set() and (shipped_all or time.monotonic() >= self._deadline):
                return
            delay = POLL_S if shipped_all else min(max(delay * 2, 0.25), MAX_RETRY_S)
            if self._stopping.is_set():
                delay = min(delay, max(self._deadline - time.monotonic(), 0.0))

    def ship_ready(self) -> bool:
        """Ship every ready unit; False when the store was unavailable (units stay)."""
        try:
            group: list[tuple[Path, Batch]] = []
            rows = 0
            for unit in self.outbox.ready():
                batch = self._read(unit)
                if batch is None:
                    continue
                group.append((unit, batch))
                rows += len(batch)
                if rows >= MAX_BATCH_ROWS:
                    self._ship(group)
                    group, rows = [], 0
            if group:
                self._ship(group)
        except SinkUnavailable as exc:
            if self._down is None:
                log.error(
                    "fleet: cannot reach the fleet store (%s); calls wait in %s and are shipped when it "
                    "is back (traffic and the local store are not affected)",
                    exc,
                    self.outbox.directory,
                )
            self._down = str(exc)
            return False
        if self._down is not None:
            self._down = None
            log.warning(
                "fleet: the fleet store %s is reachable again; the backlog is shipped", self.sink.where
            )
        return True

    def _read(self, unit: Path) -> Batch | None:
        """A unit's rows, or None (the unit set aside, logged) when its files cannot be read."""
        if self._reader is None:
            self._reader = duckdb.connect(config={"threads": 1})
        tables = {}
        try:
            for table, filename in TABLE_FILES.items():
                columns, select = _SELECTS[table]
                values = self._reader.execute(select, [str(unit / filename)]).fetchall()
                tables[table] = Rows(columns, values)
        except duckdb.Error as exc:
            target = private_dir(self.outbox.directory / REFUSED_DIR) / unit.name
            os.rename(unit, target)
            log.error("fleet: outbox unit %s cannot be read (%s); set aside in %s", unit.name, exc, target)
            return None
        return Batch(self.node, tables)

    def _ship(self, group: list[tuple[Path, Batch]]) -> None:
        merged = Batch(self.node, {})
        for _, batch in group:
            for table, rows in batch.tables.items():
                merged.tables.setdefault(table, Rows(rows.columns)).values.extend(rows.values)
        try:
            self.sink.write(merged)
        except SinkRefused:
            if len(group) == 1:
                self._ship_row_by_row(*group[0])
                return
            for one in group:
                self._ship([one])
            return
        self.shipped += len(merged)
        for unit, _ in group:
            self.outbox.done(unit)

    def _ship_row_by_row(self, unit: Path, batch: Batch) -> None:
        refused: list[tuple[str, dict, str]] = []
        for single in batch.single_rows():
            try:
                self.sink.write(single)
            except SinkRefused as exc:
                ((table, rows),) = single.tables.items()
                refused.append((table, dict(zip(rows.columns, rows.values[0], strict=True)), str(exc)))
            else:
                self.shipped += 1
        if refused:
            target = self.outbox.refuse(unit)
            with os.fdopen(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "w") as out:
                for table, row, reason in refused:
                    out.write(json.dumps({"table": table, "row": row, "reason": reason}, default=str) + "\n")
            log.error(
                "fleet: the fleet store refused %d row(s) of %s (%s); set aside in %s, the rest is shipped",
                len(refused),
                unit.name,
                refused[0][2],
                target,
            )
        self.outbox.done(unit)
