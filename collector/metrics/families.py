"""What a scrape shows: the metric families, from the query's groups and the budgets' totals.

Names follow the OpenTelemetry GenAI semantic conventions in their Prometheus form (dots
to underscores, the unit appended, ``{token}`` annotations dropped):

* ``gen_ai_client_token_usage`` (``gen_ai.client.token.usage``): a histogram of each call's
  input and output tokens (label ``gen_ai_token_type``), over the calls that reported them;
* ``gen_ai_client_operation_duration_seconds`` (``gen_ai.client.operation.duration``): a
  histogram of ``latency_ms``, with ``error_type`` (llmtap's error kind) on failed calls;
* ``gen_ai_client_operation_time_to_first_chunk_seconds``
  (``gen_ai.client.operation.time_to_first_chunk``, in the conventions since
  open-telemetry/semantic-conventions#3377, early 2026): a histogram of ``ttft_ms`` over
  streams that did not fail (the conventions: streaming calls only);

each with ``gen_ai_operation_name``, ``gen_ai_provider_name``, ``gen_ai_request_model`` and
``app``, and the conventions' advised bucket bounds. llmtap's own counters carry the same four
labels: ``llmtap_calls_total``, ``llmtap_cost_usd_total``, ``llmtap_errors_total`` (by
``error_type``), ``llmtap_fallbacks_total`` (calls a fallback answered: a fallback chain's
later target, or a routing rule's retry with the client's model), ``llmtap_cache_hits_total``
and ``llmtap_cache_saved_usd_total``
(the response cache), and the gauge ``llmtap_budget_used_ratio`` per budget.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from collector.budgets.limits import Budget
from collector.calls.spans import OPERATIONS
from collector.metrics.exposition import Family, Labels, cede, joined, label_text
from collector.metrics.labels import OTHER, LabelBounds, shown
from collector.metrics.query import COLUMNS, HISTOGRAMS, LABELS, SECONDS_BUCKETS, TOKEN_BUCKETS, Group

__all__ = ["TOP_SCOPES", "budget_use", "families"]

#: Most totals shown per budget with ``per`` (its biggest spenders): one per user would be
#: one series per user.
TOP_SCOPES = 10

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

    def histogram(self, name: str) -> tuple[list[int], int, Any]:
        """A histogram's cumulative bucket counts, count and sum."""
        first = _AT[f"{name}_le_0"]
        return self.values[first : first + len(HISTOGRAMS[name])], self[f"{name}_count"], self[f"{name}_sum"]


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
) -> list[Family]:
    """Every family, from the query's ``groups`` (admitting the values they show into
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
    texts = {raw: label_text(_labels(raw if raw in admitted else overflow)) for raw in calls_per_set}
    # Summed per label set as shown (two sets can show alike: values cut at the same prefix),
    # and per set and error kind.
    per_set: dict[str, _Totals] = defaultdict(_Totals)
    per_error: dict[tuple[str, str | None], _Totals] = defaultdict(_Totals)
    for i, group in enumerate(groups):
        text = texts[_raw_set(group)]
        per_set[text].add(group)
        per_error[text, group.error_kind].add(group)
        if i % _CEDE_EVERY == 0:
            cede()
    # Series in a stable order, whatever order the query's groups came in.
    per_set = dict(sorted(per_set.items()))
    per_error = dict(sorted(per_error.items(), key=lambda item: (item[0][0], item[0][1] or "")))
    return [
        *_gen_ai(per_set, per_error),
        *_llmtap(per_set, per_error),
        _budgets(budgets, now),
    ]


def _gen_ai(per_set: dict[str, _Totals], per_error: dict[tuple[str, str | None], _Totals]) -> list[Family]:
    tokens = Family(
        "gen_ai_client_token_usage",
        "histogram",
        "Number of input and output tokens used (per call), as the provider reported them",
    )
    duration = Family(
        "gen_ai_client_operation_duration_seconds",
        "histogram",
        "GenAI operation duration: from the request's first byte at the proxy to the response's last",
    )
    first_chunk = Family(
        "gen_ai_client_operation_time_to_first_chunk_seconds",
        "histogram",
        "Time to the first chunk of a streamed response (streams that did not fail)",
    )
    token_types = {kind: label_text((("gen_ai_token_type", kind),)) for kind in ("input", "output")}
    for i, (labels, totals) in enumerate(per_set.items()):
        for kind, kind_text in token_types.items():
            cumulative, count, total = totals.histogram(kind)
            if count:
                tokens.add_histogram(joined(labels, kind_text), TOKEN_BUCKETS, cumulative, count, total)
        cumulative, count, total = totals.histogram("ttft")
        if count:
            first_chunk.add_histogram(labels, SECONDS_BUCKETS, cumulative, count, total / 1000)
        if i % _CEDE_EVERY == 0:
            cede()
    for i, ((labels, error_kind), totals) in enumerate(per_error.items()):
        cumulative, count, total = totals.histogram("duration")
        if count:
            error = label_text((("error_type", error_kind),))
            duration.add_histogram(joined(labels, error), SECONDS_BUCKETS, cumulative, count, total / 1000)
        if i % _CEDE_EVERY == 0:
            cede()
    return [tokens, duration, first_chunk]


def _llmtap(per_set: dict[str, _Totals], per_error: dict[tuple[str, str | None], _Totals]) -> list[Family]:
    calls = Family(
        "llmtap_calls_total", "counter", "LLM calls made by apps (llmtap's own evaluation calls left out)"
    )
    cost = Family(
        "llmtap_cost_usd_total", "counter", "What the calls cost, in USD (unpriced calls count nothing)"
    )
    errors = Family("llmtap_errors_total", "counter", "Failed calls, by llmtap's error kind (error_type)")
    fallbacks = Family(
        "llmtap_fallbacks_total",
        "counter",
        "Calls a fallback answered: a fallback chain's later target, or a routing rule's retry",
    )
    hits = Family("llmtap_cache_hits_total", "counter", "Calls answered from llmtap's response cache")
    saved = Family(
        "llmtap_cache_saved_usd_total",
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
            errors.add(joined(labels, label_text((("error_type", error_kind),))), totals["calls"])
    return [calls, cost, errors, fallbacks, hits, saved]


def budget_use(budgets: Sequence[Budget], now: float) -> list[tuple[str, str | None, float]]:
    """(budget, scope, spent / limit) of each budget's totals in its current period, as the
    proxy enforces them: read from its running totals, which the event loop updates. A dict's
    copy is one step under the GIL, so it is never seen half-changed; the window is read
    before and after it, so a copy taken as a new period cleared it is taken again. A budget
    with ``per`` shows its :data:`TOP_SCOPES` biggest totals; scope None is a budget's one total."""
    found: list[tuple[str, str | None, float]] = []
    for budget in budgets:
        tally = budget.tally
        for _ in range(3):
            window = tally.window
            spent = dict(tally.spent)
            if tally.window is window:
                break
        if now >= window.end:  # a new period, and no call has finished in it yet
            spent = {}
        limit = budget.spec.limit_usd
        if budget.scope.per is None:
            found.append((budget.name, None, float(spent.get("", Decimal(0)) / limit)))
            continue
        biggest = sorted(spent.items(), key=lambda item: (-item[1], item[0]))[:TOP_SCOPES]
        found += [(budget.name, key, float(amount / limit)) for key, amount in biggest]
    return found


def _budgets(budgets: Sequence[Budget], now: float) -> Family:
    family = Family(
        "llmtap_budget_used_ratio",
        "gauge",
        "Spend in the budget's current UTC period as a fraction of its limit (1 = reached)",
    )
    for name, scope, ratio in budget_use(budgets, now):
        labels = (("budget", shown(name)), ("scope", None if scope is None else shown(scope)))
        family.add(label_text(labels), ratio)
    return family
