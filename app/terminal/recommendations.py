"""``llmtap recommend``: the routing recommender's records as a table or JSON, and the
header of the rules file its drafted rules are merged into
(:func:`collector.routing.rules.write_rules`), which says it is a draft to review.

The table's evidence column says what each swap's decision rests on: the agreement with the
incumbent and its lower bound, or, where answers are scored, the binding score's mean
difference (candidate minus incumbent, in percentage points), its lower bound and samples.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TextIO

from rich.console import JustifyMethod

if TYPE_CHECKING:
    import polars as pl

    from analytics.recommender import Recommendation

FORMATS = ("table", "json")
DRAFT_HEADER = """\
DRAFT routing rules written by `llmtap recommend --write-rules` on {when}.
Review every rule before relying on it: the proxy applies this file as soon as it changes.
Each rule's `evidence` says what the recommender saw (agreement, samples, costs, risks).
Rules with other ids were kept as they were."""
#: Evidence from scores -> what its samples are (a shadow copy paired with its original, or
#: a canary rule's two arms).
SCORE_SAMPLES = {"paired_scores": "paired", "arm_scores": "canary/control"}


def write(
    recs: list[Recommendation],
    fmt: str,
    heading: str,
    out: TextIO | None = None,
    realised: pl.DataFrame | None = None,
) -> None:
    """Print the records as a rich table (the default) or one JSON document; then what the
    canary rules realised (``realised``: :func:`analytics.realised_savings`), when any ran."""
    out = out or sys.stdout
    if fmt == "json":
        from analytics.recommender import recommendations_frame
        from app.terminal.spend_report import _records

        document = {"title": heading, "recommendations": _records(recommendations_frame(recs))}
        if realised is not None:
            document["realised"] = _records(realised)
        out.write(json.dumps(document, indent=2) + "\n")
        return
    from rich.console import Console
    from rich.text import Text

    console = Console(file=out, width=None if out.isatty() else 10_000, highlight=False, markup=False)
    console.print(Text(heading, style="bold"), soft_wrap=True)
    if not recs:
        console.print("no routes with calls in this window")
        return
    console.print(_table(recs))
    if realised is not None and realised.height:
        console.print(Text("Canary rules: what they realised (canary arm against control)", style="bold"))
        console.print(_realised_table(realised))


def _realised_table(realised: pl.DataFrame):
    from rich import box
    from rich.table import Table

    from app.terminal.spend_report import printable

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
    for name in ("rule", "canary calls", "control calls", "canary $/req", "control $/req", "saved $"):
        table.add_column(name, justify="left" if name == "rule" else "right")

    def money(value: float | None) -> str:
        return "-" if value is None else f"{value:,.6f}"

    for row in realised.iter_rows(named=True):
        table.add_row(
            printable(row["routing_rule"] or "(none)"),
            f"{row['canary_calls'] or 0:,}",
            f"{row['control_calls'] or 0:,}",
            money(row["canary_usd_per_request"]),
            money(row["control_usd_per_request"]),
            money(row["savings_usd"]),
        )
    return table


def _table(recs: list[Recommendation]):
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
    for name, justify in _COLUMNS:
        table.add_column(name, justify=justify)
    for rec in recs:
        table.add_row(
            rec.status,
            rec.kind,
            rec.app or "(none)",
            f"{rec.provider}: {rec.incumbent}" + (f" -> {rec.candidate}" if rec.candidate else ""),
            f"{rec.requests_seen:,}",
            f"{rec.shadow_samples:,}",
            evidence(rec),
            f"{rec.cost_per_1k_incumbent_usd:,.4f}",
            "-" if rec.cost_per_1k_candidate_usd is None else f"{rec.cost_per_1k_candidate_usd:,.4f}",
            f"{rec.monthly_savings_usd_low:,.2f} / {rec.monthly_savings_usd_mid:,.2f} / "
            f"{rec.monthly_savings_usd_high:,.2f}",
            "-" if rec.latency_change_ms is None else f"{rec.latency_change_ms:+,.0f}",
            "; ".join((rec.reason, *rec.risks)),
        )
    return table


def evidence(rec: Recommendation) -> str:
    """What the record's decision rests on, compactly: ``97.3% (>= 95.0%)`` (agreement and
    its lower bound), ``helpful: +26.7% (>= +13.0%) on 131 paired samples`` (a score), or ``-``."""
    samples = SCORE_SAMPLES.get(rec.evidence or "")
    if samples is None:
        if rec.agreement is None or rec.agreement_lower_bound is None:
            return "-"
        return f"{rec.agreement:.1%} (>= {rec.agreement_lower_bound:.1%})"
    from app.terminal.spend_report import printable

    name = printable(rec.score_name or "(unnamed score)")  # a feedback name is the app's
    if not rec.score_samples or rec.quality_difference is None:
        return f"{name}: no {samples} samples yet"
    bound = (
        ""
        if rec.quality_difference_lower_bound is None
        else f" (>= {_points(rec.quality_difference_lower_bound)})"
    )
    return f"{name}: {_points(rec.quality_difference)}{bound} on {rec.score_samples:,} {samples} samples"


def _points(difference: float) -> str:
    """A difference of shares as signed percentage points (``+26.7%``; never ``-0.0%``)."""
    return f"{round(difference * 100, 1) + 0.0:+.1f}%"


_COLUMNS: tuple[tuple[str, JustifyMethod], ...] = (
    ("status", "left"),
    ("kind", "left"),
    ("app", "left"),
    ("route", "left"),
    ("requests", "right"),
    ("samples", "right"),
    ("agreement or quality (lower bound)", "right"),
    ("$/1k now", "right"),
    ("$/1k after", "right"),
    ("saved $/month low / mid / high", "right"),
    ("latency ms", "right"),
    ("reason; risks", "left"),
)


def draft_header() -> str:
    """The rules file's header after ``--write-rules``: a draft, to review, and when."""
    return DRAFT_HEADER.format(when=datetime.now(UTC).isoformat(timespec="seconds"))
