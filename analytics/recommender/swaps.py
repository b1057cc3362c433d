"""Model swaps per route: candidates, their cost, their evidence, and the decision.

A swap is recommended only when the route's own traffic proves it (settings from
``[recommend]``, see :class:`collector.settings.config.RecommendSettings`):

* where its answers are scored (graders, feedback: :mod:`analytics.recommender.quality`), on
  quality: for every score name, at least ``min_samples`` samples and the lower confidence
  bound of the mean difference (candidate minus incumbent) above ``-max_quality_loss``;
* elsewhere, on agreement: at least ``min_samples`` shadow samples and the Wilson lower
  bound of their agreement with the incumbent at ``min_agreement`` or above.

Otherwise the record says what is missing (``needs_evidence``: more samples, or a shadow
rule to collect them) or why the swap is off (``rejected``: quality or agreement too low, a
capability the route needs, not cheaper).

The comparison's noise floor (the incumbent shadowed against itself) is reported, not
subtracted: subtracting it would credit the candidate with disagreements that may be
its own, so the decision stays on the candidate's raw agreement.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import polars as pl

from analytics.recommender.catalogue import ModelInfo, model_info, served_by
from analytics.recommender.record import Recommendation, Status
from analytics.recommender.route_costs import Savings, TokenMix, Volume, cost_per_1k
from analytics.recommender.stats import samples_needed, wilson_interval
from collector.pricing.book import PriceBook
from collector.settings.config import RecommendSettings

#: Catalogue candidates without evidence listed per route (the biggest savings first),
#: when the config names none and no candidate of the route has been shadowed yet.
UNTESTED_PER_ROUTE = 2


@dataclass(frozen=True)
class Route:
    """One route's measured facts (a row of :func:`analytics.recommender.routes.route_profiles`)
    and its priced baseline."""

    app: str | None
    provider: str
    incumbent: str
    requests: int
    features: tuple[str, ...]
    largest_prompt_tokens: int | None
    largest_output_tokens: int | None
    mix: TokenMix
    volume: Volume
    cost_per_1k: float
    window_start: datetime
    window_end: datetime
    truncated: int
    #: For the batch API: streamed calls, calls naming a user or session, distinct hours with calls.
    streams: int
    attributed: int
    active_hours: int

    @classmethod
    def of(
        cls, row: Mapping[str, Any], book: PriceBook, window: tuple[datetime, datetime], confidence: float
    ) -> Route:
        mix = TokenMix(
            input=row["input_tokens"] or 0.0,
            cache_read=row["cache_read_tokens"] or 0.0,
            cache_write=row["cache_write_tokens"] or 0.0,
            output=row["output_tokens"] or 0.0,
            reasoning=row["reasoning_tokens"] or 0.0,
        )
        priced = cost_per_1k(book, row["provider"], row["incumbent"], mix, window[1])
        # An incumbent the catalogue cannot price keeps what its calls really cost.
        observed = 1000 * (row["cost_usd"] or 0.0) / row["requests"]
        days = max((window[1] - window[0]) / timedelta(days=1), 1 / 24)
        return cls(
            app=row["app"],
            provider=row["provider"],
            incumbent=row["incumbent"],
            requests=row["requests"],
            features=tuple(row["features"] or ()),
            largest_prompt_tokens=row["largest_prompt_tokens"],
            largest_output_tokens=row["largest_output_tokens"],
            mix=mix,
            volume=Volume.project(row["requests"], days, confidence),
            cost_per_1k=priced if priced is not None else observed,
            window_start=window[0],
            window_end=window[1],
            truncated=row["truncated"],
            streams=row["streams"],
            attributed=row["attributed"],
            active_hours=row["active_hours"],
        )


def model_swaps(
    route: Route,
    evidence: pl.DataFrame,
    settings: RecommendSettings,
    book: PriceBook,
    quality: pl.DataFrame | None = None,
) -> Iterator[Recommendation]:
    """The swap records of one route; ``evidence`` is its rows of ``shadow_evidence``,
    ``quality`` its rows of :func:`analytics.recommender.quality.quality_evidence`."""
    scored: dict[str, list[dict[str, Any]]] = {}
    for row in (quality if quality is not None else pl.DataFrame()).iter_rows(named=True):
        scored.setdefault(row["candidate"], []).append(row)
    by_candidate = {row["candidate"]: row for row in evidence.iter_rows(named=True)}
    noise = by_candidate.pop(route.incumbent, None)
    configured = settings.candidates.get(route.incumbent, settings.candidates.get("*", ()))
    proposals = [*by_candidate, *scored, *configured]
    records = [
        _swap(route, candidate, by_candidate.get(candidate), noise, settings, book, scored.get(candidate, []))
        for candidate in dict.fromkeys(proposals)
        if candidate not in settings.exclude
    ]
    if not proposals:
        untested = (
            _swap(route, info.name, None, noise, settings, book, [])
            for info in served_by(route.provider)
            if info.name not in settings.exclude and info.name != route.incumbent
        )
        open_ = [rec for rec in untested if rec.status == "needs_evidence"]
        records = sorted(open_, key=lambda rec: -rec.monthly_savings_usd_mid)[:UNTESTED_PER_ROUTE]
    yield from records


def capability_gaps(route: Route, info: ModelInfo | None) -> list[str]:
    """Why ``info`` cannot serve every request of ``route`` (empty: it can)."""
    if info is None:
        return (
            [f"needs {', '.join(route.features)}; the catalogue does not know the candidate"]
            if route.features
            else []
        )
    gaps = [
        f"{feature} not supported (or not known to be)"
        for feature in route.features
        if feature not in info.capabilities
    ]
    if info.context_window and (route.largest_prompt_tokens or 0) > info.context_window:
        gaps.append(
            f"prompts up to {route.largest_prompt_tokens} tokens exceed its "
            f"{info.context_window}-token context window"
        )
    if info.max_output_tokens and (route.largest_output_tokens or 0) > info.max_output_tokens:
        gaps.append(
            f"answers up to {route.largest_output_tokens} tokens exceed its "
            f"{info.max_output_tokens}-token output limit"
        )
    return gaps


def _swap(
    route: Route,
    candidate: str,
    shadow: Mapping[str, Any] | None,
    noise: Mapping[str, Any] | None,
    settings: RecommendSettings,
    book: PriceBook,
    scores: list[dict[str, Any]],
) -> Recommendation:
    info = model_info(route.provider, candidate)
    samples = shadow["samples"] if shadow else 0
    agreements = shadow["agreements"] if shadow else 0
    # The candidate's own verbosity prices its answers once shadow copies show it.
    mix = route.mix
    if shadow and shadow["output_tokens"] is not None:
        mix = TokenMix(
            mix.input, mix.cache_read, mix.cache_write, shadow["output_tokens"], shadow["reasoning_tokens"]
        )
    per_1k = cost_per_1k(book, route.provider, candidate, mix, route.window_end)
    per_1k_cold = cost_per_1k(book, route.provider, candidate, mix.cold(), route.window_end)
    savings = (
        Savings.monthly(route.cost_per_1k, per_1k, per_1k_cold, route.volume)
        if per_1k is not None and per_1k_cold is not None
        else Savings(0.0, 0.0, 0.0)
    )
    agreement = agreements / samples if samples else None
    low, high = wilson_interval(agreements, samples, settings.confidence)
    noise_floor = noise["agreements"] / noise["samples"] if noise and noise["samples"] else None
    # The score that binds: the lowest lower bound (a swap must hold on every score).
    binding = min(scores, key=_lower_first) if scores else None
    status, reason = _decide(
        route, candidate, info, samples, agreement, (low, high), per_1k, settings, scores
    )
    more = (
        more_samples(samples, agreement, settings) if status == "needs_evidence" and binding is None else None
    )
    return Recommendation(
        kind="model_swap",
        status=status,
        reason=reason,
        app=route.app,
        provider=route.provider,
        incumbent=route.incumbent,
        candidate=candidate,
        requests_seen=route.requests,
        shadow_samples=samples,
        agreement=agreement,
        agreement_lower_bound=low if samples else None,
        confidence=settings.confidence,
        method=shadow["method"] if shadow else None,
        cost_per_1k_incumbent_usd=route.cost_per_1k,
        cost_per_1k_candidate_usd=per_1k,
        monthly_savings_usd_low=savings.low,
        monthly_savings_usd_mid=savings.mid,
        monthly_savings_usd_high=savings.high,
        latency_change_ms=shadow["latency_change_ms"] if shadow else None,
        risks=tuple(_risks(route, info, shadow, noise_floor, settings)),
        window_start=route.window_start,
        window_end=route.window_end,
        features=route.features,
        largest_prompt_tokens=shadow["largest_prompt_tokens"] if shadow else None,
        noise_floor=noise_floor,
        more_samples_needed=more,
        evidence=binding["evidence"] if binding else ("agreement" if shadow else None),
        score_name=binding["name"] if binding else None,
        score_samples=binding["samples"] if binding else None,
        quality_difference=binding["mean_difference"] if binding else None,
        quality_difference_lower_bound=binding["lower_bound"] if binding else None,
    )


def _lower_first(row: Mapping[str, Any]) -> tuple[bool, float]:
    """Rows without samples first (nothing is known), then by lower bound."""
    return (row["samples"] > 0, row["lower_bound"] if row["lower_bound"] is not None else -1.0)


def _decide(
    route: Route,
    candidate: str,
    info: ModelInfo | None,
    samples: int,
    agreement: float | None,
    bounds: tuple[float, float],
    per_1k: float | None,
    settings: RecommendSettings,
    scores: list[dict[str, Any]],
) -> tuple[Status, str]:
    """(status, reason): the first check that settles the record, in order of what no
    amount of evidence can fix (capability, price) to what more evidence can."""
    if gaps := capability_gaps(route, info):
        return "rejected", "; ".join(gaps)
    if per_1k is None:
        return "rejected", f'{candidate} has no known price (add [prices."{candidate}"] to the config)'
    if per_1k >= route.cost_per_1k:
        return "rejected", f"not cheaper: ${per_1k:.4f} vs ${route.cost_per_1k:.4f} per 1k requests"
    if scores:
        return _decide_on_scores(scores, settings)
    target = f"{settings.min_agreement:.0%}"
    if agreement is None:
        return (
            "needs_evidence",
            "no shadow evidence yet: draft a shadow rule (llmtap recommend --write-rules)",
        )
    low, high = bounds
    summary = f"agreement {agreement:.1%} (lower bound {low:.1%}) on {samples} shadow samples"
    if samples >= settings.min_samples and low >= settings.min_agreement:
        return "recommended", f"{summary}, at least {target} at {settings.confidence:.0%} confidence"
    if high < settings.min_agreement:
        return "rejected", f"agreement too low: {summary}, upper bound {high:.1%} below {target}"
    if agreement <= settings.min_agreement:
        return "needs_evidence", f"{summary}; below {target} so far: more shadow samples will settle it"
    more = more_samples(samples, agreement, settings)
    return "needs_evidence", f"{summary}; {more} more shadow samples at this rate to show {target}"


_EVIDENCE_NAMES = {"paired_scores": "paired", "arm_scores": "canary/control"}


def _decide_on_scores(scores: list[dict[str, Any]], settings: RecommendSettings) -> tuple[Status, str]:
    """Non-inferiority on every score name: the confidence sequence's lower bound of the mean
    difference above ``-max_quality_loss`` with ``min_samples``; rejected once its upper bound
    is below that (the candidate is shown to lose more)."""
    margin = -settings.max_quality_loss
    loss = f"{settings.max_quality_loss:.0%}"

    def summary(row: Mapping[str, Any]) -> str:
        kind = _EVIDENCE_NAMES[row["evidence"]]
        if not row["samples"]:
            return f"score {row['name']!r}: no {kind} samples yet"
        return (
            f"score {row['name']!r}: candidate {row['mean_difference']:+.1%} vs incumbent "
            f"(bounds {row['lower_bound']:+.1%} to {row['upper_bound']:+.1%}) "
            f"on {row['samples']} {kind} samples"
        )

    losing = [row for row in scores if row["samples"] and row["upper_bound"] < margin]
    if losing:
        return "rejected", f"loses quality: {summary(losing[0])}, more than {loss} worse"
    pending = [row for row in scores if row["samples"] < settings.min_samples or row["lower_bound"] <= margin]
    if not pending:
        worst = min(scores, key=_lower_first)
        return "recommended", (
            f"{summary(worst)}: no more than {loss} worse at {settings.confidence:.0%} confidence"
        )
    row = min(pending, key=_lower_first)
    if row["samples"] < settings.min_samples:
        return "needs_evidence", f"{summary(row)}; at least {settings.min_samples} needed"
    return "needs_evidence", f"{summary(row)}; not yet shown within {loss}: more samples will settle it"


def more_samples(samples: int, agreement: float | None, settings: RecommendSettings) -> int:
    """Shadow samples still needed for the lower bound to reach ``min_agreement`` if the
    agreement so far holds (perfect agreement when there is none yet, the fewest that
    could ever do); ``min_samples`` more when the rate so far would never get there."""
    rate = 1.0 if agreement is None else agreement
    needed = samples_needed(rate, settings.min_agreement, settings.confidence) or settings.min_samples
    return max(needed, settings.min_samples, samples + 1) - samples


def _risks(
    route: Route,
    info: ModelInfo | None,
    shadow: Mapping[str, Any] | None,
    noise_floor: float | None,
    settings: RecommendSettings,
) -> Iterator[str]:
    if info is None:
        yield "not in the model catalogue: context window, output limit and capabilities unknown"
    else:
        if info.context_window is None:
            yield "context window unknown"
        if info.max_output_tokens is None:
            yield "output limit unknown"
    if shadow:
        if shadow["failures"]:
            yield f"{shadow['failures']} of {shadow['samples']} shadow copies failed"
        seen = shadow["largest_prompt_tokens"]
        if seen is not None and (route.largest_prompt_tokens or 0) > seen:
            yield f"prompts above {seen} tokens were not shadowed (largest: {route.largest_prompt_tokens})"
    if noise_floor is not None and noise_floor < settings.min_agreement:
        yield (
            f"noise floor {noise_floor:.1%}: the incumbent agrees with itself less than "
            f"{settings.min_agreement:.0%} under this comparison, so the threshold may be out of reach"
        )
    if route.truncated:
        yield f"{route.truncated} of the route's answers were cut off at the output limit"
