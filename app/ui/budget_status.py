"""The Budgets page's data: each configured budget's spend, burn rate and forecast in its
current period, the proxy's current alerts, and the calls budgets blocked.

Budgets are enforced by the proxy (:mod:`collector.proxy.addons.budget_guard`); this reads the same
definitions (``[budgets."NAME"]`` in the config) and recomputes each total from the
store with :func:`analytics.burn`, so the page also works when no proxy runs. A budget's
own filters and period apply, never the sidebar's.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

import analytics
from analytics.dimensions import NONE
from collector.budgets.limits import Scope
from collector.budgets.periods import period_window
from collector.settings.config import BudgetSpec
from collector.settings.paths import Paths

#: The columns a budget's scope and spend need.
BUDGET_COLUMNS = ("started_at", "app", "user_id", "properties", "cost_usd")
#: How the proxy words a blocked call's ``error`` (collector.proxy.addons.budget_guard.Alert.message).
BLOCKED = r"blocked by budget ([^:]+):"
#: Run rate over the last hour: reacts to a change faster than the period's average.
RATE_LOOKBACK = timedelta(hours=1)

STATUS_COLUMNS = pl.Schema(
    {
        "budget": pl.String(),
        "scope": pl.String(),
        "period": pl.String(),
        "action": pl.String(),
        "limit_usd": pl.Float64(),
        "spent_usd": pl.Float64(),
        "used_share": pl.Float64(),
        "run_rate_usd_per_hour": pl.Float64(),
        "forecast_usd": pl.Float64(),
        "forecast_share": pl.Float64(),
        "period_end": pl.Datetime("us", "UTC"),
    }
)


def scope_filter(spec: BudgetSpec) -> pl.Expr:
    """True for the calls ``spec`` covers (its app, user and property filters)."""
    conditions = [pl.lit(True)]
    if spec.app is not None:
        conditions.append(pl.col("app") == spec.app)
    if spec.user is not None:
        conditions.append(pl.col("user_id") == spec.user)
    conditions += [
        analytics.dimension(f"property:{name}") == value for name, value in spec.properties.items()
    ]
    return pl.all_horizontal(conditions)


def budget_status(store: str, budgets: tuple[BudgetSpec, ...], now: datetime | None = None) -> pl.DataFrame:
    """One row per budget total (per app, user or property value for a ``per`` budget):
    spent so far this period, share of the limit, run rate over the last hour, and the
    straight-line forecast for the period's end. Reads the store once."""
    if not budgets:
        return pl.DataFrame(schema=STATUS_COLUMNS)
    now = now or datetime.now(UTC)
    since = min(
        min(period_window(spec.period, now.timestamp()).bounds()[0] for spec in budgets),
        now - RATE_LOOKBACK,
    )
    frame = analytics.load(store, since=since).select(BUDGET_COLUMNS).collect().lazy()
    rows = []
    for spec in budgets:
        by = [spec.per] if spec.per else []
        burn = analytics.burn(
            frame.filter(scope_filter(spec)),
            period=spec.period,
            by=by,
            now=now,
            limit_usd=float(spec.limit_usd),
            lookback=RATE_LOOKBACK,
        )
        if spec.per:
            burn = burn.filter(pl.col(spec.per) != NONE)
        scope = Scope(spec)
        keys = burn.get_column(spec.per).to_list() if spec.per else [""] * burn.height
        rows.append(
            burn.with_columns(
                budget=pl.lit(spec.name),
                scope=pl.Series([scope.describe(key) for key in keys], dtype=pl.String),
                period=pl.lit(spec.period),
                action=pl.lit(spec.action),
                spent_usd=pl.col("spent_usd").cast(pl.Float64).fill_null(0.0),
                used_share=pl.col("used_share").fill_null(0.0),
            ).select(list(STATUS_COLUMNS))
        )
    return pl.concat(rows).cast(STATUS_COLUMNS)


def read_alerts(data_dir: Path) -> list[dict[str, Any]]:
    """The proxy's current budget alerts (``DATA_DIR/budget_alerts.json``; none when
    absent). ValueError when the file is not the proxy's JSON."""
    path = Paths(data_dir).budget_alerts
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    try:
        alerts = json.loads(text)["alerts"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{path} is not a budget alert file: {exc}") from exc
    return list(alerts)


def blocked_calls(calls: pl.LazyFrame) -> pl.DataFrame:
    """Per budget: how many calls it blocked (the proxy's own 429s) and the last one."""
    budget = pl.col("error").str.extract(BLOCKED, 1)
    return (
        calls.filter((pl.col("status_code") == 429) & budget.is_not_null())
        .group_by(budget.alias("budget"))
        .agg(pl.len().cast(pl.Int64).alias("blocked_calls"), pl.col("started_at").max().alias("last_blocked"))
        .sort("blocked_calls", "budget", descending=[True, False])
        .collect()
    )
