"""How long the dashboard's pages take to get their data ready over 1M generated calls.

    uv run python bench/dashboard.py [--rows 1000000] [--repeat 5] [--markdown] [--keep DIR]

Rows are generated (:mod:`analytics.synthetic`) over the 30 days ending now, so today,
this week and this month all hold calls, and written to a temporary store. Each figure
is one uncached call of the page's data function in :mod:`app.ui.data` (what the page
runs on a cache miss: the store's scan plus every analysis the page shows); rendering in
the browser is not included. Target on a 2-core machine: the Overview's data in under
2 s with 1M calls in the store.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)

from analytics.synthetic import generate, write_store  # noqa: E402
from app.ui import budget_status, data  # noqa: E402
from bench._common import check_quiet, log, machine_line, table  # noqa: E402
from collector.settings.config import BudgetSpec  # noqa: E402

DAYS = 30
TARGET_S = 2.0
BUDGETS = (
    BudgetSpec(name="daily-total", limit_usd=Decimal(500), period="day"),
    BudgetSpec(name="checkout-daily", limit_usd=Decimal(100), period="day", app="checkout", action="block"),
    BudgetSpec(name="per-user", limit_usd=Decimal(5), period="month", per="user"),
)


def pages(data_dir: Path, now: datetime) -> dict[str, Callable[[], object]]:
    """Each timed page's data, for the default window (the last 7 days) unless named."""

    def view(label: str = data.DEFAULT_WINDOW, **filters: tuple[str, ...]) -> data.View:
        since = data.window_start(label, now)
        return data.View(data_dir, since, data.Filters(**filters), data.store_state(data.View(data_dir).db))

    db = view().db
    return {
        "Overview (last 7 days)": lambda: data.overview(view(), BUDGETS, now),
        "Overview (last 30 days)": lambda: data.overview(view("Last 30 days"), BUDGETS, now),
        "Overview (all time, app=checkout)": lambda: data.overview(
            view("All time", app=("checkout",)), BUDGETS, now
        ),
        "Overview (last 24 hours)": lambda: data.overview(view("Last 24 hours"), BUDGETS, now),
        "sidebar filter options (last 7 days)": lambda: data.filter_options(data_dir, view().since),
        "Costs (last 7 days)": lambda: data.costs(view()),
        "Latency (last 7 days)": lambda: data.latency(view()),
        "Calls: latest 500 (last 7 days)": lambda: data.recent_calls(view()),
        "Calls: one call's detail": lambda: data.call_detail(db, "c12345"),
        "Budgets: 3 budgets' status": lambda: budget_status.budget_status(db, BUDGETS, now),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="calls in the store (default: 1,000,000)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per page (default: 5)")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--keep", metavar="DIR", help="write the store here and keep it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(args.keep or tmp)
        db = data_dir / "llmtap.duckdb"
        now = datetime.now(UTC)
        if not db.exists():
            log(f"generating {args.rows:,} calls over the {DAYS} days to now")
            started = time.perf_counter()
            calls, bodies = generate(args.rows, DAYS, start=now - timedelta(days=DAYS))
            write_store(db, calls, bodies)
            del calls, bodies
            log(f"store written in {time.perf_counter() - started:.1f} s ({db.stat().st_size / 1e6:,.0f} MB)")
        quiet = check_quiet()
        results: dict[str, list[float]] = {}
        for name, run in pages(data_dir, now).items():
            times = results.setdefault(name, [])
            for _ in range(args.repeat):
                started = time.perf_counter()
                run()
                times.append(time.perf_counter() - started)
            log(f"{name:<40} {statistics.median(times):6.3f} s")
    overview = statistics.median(results["Overview (last 7 days)"])
    rows = [[name, f"{statistics.median(t):.3f}", f"{min(t):.3f}"] for name, t in results.items()]
    print(f"{machine_line()}; {quiet}; load average after: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"{args.rows:,} calls over {DAYS} days; each figure: {args.repeat} uncached runs\n")
    print(table(["page data", "median, s", "best, s"], rows, args.markdown))
    verdict = "met" if overview < TARGET_S else "NOT met"
    print(
        f"\ntarget: Overview's data under {TARGET_S:.0f} s with {args.rows:,} calls: "
        f"{overview:.3f} s, {verdict}"
    )


if __name__ == "__main__":
    main()
