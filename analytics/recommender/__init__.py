"""The routing recommender: which routes can move to a cheaper model, cache their
prompts or use a batch API, proven on the user's own traffic, and what it saved.

    import analytics
    recs = analytics.recommend("~/.llmtap", since="2026-11-01")   # list of Recommendation
    analytics.recommendations_frame(recs)                         # one row per record
    rules = analytics.draft_rules(recs, "shadow")                 # collector.routing.rules.Rule drafts
    analytics.realised_savings(analytics.load("~/.llmtap"))       # canary vs control per rule

A route is an app plus the provider and model its requests ask for. The modules:
:mod:`~analytics.recommender.catalogue` (models, limits, capabilities, as data in
``models.toml``), :mod:`~analytics.recommender.routes` (route profiles and shadow
evidence, in Polars), :mod:`~analytics.recommender.route_costs` (cost per 1k requests,
monthly savings), :mod:`~analytics.recommender.stats` (Wilson intervals),
:mod:`~analytics.recommender.swaps` (the model-swap decision),
:mod:`~analytics.recommender.opportunities` (prompt caching, batch APIs),
:mod:`~analytics.recommender.run` (all of them over every route of a window),
:mod:`~analytics.recommender.draft` (rules for review) and
:mod:`~analytics.recommender.realised` (canary against control).

It only recommends: the rules a person keeps are :mod:`collector.routing.rules`, which the
proxy applies.
"""

from analytics.recommender.draft import draft_rules
from analytics.recommender.realised import realised_savings
from analytics.recommender.record import Recommendation, recommendations_frame
from analytics.recommender.run import recommend
from analytics.recommender.stats import wilson_interval

__all__ = [
    "Recommendation",
    "draft_rules",
    "realised_savings",
    "recommend",
    "recommendations_frame",
    "wilson_interval",
]
