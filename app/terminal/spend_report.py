"""``llmtap report``: the terminal face of :mod:`analytics`.

Each view is one analysis function run on ``analytics.load(db, since, until)``; the
report only chooses its parameters and renders the DataFrame it returns, as a rich
table, JSON or CSV. The summary and spend views also list the models with usage but no
price, so the user knows which costs are missing and how to add them, and end with a
total over the window (the same function over every call, so percentiles are true ones).

Values in the table come from the traffic (app names, models, properties are whatever
clients sent), so control characters are shown escaped: an app named ``"x\\x1b[2J"``
cannot clear the user's terminal. JSON and CSV are data and carry values as they are.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from collector.trust import boundary

if TYPE_CHECKING:
    import polars as pl
    from rich.table import Table

# Polars, rich and the analytics package load only when a report runs, so that the
# other commands (``llmtap env`` inside a shell's eval, ``proxy``) start fast.

FORMATS = ("table", "json", "csv")
#: The time buckets of analytics.TIME_BUCKETS, for --period and --bucket.
PERIODS = ("hour", "day", "week", "month")
METRICS = ("cost", "calls", "error_rate")
UNPRICED_NOTE = 'unpriced models (cost unknown; add [prices."MODEL"] to the config, then `llmtap reprice`):'


@dataclass(frozen=True)
class View:
    """One ``--show`` choice: which analysis, grouped by what unless ``--by`` says."""

    #: The analytics function that computes it.
    function: str
    by: tuple[str, ...]
    help: str
    #: Which report options the function takes (report option name -> keyword argument).
    options: dict[str, str] = field(default_factory=dict)
    lists_unpriced: bool = False
    #: Ends with a total over the window (the function run with no grouping).
    totals: bool = False


VIEWS: dict[str, View] = {
    "summary": View(
        "summary",
        ("model",),
        "calls, tokens, cost, p50/p95 latency, errors, and their total",
        lists_unpriced=True,
        totals=True,
    ),
    "spend": View(
        "spend",
        ("model",),
        "calls, every token kind and cost, and their total",
        lists_unpriced=True,
        totals=True,
    ),
    "latency": View("latency", ("provider", "model"), "latency and TTFT percentiles, stream speed"),
    "errors": View("errors", ("provider", "model"), "errors by kind"),
    "truncations": View("truncations", ("model",), "answers cut off at the output limit"),
    "cache": View(
        "cache_summary",
        ("model",),
        "prompt-cache reads and what they saved; response-cache hits and what they saved, beside what "
        "repeated requests still cost (what a cache would have saved)",
        totals=True,
    ),
    "waste": View("waste", ("app",), "duplicate requests, retried failures, truncated answers"),
    "burn": View(
        "burn", (), "spend so far this period, run rate, forecast", {"period": "period", "limit": "limit_usd"}
    ),
    "anomalies": View(
        "anomalies", (), "hours or days far off the recent norm", {"bucket": "bucket", "metric": "metric"}
    ),
}

_HEADERS = {"run_rate_usd_per_hour": "run rate $/h"}
_TIME_FORMATS = {"hour": "%Y-%m-%d %H:00", "day": "%Y-%m-%d", "week": "%Y-%m-%d", "month": "%Y-%m"}
#: The label of the total row, in its first grouping column.
TOTAL = "total"
#: CSV's time format (ISO 8601, UTC).
_CSV_TIME = "%Y-%m-%dT%H:%M:%SZ"


@dataclass(frozen=True)
class Report:
    """A computed view, ready to print in any format."""

    view: str
    by: list[str]
    table: pl.DataFrame
    unpriced: pl.DataFrame | None
    #: One row, the view's columns less the grouping ones: the whole window (views with totals).
    total: pl.DataFrame | None = None


def build(
    store: str | Path,
    view: str = "summary",
    by: list[str] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    nodes: tuple[str, ...] = (),
    **options: Any,
) -> Report:
    """Run ``view`` over the calls of ``store`` (as :func:`analytics.load` takes it) started
    in [since, until) and recorded by ``nodes`` (a fleet store's; empty: all). ``options``
    are the view's own (period and limit for burn, bucket and metric for anomalies); None
    means default. Burn measures the period containing ``until`` when it is set."""
    import analytics

    spec = VIEWS[view]
    groups = list(spec.by) if by is None else by
    calls = analytics.load(store, since, until, nodes)
    kwargs = {
        spec.options[name]: value
        for name, value in options.items()
        if name in spec.options and value is not None
    }
    if view == "burn" and until is not None:
        kwargs["now"] = until
    function = getattr(analytics, spec.function)
    table = function(calls, by=groups, **kwargs)
    if not spec.totals:
        return Report(view, groups, table, None)
    total = function(calls, by=[], **kwargs) if groups else None
    unpriced = analytics.unpriced(calls) if spec.lists_unpriced else None
    return Report(view, groups, table, unpriced, total)


def title(report: Report, since: datetime | None, until: datetime | None) -> str:
    """The line above the table, saying what was computed over which window."""
    window = f"{since.isoformat() if since else 'start'} to {until.isoformat() if until else 'now'}"
    grouping = f" by {', '.join(report.by)}" if report.by else ""
    return f"llmtap {report.view}{grouping}, {window} (UTC)"


def write(report: Report, fmt: str, heading: str, out: TextIO | None = None) -> None:
    """Print the report as ``fmt`` to ``out`` (default stdout): a rich table (plus the
    unpriced models), one JSON document, or CSV of the main table (the unpriced models
    then go to stderr)."""
    out = out or sys.stdout
    if fmt == "json":
        document: dict[str, Any] = {
            "view": report.view,
            "by": report.by,
            "title": heading,
            "rows": _records(report.table),
        }
        if report.total is not None:
            document["total"] = _records(report.total)[0]
        if report.unpriced is not None:
            document["unpriced"] = _records(report.unpriced)
        out.write(json.dumps(document, indent=2) + "\n")
        return
    if fmt == "csv":
        out.write(_with_total_row(report).write_csv(datetime_format=_CSV_TIME))
        if report.unpriced is not None and report.unpriced.height:
            models = ", ".join(printable(model) for model in report.unpriced["model"])
            print(f"llmtap: models with usage but no price (cost left out): {models}", file=sys.stderr)
        return
    from rich.console import Console
    from rich.text import Text

    console = Console(file=out, width=None if out.isatty() else 10_000, highlight=False, markup=False)
    console.print(Text(printable(heading), style="bold"), soft_wrap=True)
    if report.table.is_empty():
        console.print("no calls recorded in this window" if report.view != "anomalies" else "no anomalies")
    else:
        total = report.total.row(0, named=True) if report.total is not None else None
        console.print(render(report.table, total))
    if report.unpriced is not None and report.unpriced.height:
        console.print("\n" + UNPRICED_NOTE, soft_wrap=True)
        console.print(render(report.unpriced))


def _with_total_row(report: Report) -> pl.DataFrame:
    """The CSV table: the rows, then the total with ``total`` in the first grouping column
    and the other grouping columns empty (so grouping columns become text, see _csv_text)."""
    import polars as pl

    if report.total is None:
        return report.table
    keys = [_csv_text(k, report.table.schema[k]) for k in report.by]
    labels = [pl.lit(TOTAL if i == 0 else None, pl.String).alias(k) for i, k in enumerate(report.by)]
    total = report.total.with_columns(labels).select(report.table.columns)
    return pl.concat([report.table.with_columns(keys), total], how="vertical_relaxed")


def _csv_text(name: str, dtype: pl.DataType) -> pl.Expr:
    """A grouping column as CSV text: time buckets in the CSV's time format, lists (e.g.
    finish_reasons) as ``[stop, length]`` (CSV has no nested values), the rest as is."""
    import polars as pl

    column = pl.col(name)
    if dtype.is_temporal():
        return column.dt.strftime(_CSV_TIME)
    if isinstance(dtype, pl.List):
        items = column.list.eval(pl.element().cast(pl.String)).list.join(", ")
        return pl.concat_str(pl.lit("["), items, pl.lit("]")).alias(name)
    return column.cast(pl.String)


def render(frame: pl.DataFrame, total: dict[str, Any] | None = None) -> Table:
    """A DataFrame as a rich table: text left (control characters escaped), numbers right,
    money to 4 decimals (more below a cent), shares as percentages, time buckets as dates,
    missing values as ``-``; with ``total`` (values by column) as a footer under a rule."""
    import polars as pl
    from rich import box
    from rich.table import Table
    from rich.text import Text

    footers = _footers(frame.columns, total) if total is not None else dict.fromkeys(frame.columns, "")
    table = Table(
        box=box.SIMPLE if total is not None else box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        header_style="bold",
        show_footer=total is not None,
        footer_style="bold",
    )
    for name, dtype in frame.schema.items():
        text = dtype == pl.String or dtype.is_temporal()
        table.add_column(printable(_header(name)), footer=footers[name], justify="left" if text else "right")
    # Text, not str: rich would read markup and :emoji: codes in a str taken from the traffic.
    for row in frame.iter_rows(named=True):
        table.add_row(*(Text(_cell(name, value)) for name, value in row.items()))
    return table


def _footers(columns: list[str], total: dict[str, Any]) -> dict[str, str]:
    """The total row's cells: its values, ``total`` in the first grouping column (the first
    one the total lacks), nothing in the other grouping columns."""
    labels = iter([TOTAL])
    return {name: _cell(name, total[name]) if name in total else next(labels, "") for name in columns}


def _header(name: str) -> str:
    """A column's heading: ``latency_p95_ms`` -> ``p95 ms``, ``cost_usd`` -> ``cost $``."""
    if name in _HEADERS:
        return _HEADERS[name]
    label = name.removeprefix("latency_").replace("output_tokens_per_s", "tok/s").replace("_tokens", " tok")
    return label.removesuffix("_usd").replace("_", " ") + (" $" if label.endswith("_usd") else "")


def _cell(name: str, value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return value.strftime(_TIME_FORMATS.get(name, "%Y-%m-%d %H:%M"))
    if isinstance(value, Decimal | float) and "_usd" in name:
        return money(value)
    if isinstance(value, float) and (name.endswith(("_share", "_rate")) or name == "error_rate"):
        return f"{value:.1%}"
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return printable(str(value))


def money(value: Decimal | float) -> str:
    """Dollars to 4 decimals, or, below a cent, to two significant digits (up to the store's
    9 places): an embeddings call's $0.000012 must not read as $0.0000, a cost of nothing."""
    size = abs(float(value))
    if size >= 0.01 or size == 0 or not math.isfinite(size):
        return f"{value:,.4f}"
    places = min(9, 1 - math.floor(math.log10(size)))
    return f"{value:,.{places}f}"


def printable(text: str) -> str:
    """``text`` on one line of the terminal: a value from the traffic must not move the cursor,
    clear the screen or retitle the terminal (:func:`collector.trust.boundary.printable`), nor
    break a table row (tab and newline shown as escapes too)."""
    return boundary.printable(text).replace("\n", "\\x0a").replace("\t", "\\x09")


def _records(frame: pl.DataFrame) -> list[dict[str, Any]]:
    """Rows for JSON: money as numbers (floats), times as ISO 8601, infinities as null."""
    import polars as pl
    import polars.selectors as cs

    plain = frame.with_columns(cs.decimal().cast(pl.Float64)).with_columns(
        cs.float().replace([float("inf"), float("-inf")], None)
    )
    return json.loads(plain.write_json())


def parse_by(value: str) -> list[str]:
    """``--by`` as a list: comma-separated dimension names, each checked."""
    from analytics import dimension

    names = [name.strip() for name in value.split(",") if name.strip()]
    for name in names:
        dimension(name)
    return names
