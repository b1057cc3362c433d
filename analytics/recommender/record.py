"""The recommendation record: one proposed change to one route, with its evidence."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Literal

import polars as pl

#: What a record proposes, and where the evidence leaves it.
Kind = Literal["model_swap", "prompt_caching", "batch_api"]
Status = Literal["recommended", "needs_evidence", "rejected"]
#: What a model swap's decision rests on: the candidate's agreement with the incumbent, or
#: scores of the answers, paired on the same prompts or from a canary's two arms.
Evidence = Literal["agreement", "paired_scores", "arm_scores"]


@dataclass(frozen=True)
class Recommendation:
    """What to change on a route (an app, its provider and the model it asks for), why,
    how sure the recommender is, and what it would save.

    ``agreement`` is the share of shadow samples whose answer agreed with the
    incumbent's, ``agreement_lower_bound`` its Wilson lower bound at ``confidence``. Where
    the answers are scored, ``evidence`` says so and the ``quality_*`` fields decide.
    Costs are USD per 1,000 of the route's requests; monthly savings are low (the
    candidate's cache cold, low volume), mid (cache share and volume as observed) and
    high (high volume) -- see :mod:`analytics.recommender.route_costs`.
    """

    kind: Kind
    status: Status
    reason: str
    app: str | None
    provider: str
    incumbent: str
    candidate: str | None
    requests_seen: int
    shadow_samples: int
    agreement: float | None
    agreement_lower_bound: float | None
    confidence: float
    method: str | None
    cost_per_1k_incumbent_usd: float
    cost_per_1k_candidate_usd: float | None
    monthly_savings_usd_low: float
    monthly_savings_usd_mid: float
    monthly_savings_usd_high: float
    latency_change_ms: float | None
    risks: tuple[str, ...]
    window_start: datetime
    window_end: datetime
    #: The route's request features (what a drafted rule must keep away from a candidate
    #: that lacks them) and the largest prompt the shadow samples covered.
    features: tuple[str, ...] = ()
    largest_prompt_tokens: int | None = None
    #: The incumbent's agreement with itself under the same comparison, when measured.
    noise_floor: float | None = None
    #: needs_evidence swaps: shadow samples still to collect (at the agreement so far).
    more_samples_needed: int | None = None
    #: Model swaps: what the decision rests on; with scores, the score (its name) that decided
    #: (the one with the lowest lower bound), its samples, and the mean difference candidate
    #: minus incumbent with its lower confidence bound (a confidence sequence at ``confidence``).
    evidence: Evidence | None = None
    score_name: str | None = None
    score_samples: int | None = None
    quality_difference: float | None = None
    quality_difference_lower_bound: float | None = None


#: The frame's columns: every field of Recommendation, in order.
SCHEMA = pl.Schema(
    {
        **dict.fromkeys(
            ("kind", "status", "reason", "app", "provider", "incumbent", "candidate"), pl.String()
        ),
        "requests_seen": pl.Int64(),
        "shadow_samples": pl.Int64(),
        "agreement": pl.Float64(),
        "agreement_lower_bound": pl.Float64(),
        "confidence": pl.Float64(),
        "method": pl.String(),
        **dict.fromkeys(
            (
                "cost_per_1k_incumbent_usd",
                "cost_per_1k_candidate_usd",
                "monthly_savings_usd_low",
                "monthly_savings_usd_mid",
                "monthly_savings_usd_high",
                "latency_change_ms",
            ),
            pl.Float64(),
        ),
        "risks": pl.List(pl.String()),
        "window_start": pl.Datetime("us", "UTC"),
        "window_end": pl.Datetime("us", "UTC"),
        "features": pl.List(pl.String()),
        "largest_prompt_tokens": pl.Int64(),
        "noise_floor": pl.Float64(),
        "more_samples_needed": pl.Int64(),
        "evidence": pl.String(),
        "score_name": pl.String(),
        "score_samples": pl.Int64(),
        "quality_difference": pl.Float64(),
        "quality_difference_lower_bound": pl.Float64(),
    }
)


def recommendations_frame(recs: Sequence[Recommendation]) -> pl.DataFrame:
    """One row per record, every field a column (risks and features as lists)."""
    return pl.DataFrame([asdict(rec) for rec in recs], schema=SCHEMA)
