"""The Prometheus text exposition format (version 0.0.4), as much of it as llmtap needs.

Written by hand rather than with ``prometheus_client``: a scrape renders totals the store
already holds, so the library's registry, locks and per-event instruments would sit unused,
and the format is a few lines per metric (``# HELP``, ``# TYPE``, then one sample a line:
``name{label="value",...} number``). Label values arrive already made safe by
:func:`collector.metrics.labels.shown` and are escaped here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from decimal import Decimal

from collector.metrics.labels import escape
from collector.metrics.model import Histogram, Labels, Metric, Number, cede

__all__ = ["CONTENT_TYPE", "label_text", "number", "render"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def number(value: Number | str) -> str:
    """A sample value: integers as digits, money as its exact decimal text, other floats in
    Python's shortest round-trip form (what Prometheus parses back to the same float64);
    None as 0 (a sum over no values: nothing counted yet)."""
    if value is None:
        return "0"
    if isinstance(value, str):  # a decimal sum, as DuckDB gave it
        return value
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "+Inf" if value > 0 else "-Inf"
        if value.is_integer() and abs(value) < 2**53:
            return str(int(value))
        return repr(value)
    return str(value)


def label_text(labels: Labels) -> str:
    """``name="value",...`` of ``labels``, escaped (no braces); None and empty values left out.
    Made once per series and reused by each of its buckets."""
    return ",".join(
        f'{name}="{escape(value)}"' for name, value in labels if value is not None and value != ""
    )


def _braced(text: str) -> str:
    return "{" + text + "}" if text else ""


#: Each bound's ``le`` label, written once (every histogram series repeats them).
_LE: dict[int | float, str] = {}


def _le(bound: int | float) -> str:
    if bound not in _LE:
        _LE[bound] = f'le="{number(bound)}"'
    return _LE[bound]


def _histogram(name: str, labels: str, histogram: Histogram) -> list[str]:
    """One histogram series: a ``_bucket`` per bound, the ``+Inf`` bucket (every
    observation), ``_sum`` and ``_count``."""
    prefix = f"{name}_bucket{{{labels}," if labels else f"{name}_bucket{{"
    braced = _braced(labels)
    return [
        *(
            f"{prefix}{_le(bound)}}} {observed}"
            for bound, observed in zip(histogram.bounds, histogram.cumulative, strict=True)
        ),
        f'{prefix}le="+Inf"}} {histogram.count}',
        f"{name}_sum{braced} {number(histogram.total)}",
        f"{name}_count{braced} {histogram.count}",
    ]


#: How many series are written between two :func:`cede` calls.
_CEDE_EVERY = 8


def render(metrics: Iterable[Metric]) -> str:
    """The exposition text of ``metrics`` (those with no series included: the metric exists)."""
    lines: list[str] = []
    written = 0
    for metric in metrics:
        lines.append(f"# HELP {metric.name} {metric.help}")
        lines.append(f"# TYPE {metric.name} {metric.kind}")
        for series in metric.series:
            labels = label_text(series.labels)
            if isinstance(series.value, Histogram):
                lines += _histogram(metric.name, labels, series.value)
            else:
                lines.append(f"{metric.name}{_braced(labels)} {number(series.value)}")
            written += 1
            if written % _CEDE_EVERY == 0:
                cede()
    return "\n".join(lines) + "\n"
