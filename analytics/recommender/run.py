"""One run of the recommender: :func:`recommend`, every route's records over a window, from
the store or a calls frame."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import polars as pl

from analytics.engines import reader
from analytics.recommender.opportunities import batch_api, prefix_hashes, prefix_repeats, prompt_caching
from analytics.recommender.quality import quality_evidence
from analytics.recommender.record import Recommendation
from analytics.recommender.routes import ROUTE, route_profiles, shadow_evidence
from analytics.recommender.swaps import Route, model_swaps
from analytics.source import instant, load, load_scores
from collector.pricing.book import PriceBook
from collector.settings.config import RecommendSettings

#: Record order: what to act on first.
_STATUS_ORDER = {"recommended": 0, "needs_evidence": 1, "rejected": 2}


def recommend(
    data: str | Path | pl.LazyFrame | None,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
    settings: RecommendSettings | None = None,
    *,
    book: PriceBook | None = None,
    scores: pl.LazyFrame | None = None,
) -> list[Recommendation]:
    """Recommendations for every route of the calls started in ``[since, until)``.

    ``data`` is a store as :func:`analytics.load` takes it (a data directory, its
    ``llmtap.duckdb``, a fleet store's URL; None: the default one), or a calls LazyFrame
    of :func:`analytics.load` (then no request body is at hand, and
    prompt-caching records say so, and ``scores`` may give the scores of
    :func:`analytics.source.load_scores`). ``book`` prices models (pass one built with the
    config's ``[prices]`` overrides). Records come recommended first, then those needing
    evidence, then the rejected, each by projected monthly savings."""
    settings = settings or RecommendSettings()
    book = book or PriceBook()
    start, end = instant(since), instant(until)
    if isinstance(data, pl.LazyFrame):
        calls, prefixes = data, None
    else:
        calls = load(data, start, end)
        prefixes = prefix_hashes(reader(data), start, end)
        scores = load_scores(data) if scores is None else scores
    profiles = route_profiles(calls).collect()
    if profiles.is_empty():
        return []
    first_at, last_at = profiles["first_at"].min(), profiles["last_at"].max()
    assert isinstance(first_at, datetime) and isinstance(last_at, datetime)
    window = (start or first_at, end or last_at)
    evidence = shadow_evidence(calls).collect()
    quality = quality_evidence(calls, scores, 1 - settings.confidence) if scores is not None else None
    repeats = prefix_repeats(calls, prefixes) if prefixes is not None else None
    records: list[Recommendation] = []
    for row in profiles.iter_rows(named=True):
        route = Route.of(row, book, window, settings.confidence)
        key = pl.all_horizontal(pl.col(name).eq_missing(row[name]) for name in ROUTE)
        records += model_swaps(
            route, evidence.filter(key), settings, book, quality.filter(key) if quality is not None else None
        )
        route_repeats = (
            repeats.filter(key).row(0, named=True)
            if repeats is not None and repeats.filter(key).height
            else None
        )
        records += prompt_caching(route, route_repeats, book, settings.confidence)
        records += batch_api(route, settings.confidence)
    return sorted(records, key=lambda rec: (_STATUS_ORDER[rec.status], -rec.monthly_savings_usd_mid))
