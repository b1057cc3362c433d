"""The Recommendations page's data and its one action: the routing recommender's records
over the window, what canary rules realised, and writing drafted rules to the rules file.

The rules file (``Settings.paths.rules``) is what the proxy acts on and reloads when it
changes, so the page writes it only after a person confirmed, with
:func:`collector.routing.rules.write_rules` (merged by rule id, replaced atomically).
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

import analytics
from analytics.recommender import Recommendation
from app.ui.data import View
from collector.pricing.book import PriceBook
from collector.settings.config import Settings

#: What the page can do with the recommended swaps: ``draft`` only shows the rules.
ACTIONS = ("draft", "shadow", "canary", "enforce")
#: The rules file's header after the page wrote it (:func:`collector.routing.rules.write_rules`).
RULES_HEADER = "written by the llmtap dashboard's Recommendations page"


@dataclass(frozen=True, slots=True)
class Routing:
    records: tuple[Recommendation, ...]
    #: The records as a frame (analytics.recommendations_frame).
    frame: pl.DataFrame
    #: Canary rules: canary arm against control (analytics.realised_savings).
    realised: pl.DataFrame


def routing(view: View, settings: Settings) -> Routing:
    """The recommender's records for the window's calls (all routes: a route is an app
    with its provider and model, so the sidebar's filters do not apply), and realised
    savings of canary rules."""
    records = analytics.recommend(
        view.db, since=view.since, settings=settings.recommend, book=PriceBook(settings.prices)
    )
    return Routing(
        records=tuple(records),
        frame=analytics.recommendations_frame(records),
        realised=analytics.realised_savings(analytics.load(view.db, since=view.since)),
    )
