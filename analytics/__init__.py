"""llmtap's analyses as Polars: what the dashboard, ``llmtap report``, notebooks and the
routing recommender stand on.

    import analytics
    calls = analytics.load("~/.llmtap", since="2026-11-01")     # a LazyFrame; nothing read yet
    analytics.spend(calls, by=["app", "property:team", "week"])  # reads the store once
    fleet = analytics.load("postgresql://llmtap@db/llmtap")     # every sidecar's calls, with node

:func:`load` gives the store's calls as a LazyFrame (:func:`load_scores` their scores, which
:func:`import_feedback` adds to from a file); every analysis is a plain function
of that frame (plus parameters) returning a DataFrame, built from Polars expressions
(no Python loop over calls). The store (a local DuckDB file, or the fleet's PostgreSQL:
:mod:`analytics.engines`) is open only while a result is collected, for one query on the
columns the analysis needs (see :mod:`analytics.source`), so analyses run safely beside a
recording proxy, and give the same answers from either engine. Grouping (``by``) accepts the names in
:data:`DIMENSIONS`, ``property:KEY`` and any column (see :mod:`analytics.dimensions`).

* :func:`spend`, :func:`summary`: calls, tokens, cost (:mod:`analytics.metrics`)
* :func:`latency`: latency and time-to-first-token percentiles, stream speed
* :func:`errors`, :func:`truncations`: error kinds; answers cut off at the limit
* :func:`cache_savings`, :func:`cache_rates`: prompt-cache use and what it saved;
  :func:`response_cache`: what llmtap's response cache saved, beside the duplicates it did not
  catch; :func:`cache_summary`: both
* :func:`waste`, :func:`waste_flags`: duplicates, retried failures, truncated spend
* :func:`burn`: spend so far in a period, run rate, forecast
* :func:`anomalies`: hours or days far off the recent norm (robust z-score)
* :func:`fallbacks`: what fallback chains did (failed attempts, calls a fallback answered)
* :func:`shadow_spend`: what shadow evaluation of candidate models cost (kept out of spend)
* :func:`recommend`, :func:`recommendations_frame`, :func:`draft_rules`,
  :func:`realised_savings`: the routing recommender (:mod:`analytics.recommender`)
* :mod:`analytics.synthetic`: realistic generated stores for tests, benchmarks and demos
"""

from analytics.anomalies import anomalies
from analytics.cache import cache_rates, cache_savings, cache_summary, response_cache
from analytics.dimensions import (
    DIMENSIONS,
    TIME_BUCKETS,
    TRUNCATION_REASONS,
    dimension,
    error_kind,
    status_class,
    truncated,
)
from analytics.fallbacks import fallbacks
from analytics.metrics import errors, latency, shadow_spend, spend, summary, truncations, unpriced
from analytics.period_spend import burn
from analytics.recommender import (
    Recommendation,
    draft_rules,
    realised_savings,
    recommend,
    recommendations_frame,
    wilson_interval,
)
from analytics.source import SCHEMA, SCORES_SCHEMA, db_path, import_feedback, load, load_scores
from analytics.waste import waste, waste_flags
from collector.calls.error_kinds import ERROR_KINDS

__all__ = [
    "DIMENSIONS",
    "ERROR_KINDS",
    "SCHEMA",
    "SCORES_SCHEMA",
    "TIME_BUCKETS",
    "TRUNCATION_REASONS",
    "Recommendation",
    "anomalies",
    "burn",
    "cache_rates",
    "cache_savings",
    "cache_summary",
    "db_path",
    "dimension",
    "draft_rules",
    "error_kind",
    "errors",
    "fallbacks",
    "import_feedback",
    "latency",
    "load",
    "load_scores",
    "realised_savings",
    "recommend",
    "recommendations_frame",
    "response_cache",
    "shadow_spend",
    "spend",
    "status_class",
    "summary",
    "truncated",
    "truncations",
    "unpriced",
    "waste",
    "waste_flags",
    "wilson_interval",
]
