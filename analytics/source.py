"""The store as a Polars LazyFrame, read through DuckDB only while a query is collected.

DuckDB lets one process write the file, and the proxy's ingester needs it about twice a
second, so analyses must not hold a connection (see ``collector.storage.database``). :func:`load`
therefore returns a LazyFrame backed by a Polars IO source rather than an open
relation: building and composing queries touches nothing, and every ``collect()``
opens the store read-only (:func:`collector.storage.database.read_connection`), runs ONE DuckDB
query selecting only the columns the plan needs within the time window, fetches the
result as Arrow and closes the connection before Polars computes anything. The writer
is shut out for the duration of DuckDB's scan only (about 0.3 s for three columns of
10M rows), never while Polars aggregates or while a notebook sits idle.

Besides the ``llm_calls`` columns the frame has two derived ones, computed by DuckDB
and only when a plan uses them:

* ``model``: the response's model, else the requested one, else ``(unknown)``;
* ``body_hash``: a 64-bit hash of the call's host, path and stored request body (from
  ``call_bodies``; DuckDB's ``hash(host, path, hash(request_body))``), NULL when no body
  was stored (capture mode ``metadata``). The path is included because some APIs
  (Gemini, Vertex, Bedrock) name the model there. Two different requests share a hash
  with probability about n^2 / 2^65 (negligible below billions of calls).

Times are UTC (``started_at`` is ``Datetime("us", "UTC")``); money columns keep the
store's exact ``Decimal(18, 9)``. The time window is applied by DuckDB; filters added
in Polars run on the fetched rows (Polars hands them to the source, which applies them
before yielding), so put the window in :func:`load`.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
from polars.io.plugins import register_io_source

from collector.settings.paths import Paths, resolve_data_dir
from collector.storage import schema
from collector.storage.database import read_connection
from collector.storage.feedback_import import Imported
from collector.storage.feedback_import import import_feedback as _import_feedback

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

#: SQL for each column of the frame (``c`` is llm_calls, ``b`` call_bodies).
_SELECT: dict[str, str] = {
    **{name: f'c."{name}"' for name in schema.LLM_CALLS},
    **{name: f'c."{name}"::VARCHAR' for name, sql_type in schema.LLM_CALLS.items() if sql_type == "JSON"},
    "model": "coalesce(c.response_model, c.request_model, '(unknown)')",
    "body_hash": "CASE WHEN b.body_hash IS NOT NULL THEN hash(c.host, c.path, b.body_hash) END",
}

#: The frame's columns and types: every llm_calls column, then ``model`` and ``body_hash``.
SCHEMA = pl.Schema(
    {
        **{name: _POLARS_TYPES[sql_type] for name, sql_type in schema.LLM_CALLS.items()},
        "model": pl.String(),
        "body_hash": pl.UInt64(),
    }
)


def db_path(data: str | Path | None = None) -> Path:
    """The store of a data directory (None: ``$LLMTAP_DATA_DIR``, else ``~/.llmtap``), or
    ``data`` itself when it names the ``.duckdb`` file."""
    path = Path(data).expanduser() if data is not None else resolve_data_dir(None)
    return path if path.suffix == ".duckdb" else Paths(path).db


def instant(value: datetime | str | None) -> datetime | None:
    """A datetime or ISO 8601 string; one without an offset is UTC (as on the command line)."""
    if value is None:
        return None
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def query(columns: list[str], since: datetime | None, until: datetime | None, limit: int | None) -> str:
    """The one SQL statement a collect runs: the projected columns, the window, a limit.

    ``call_bodies`` is joined only when ``body_hash`` is wanted. The window's bounds are
    the statement's parameters (``since`` first), present only when set.
    """
    select = ", ".join(f'{_SELECT[name]} AS "{name}"' for name in columns)
    source = "llm_calls c"
    if "body_hash" in columns:
        # Hashing the bodies before the join keeps the request text out of the join's
        # hash table (a third faster than joining the bodies themselves).
        source += (
            " LEFT JOIN (SELECT call_id, hash(request_body) AS body_hash FROM call_bodies"
            " WHERE request_body IS NOT NULL) b ON b.call_id = c.call_id"
        )
    clauses = [
        clause for clause, bound in (("c.started_at >= ?", since), ("c.started_at < ?", until)) if bound
    ]
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    return f"SELECT {select} FROM {source}{where}" + (f" LIMIT {int(limit)}" if limit is not None else "")


def load(
    data: str | Path | None = None,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
) -> pl.LazyFrame:
    """The calls started in ``[since, until)`` as a LazyFrame of :data:`SCHEMA`.

    ``data`` is a data directory or its ``llmtap.duckdb`` file. Nothing is read here;
    each ``collect()`` of a plan built on the frame reads the store once, holding it
    only for DuckDB's scan (see the module docstring). Raises FileNotFoundError now if
    there is no store, rather than at the first collect.
    """
    db = db_path(data)
    if not db.exists():
        raise FileNotFoundError(f"no llmtap store at {db}: start `llmtap proxy` (or pass --data-dir)")
    start, end = instant(since), instant(until)
    params = [bound for bound in (start, end) if bound is not None]

    def read(
        with_columns: list[str] | None, predicate: pl.Expr | None, n_rows: int | None, batch_size: int | None
    ) -> Iterator[pl.DataFrame]:
        columns = list(SCHEMA) if with_columns is None else with_columns
        # A row limit can go to DuckDB only when no Polars filter has to run first.
        limit = n_rows if predicate is None else None
        with read_connection(db) as con:
            con.execute("SET TimeZone = 'UTC'")
            con.execute("SET produce_arrow_string_view = true")
            table = con.sql(query(columns, start, end, limit), params=params).to_arrow_table()
        frame = pl.from_arrow(table)
        assert isinstance(frame, pl.DataFrame)
        if predicate is not None:
            frame = frame.filter(predicate)
        if n_rows is not None:
            frame = frame.head(n_rows)
        # Batches, not one frame: Polars' streaming engine spreads batches over its
        # threads, and takes a single 10M-row frame on one (2-3x slower group-bys).
        yield from frame.iter_slices(batch_size or frame.height or 1)

    window = f"[{start.isoformat() if start else '-inf'}, {end.isoformat() if end else 'now'})"
    return register_io_source(
        read, schema=SCHEMA, is_pure=True, explain_name="llmtap", explain_detail=f"{db} {window}"
    )


#: The ``scores`` table's columns and types (see :mod:`collector.calls.scores`).
SCORES_SCHEMA = pl.Schema({name: _POLARS_TYPES[sql_type] for name, sql_type in schema.SCORES.items()})


def load_scores(data: str | Path | None = None) -> pl.LazyFrame:
    """Every score (graders' and feedback) as a LazyFrame of :data:`SCORES_SCHEMA`, read when
    collected; empty for a store an llmtap without scores made. Join it to :func:`load`'s
    calls on ``call_id`` (which also applies their window)."""
    db = db_path(data)
    if not db.exists():
        raise FileNotFoundError(f"no llmtap store at {db}: start `llmtap proxy` (or pass --data-dir)")

    def read(
        with_columns: list[str] | None, predicate: pl.Expr | None, n_rows: int | None, batch_size: int | None
    ) -> Iterator[pl.DataFrame]:
        columns = list(SCORES_SCHEMA) if with_columns is None else with_columns
        select = ", ".join(f'"{name}"' for name in columns)
        with read_connection(db) as con:
            con.execute("SET TimeZone = 'UTC'")
            known = con.execute(
                "SELECT 1 FROM information_schema.tables WHERE table_name = 'scores'"
            ).fetchall()
            table = con.sql(f"SELECT {select} FROM scores").to_arrow_table() if known else None
        frame = pl.DataFrame(schema={c: SCORES_SCHEMA[c] for c in columns})
        if table is not None:
            read_frame = pl.from_arrow(table)
            assert isinstance(read_frame, pl.DataFrame)
            frame = read_frame.cast({c: SCORES_SCHEMA[c] for c in columns})
        if predicate is not None:
            frame = frame.filter(predicate)
        yield frame.head(n_rows) if n_rows is not None else frame

    return register_io_source(read, schema=SCORES_SCHEMA, is_pure=True, explain_name="llmtap scores")


def import_feedback(file: str | Path, data: str | Path | None = None) -> Imported:
    """Import the app's scores of recorded calls from ``file`` (CSV ``call_id,name,value`` or
    JSON Lines) into the store of ``data`` (as ``llmtap feedback import``): valid lines about
    recorded calls are stored, the others listed in the result's ``refused``."""
    return _import_feedback(Path(file), Paths(db_path(data).parent))
