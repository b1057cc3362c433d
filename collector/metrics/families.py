"""What the metrics show: the metric families, from the query's groups and the budgets' totals.

Names follow the OpenTelemetry GenAI semantic conventions. Each :class:`Metric` carries its
OpenTelemetry name and unit (``otel_name``, ``unit``: what OTLP sends, :mod:`.otlp`) and its
Prometheus form (``name``: dots to underscores, the unit appended, ``{token}`` annotations
dropped; what the text format shows, :mod:`.exposition`):

* ``gen_ai.client.token.usage`` (``gen_ai_client_token_usage``): a histogram of each call's
  input and output tokens (``gen_ai.token.type``), over the calls that reported them;
* ``gen_ai.client.operation.duration`` (``gen_ai_client_operation_duration_seconds``): a
  histogram of ``latency_ms``, with ``error.type`` (llmtap's error kind) on failed calls;
* ``gen_ai.client.operation.time_to_first_chunk``
  (``gen_ai_client_operation_time_to_first_chunk_seconds``; in the conventions since
  open-telemetry/semantic-conventions#3377, early 2026): a histogram of ``ttft_ms`` over
  streams that did not fail (the conventions: streaming calls only);

each with the operation, provider, requested model and app (:data:`ATTRIBUTES` names them in
both forms), and the conventions' advised bucket bounds. llmtap's own counters carry the same
four: ``llmtap.calls``, ``llmtap.cost`` (USD), ``llmtap.errors`` (by ``error.type``),
``llmtap.fallbacks`` (calls a fallback answered: a fallback chain's later target, or a routing
rule's retry with the client's model), ``llmtap.cache.hits`` and ``llmtap.cache.saved`` (USD;
the response cache), and the gauge ``llmtap.budget.used_ratio`` per budget.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from collector.budgets.limits import Budget
from collector.calls.spans import OPERATIONS
from collector.metrics.labels import OTHER, LabelBounds, shown
from collector.metrics.model import Histogram, Labels, Metric, cede, order
from collector.metrics.query import COLUMNS, HISTOGRAMS, LABELS, SECONDS_BUCKETS, TOKEN_BUCKETS, Group

__all__ = ["ATTRIBUTES", "budget_use", "families"]


#: Each label's Prometheus name and its OpenTelemetry attribute key (``app`` as spans name it).
ATTRIBUTES: dict[str, str] = {
    "gen_ai_operation_name": "gen_ai.operation.name",
    "gen_ai_provider_name": "gen_ai.provider.name",
    "gen_ai_request_model": "gen_ai.request.model",
    "app": "llmtap.app",
    "gen_ai_token_type": "gen_ai.token.type",
    "error_type": "error.type",
    "budget": "llmtap.budget",
}

#: Where each of the query's sums is in a Group's values (and a _Totals).
_AT = {name: i for i, name in enumerate(COLUMNS)}


class _Totals:
    """One label set's sums (or one label set and error kind's), in the order of COLUMNS."""

    __slots__ = ("values",)

    def __init__(self) -> None:
        self.values: list[Any] = [0] * len(COLUMNS)

    def add(self, group: Group) -> None:
        self.values = [a + b for a, b in zip(self.values, group.values, strict=True)]

    def __getitem__(self, name: str) -> Any:
        return self.values[_AT[name]]

    def histogram(self, name: str, bounds: Sequence[int | float], scale: int = 1) -> Histogram:
        """The query's histogram ``name`` shown with ``bounds`` (its sum divided by ``scale``)."""
        first = _AT[f"{name}_le_0"]
        total = self[f"{name}_sum"]
        return Histogram(
            bounds,
            self.values[first : first + len(HISTOGRAMS[name])],
            self[f"{name}_count"],
            total / scale if scale != 1 else total,
        )


def _raw_set(group: Group) -> tuple[str | None, ...]:
    """The group's (provider, operation, model, app), values over their cap as ``other``."""
    provider, model, app = (
        OTHER if label in group.other else getattr(group, label) for label in ("provider", "model", "app")
    )
    operation = OPERATIONS.get(group.api or "", group.api or "request")
    return provider, operation, model, app


def _labels(raw: tuple[str | None, ...]) -> Labels:
    provider, operation, model, app = raw
    return (
        ("gen_ai_operation_name", operation),
        ("gen_ai_provider_name", None if provider is None else shown(provider)),
        ("gen_ai_request_model", None if model is None else shown(model)),
        ("app", None if app is None else shown(app)),
    )


#: How many groups or label sets are handled between two :func:`cede` calls.
_CEDE_EVERY = 8


def families(
    groups: Sequence[Group], bounds: LabelBounds, budgets: Sequence[Budget], now: float
) -> list[Metric]:
    """Every metric, from the query's ``groups`` (admitting the values they show into
    ``bounds``) and the proxy's ``budgets``."""
    for group in groups:
        for label in LABELS:
            value = getattr(group, label)
            if value is not None and label not in group.other:
                bounds.admit(label, value)
    calls_per_set: dict[tuple[str | None, ...], int] = defaultdict(int)
    for group in groups:
        calls_per_set[_raw_set(group)] += group.values[_AT["calls"]]
    ranked = sorted(calls_per_set, key=lambda raw: (-calls_per_set[raw], [v or "" for v in raw]))
    admitted = bounds.admit_sets(ranked)
    overflow = (OTHER, OTHER, OTHER, OTHER)
    shown_as = {raw: _labels(raw if raw in admitted else overflow) for raw in calls_per_set}
    # Summed per label set as shown (two sets can show alike: values cut at the same prefix),
    # and per set and error kind.
    per_set: dict[Labels, _Totals] = defaultdict(_Totals)
    per_error: dict[tuple[Labels, str | None], _Totals] = defaultdict(_Totals)
    for i, group in enumerate(groups):
        labels = shown_as[_raw_set(group)]
        per_set[labels].add(group)
        per_error[labels, group.error_kind].add(group)
        if i % _CEDE_EVERY == 0:
            cede()
    # Series in a stable order, whatever order the query's groups came in.
    per_set = dict(sorted(per_set.items(), key=lambda item: order(item[0])))
    per_error = dict(sorted(per_error.items(), key=lambda item: (order(item[0][0]), item[0][1] or "")))
    return [*_gen_ai(per_set, per_error), *_llmtap(per_set, per_error), _budgets(budgets, now)]


def _gen_ai(
    per_set: dict[Labels, _Totals], per_error: dict[tuple[Labels, str | None], _Totals]
) -> list[Metric]:
    tokens = Metric(
        "gen_ai_client_token_usage",
        "gen_ai.client.token.usage",
        "{token}",
        "histogram",
        "Number of input and output tokens used (per call), as the provider reported them",
    )
    duration = Metric(
        "gen_ai_client_operation_duration_seconds",
        "gen_ai.client.operation.duration",
        "s",
        "histogram",
        "GenAI operation duration: from the request's first byte at the proxy to the response's last",
    )
    first_chunk = Metric(
        "gen_ai_client_operation_time_to_first_chunk_seconds",
        "gen_ai.client.operation.time_to_first_chunk",
        "s",
        "histogram",
        "Time to the first chunk of a streamed response (streams that did not fail)",
    )
    for labels, totals in per_set.items():
        for kind in ("input", "output"):
            histogram = totals.histogram(kind, TOKEN_BUCKETS)
            if histogram.count:
                tokens.add((*labels, ("gen_ai_token_type", kind)), histogram)
        histogram = totals.histogram("ttft", SECONDS_BUCKETS, scale=1000)
        if histogram.count:
            first_chunk.add(labels, histogram)
    for (labels, error_kind), totals in per_error.items():
        histogram = totals.histogram("duration", SECONDS_BUCKETS, scale=1000)
        if histogram.count:
            duration.add((*labels, ("error_type", error_kind)), histogram)
    return [tokens, duration, first_chunk]


def _llmtap(
    per_set: dict[Labels, _Totals], per_error: dict[tuple[Labels, str | None], _Totals]
) -> list[Metric]:
    calls = Metric(
        "llmtap_calls_total",
        "llmtap.calls",
        "{call}",
        "counter",
        "LLM calls made by apps (llmtap's own evaluation calls left out)",
    )
    cost = Metric(
        "llmtap_cost_usd_total",
        "llmtap.cost",
        "USD",
        "counter",
        "What the calls cost, in USD (unpriced calls count nothing)",
    )
    errors = Metric(
        "llmtap_errors_total", "llmtap.errors", "{call}", "counter", "Failed calls, by llmtap's error kind"
    )
    fallbacks = Metric(
        "llmtap_fallbacks_total",
        "llmtap.fallbacks",
        "{call}",
        "counter",
        "Calls a fallback answered: a fallback chain's later target, or a routing rule's retry",
    )
    hits = Metric(
        "llmtap_cache_hits_total",
        "llmtap.cache.hits",
        "{call}",
        "counter",
        "Calls answered from llmtap's response cache",
    )
    saved = Metric(
        "llmtap_cache_saved_usd_total",
        "llmtap.cache.saved",
        "USD",
        "counter",
        "What the calls answered from the response cache would have cost, in USD",
    )
    for labels, totals in per_set.items():
        calls.add(labels, totals["calls"])
        cost.add(labels, totals["cost_usd"])
        fallbacks.add(labels, totals["fallbacks"])
        hits.add(labels, totals["cache_hits"])
        saved.add(labels, totals["cache_saved_usd"])
    for (labels, error_kind), totals in per_error.items():
        if error_kind is not None:
            errors.add((*labels, ("error_type", error_kind)), totals["calls"])
    return [calls, cost, errors, fallbacks, hits, saved]


def budget_use(budgets: Sequence[Budget], now: float) -> list[tuple[str, float]]:
    """(budget, spent / limit) of each budget in its current period, as the proxy enforces it:
    read from its running totals, which the event loop updates. A dict's copy is one step under
    the GIL, so it is never seen half-changed; the window is read before and after it, so a copy
    taken as a new period cleared it is taken again.

    A budget with ``per`` (a limit per user, app, property value) shows its largest total: how
    close the nearest scope is to being stopped. Not one series per scope: the scopes are user
    ids and property values (personal data, on an endpoint without authentication) and come
    and go without bound."""
    found: list[tuple[str, float]] = []
    for budget in budgets:
        tally = budget.tally
        for _ in range(3):
            window = tally.window
            spent = dict(tally.spent)
            if tally.window is window:
                break
        if now >= window.end:  # a new period, and no call has finished in it yet
            spent = {}
        found.append((budget.name, float(max(spent.values(), default=Decimal(0)) / budget.spec.limit_usd)))
    return found


def _budgets(budgets: Sequence[Budget], now: float) -> Metric:
    metric = Metric(
        "llmtap_budget_used_ratio",
        "llmtap.budget.used_ratio",
        "1",
        "gauge",
        "Spend in the budget's current UTC period as a fraction of its limit (1 = reached);"
        " for a budget per user, app or property, its largest",
    )
    for name, ratio in budget_use(budgets, now):
        metric.add((("budget", shown(name)),), ratio)
    return metric
