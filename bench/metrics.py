"""What one reading of the metrics costs over a large store: a Prometheus scrape and an OTLP export.

    uv run python bench/metrics.py [--rows 1000000] [--repeat 5] [--markdown] [--keep DIR]

Rows are generated (:mod:`analytics.synthetic`: 10 models, 6 apps, every error kind) over the
30 days ending now. Each figure is the median of ``--repeat`` readings by a fresh exporter
(its label bounds chosen again, as after a proxy's start): the store's query
(:func:`collector.metrics.snapshot.snapshot`, one scan of ``llm_calls`` on one DuckDB thread),
then the Prometheus text (:func:`collector.metrics.exposition.render`) or the OTLP request
(:func:`collector.metrics.otlp.metrics_data`, encoded as the exporter sends it). Target on a
2-core machine: a reading within 1 s at 1M calls (Prometheus' default scrape timeout is 10 s;
an answer is reused for ten times its query's duration, so the query takes at most a tenth of
a core however often it is scraped).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics

from analytics.synthetic import generate, write_store
from bench._common import check_quiet, log, machine_line, table
from collector.metrics.exposition import render
from collector.metrics.labels import LabelBounds
from collector.metrics.otlp import metrics_data
from collector.metrics.snapshot import snapshot

DAYS = 30
TARGET_S = 1.0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="calls in the store (default: 1,000,000)")
    parser.add_argument("--repeat", type=int, default=5, help="readings per figure (default: 5)")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--keep", metavar="DIR", help="write the store here and keep it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(args.keep or tmp) / "llmtap.duckdb"
        now = datetime.now(UTC)
        if not db.exists():
            log(f"generating {args.rows:,} calls over the {DAYS} days to now")
            calls, bodies = generate(args.rows, DAYS, start=now - timedelta(days=DAYS))
            write_store(db, calls, bodies)
            del calls, bodies
        quiet = check_quiet()
        query: list[float] = []
        prometheus: list[float] = []
        otlp: list[float] = []
        sizes: dict[str, int] = {}
        for _ in range(args.repeat):
            metrics, query_s = snapshot(db, LabelBounds())
            query.append(query_s)
            started = time.perf_counter()
            text = render(metrics).encode()
            prometheus.append(time.perf_counter() - started)
            started = time.perf_counter()
            request = encode_metrics(metrics_data(metrics, 0, time.time_ns())).SerializeToString()
            otlp.append(time.perf_counter() - started)
            sizes = {"prometheus": len(text), "otlp": len(request), "lines": text.count(b"\n")}
        log(f"query {statistics.median(query):.3f} s")
    med = {
        name: statistics.median(values)
        for name, values in (("query", query), ("text", prometheus), ("otlp", otlp))
    }
    rows = [
        ["store query (one scan)", f"{med['query']:.3f}", f"{min(query):.3f}", ""],
        [
            "Prometheus text",
            f"{med['text']:.3f}",
            f"{min(prometheus):.3f}",
            f"{sizes['prometheus'] / 1e6:.2f} MB, {sizes['lines']:,} lines",
        ],
        [
            "OTLP request (protobuf)",
            f"{med['otlp']:.3f}",
            f"{min(otlp):.3f}",
            f"{sizes['otlp'] / 1e6:.2f} MB",
        ],
    ]
    print(f"{machine_line()}; {quiet}; load average after: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"{args.rows:,} calls over {DAYS} days; each figure: the median of {args.repeat} readings\n")
    print(table(["part of a reading", "median, s", "best, s", "size"], rows, args.markdown))
    for name, total in (
        ("a scrape", med["query"] + med["text"]),
        ("an OTLP export", med["query"] + med["otlp"]),
    ):
        verdict = "met" if total < TARGET_S else "NOT met"
        print(f"\ntarget: {name} within {TARGET_S:.0f} s with {args.rows:,} calls: {total:.3f} s, {verdict}")


if __name__ == "__main__":
    main()
