"""Bounded label values: which providers, models and apps get their own series.

Provider, model and app come from traffic (an app is whatever ``X-Llmtap-App`` says), and
every distinct label value is a new set of series in Prometheus, forever. So each label
shows at most a fixed number of values (:data:`CAPS`), and each label *set* (provider,
operation, model, app) at most :data:`MAX_SETS`; the rest are summed under ``other``, so
totals stay whole.

The values shown are **sticky**: chosen at the first scrape (the most called first, from
the whole store), then each new value is admitted while its label has room, and none ever
leaves. A value that moved between its own series and ``other`` would make both counters
go down, which Prometheus reads as a restart (``rate`` would count their whole value
again); with sticky values every counter only grows, as long as the store only grows.
The choice lives in the proxy's memory: after a restart it is made again from the store.

Values are shown as text through :func:`collector.trust.boundary.text` with a short limit
(:data:`VALUE_LIMIT`), control characters escaped as the report and the dashboard show
them, then escaped for the exposition format (backslash, double quote, line feed).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from collector.trust.boundary import printable, text

__all__ = ["CAPS", "MAX_SETS", "OTHER", "VALUE_LIMIT", "LabelBounds", "escape", "shown"]

#: Most values each traffic-made label shows (the labels of :data:`collector.metrics.query.LABELS`).
CAPS: dict[str, int] = {"provider": 20, "model": 50, "app": 20}
#: Most (provider, operation, model, app) label sets shown; the rest are summed into one set
#: with every label ``other``.
MAX_SETS = 300
#: What values over a cap are shown as.
OTHER = "other"
#: Longest label value shown, in characters (then the boundary's truncation mark).
VALUE_LIMIT = 100


def escape(value: str) -> str:
    """A label value as the text format writes it between double quotes."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def shown(value: str) -> str:
    """A value from traffic as a label shows it: valid, bounded, key-like strings masked,
    control characters escaped (not yet escaped for the format: see :func:`escape`)."""
    return printable(text(value, limit=VALUE_LIMIT))


class LabelBounds:
    """The values (and label sets) shown so far, and room for more. Not thread-safe: the
    server runs one scrape at a time (see :meth:`collector.metrics.server.MetricsServer.text`)."""

    def __init__(self, caps: Mapping[str, int] = CAPS, max_sets: int = MAX_SETS) -> None:
        self.caps = dict(caps)
        self.max_sets = max_sets
        self.kept: dict[str, set[str]] = {label: set() for label in self.caps}
        self.sets: set[tuple[str | None, ...]] = set()

    def kept_lists(self) -> dict[str, list[str]]:
        return {label: sorted(values) for label, values in self.kept.items()}

    def free(self) -> dict[str, int]:
        """How many more values each label may admit."""
        return {label: max(0, cap - len(self.kept[label])) for label, cap in self.caps.items()}

    def admit(self, label: str, value: str) -> None:
        """Record a value the query showed (it was kept, or admitted into free room)."""
        self.kept[label].add(value)

    def admit_sets(self, ranked: Iterable[tuple[str | None, ...]]) -> set[tuple[str | None, ...]]:
        """The label sets shown, given every set of this scrape (most called first): those
        shown before, then new ones while there is room."""
        for labels in ranked:
            if labels not in self.sets and len(self.sets) < self.max_sets:
                self.sets.add(labels)
        return self.sets
