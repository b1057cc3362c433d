"""``llmtap evaluate``: shows the shadow evaluation of stored calls as it runs, then its outcome.

The work (which stored calls, their copies through an in-process proxy) is
:mod:`collector.routing.evaluate`; this module is its progress bar and summary table.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from analytics.source import load
from collector.routing.evaluate import EvaluateError, Triage, missing_key, send_copies, triage
from collector.routing.rules import EVALUATION_ARMS
from collector.settings.config import Settings

__all__ = ["EvaluateError", "evaluate"]


def evaluate(
    settings: Settings,
    rule_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int | None = None,
) -> int:
    """Copy, compare and record; show progress (stderr), then a summary (stdout).

    Returns the exit code: 1 when keys were missing for every call there was to copy, or
    the copies' rows could not be stored. Raises :class:`EvaluateError` when nothing can be
    evaluated as asked (no such rule, no stored bodies, no stored call a rule matches)."""
    if limit is not None and limit < 1:
        raise EvaluateError(f"--limit must be a positive number of calls, got {limit}")
    out = Console(width=None if sys.stdout.isatty() else 10_000, highlight=False, markup=False)
    err = Console(stderr=True, highlight=False, markup=False)
    found = triage(settings, os.environ, rule_id, since, until)
    for provider, count in sorted(found.keyless.items()):
        err.print(f"llmtap: skipped {count} stored {provider} call(s): {missing_key(provider, settings)}")
    if not found.work:
        if found.keyless:
            return 1
        err.print(f"llmtap: nothing to evaluate: all {found.already} matching calls have a shadow copy")
        return 0
    work = found.work[:limit]
    started = datetime.now(UTC)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err) as progress:
        task = progress.add_task("shadow copies", total=len(work))
        capped, stored = send_copies(settings, work, lambda: progress.advance(task))
    if not stored:
        err.print(
            f"llmtap: error: the copies could not be written to {settings.paths.db} yet; they stay "
            f"in {settings.paths.spool} and are loaded by the next proxy or evaluate"
        )
        return 1
    summary = _summary(settings.data_dir, started, [item.original.call_id for item in work])
    _print_summary(out, summary, capped, found)
    return 0


def _summary(data_dir: Path, started: datetime, originals: list[str]) -> pl.DataFrame:
    """Per rule and arm, the copies this run recorded: how many were compared, agreed,
    failed, and what they cost."""
    return (
        load(data_dir, since=started)
        .filter(pl.col("routing_arm").is_in(EVALUATION_ARMS) & pl.col("shadow_of").is_in(originals))
        .group_by("routing_rule", "routing_arm", pl.col("request_model").alias("model"))
        .agg(
            copies=pl.len(),
            compared=pl.col("agreement").is_not_null().sum(),
            agreed=pl.col("agreement").fill_null(False).sum(),
            failed=pl.col("error").is_not_null().sum(),
            spend_usd=pl.col("cost_usd").cast(pl.Float64).sum(),
        )
        .with_columns(agreement=pl.col("agreed") / pl.col("compared"))
        .sort("routing_rule", "routing_arm")
        .collect()
    )


def _print_summary(out: Console, summary: pl.DataFrame, capped: Counter[str], found: Triage) -> None:
    table = Table(title="llmtap evaluate: shadow copies of stored calls")
    for name in ("rule", "arm", "model", "copies", "compared", "agreed", "agreement", "failed", "spend USD"):
        table.add_column(name, justify="left" if name in ("rule", "arm", "model") else "right")
    for row in summary.iter_rows(named=True):
        agreement = "-" if row["agreement"] is None else f"{row['agreement']:.1%}"
        table.add_row(
            row["routing_rule"],
            row["routing_arm"],
            row["model"],
            *(str(row[name]) for name in ("copies", "compared", "agreed")),
            agreement,
            str(row["failed"]),
            f"{row['spend_usd']:.6f}",
        )
    out.print(table)
    out.print(f"{summary['copies'].sum()} copies sent, shadow spend ${summary['spend_usd'].sum():.6f}")
    if found.already:
        out.print(f"{found.already} matching calls already had a shadow copy and were left alone")
    for rule, count in sorted(capped.items()):
        out.print(f"rule {rule}: {count} call(s) not copied: its shadow_spend_cap_usd for today is reached")
