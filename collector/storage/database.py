"""The DuckDB store at ``DATA_DIR/llmtap.duckdb`` and the rules for sharing it.

DuckDB lets one process write, and while it writes no other process may open the
file. llmtap therefore never keeps the database open: the ingester opens it about
twice a second for a few milliseconds, loads every sealed spool file in one
transaction each, and closes it. Readers (export, report, the dashboard, notebooks)
open it read-only through :func:`read_connection`, which waits out a writer's brief
hold instead of failing, and they close it as soon as their query is done.

Readers could starve the writer (overlapping read-only opens leave it no gap), so a
writer that finds the file busy announces itself with a small intent file beside the
database; new readers wait for it to go (or go stale) before opening.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb

from collector.fleet.outbox import Outbox
from collector.settings.paths import QUARANTINE_DIR, Paths
from collector.storage import schema
from collector.storage.spool import Quarantine, Spool

if TYPE_CHECKING:  # at run time RowBuilder comes in when needed: it loads the price catalogue
    from collector.calls.rows import RowBuilder
    from collector.pricing.rates import Rates

log = logging.getLogger("llmtap.store")

LOCK_WAIT_S = 30.0
#: Longest wait for the store at the proxy's start by the stages that seed totals from it
#: (budgets, shadow spend caps); past it they start from zero (logged), and traffic flows.
START_READ_WAIT_S = 5.0
#: How long a writer keeps trying for the lock (with readers held back) per attempt.
WRITER_WAIT_S = 2.0
#: Longest pause between attempts while the store is failing.
MAX_RETRY_S = 5.0
#: An intent file older than this was left by a writer that died; readers ignore it.
INTENT_STALE_S = 5.0


def is_lock_conflict(exc: Exception) -> bool:
    return isinstance(exc, duckdb.IOException) and "Could not set lock on file" in str(exc)


def _intent_file(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + ".write-intent")


def _wait_for_writer(db_path: Path, deadline: float) -> None:
    intent = _intent_file(db_path)
    while time.monotonic() < deadline:
        try:
            age = time.time() - intent.stat().st_mtime
        except FileNotFoundError:
            return
        if age > INTENT_STALE_S:
            return
        time.sleep(0.005)


def connect_writer(db_path: Path, wait: float = WRITER_WAIT_S) -> duckdb.DuckDBPyConnection:
    """A read-write connection; if readers hold the file, hold new readers back and retry."""
    try:
        return duckdb.connect(str(db_path))
    except duckdb.Error as exc:
        if not is_lock_conflict(exc):
            raise
    intent = _intent_file(db_path)
    deadline = time.monotonic() + wait
    try:
        intent.touch()
        while True:
            try:
                return duckdb.connect(str(db_path))
            except duckdb.Error as exc:
                if not is_lock_conflict(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.005)
    finally:
        intent.unlink(missing_ok=True)


@contextmanager
def read_connection(db_path: Path, timeout: float = LOCK_WAIT_S) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-only connection that waits (up to ``timeout``) for a writer to let go."""
    if not db_path.exists():
        raise FileNotFoundError(f"no llmtap store at {db_path}: start `llmtap proxy` (or pass --data-dir)")
    deadline = time.monotonic() + timeout
    while True:
        _wait_for_writer(db_path, deadline)
        try:
            con = duckdb.connect(str(db_path), read_only=True)
            break
        except duckdb.Error as exc:
            if not is_lock_conflict(exc) or time.monotonic() > deadline:
                raise
            time.sleep(random.uniform(0.01, 0.05))
    try:
        yield con
    finally:
        con.close()


def _spool_columns() -> str:
    body = ", ".join(f"{c} {t}" for c, t in schema.CALL_BODIES.items() if c != "call_id")
    span = ", ".join(f"{c} {t}" for c, t in schema.SPANS.items() if c != "call_id")
    score = ", ".join(f"{c} {t}" for c, t in schema.SCORES.items())
    cols = {
        **schema.LLM_CALLS,
        "body": f"STRUCT({body})",
        "span": f"STRUCT({span})",
        "score": f"STRUCT({score})",
    }
    return "{" + ", ".join(f"'{c}': '{t}'" for c, t in cols.items()) + "}"


_SPOOL_COLUMNS = _spool_columns()


def ingest_file(
    con: duckdb.DuckDBPyConnection,
    path: Path,
    rows: Callable[[], RowBuilder] | None = None,
    quarantine: Quarantine | None = None,
    outbox: Outbox | None = None,
) -> int:
    """Load one sealed spool file in a single transaction; returns rows added (0 if done before).
    Its observed calls get their rows built first, by the builder ``rows`` gives. Lines that
    cannot be loaded go to ``quarantine`` (by default the spool's own) and the rest loads.
    When the data directory ships to a fleet store, the rows are also left in ``outbox``,
    published only once the transaction has committed (see :mod:`collector.fleet.outbox`)."""
    from collector.calls.rows import built_spool_file

    name = path.name
    if con.execute("SELECT 1 FROM spool_ingested WHERE name = ?", [name]).fetchone():
        return 0
    quarantine = quarantine or Quarantine(path.parent / QUARANTINE_DIR)
    unloadable: list[tuple[bytes, str]] = []
    built = built_spool_file(path, rows, lambda line, reason: unloadable.append((line, reason)))
    try:
        try:
            _read_batch(con, built)
        except (duckdb.InvalidInputException, duckdb.ConversionException):
            # The file, not the store: find the lines DuckDB refuses, one by one, and load the rest.
            unloadable += _drop_unreadable_lines(con, built)
            _read_batch(con, built)
        staged: Path | None = None
        con.begin()
        try:
            if con.execute("SELECT 1 FROM spool_ingested WHERE name = ?", [name]).fetchone():
                con.rollback()
                return 0
            calls = ", ".join(schema.LLM_CALLS)
            con.execute(f"INSERT INTO llm_calls SELECT {calls} FROM batch WHERE score IS NULL")
            body_cols = ", ".join(f"body.{c}" for c in schema.CALL_BODIES if c != "call_id")
            con.execute(
                f"INSERT INTO call_bodies SELECT call_id, {body_cols} FROM batch WHERE body IS NOT NULL"
            )
            span_cols = ", ".join("call_id" if c == "call_id" else f"span.{c}" for c in schema.SPANS)
            con.execute(f"INSERT INTO spans SELECT {span_cols} FROM batch WHERE span IS NOT NULL")
            score_cols = ", ".join(f"score.{c}" for c in schema.SCORES)
            con.execute(f"INSERT INTO scores SELECT {score_cols} FROM batch WHERE score IS NOT NULL")
            row = con.execute("SELECT count(*) FROM batch").fetchone()
            assert row is not None  # count(*) always yields a row
            (added,) = row
            con.execute("INSERT INTO spool_ingested (name, rows) VALUES (?, ?)", [name, added])
            staged = outbox.stage(con, name) if outbox is not None else None
            con.commit()
        except BaseException:
            con.rollback()
            if outbox is not None:
                outbox.discard(outbox.pending(name))
            raise
        if staged is not None:
            assert outbox is not None  # it staged them
            outbox.publish(staged)
        # Only once the rest is stored: a failed load leaves the whole file for the next try.
        quarantine.set_aside(name, unloadable)
        return added
    finally:
        with contextlib.suppress(duckdb.Error):  # a broken connection must not hide why
            con.execute("DROP TABLE IF EXISTS batch")
        built.unlink(missing_ok=True)


def _read_batch(con: duckdb.DuckDBPyConnection, built: Path) -> None:
    con.execute(
        "CREATE OR REPLACE TEMP TABLE batch AS SELECT * FROM read_json(?, "
        f"format='newline_delimited', columns={_SPOOL_COLUMNS})",
        [str(built)],
    )


def _drop_unreadable_lines(con: duckdb.DuckDBPyConnection, built: Path) -> list[tuple[bytes, str]]:
    """Rewrite ``built`` without the lines DuckDB's reader refuses on their own; return them."""
    kept: list[bytes] = []
    refused: list[tuple[bytes, str]] = []
    probe = built.with_name("probe-" + built.name)
    try:
        for line in built.read_bytes().splitlines(keepends=True):
            probe.write_bytes(line)
            try:
                _read_batch(con, probe)
            except (duckdb.InvalidInputException, duckdb.ConversionException) as exc:
                refused.append((line, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"))
            else:
                kept.append(line)
    finally:
        probe.unlink(missing_ok=True)
    with os.fdopen(os.open(built, os.O_WRONLY | os.O_TRUNC), "wb") as out:
        out.writelines(kept)
    return refused


def ensure_schema(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True, exist_ok=True)
    with connect_writer(db_path) as con:
        _create_tables(con)
        for statement in schema.migrate_statements():
            con.execute(statement)


def _create_tables(con: duckdb.DuckDBPyConnection) -> None:
    for statement in schema.create_statements():
        con.execute(statement)


class Ingester:
    """Loads sealed spool files into DuckDB: one pass per :meth:`run_once`.

    The proxy runs it in a child process (:mod:`collector.storage.loader`), so that DuckDB's
    work never holds the proxy's GIL; it also runs in-process for one-off passes.
    """

    def __init__(
        self,
        spool: Spool,
        db_path: Path,
        price_overrides: Mapping[str, Rates] | None = None,
        ships: bool | None = None,
    ) -> None:
        """``ships``: True when the proxy's config has ``[fleet]`` (the outbox is turned on, with
        everything stored so far), False when it has not (turned off), None to leave it as the
        data directory has it (a one-off load, ``llmtap feedback import``)."""
        self.spool = spool
        self.db_path = db_path
        #: The config's price overrides, for the rows of observed calls (see collector.calls.rows).
        self.price_overrides = dict(price_overrides or {})
        self.outbox = Outbox(Paths(db_path.parent).fleet_outbox)
        #: Called after a batch left units in the outbox (the shipper's nudge).
        self.on_staged: Callable[[], None] | None = None
        self._ships = ships
        self._outbox_settled = False
        self._failing: str | None = None
        self._builder: RowBuilder | None = None

    def _rows(self) -> RowBuilder:
        """Made on first need: the price catalogue takes ~0.4 s to load."""
        if self._builder is None:
            from collector.calls.rows import RowBuilder

            self._builder = RowBuilder.offline(self.price_overrides)
        return self._builder

    def warm(self) -> None:
        """Load now what every batch needs: the price catalogue (~0.4 s, ~18 MB) and DuckDB's
        working set (~25 MB, kept by its allocator after the store closes). The first calls
        are then stored as fast as the rest, and the loader's memory does not jump with them.
        A store that cannot be opened now is left to :meth:`run_once`, which reports why."""
        self._rows()
        try:
            with connect_writer(self.db_path) as con:
                _create_tables(con)
                self._settle_outbox(con)
        except Exception as exc:
            if not is_lock_conflict(exc):  # readers holding it is ordinary; the first batch waits
                log.warning(
                    "could not open %s ahead of the first batch (%s); trying again then", self.db_path, exc
                )

    def _settle_outbox(self, con: duckdb.DuckDBPyConnection) -> None:
        """Once per process, under the writer's lock: turn the outbox on or off as the config
        says, and settle the units a crash left pending."""
        if self._outbox_settled:
            return
        if self._ships:
            self.outbox.enable(con)
        else:
            if self._ships is False:
                self.outbox.disable()
            self.outbox.recover(con)
        self._outbox_settled = True

    def run_once(self) -> bool:
        """Seal and load what is pending. True when everything pending was loaded."""
        self.spool.seal()
        files = self.spool.sealed_files()
        if not files and self._outbox_settled:
            return True
        staged = False
        try:
            with connect_writer(self.db_path) as con:
                _create_tables(con)  # cheap, and recreates a store that was moved away
                self._settle_outbox(con)
                for path in files:
                    staged |= ingest_file(con, path, self._rows, outbox=self.outbox) > 0
                    path.unlink(missing_ok=True)
        except Exception as exc:
            if is_lock_conflict(exc):
                return True  # readers held it throughout; try again next tick
            message = f"{type(exc).__name__}: {exc}"
            if message != self._failing:
                log.error(
                    "cannot write to %s (%s); calls stay in the spool and are loaded when it works again",
                    self.db_path,
                    message,
                )
            self._failing = message
            return False
        if self._failing:
            log.warning("store %s writable again; caught up", self.db_path)
            self._failing = None
        if staged and self.on_staged is not None:
            self.on_staged()
        return True

    def pending(self) -> int:
        return len(self.spool.sealed_files()) + (1 if self.spool.backlog else 0)

    def drain(self, timeout: float) -> bool:
        """Load everything pending, retrying for up to ``timeout`` s; False if something is left."""
        deadline = time.monotonic() + timeout
        while True:
            self.run_once()
            if not self.pending():
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
