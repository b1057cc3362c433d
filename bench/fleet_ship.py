"""Fleet shipping: lag at a steady 500 calls/s, and throughput on a backlog.

Runs the real pipeline past the proxy: finished calls are appended to a spool as the proxy's
recorder does (one JSON line each, ``ended_at`` = the moment of the append), the proxy's
:class:`~collector.storage.loader.IngestWorker` seals the spool and its loader child stores
each file in DuckDB and ships it to a private PostgreSQL server (``tests/pgserver.py``)::

    uv run python bench/fleet_ship.py [--rate 500] [--seconds 20] [--backlog 20000]

Prints, as JSON and as a line per figure: the lag from a call's end to its row's commit in
PostgreSQL (``shipped_at - ended_at``: p50, p95, max) at the steady rate, and the rows per
second shipped while a backlog of ``--backlog`` calls (appended at once) drains.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from collector.settings.config import FleetSettings
from collector.storage.database import ensure_schema
from collector.storage.loader import IngestWorker
from collector.storage.spool import Spool
from tests.pgserver import PgServer


def line(now: float) -> bytes:
    """One finished call as a spool line (a whole row, priced), ending now."""
    at = datetime.fromtimestamp(now, UTC).isoformat()
    call_id = uuid.uuid4().hex
    row = {
        "call_id": call_id,
        "started_at": datetime.fromtimestamp(now - 0.2, UTC).isoformat(),
        "ended_at": at,
        "provider": "openai",
        "api": "chat",
        "method": "POST",
        "host": "api.openai.com",
        "path": "/v1/chat/completions",
        "status_code": 200,
        "stream": False,
        "request_model": "gpt-4o-mini",
        "response_model": "gpt-4o-mini-2024-07-18",
        "input_tokens": 120,
        "output_tokens": 30,
        "usage_source": "provider",
        "latency_ms": 200.0,
        "ttft_ms": 150.0,
        "cost_usd": "0.000036",
        "app": "bench",
        "properties": {"team": "search"},
        "finish_reasons": ["stop"],
        "body": {
            "capture_mode": "full",
            "request_body": json.dumps(
                {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": call_id}]}
            ),
            "response_body": '{"choices": []}',
        },
        "span": {
            "trace_id": uuid.uuid4().hex,
            "span_id": uuid.uuid4().hex[:16],
            "name": "chat gpt-4o-mini",
            "kind": "CLIENT",
            "start_time": at,
            "end_time": at,
            "status": "OK",
            "attributes": {"gen_ai.request.model": "gpt-4o-mini"},
        },
    }
    return json.dumps(row).encode() + b"\n"


def count(pg: PgServer, database: str) -> int:
    with pg.connect(database) as conn:
        try:
            row = conn.execute("SELECT count(*) FROM llm_calls").fetchone()
        except Exception:
            return 0
    return row[0] if row else 0


def wait_rows(pg: PgServer, database: str, n: int, data: Path, timeout: float = 120) -> float:
    deadline = time.monotonic() + timeout
    while count(pg, database) < n:
        if time.monotonic() > deadline:
            left = sorted(p.name for p in [*data.glob("spool/*"), *data.glob("fleet-outbox/*")])
            raise SystemExit(
                f"only {count(pg, database)} of {n} rows shipped in {timeout:.0f} s; left: {left}"
            )
        time.sleep(0.05)
    return time.monotonic()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=500)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--backlog", type=int, default=20000)
    args = parser.parse_args()

    pg = PgServer().init()
    try:
        database = pg.create_database()
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp)
            ensure_schema(data / "llmtap.duckdb")
            spool = Spool(data / "spool")
            fleet = FleetSettings(url=pg.url(database), node="bench")  # type: ignore[arg-type]
            worker = IngestWorker(spool, data / "llmtap.duckdb", fleet=fleet)
            worker.run_once()
            worker.start()

            # Steady rate: one line every 1/rate s, on schedule.
            n = int(args.rate * args.seconds)
            t0 = time.monotonic()
            for i in range(n):
                delay = t0 + i / args.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                spool.append(line(time.time()))
            achieved = n / (time.monotonic() - t0)
            wait_rows(pg, database, n, data)
            with pg.connect(database) as conn:
                row = conn.execute(
                    "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY lag), "
                    "percentile_cont(0.95) WITHIN GROUP (ORDER BY lag), max(lag) FROM "
                    "(SELECT extract(epoch FROM shipped_at - ended_at) AS lag FROM llm_calls) l"
                ).fetchone()
            assert row is not None
            p50, p95, worst = (float(v) for v in row)

            # Backlog: appended at once, then drained.
            start = time.monotonic()
            now = time.time()
            for _ in range(args.backlog):
                spool.append(line(now))
            appended = time.monotonic()
            done = wait_rows(pg, database, n + args.backlog, data)
            throughput = args.backlog / (done - appended)
            worker.stop()
        figures = {
            "rate_calls_per_s": round(achieved, 1),
            "calls": n,
            "lag_p50_s": round(p50, 3),
            "lag_p95_s": round(p95, 3),
            "lag_max_s": round(worst, 3),
            "backlog_calls": args.backlog,
            "backlog_append_s": round(appended - start, 2),
            "backlog_rows_per_s": round(throughput),
        }
    finally:
        pg.remove()
    print(json.dumps(figures))
    steady = f"steady {figures['rate_calls_per_s']} calls/s x {n}"
    print(f"{steady}: lag p50 {p50:.2f} s, p95 {p95:.2f} s, max {worst:.2f} s")
    print(
        f"backlog of {args.backlog} calls: shipped at {throughput:.0f} rows/s (loading into DuckDB included)"
    )


if __name__ == "__main__":
    main()
