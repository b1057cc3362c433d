"""The metrics as data, before either form they leave in: a :class:`Metric` and its
:class:`Series`, which :mod:`.families` makes from the store's totals, and which
:mod:`.exposition` writes as Prometheus text and :mod:`.otlp` sends over OTLP."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal

__all__ = ["Histogram", "Labels", "Metric", "Number", "Series", "cede", "order"]

#: A series' labels (by their Prometheus names), in the order written; a None value is left
#: out (Prometheus reads an empty or absent label alike).
Labels = tuple[tuple[str, str | None], ...]

#: A sample value: a count, a sum (money as an exact Decimal), a ratio; None: nothing summed yet.
Number = int | float | Decimal | None


@dataclass(frozen=True, slots=True)
class Histogram:
    """One histogram series' observations: ``cumulative[i]`` of them at most ``bounds[i]``."""

    bounds: Sequence[int | float]
    cumulative: Sequence[int]
    count: int
    total: Number


@dataclass(frozen=True, slots=True)
class Series:
    """One series of a metric: its labels (Prometheus names) and a value or a histogram."""

    labels: Labels
    value: Number | Histogram


@dataclass(slots=True)
class Metric:
    """One metric and its series, in both naming forms (see the module's docstring)."""

    name: str
    otel_name: str
    unit: str
    kind: Literal["counter", "gauge", "histogram"]
    help: str
    series: list[Series] = field(default_factory=list)

    def add(self, labels: Labels, value: Number | Histogram) -> None:
        self.series.append(Series(labels, value))


def order(labels: Labels) -> tuple[tuple[str, str], ...]:
    """A sort key: series in a stable order, whatever order the store's groups came in."""
    return tuple((name, value or "") for name, value in labels)


def cede() -> None:
    """Let another thread take the GIL now. The proxy's event loop gives the GIL up at every
    socket wait and needs it back after; while a thread computes in Python it waits up to the
    5 ms switch interval for it each time, so a few milliseconds of rendering became tens of
    milliseconds added to a call in flight. Rendering cedes every few series instead."""
    time.sleep(0)
