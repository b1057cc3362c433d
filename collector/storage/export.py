"""``llmtap export``: the llm_calls rows as jsonl, csv or parquet, safe while a proxy runs."""

from __future__ import annotations

import shutil
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from collector.storage import schema
from collector.storage.database import read_connection

FORMATS = {"jsonl": "(FORMAT json)", "csv": "(FORMAT csv, HEADER)", "parquet": "(FORMAT parquet)"}


def parse_instant(value: str) -> datetime:
    """An ISO 8601 date or date-time; one without an offset is taken as UTC."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"not an ISO 8601 date or time: {value!r} (e.g. 2026-11-23T09:00)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def export_calls(
    db_path: Path,
    fmt: str,
    since: datetime | None = None,
    until: datetime | None = None,
    out: Path | None = None,
    stdout: BinaryIO | None = None,
) -> int:
    """Write the matching rows to ``out`` (or stdout); returns how many were written.

    The read connection is held only while DuckDB writes the file; stdout is fed from a
    temporary copy afterwards, so a slow consumer never keeps the store locked.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    clauses, params = [], []
    if since is not None:
        clauses.append("started_at >= ?")
        params.append(since)
    if until is not None:
        clauses.append("started_at < ?")
        params.append(until)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    columns = ", ".join(schema.LLM_CALLS)
    query = f"SELECT {columns} FROM llm_calls {where} ORDER BY started_at"
    with tempfile.TemporaryDirectory() as tmp:
        target = out or Path(tmp) / f"export.{fmt}"
        with read_connection(db_path) as con:
            con.execute("SET TimeZone = 'UTC'")
            row = con.execute(f"SELECT count(*) FROM ({query})", params).fetchone()
            assert row is not None  # count(*) always yields a row
            (count,) = row
            con.execute(f"COPY ({query}) TO '{_sql_path(target)}' {FORMATS[fmt]}", params)
        if out is None:
            sink = stdout or sys.stdout.buffer
            with open(target, "rb") as f:
                shutil.copyfileobj(f, sink)
            sink.flush()
    return count


def _sql_path(path: Path) -> str:
    return str(path).replace("'", "''")
