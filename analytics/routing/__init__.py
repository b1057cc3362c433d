"""The routing recommender: which routes can move to a cheaper model, cache their
prompts or use a batch API, proven on the user's own traffic, and what it saved.

    import analytics
    recs = analytics.recommend("~/.llmtap", since="2026-11-01")   # list of Recommendation
    analytics.recommendations_frame(recs)                         # one row per record
    rules = analytics.draft_rules(recs, "shadow")                 # collector.routing.rules.Rule drafts
    analytics.realised_savings(analytics.load("~/.llmtap"))       # canary vs control per rule

A route is an app plus the provider and model its requests ask for. The modules:
:mod:`~analytics.routing.catalogue` (models, limits, capabilities, as data in
``models.toml``), :mod:`~analytics.routing.routes` (route profiles and shadow evidence,
in Polars), :mod:`~analytics.routing.costs` (cost per 1k requests, monthly savings),
:mod:`~analytics.routing.stats` (Wilson intervals), :mod:`~analytics.routing.swaps` (the
model-swap decision), :mod:`~analytics.routing.opportunities` (prompt caching, batch
APIs), :mod:`~analytics.routing.draft` (rules for review) and
:mod:`~analytics.routing.realised` (canary against control).
"""

from analytics.routing.draft import draft_rules
from analytics.routing.realised import realised_savings
from analytics.routing.recommend import recommend
from analytics.routing.record import Recommendation, recommendations_frame
from analytics.routing.stats import wilson_interval

__all__ = [
    "Recommendation",
    "draft_rules",
    "realised_savings",
    "recommend",
    "recommendations_frame",
    "wilson_interval",
]
