"""Rules drafted from recommendations, for a person to review (``llmtap recommend --write-rules``).

``shadow`` drafts a rule for every swap that still needs evidence, copying enough of
the route's calls to reach the missing samples within a window like the one measured,
under a daily spend cap of twice what those copies should cost. ``canary`` and
``enforce`` draft a rule for every recommended swap. A drafted rule keeps away from the
swap what the evidence did not cover: request features the candidate is not known to
handle or the route never showed (``without``), and, outside shadow mode, prompts larger
than any shadow sample (``max_prompt_tokens``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any, cast

from analytics.recommender.record import Recommendation
from collector.providers.base import FEATURES
from collector.routing.rules import MODES, Match, Mode, Rule

#: Share of callers a drafted canary starts with.
CANARY_FRACTION = 0.1
#: Shadow copies: at least this share of a route's calls, and at most all of them.
MIN_SHADOW_FRACTION = 0.01


def draft_rules(recs: Sequence[Recommendation], mode: str) -> list[Rule]:
    """One rule in ``mode`` per model swap that mode applies to, evidence filled in."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    wanted = "needs_evidence" if mode == "shadow" else "recommended"
    return [_rule(rec, cast(Mode, mode)) for rec in recs if rec.kind == "model_swap" and rec.status == wanted]


def rule_id(rec: Recommendation) -> str:
    """A stable id for the swap, so redrafting replaces its rule rather than adding one."""
    parts = (rec.app or "any-app", rec.incumbent, "to", rec.candidate or "")
    return re.sub(r"[^a-z0-9.]+", "-", " ".join(parts).lower()).strip("-")


def _rule(rec: Recommendation, mode: Mode) -> Rule:
    assert rec.candidate is not None
    without = tuple(f for f in FEATURES if f not in rec.features)
    covered = None if mode == "shadow" else rec.largest_prompt_tokens
    return Rule(
        id=rule_id(rec),
        match=Match(
            model=rec.incumbent,
            app=rec.app,
            provider=rec.provider,
            max_prompt_tokens=covered,
            without=without,
        ),
        to=rec.candidate,
        mode=mode,
        fraction=_fraction(rec, mode),
        sticky="session",
        shadow_spend_cap_usd=_spend_cap(rec) if mode == "shadow" else None,
        evidence=_evidence(rec),
    )


def _fraction(rec: Recommendation, mode: str) -> float:
    if mode == "enforce":
        return 1.0
    if mode == "canary":
        return CANARY_FRACTION
    share = _missing(rec) / max(rec.requests_seen, 1)
    return min(1.0, max(MIN_SHADOW_FRACTION, math.ceil(share * 100) / 100))


def _spend_cap(rec: Recommendation) -> float:
    per_copy = (rec.cost_per_1k_candidate_usd or rec.cost_per_1k_incumbent_usd) / 1000
    return max(1.0, math.ceil(2 * per_copy * _missing(rec) * 100) / 100)


def _evidence(rec: Recommendation) -> dict[str, Any]:
    figures = {
        "status": rec.status,
        "reason": rec.reason,
        "requests_seen": rec.requests_seen,
        "shadow_samples": rec.shadow_samples,
        "agreement": rec.agreement,
        "agreement_lower_bound": rec.agreement_lower_bound,
        "confidence": rec.confidence,
        "method": rec.method,
        "noise_floor": rec.noise_floor,
        "evidence": rec.evidence,
        "score_name": rec.score_name,
        "score_samples": rec.score_samples,
        "quality_difference": rec.quality_difference,
        "quality_difference_lower_bound": rec.quality_difference_lower_bound,
        "cost_per_1k_incumbent_usd": rec.cost_per_1k_incumbent_usd,
        "cost_per_1k_candidate_usd": rec.cost_per_1k_candidate_usd,
        "monthly_savings_usd_mid": rec.monthly_savings_usd_mid,
        "latency_change_ms": rec.latency_change_ms,
        "risks": list(rec.risks),
        "window": f"{rec.window_start.isoformat()} to {rec.window_end.isoformat()}",
    }
    return {
        key: round(value, 6) if isinstance(value, float) else value
        for key, value in figures.items()
        if value is not None and value != []
    }


def _missing(rec: Recommendation) -> int:
    return rec.more_samples_needed or 1
