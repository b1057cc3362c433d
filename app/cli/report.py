"""`llmtap report`: the terminal face of the analytics API."""

from __future__ import annotations

import sys
from datetime import datetime

import click

from app.cli.options import data_dir_option, format_option, node_option, store_option, window_options
from app.terminal.spend_report import FORMATS, METRICS, PERIODS, VIEWS, build, parse_by, title, write
from collector.settings.paths import Paths, resolve_data_dir
from collector.storage.spool import Quarantine


@click.command("report", epilog="views: " + "; ".join(f"{name}: {view.help}" for name, view in VIEWS.items()))
@data_dir_option()
@store_option()
@window_options
@node_option
@click.option(
    "--by",
    metavar="DIM[,DIM...]",
    help="group by these, comma-separated: model, provider, api, app, user, session, status_class, "
    "error_kind, hour, day, week, month, node, property:KEY (a metadata property) or an llm_calls column "
    "(default: the view's own; model for summary)",
)
@click.option(
    "--show", type=click.Choice(list(VIEWS)), default="summary", show_default=True, help="the analysis"
)
@format_option(FORMATS, "table")
@click.option("--period", type=click.Choice(PERIODS), help="burn: the budget period (default: day)")
@click.option("--limit", type=float, metavar="USD", help="burn: the period's budget, to compare against")
@click.option("--bucket", type=click.Choice(PERIODS), help="anomalies: bucket size (default: hour)")
@click.option("--metric", type=click.Choice(METRICS), help="anomalies: what to score (default: cost)")
def report_command(
    data_dir: str | None,
    store: str | None,
    since: datetime | None,
    until: datetime | None,
    nodes: tuple[str, ...],
    by: str | None,
    show: str,
    fmt: str,
    period: str | None,
    limit: float | None,
    bucket: str | None,
    metric: str | None,
) -> int:
    """Terminal summary: calls, tokens, cost, latency, errors.

    Summarise the recorded calls: one analysis (--show) grouped by any dimensions (--by),
    then the models with usage but no price.

    \b
    Examples:
      llmtap report
      llmtap report --show spend --by app,day --since 2026-03-01
      llmtap report --show burn --period month --limit 200 --format json
      llmtap report --store postgresql://llmtap@db.internal/llmtap --by node,model
    """
    paths = Paths(resolve_data_dir(data_dir))
    groups = parse_by(by) if by is not None else None
    options = {"period": period, "limit": limit, "bucket": bucket, "metric": metric}
    report = build(store or paths.db, show, groups, since, until, nodes, **options)
    write(report, fmt, title(report, since, until))
    # Calls this sidecar could not load concern its own store, not another one read with --store.
    if store is None and (set_aside := Quarantine(paths.quarantine).count()):
        print(
            f"llmtap: {set_aside} recorded call(s) could not be loaded into the store; they are kept "
            f"in {paths.quarantine} (see README, Storage)",
            file=sys.stderr,
        )
    return 0
