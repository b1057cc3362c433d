"""The store as a Polars LazyFrame, read only while a query is collected.

A store is the local DuckDB file of a data directory or the fleet's PostgreSQL database (a
``postgresql://`` URL; see :mod:`analytics.engines`, one reader per engine). :func:`load`
returns a LazyFrame backed by a Polars IO source rather than an open connection: building
and composing queries touches nothing, and every ``collect()`` runs ONE query on the store
selecting only the columns the plan needs within the time window (and nodes), fetches the
result as Arrow and lets go of the store before Polars computes anything. The local store
matters most here: DuckDB lets one process write the file and the proxy's ingester needs it
about twice a second, so the writer is shut out for DuckDB's scan only (about 0.3 s for three
columns of 10M rows), never while Polars aggregates or while a notebook sits idle.

Besides the ``llm_calls`` columns the frame has three derived ones, computed by the engine
and only when a plan uses them:

* ``model``: the response's model, else the requested one, else ``(unknown)``;
* ``body_hash``: a 64-bit hash of the call's host, path and stored request body (DuckDB's
  ``hash(host, path, hash(request_body))``, which the fleet store keeps per call), NULL when
  no body was stored (capture mode ``metadata``). The path is included because some APIs
  (Gemini, Vertex, Bedrock) name the model there. Two different requests share a hash
  with probability about n^2 / 2^65 (negligible below billions of calls);
* ``node``: the sidecar that recorded the call (``[fleet] node``) in the fleet store; NULL in
  a local store, whose calls belong to no node.

Times are UTC (``started_at`` is ``Datetime("us", "UTC")``); money columns keep the
store's exact ``Decimal(18, 9)``, whichever engine read them, so every analysis gives the
same answer from either store. The time window is applied by the engine; filters added in
Polars run on the fetched rows (Polars hands them to the source, which applies them before
yielding), so put the window (and the nodes) in :func:`load`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
from polars.io.plugins import register_io_source

from analytics.engines import Reader, Window, is_fleet_url, reader
from analytics.engines.local import LocalStore
from collector.settings.paths import Paths
from collector.storage import schema
from collector.storage.feedback_import import Imported
from collector.storage.feedback_import import import_feedback as _import_feedback

__all__ = ["SCHEMA", "SCORES_SCHEMA", "db_path", "import_feedback", "instant", "load", "load_scores"]

_POLARS_TYPES: dict[str, pl.DataType] = {
    "VARCHAR": pl.String(),
    "JSON": pl.String(),
    "TIMESTAMPTZ": pl.Datetime("us", "UTC"),
    "INTEGER": pl.Int32(),
    "BIGINT": pl.Int64(),
    "BOOLEAN": pl.Boolean(),
    "DOUBLE": pl.Float64(),
    "DECIMAL(18,9)": pl.Decimal(18, 9),
    "VARCHAR[]": pl.List(pl.String()),
}

#: The frame's columns and types: every llm_calls column, then ``model``, ``body_hash`` and ``node``.
SCHEMA = pl.Schema(
    {
        **{name: _POLARS_TYPES[sql_type] for name, sql_type in schema.LLM_CALLS.items()},
        "model": pl.String(),
        "body_hash": pl.UInt64(),
        "node": pl.String(),
    }
)


def db_path(data: str | Path | None = None) -> Path:
    """The local store of a data directory (None: ``$LLMTAP_DATA_DIR``, else ``~/.llmtap``), or
    ``data`` itself when it names the ``.duckdb`` file."""
    return LocalStore.of(data).db


def instant(value: datetime | str | None) -> datetime | None:
    """A datetime or ISO 8601 string; one without an offset is UTC (as on the command line)."""
    if value is None:
        return None
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def load(
    store: str | Path | None = None,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
    nodes: Iterable[str] = (),
) -> pl.LazyFrame:
    """The calls started in ``[since, until)`` (recorded by one of ``nodes``, when given) as a
    LazyFrame of :data:`SCHEMA`.

    ``store`` is a data directory or its ``llmtap.duckdb``, or a fleet store's
    ``postgresql://`` URL (None: ``$LLMTAP_STORE``, else the default data directory). Nothing
    is read here; each ``collect()`` of a plan built on the frame reads the store once (see
    the module docstring). Raises now if the store cannot be read (FileNotFoundError for a
    missing local store, :class:`analytics.engines.FleetStoreError` for an unreachable
    fleet), rather than at the first collect; ValueError for nodes on a local store.
    """
    source = reader(store)
    window = Window(instant(since), instant(until), tuple(nodes))
    source.check(window)

    def read(
        with_columns: list[str] | None, predicate: pl.Expr | None, n_rows: int | None, batch_size: int | None
    ) -> Iterator[pl.DataFrame]:
        columns = list(SCHEMA) if with_columns is None else with_columns
        # A row limit can go to the engine only when no Polars filter has to run first.
        limit = n_rows if predicate is None else None
        frame = source.calls(columns, window, limit).cast(pl.Schema({name: SCHEMA[name] for name in columns}))
        if predicate is not None:
            frame = frame.filter(predicate)
        if n_rows is not None:
            frame = frame.head(n_rows)
        # Batches, not one frame: Polars' streaming engine spreads batches over its
        # threads, and takes a single 10M-row frame on one (2-3x slower group-bys).
        yield from frame.iter_slices(batch_size or frame.height or 1)

    return register_io_source(
        read, schema=SCHEMA, is_pure=True, explain_name="llmtap", explain_detail=_describe(source, window)
    )


def _describe(source: Reader, window: Window) -> str:
    start, end = window.since, window.until
    nodes = f" nodes {', '.join(window.nodes)}" if window.nodes else ""
    bounds = f"[{start.isoformat() if start else '-inf'}, {end.isoformat() if end else 'now'})"
    return f"{source.label} {bounds}{nodes}"


#: The ``scores`` table's columns and types (see :mod:`collector.calls.scores`).
SCORES_SCHEMA = pl.Schema({name: _POLARS_TYPES[sql_type] for name, sql_type in schema.SCORES.items()})


def load_scores(store: str | Path | None = None) -> pl.LazyFrame:
    """Every score (graders' and feedback) of ``store`` (as in :func:`load`) as a LazyFrame of
    :data:`SCORES_SCHEMA`, read when collected; empty for a store an llmtap without scores
    made. Join it to :func:`load`'s calls on ``call_id`` (which also applies their window)."""
    source = reader(store)
    source.check(Window())

    def read(
        with_columns: list[str] | None, predicate: pl.Expr | None, n_rows: int | None, batch_size: int | None
    ) -> Iterator[pl.DataFrame]:
        columns = list(SCORES_SCHEMA) if with_columns is None else with_columns
        types = pl.Schema({c: SCORES_SCHEMA[c] for c in columns})
        read_frame = source.scores(columns)
        frame = pl.DataFrame(schema=types) if read_frame is None else read_frame.cast(types)
        if predicate is not None:
            frame = frame.filter(predicate)
        yield frame.head(n_rows) if n_rows is not None else frame

    return register_io_source(
        read, schema=SCORES_SCHEMA, is_pure=True, explain_name="llmtap scores", explain_detail=source.label
    )


def import_feedback(file: str | Path, data: str | Path | None = None) -> Imported:
    """Import the app's scores of recorded calls from ``file`` (CSV ``call_id,name,value`` or
    JSON Lines) into the store of ``data`` (as ``llmtap feedback import``): valid lines about
    recorded calls are stored, the others listed in the result's ``refused``. The fleet store
    is written by shipping only: import into a sidecar's store, which ships the scores."""
    if is_fleet_url(data):
        raise ValueError("feedback is imported into a sidecar's local store (--data-dir), which ships it")
    return _import_feedback(Path(file), Paths(db_path(data).parent))
