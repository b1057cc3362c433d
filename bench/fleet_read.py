"""Spend by model by day, from the fleet store (PostgreSQL) versus a local store (DuckDB), on
the same generated rows.

Generates ``--rows`` calls over 30 days with :mod:`analytics.synthetic`, writes them to a
local store, copies them into a fresh PostgreSQL database with the fleet schema (COPY, in
CSV made by DuckDB, spread over ``--nodes`` nodes), then times
``analytics.spend(analytics.load(store), by=["model", "day"])`` on each: the best of
``--repeat`` runs, cold connection each time (as a report or a dashboard page does).

Needs a PostgreSQL server: ``--url postgresql://...`` (a database it may create tables in),
or none to start a private one in a temporary directory (as the tests do; initdb needs the
``postgres`` user when run as root).

Run: uv run python bench/fleet_read.py --rows 10000000
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import duckdb
import polars as pl
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import analytics
from analytics.synthetic import generate, write_store
from collector.fleet.schema import ensure_schema
from collector.storage import schema

__all__ = ["copy_to_fleet"]

#: Bytes per write of the COPY stream.
CHUNK = 1 << 20
#: 2^63 and 2^64: DuckDB's UBIGINT hash as the bigint with the same bits (two's complement).
_HALF, _FULL = 2**63, 2**64


def _pg_array(column: str) -> str:
    """DuckDB SQL making a VARCHAR[] column PostgreSQL's text[] literal (``{"a","b"}``)."""
    quoted = """'"' || replace(replace(e, '\\', '\\\\'), '"', '\\"') || '"'"""
    element = f"CASE WHEN e IS NULL THEN 'NULL' ELSE {quoted} END"
    return f"""'{{' || array_to_string(list_transform(c."{column}", lambda e: {element}), ',') || '}}'"""


def _select(node: str) -> tuple[list[str], str]:
    """The fleet's llm_calls columns and the DuckDB query giving them from a local store;
    ``node`` is a SQL expression naming each call's node."""
    exprs = {
        name: _pg_array(name) if sql_type == "VARCHAR[]" else f'c."{name}"'
        for name, sql_type in schema.LLM_CALLS.items()
    }
    hashed = "hash(c.host, c.path, b.h)"
    exprs["body_hash"] = (
        f"CASE WHEN b.h IS NOT NULL THEN ({hashed}::HUGEINT - "
        f"CASE WHEN {hashed} >= {_HALF} THEN {_FULL} ELSE 0 END)::BIGINT END"
    )
    exprs["node"] = node
    sql = (
        f"SELECT {', '.join(exprs.values())} FROM llm_calls c LEFT JOIN (SELECT call_id, "
        "hash(request_body) AS h FROM call_bodies WHERE request_body IS NOT NULL) b USING (call_id)"
    )
    return list(exprs), sql


def copy_to_fleet(db: Path, conn: psycopg.Connection, node: str = "'node-' || (hash(c.call_id) % 3)") -> int:
    """Copy every call and score of the local store ``db`` into the fleet tables of ``conn``
    (made if needed), as the shipper would have stored them (``body_hash`` included); each
    call's node is the DuckDB SQL expression ``node`` over ``c`` (default: three nodes).
    How many calls."""
    ensure_schema(conn)
    columns, select = _select(node)
    with tempfile.TemporaryDirectory() as tmp:
        calls_csv, scores_csv = Path(tmp) / "calls.csv", Path(tmp) / "scores.csv"
        with duckdb.connect(str(db), read_only=True) as con:
            con.execute("SET TimeZone = 'UTC'")
            con.execute(f"COPY ({select}) TO '{calls_csv}' (FORMAT csv, HEADER false)")
            (count,) = con.execute("SELECT count(*) FROM llm_calls").fetchone() or (0,)
            score_columns = list(schema.SCORES)
            known = "SELECT 1 FROM information_schema.tables WHERE table_name = 'scores'"
            nothing = ", ".join(f"NULL::{t} AS {c}" for c, t in schema.SCORES.items())
            scores = "scores" if con.execute(known).fetchall() else f"(SELECT {nothing} LIMIT 0)"
            con.execute(
                f"COPY (SELECT {', '.join(score_columns)}, 'node-0' AS node, md5(concat_ws('|', "
                f"{', '.join(score_columns)})) AS score_id FROM {scores}) "
                f"TO '{scores_csv}' (FORMAT csv, HEADER false)"
            )
        for table, names, path in (
            ("llm_calls", columns, calls_csv),
            ("scores", [*score_columns, "node", "score_id"], scores_csv),
        ):
            with (
                conn.cursor() as cur,
                cur.copy(f"COPY {table} ({', '.join(names)}) FROM STDIN (FORMAT csv)") as copy,
                open(path, "rb") as f,
            ):
                while chunk := f.read(CHUNK):
                    copy.write(chunk)
    conn.execute("ANALYZE llm_calls")
    return count


@contextlib.contextmanager
def _private_server() -> Iterator[str]:
    from tests.pgserver import PgServer

    server = PgServer()
    try:
        server.init()
        yield server.url(server.create_database())
    finally:
        server.remove()


def _best(repeat: int, run: Callable[[], pl.DataFrame]) -> tuple[float, pl.DataFrame]:
    times: list[float] = []
    result = pl.DataFrame()
    for _ in range(repeat):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--url", help="a PostgreSQL database to use (default: a private server)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        url = args.url or stack.enter_context(_private_server())
        db = Path(tmp) / "llmtap.duckdb"
        start = time.perf_counter()
        calls, bodies = generate(args.rows, days=30)
        write_store(db, calls, bodies)
        del calls, bodies
        print(f"generated {args.rows:,} calls into DuckDB in {time.perf_counter() - start:.1f} s", flush=True)
        start = time.perf_counter()
        with psycopg.connect(url, autocommit=True) as conn:
            copy_to_fleet(db, conn)
        print(f"copied them into PostgreSQL (COPY) in {time.perf_counter() - start:.1f} s", flush=True)

        def spend(store: str) -> pl.DataFrame:
            return analytics.spend(analytics.load(store), by=["model", "day"])

        local_s, local = _best(args.repeat, lambda: spend(str(db)))
        fleet_s, fleet = _best(args.repeat, lambda: spend(url))
        same = local.sort("model", "day").equals(fleet.sort("model", "day"))
        print(f"spend by model by day over {args.rows:,} calls (best of {args.repeat}):")
        print(f"  DuckDB (local store):      {local_s:6.2f} s")
        print(f"  PostgreSQL (fleet store):  {fleet_s:6.2f} s")
        print(f"  same {local.height} rows from both: {same}")


if __name__ == "__main__":
    main()
