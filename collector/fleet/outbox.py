"""The outbox: what the local store took in and the fleet store has not, kept on disk.

The local DuckDB store stays the durable buffer; the outbox says what of it is still to be
shipped. Each spool file the loader stores (one DuckDB transaction) leaves a *unit* here: a
directory with its calls, spans and scores as Parquet (``calls.parquet``, ``spans.parquet``,
``scores.parquet``), exactly the rows that transaction added. So the outbox is the shipper's
persisted watermark: a unit is deleted only once the fleet store has committed its rows, and
everything still in the outbox is shipped after a crash, a restart or an outage.

Exactly once, end to end:

* a unit is written under ``.pending-NAME`` *inside* the DuckDB transaction that stores its
  rows, and renamed to a ready name only after that transaction commits. A crash between the
  two leaves a pending unit, which :meth:`Outbox.recover` publishes if the store recorded the
  spool file as loaded and deletes otherwise (the file is then loaded again, and staged again);
* the fleet store ignores rows it already has (keys on ``call_id``; see
  :mod:`collector.fleet.schema`), so a unit shipped twice (a crash after the commit, before the
  delete) is stored once.

Rows stored before ``[fleet]`` was first configured for a data directory are shipped too:
:meth:`Outbox.enable` writes one unit of every stored row (under the writer's lock, so no
batch can slip between it and the first staged batch) before it turns staging on.

The bodies are not shipped, only ``body_hash`` (the waste analysis's key): prompts stay on the
sidecar that recorded them.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb

from collector.storage import schema
from collector.trust.private import private_dir

__all__ = ["TABLE_FILES", "Outbox"]

log = logging.getLogger("llmtap.fleet")

#: The files of one unit, per fleet table.
TABLE_FILES = {"llm_calls": "calls.parquet", "spans": "spans.parquet", "scores": "scores.parquet"}
#: Present while this data directory ships (the proxy's config has ``[fleet]``).
_ENABLED = ".enabled"
_PENDING = ".pending-"
#: Units the fleet store refused row by row are kept here (see collector.fleet.shipper).
REFUSED_DIR = ".refused"

#: DuckDB's hash of a call's host, path and request body: the waste analysis's ``body_hash``
#: (analytics/source.py), from the request body it is given as ``{body}``.
_BODY_HASH = "CASE WHEN {body} IS NOT NULL THEN hash({calls}host, {calls}path, hash({body})) END"


def _sql_path(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _copy(con: duckdb.DuckDBPyConnection, select: str, target: Path) -> None:
    con.execute(f"COPY ({select}) TO {_sql_path(target)} (FORMAT parquet)")


class Outbox:
    """One data directory's outbox (``DATA_DIR/fleet-outbox``)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @property
    def enabled(self) -> bool:
        return (self.directory / _ENABLED).exists()

    # -- the loader's side (inside the store's writer connection) ---------------------------

    def stage(self, con: duckdb.DuckDBPyConnection, name: str) -> Path | None:
        """Write the rows of spool file ``name``, from the loader's temporary table ``batch``
        (see :func:`collector.storage.database.ingest_file`), as a pending unit. None when this
        data directory does not ship."""
        if not self.enabled:
            return None
        calls = ", ".join(schema.LLM_CALLS)
        body_hash = _BODY_HASH.format(body="body.request_body", calls="")
        spans = ", ".join("call_id" if c == "call_id" else f"span.{c} AS {c}" for c in schema.SPANS)
        scores = ", ".join(f"score.{c} AS {c}" for c in schema.SCORES)
        return self._write(
            con,
            self.pending(name).name,
            {
                "llm_calls": f"SELECT {calls}, {body_hash} AS body_hash FROM batch WHERE score IS NULL",
                "spans": f"SELECT {spans} FROM batch WHERE span IS NOT NULL",
                "scores": f"SELECT {scores} FROM batch WHERE score IS NOT NULL",
            },
        )

    def _write(self, con: duckdb.DuckDBPyConnection, dirname: str, selects: dict[str, str]) -> Path:
        unit = private_dir(self.directory) / dirname
        shutil.rmtree(unit, ignore_errors=True)  # a unit a crash left half-written
        private_dir(unit)
        for table, select in selects.items():
            _copy(con, select, unit / TABLE_FILES[table])
        return unit

    def pending(self, name: str) -> Path:
        """Where the rows of spool file ``name`` wait for their transaction to commit."""
        return self.directory / (_PENDING + name)

    def publish(self, pending: Path) -> None:
        """The store committed the pending unit's rows: make it ready for the shipper."""
        name = pending.name.removeprefix(_PENDING)
        os.rename(pending, pending.with_name(f"{time.time_ns()}-{name}"))

    def discard(self, pending: Path) -> None:
        """The store did not commit: the spool file stays, and is staged again when it loads."""
        shutil.rmtree(pending, ignore_errors=True)

    def recover(self, con: duckdb.DuckDBPyConnection) -> None:
        """Settle units a crash left pending: publish those whose spool file the store holds
        (``spool_ingested``), delete the others."""
        if not self.directory.is_dir():
            return
        for unit in self.directory.glob(_PENDING + "*"):
            name = unit.name.removeprefix(_PENDING)
            loaded = con.execute("SELECT 1 FROM spool_ingested WHERE name = ?", [name]).fetchone()
            if loaded:
                self.publish(unit)
            else:
                self.discard(unit)

    def enable(self, con: duckdb.DuckDBPyConnection) -> None:
        """Start staging, first writing a unit of everything already stored (once per data
        directory; see the module docstring). ``con`` is the store's writer connection."""
        self.recover(con)
        if self.enabled:
            return
        calls = ", ".join(f"c.{c}" for c in schema.LLM_CALLS)
        body_hash = _BODY_HASH.format(body="b.request_body", calls="c.")
        bodies = "(SELECT call_id, any_value(request_body) AS request_body FROM call_bodies GROUP BY call_id)"
        pending = self._write(
            con,
            _PENDING + "backfill",
            {
                "llm_calls": f"SELECT {calls}, {body_hash} AS body_hash FROM llm_calls c "
                f"LEFT JOIN {bodies} b ON b.call_id = c.call_id",
                "spans": f"SELECT {', '.join(schema.SPANS)} FROM spans",
                "scores": f"SELECT {', '.join(schema.SCORES)} FROM scores",
            },
        )
        os.rename(pending, pending.with_name(f"{time.time_ns()}-backfill"))
        (self.directory / _ENABLED).touch(mode=0o600)
        log.info("fleet: the calls stored so far are queued for the fleet store")

    def disable(self) -> None:
        """Stop staging (``[fleet]`` is gone from the config); units not yet shipped stay."""
        (self.directory / _ENABLED).unlink(missing_ok=True)
        if waiting := len(list(self.ready())):
            log.warning(
                "fleet: no [fleet] in the config; %d stored batch(es) not shipped yet stay in %s",
                waiting,
                self.directory,
            )

    # -- the shipper's side ---------------------------------------------------------------

    def ready(self) -> Iterator[Path]:
        """Units ready to ship, oldest first."""
        if not self.directory.is_dir():
            return iter(())
        units = [p for p in self.directory.iterdir() if not p.name.startswith(".") and p.is_dir()]
        return iter(sorted(units, key=lambda p: int(p.name.partition("-")[0])))

    def refuse(self, unit: Path) -> Path:
        """Where the rows of ``unit`` that the fleet store refused are kept."""
        return private_dir(self.directory / REFUSED_DIR) / (unit.name + ".jsonl")

    def done(self, unit: Path) -> None:
        """The fleet store committed the unit's rows."""
        shutil.rmtree(unit, ignore_errors=True)
