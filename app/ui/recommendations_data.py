"""The Recommendations page's data and its one action: the routing recommender's records
over the window, what canary rules realised, what each swap's decision rests on, and
writing drafted rules to the rules file.

The rules (the file, or the fleet store's: :mod:`collector.routing.location`) are what the
proxies act on and reload when they change, so the page writes them only after a person
confirmed, with :func:`collector.routing.rules.write_rules` (merged by rule id, replaced at once).
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

import analytics
from analytics.recommender import Recommendation
from app.ui.data import View
from app.ui.format import MISSING, count
from collector.pricing.book import PriceBook
from collector.settings.config import Settings

#: What the page can do with the recommended swaps: ``draft`` only shows the rules.
ACTIONS = ("draft", "shadow", "canary", "enforce")
#: The rules file's header after the page wrote it (:func:`collector.routing.rules.write_rules`).
RULES_HEADER = "written by the llmtap dashboard's Recommendations page"
#: Evidence from scores -> what its samples are (a shadow copy paired with its original, or
#: a canary rule's two arms).
SCORE_SAMPLES = {"paired_scores": "paired", "arm_scores": "canary/control"}


@dataclass(frozen=True, slots=True)
class Routing:
    records: tuple[Recommendation, ...]
    #: The records as a frame (analytics.recommendations_frame).
    frame: pl.DataFrame
    #: Canary rules: canary arm against control (analytics.realised_savings).
    realised: pl.DataFrame
    #: Fallback chains: failed attempts and calls a fallback answered (analytics.fallbacks).
    fallbacks: pl.DataFrame


def routing(view: View, settings: Settings) -> Routing:
    """The recommender's records for the window's calls (all routes: a route is an app
    with its provider and model, so the sidebar's filters do not apply), realised savings of
    canary rules, and what fallback chains did."""
    records = analytics.recommend(
        view.store, since=view.since, settings=settings.recommend, book=PriceBook(settings.prices)
    )
    calls = analytics.load(view.store, since=view.since)
    return Routing(
        records=tuple(records),
        frame=analytics.recommendations_frame(records),
        realised=analytics.realised_savings(calls),
        fallbacks=analytics.fallbacks(calls),
    )


def signed_percent(difference: float | None) -> str:
    """A difference of shares (-1..1) as signed percentage points (``+26.7%``, ``-3.0%``)."""
    if difference is None:
        return MISSING
    points = round(difference * 100, 1) + 0.0  # + 0.0: no "-0.0%"
    return f"{points:+.1f}%"


def quality(rec: Recommendation) -> str | None:
    """What a swap decided on scores rests on, as plain text (``helpful: +26.7% (≥ +13.0%) on
    131 paired samples``: the binding score's mean difference, candidate minus incumbent, and
    its lower bound); None for a record decided on agreement, or not a swap."""
    samples = SCORE_SAMPLES.get(rec.evidence or "")
    if samples is None:
        return None
    name = rec.score_name or "(unnamed score)"
    if not rec.score_samples or rec.quality_difference is None:
        return f"{name}: no {samples} samples yet"
    bound = (
        ""
        if rec.quality_difference_lower_bound is None
        else f" (≥ {signed_percent(rec.quality_difference_lower_bound)})"
    )
    return (
        f"{name}: {signed_percent(rec.quality_difference)}{bound} on "
        f"{count(rec.score_samples)} {samples} samples"
    )
