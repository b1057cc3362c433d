"""The Prometheus text exposition format (version 0.0.4), as much of it as llmtap needs.

Written by hand rather than with ``prometheus_client``: a scrape renders totals the store
already holds, so the library's registry, locks and per-event instruments would sit unused,
and the format is a few lines per family (``# HELP``, ``# TYPE``, then one sample a line:
``name{label="value",...} number``). Label values arrive already made safe by
:func:`collector.metrics.labels.shown` and are escaped here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from collector.metrics.labels import escape

__all__ = ["CONTENT_TYPE", "Family", "Labels", "cede", "joined", "label_text", "number", "render"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: A sample's labels, in the order written; a None value is left out (Prometheus reads an
#: empty or absent label alike).
Labels = tuple[tuple[str, str | None], ...]


def number(value: int | float | Decimal | str | None) -> str:
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
    Made once per label set and reused by each of its series and buckets."""
    return ",".join(
        f'{name}="{escape(value)}"' for name, value in labels if value is not None and value != ""
    )


def joined(*texts: str) -> str:
    """Label texts (of :func:`label_text`) as one."""
    return ",".join(text for text in texts if text)


def _braced(text: str) -> str:
    return "{" + text + "}" if text else ""


#: Each bound's ``le`` label, written once (every histogram series repeats them).
_LE: dict[int | float, str] = {}


def _le(bound: int | float) -> str:
    if bound not in _LE:
        _LE[bound] = f'le="{number(bound)}"'
    return _LE[bound]


def cede() -> None:
    """Let another thread take the GIL now. The proxy's event loop gives the GIL up at every
    socket wait and needs it back after; while a thread computes in Python it waits up to the
    5 ms switch interval for it each time, so a few milliseconds of rendering became tens of
    milliseconds added to a call in flight. Rendering cedes every few series instead."""
    time.sleep(0)


@dataclass(slots=True)
class Family:
    """One metric family and its sample lines, written as they are added; ``labels`` is a
    :func:`label_text`."""

    name: str
    kind: str
    help: str
    lines: list[str] = field(default_factory=list)

    def add(self, labels: str, value: int | float | Decimal | str | None, suffix: str = "") -> None:
        self.lines.append(f"{self.name}{suffix}{_braced(labels)} {number(value)}")

    def add_histogram(
        self,
        labels: str,
        bounds: Sequence[int | float],
        cumulative: Sequence[int],
        count: int,
        total: int | float | Decimal | None,
    ) -> None:
        """One histogram series: a ``_bucket`` per bound (``cumulative[i]`` observations at
        most ``bounds[i]``), the ``+Inf`` bucket (every observation), ``_sum`` and ``_count``."""
        prefix = f"{self.name}_bucket{{{labels}," if labels else f"{self.name}_bucket{{"
        self.lines += [
            f"{prefix}{_le(bound)}}} {observed}" for bound, observed in zip(bounds, cumulative, strict=True)
        ]
        self.lines.append(f'{prefix}le="+Inf"}} {count}')
        braced = _braced(labels)
        self.lines.append(f"{self.name}_sum{braced} {number(total)}")
        self.lines.append(f"{self.name}_count{braced} {count}")


def render(families: Iterable[Family]) -> str:
    """The exposition text of ``families`` (those with no sample included: the metric exists)."""
    lines: list[str] = []
    for family in families:
        lines.append(f"# HELP {family.name} {family.help}")
        lines.append(f"# TYPE {family.name} {family.kind}")
        lines += family.lines
    return "\n".join(lines) + "\n"
