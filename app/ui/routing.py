"""The Recommendations page's data and its one action: the routing recommender's records
over the window, what canary rules realised, and writing drafted rules to the rules file.

The rules file (``DATA_DIR/rules.yaml`` unless the config's ``[routing] rules`` says
otherwise) is what the proxy acts on and reloads when it changes, so the page writes it
only after a person confirmed, merges by rule id (a redrafted rule replaces its old
self; other rules stay, in their order), and replaces the file atomically so the proxy
never reads half of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

import analytics
from analytics.routing import Recommendation
from app.ui.data import View
from collector.pricing.book import PriceBook
from collector.routing.rules import RULES_FILE, Rule, dump_rules, load_rules
from collector.settings.config import Settings
from collector.trust.private import write_private

#: What the page can do with the recommended swaps: ``draft`` only shows the rules.
ACTIONS = ("draft", "shadow", "canary", "enforce")


@dataclass(frozen=True, slots=True)
class Routing:
    records: tuple[Recommendation, ...]
    #: The records as a frame (analytics.recommendations_frame).
    frame: pl.DataFrame
    #: Canary rules: canary arm against control (analytics.realised_savings).
    realised: pl.DataFrame


def rules_path(settings: Settings) -> Path:
    """The rules file the proxy reads."""
    return settings.routing.rules or settings.data_dir / RULES_FILE


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


def merge_rules(existing: Sequence[Rule], drafted: Sequence[Rule]) -> list[Rule]:
    """``existing`` with each drafted rule replacing the one of the same id in place, and
    drafted rules with new ids appended."""
    by_id = {rule.id: rule for rule in drafted}
    merged = [by_id.pop(rule.id, rule) for rule in existing]
    return merged + [rule for rule in drafted if rule.id in by_id]


def write_rules(path: Path, drafted: Sequence[Rule]) -> list[Rule]:
    """Merge ``drafted`` into the rules file at ``path`` and replace it atomically; the
    rules now in the file. RulesError if the present file is not valid (nothing written)."""
    merged = merge_rules(load_rules(path), drafted)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "written by the llmtap dashboard's Recommendations page"
    write_private(path, dump_rules(merged, header), keep_mode=True)
    return merged
