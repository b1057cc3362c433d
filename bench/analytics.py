"""How long each analysis takes over 1M and 10M generated calls.

    uv run python bench/analytics.py [--rows 1000000 10000000] [--markdown] [--keep DIR]

Rows are generated vectorised with Polars (hash-based uniform draws, no Python loop
over rows), written to a temporary DuckDB store through Arrow, then every analysis is
timed on a fresh ``analytics.load`` (so each figure includes opening the store and
DuckDB's scan). Targets on a 2-core machine: spend by model by day over 10M rows
under 2 s; every analysis over 1M rows under 1 s. The data's mix is described in
:mod:`analytics.synthetic`; 1M rows span 30 days, 10M rows 90 days.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl

# Run as a script, this file would be imported as ``analytics`` (its directory comes
# first on sys.path): put the project root there instead.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

import analytics  # noqa: E402
from analytics.synthetic import START, generate, write_store  # noqa: E402


def analyses(db: Path, end: datetime) -> dict[str, Callable[[], object]]:
    """Each timed analysis, starting from a fresh ``load`` (so the scan is included)."""

    def calls() -> pl.LazyFrame:
        return analytics.load(db)

    return {
        "load, every column (collect)": lambda: calls().collect(),
        "load, 3 columns (collect)": lambda: calls().select("started_at", "model", "cost_usd").collect(),
        "spend by model": lambda: analytics.spend(calls(), by=["model"]),
        "spend by model by day": lambda: analytics.spend(calls(), by=["model", "day"]),
        "spend by app, user": lambda: analytics.spend(calls(), by=["app", "user"]),
        "spend by property:team by week": lambda: analytics.spend(calls(), by=["property:team", "week"]),
        "spend, last 7 days, by provider": lambda: analytics.spend(
            analytics.load(db, since=end - timedelta(days=7)), by=["provider"]
        ),
        "latency percentiles by model, provider": lambda: analytics.latency(calls()),
        "errors by provider, model": lambda: analytics.errors(calls()),
        "truncations by model": lambda: analytics.truncations(calls()),
        "cache savings by model": lambda: analytics.cache_savings(calls()),
        "waste by app (duplicates, retries, cut off)": lambda: analytics.waste(calls(), by=["app"]),
        "budget burn, day, by app": lambda: analytics.burn(calls(), period="day", by="app", now=end),
        "anomalies, hourly spend": lambda: analytics.anomalies(calls(), metric="cost", bucket="hour"),
        "anomalies, hourly error rate": lambda: analytics.anomalies(
            calls(), metric="error_rate", bucket="hour"
        ),
        "report summary by model (CLI query)": lambda: analytics.summary(calls(), by=["model"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--repeat", type=int, default=5, help="runs per analysis (default: 5)")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--keep", metavar="DIR", help="write the stores here and keep them")
    args = parser.parse_args()
    results: dict[str, dict[int, list[float]]] = {}
    notes = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep or tmp)
        for n in args.rows:
            days = 30 if n <= 1_000_000 else 90
            db = root / f"bench-{n}" / "llmtap.duckdb"
            if not db.exists():
                started = time.perf_counter()
                calls, bodies = generate(n, days)
                generated = time.perf_counter() - started
                write_store(db, calls, bodies)
                del calls, bodies
                notes.append(
                    f"{n:,} rows over {days} days: generated in {generated:.1f} s, "
                    f"written in {time.perf_counter() - started - generated:.1f} s, "
                    f"{db.stat().st_size / 1e6:,.0f} MB"
                )
            end = START + timedelta(days=days)
            for name, run in analyses(db, end).items():
                times = results.setdefault(name, {}).setdefault(n, [])
                for _ in range(args.repeat):
                    started = time.perf_counter()
                    run()
                    times.append(time.perf_counter() - started)
                print(f"{n:>10,}  {name:<45} {statistics.median(times):7.3f} s", file=sys.stderr)
    notes.append(f"load average after the run: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    header = ["analysis", *(f"{n:,} rows: median (best), s" for n in args.rows)]
    rows = [
        [name, *(f"{statistics.median(by_n[n]):.3f} ({min(by_n[n]):.3f})" for n in args.rows)]
        for name, by_n in results.items()
    ]
    if args.markdown:
        print("\n".join(notes) + "\n")
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join(["---"] + ["---:"] * len(args.rows)) + "|")
        for row in rows:
            print("| " + " | ".join(row) + " |")
    else:
        print("\n".join(notes))
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            print(
                "  ".join(
                    c.ljust(w) if i == 0 else c.rjust(w)
                    for i, (c, w) in enumerate(zip(row, widths, strict=True))
                )
            )


if __name__ == "__main__":
    main()
