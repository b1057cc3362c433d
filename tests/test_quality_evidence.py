"""Quality evidence from scores (analytics/recommender/quality.py) and the decision the
recommender takes on it (analytics/recommender/swaps.py), on calls and scores frames built in
memory: paired scores of shadow copies and their originals, canary/control arms, and the
non-inferiority decision (recommended, rejected, needs_evidence) against agreement."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import polars as pl
import pytest

import analytics
from analytics.recommender.quality import EVIDENCE_COLUMNS, latest_scores, quality_evidence
from collector.pricing.book import PriceBook
from collector.settings.config import RecommendSettings
from tests.test_recommend import T0, call, shadow

ALPHA = 0.05
CANDIDATE = "gpt-4o-mini"  # in the catalogue, and cheaper than gpt-4o
KEYS = ["app", "provider", "incumbent", "candidate", "name", "evidence"]


def calls_frame(rows: list[dict]) -> pl.LazyFrame:
    """The llm_calls rows as the recommender reads them (every column of ``analytics.SCHEMA``)."""
    return pl.DataFrame(rows, schema=analytics.SCHEMA).lazy()


def score(call_id: str, value: float | None, name: str = "correct", at: int = 0, **columns) -> dict:
    """One row of the scores table; ``at`` seconds after T0 (the latest counts)."""
    return {
        "call_id": call_id,
        "name": name,
        "value": value,
        "source": "grader",
        "created_at": T0 + timedelta(seconds=at),
        "error": None if value is not None else "grader failed",
        **columns,
    }


def scores_frame(rows: list[dict]) -> pl.LazyFrame:
    return pl.DataFrame(rows, schema=analytics.SCORES_SCHEMA).lazy()


def paired(
    n: int, incumbent: float, candidate: float, model: str = CANDIDATE, name: str = "correct"
) -> tuple[list[dict], list[dict]]:
    """``n`` originals (gpt-4o) each shadowed to ``model``, and a score per answer (the same
    ``incumbent`` and ``candidate`` value for every prompt)."""
    calls = [call(i) for i in range(n)] + [shadow(i, True, model=model) for i in range(n)]
    scores = [score(f"c{i}", incumbent, name) for i in range(n)]
    scores += [score(f"shadow{i}-{model}", candidate, name) for i in range(n)]
    return calls, scores


def evidence(calls: list[dict], scores: list[dict]) -> pl.DataFrame:
    return quality_evidence(calls_frame(calls), scores_frame(scores), ALPHA)


def only(frame: pl.DataFrame, **where) -> dict:
    rows = frame.filter(**where).to_dicts() if where else frame.to_dicts()
    assert len(rows) == 1, frame
    return rows[0]


def bounds_hold(row: dict) -> None:
    assert -1 <= row["lower_bound"] <= row["mean_difference"] <= row["upper_bound"] <= 1, row


# latest_scores -----------------------------------------------------------------------------------


def test_latest_scores_keep_the_latest_per_call_and_name_whatever_the_row_order():
    rows = [
        score("a", 0.2, at=5),
        score("a", 0.9, at=9),  # the latest of ("a", "correct")
        score("a", 0.1, at=1),
        score("a", 0.4, name="thumbs", at=2),
        score("b", 1.0, at=3),
        score("b", None, at=7),  # a later failure replaces an earlier value: nothing is known
    ]
    got = latest_scores(scores_frame(rows)).collect().sort("call_id", "name").to_dicts()
    assert got == [
        {"call_id": "a", "name": "correct", "value": 0.9},
        {"call_id": "a", "name": "thumbs", "value": 0.4},
        {"call_id": "b", "name": "correct", "value": None},
    ]


# Paired evidence ---------------------------------------------------------------------------------


def test_paired_evidence_counts_samples_and_bounds_the_mean_difference():
    calls = [call(i) for i in range(60)] + [shadow(i, True) for i in range(60)]
    # Per prompt: the incumbent right on even prompts, the candidate on every third.
    scores = [score(f"c{i}", float(i % 2 == 0)) for i in range(60)]
    scores += [score(f"shadow{i}-{CANDIDATE}", float(i % 3 == 0)) for i in range(60)]
    frame = evidence(calls, scores)
    assert frame.schema == EVIDENCE_COLUMNS
    row = only(frame)
    assert {k: row[k] for k in KEYS} == {
        "app": "qa",
        "provider": "openai",
        "incumbent": "gpt-4o",
        "candidate": CANDIDATE,
        "name": "correct",
        "evidence": "paired_scores",
    }
    assert row["samples"] == 60 and row["failures"] == 0
    expected = sum(float(i % 3 == 0) - float(i % 2 == 0) for i in range(60)) / 60
    assert row["mean_difference"] == pytest.approx(expected)
    bounds_hold(row)
    # A wider confidence widens the bounds, around the same mean.
    wide = only(quality_evidence(calls_frame(calls), scores_frame(scores), 0.001))
    assert wide["mean_difference"] == pytest.approx(expected)
    assert wide["lower_bound"] < row["lower_bound"] and wide["upper_bound"] > row["upper_bound"]


def test_a_failed_score_on_either_side_is_a_failure_not_a_sample():
    calls, scores = paired(20, incumbent=0.5, candidate=1.0)
    by_id = {s["call_id"]: s for s in scores}
    for call_id in ("c0", "c1", f"shadow2-{CANDIDATE}", f"shadow3-{CANDIDATE}", "c4"):
        by_id[call_id].update(value=None, error="timed out after 5 s")
    by_id[f"shadow4-{CANDIDATE}"].update(value=None, error="grader bug")  # both sides failed
    row = only(evidence(calls, list(by_id.values())))
    assert row["samples"] == 15 and row["failures"] == 5
    # Never a 0 for a failure: the 15 scored pairs all show +0.5.
    assert row["mean_difference"] == pytest.approx(0.5)
    bounds_hold(row)


def test_only_failures_give_a_row_without_samples_or_bounds():
    calls, scores = paired(5, incumbent=0.5, candidate=1.0)
    for s in scores:
        if s["call_id"].startswith("shadow"):
            s.update(value=None, error="grader bug")
    row = only(evidence(calls, scores))
    assert row["samples"] == 0 and row["failures"] == 5
    assert row["mean_difference"] is None


def test_the_latest_score_of_a_call_and_name_is_the_one_paired():
    calls, scores = paired(10, incumbent=0.0, candidate=0.0)
    # Feedback posted again later on every candidate answer: +1 per prompt now.
    scores += [score(f"shadow{i}-{CANDIDATE}", 1.0, at=60) for i in range(10)]
    # An older score than the first one does not count either.
    scores += [score("c0", 1.0, at=-60)]
    row = only(evidence(calls, scores))
    assert row["samples"] == 10 and row["failures"] == 0
    assert row["mean_difference"] == pytest.approx(1.0)
    # A later failure replaces an earlier value: that pair is a failure now.
    scores += [score("c1", None, at=120)]
    row = only(evidence(calls, scores))
    assert row["samples"] == 9 and row["failures"] == 1


def test_noise_floor_copies_are_not_evidence():
    calls, scores = paired(10, incumbent=0.5, candidate=1.0)
    # The incumbent shadowed against itself, as the proxy tags it and as a plain shadow arm.
    for i in range(10):
        arm = "noise_floor" if i % 2 else "shadow"
        calls.append({**shadow(i, True, model="gpt-4o"), "routing_arm": arm, "call_id": f"noise{i}"})
        scores.append(score(f"noise{i}", 0.0))
    row = only(evidence(calls, scores))
    assert row["candidate"] == CANDIDATE and row["samples"] == 10


def test_each_score_name_and_each_candidate_is_a_row_of_its_own():
    calls, scores = paired(12, incumbent=0.5, candidate=1.0, name="correct")
    scores += [score(s["call_id"], 1.0 - s["value"], name="thumbs") for s in scores]
    # A second candidate shadowing the first 6 prompts, scored on "correct" only.
    calls += [shadow(i, True, model="gpt-4.1-mini") for i in range(6)]
    scores += [score(f"shadow{i}-gpt-4.1-mini", 0.25) for i in range(6)]
    frame = evidence(calls, scores).sort("candidate", "name")
    got = frame.select("candidate", "name", "samples", "mean_difference").rows()
    assert got == [
        ("gpt-4.1-mini", "correct", 6, pytest.approx(-0.25)),
        (CANDIDATE, "correct", 12, pytest.approx(0.5)),
        (CANDIDATE, "thumbs", 12, pytest.approx(-0.5)),
    ]
    for row in frame.to_dicts():
        bounds_hold(row)


def test_a_pair_needs_a_score_of_the_same_name_on_both_sides_and_a_known_original():
    calls, scores = paired(8, incumbent=0.5, candidate=1.0)
    # Only the shadow copies are scored under "fluency": no pair, no row for it.
    scores += [score(f"shadow{i}-{CANDIDATE}", 1.0, name="fluency") for i in range(8)]
    # The original of this copy is not in the window: its scores pair with nothing.
    calls.append({**shadow(99, True), "shadow_of": "c-elsewhere"})
    scores += [score(f"shadow99-{CANDIDATE}", 1.0), score("c-elsewhere", 0.0)]
    row = only(evidence(calls, scores))
    assert row["name"] == "correct" and row["samples"] == 8


def test_no_scores_no_evidence():
    calls, _ = paired(5, incumbent=0.5, candidate=1.0)
    frame = evidence(calls, [])
    assert frame.is_empty() and frame.schema == EVIDENCE_COLUMNS


# Two arms (canary rule) --------------------------------------------------------------------------

RULE = "qa-gpt-4o-to-gpt-4o-mini"


def canary(i: int) -> dict:
    """A live call the canary rule sent to the candidate (rewritten from gpt-4o)."""
    return call(
        i,
        request_model=CANDIDATE,
        response_model=CANDIDATE,
        routed_from_model="gpt-4o",
        routing_arm="canary",
        routing_rule=RULE,
    )


def control(i: int) -> dict:
    return call(i, routing_arm="control", routing_rule=RULE)


def arms(n_canary: int, n_control: int, canary_value, control_value) -> tuple[list[dict], list[dict]]:
    """Calls c0.. on the canary arm, then the control arm; ``*_value(i)`` scores call i of the arm."""
    calls = [canary(i) for i in range(n_canary)] + [control(n_canary + i) for i in range(n_control)]
    scores = [score(f"c{i}", canary_value(i), name="thumbs") for i in range(n_canary)]
    scores += [score(f"c{n_canary + i}", control_value(i), name="thumbs") for i in range(n_control)]
    return calls, scores


def test_two_arm_evidence_takes_the_smaller_arm_as_samples():
    calls, scores = arms(30, 50, lambda i: float(i % 5 != 0), lambda i: float(i % 2 == 0))
    # A failed score on each arm, and a retry of a canary call (not a sample of the arm).
    scores[0].update(value=None, error="http 500")
    scores[-1].update(value=None, error="http 500")
    calls.append({**canary(200), "retry_of": "c1"})
    scores.append(score("c200", 0.0, name="thumbs"))
    row = only(evidence(calls, scores))
    assert {k: row[k] for k in KEYS} == {
        "app": "qa",
        "provider": "openai",
        "incumbent": "gpt-4o",
        "candidate": CANDIDATE,
        "name": "thumbs",
        "evidence": "arm_scores",
    }
    assert row["samples"] == 29  # min(29 canary, 49 control scored)
    assert row["failures"] == 2
    canary_mean = sum(float(i % 5 != 0) for i in range(1, 30)) / 29
    control_mean = sum(float(i % 2 == 0) for i in range(49)) / 49
    assert row["mean_difference"] == pytest.approx(canary_mean - control_mean)
    bounds_hold(row)


def test_arms_without_a_canary_give_no_row_and_an_empty_arm_bounds_nothing():
    only_control, scores = arms(0, 10, None, lambda i: 1.0)
    assert evidence(only_control, scores).is_empty()
    calls, scores = arms(10, 0, lambda i: 1.0, None)
    row = only(evidence(calls, scores))
    assert row["samples"] == 0 and row["mean_difference"] is None
    assert row["lower_bound"] <= -0.5 and row["upper_bound"] >= 0.5  # next to nothing is known


# Decisions ---------------------------------------------------------------------------------------


def decide(calls: list[dict], scores: list[dict] | None, **settings) -> analytics.Recommendation:
    recs = analytics.recommend(
        calls_frame(calls),
        settings=RecommendSettings(**settings),
        scores=scores_frame(scores) if scores is not None else None,
    )
    (found,) = [r for r in recs if r.kind == "model_swap" and r.candidate == CANDIDATE]
    return found


def test_a_clearly_better_candidate_is_recommended_on_paired_scores():
    calls, scores = paired(150, incumbent=0.0, candidate=0.0)
    for s in scores:  # incumbent right on half the prompts, the candidate on all of them
        s["value"] = 1.0 if s["call_id"].startswith("shadow") else float(int(s["call_id"][1:]) % 2)
    rec = decide(calls, scores)
    assert rec.status == "recommended", rec.reason
    assert rec.evidence == "paired_scores" and rec.score_name == "correct" and rec.score_samples == 150
    assert rec.quality_difference == pytest.approx(0.5)
    assert -0.02 < rec.quality_difference_lower_bound <= 0.5
    assert "no more than 2% worse at 95% confidence" in rec.reason
    assert rec.cost_per_1k_candidate_usd < rec.cost_per_1k_incumbent_usd
    assert rec.monthly_savings_usd_mid > 0


def test_a_clearly_worse_candidate_is_rejected_for_losing_quality():
    calls, scores = paired(150, incumbent=1.0, candidate=0.0)
    # Agreement alone would recommend it: every shadow copy agreed.
    assert decide(calls, None).status == "recommended"
    rec = decide(calls, scores)
    assert rec.status == "rejected"
    assert "loses quality" in rec.reason and "score 'correct'" in rec.reason, rec.reason
    assert rec.evidence == "paired_scores" and rec.quality_difference == pytest.approx(-1.0)


def test_a_tie_on_40_samples_needs_more_evidence():
    calls, scores = paired(40, incumbent=0.0, candidate=0.0)
    for s in scores:  # the same score for both answers of a prompt, half the prompts right
        s["value"] = float(int(s["call_id"].removeprefix("shadow").split("-")[0].lstrip("c")) % 2)
    rec = decide(calls, scores)
    assert rec.status == "needs_evidence", rec.reason
    assert rec.score_samples == 40 and rec.quality_difference == 0.0
    assert rec.quality_difference_lower_bound <= -0.02
    assert "not yet shown within 2%" in rec.reason
    assert rec.more_samples_needed is None  # agreement's sample count does not apply


def test_fewer_than_min_samples_need_more_evidence_however_good():
    calls, scores = paired(20, incumbent=0.0, candidate=1.0)
    rec = decide(calls, scores)
    assert rec.status == "needs_evidence" and rec.score_samples == 20
    assert "at least 30 needed" in rec.reason, rec.reason
    assert decide(calls, scores, min_samples=20).status == "recommended"


def test_every_score_name_must_hold():
    calls, scores = paired(150, incumbent=0.0, candidate=1.0, name="correct")
    scores += [score(s["call_id"], 1.0 - s["value"], name="thumbs") for s in scores]
    rec = decide(calls, scores)
    assert rec.status == "rejected" and "score 'thumbs'" in rec.reason
    assert rec.score_name == "thumbs" and rec.quality_difference == pytest.approx(-1.0)


def test_a_route_without_scores_decides_on_agreement_as_before():
    calls = [call(i) for i in range(100)] + [shadow(i, True) for i in range(73)]
    # Scores of another app's calls leave this route to agreement.
    other = [score("elsewhere", 1.0)]
    for scores in (None, [], other):
        rec = decide(calls, scores)
        assert rec.status == "recommended" and rec.evidence == "agreement", rec.reason
        assert rec.score_name is None and rec.quality_difference is None
        assert rec.shadow_samples == 73 and rec.agreement == 1.0


def test_canary_arms_decide_the_swap():
    calls, scores = arms(150, 150, lambda i: 1.0, lambda i: float(i % 2))
    rec = decide(calls, scores)
    assert rec.status == "recommended", rec.reason
    assert rec.evidence == "arm_scores" and rec.score_name == "thumbs" and rec.score_samples == 150
    assert rec.quality_difference == pytest.approx(0.5)
    calls, scores = arms(150, 150, lambda i: 0.0, lambda i: 1.0)
    rec = decide(calls, scores)
    assert rec.status == "rejected" and "loses quality" in rec.reason and "canary/control" in rec.reason


def test_a_candidate_priced_by_the_config_and_scored_is_decided_on_its_scores():
    """A model the catalogue does not know, priced by [prices] overrides."""
    from collector.pricing.rates import Rates

    calls, scores = paired(150, incumbent=0.0, candidate=1.0, model="house-model")
    book = PriceBook({"house-model": Rates(input=Decimal("0.1"), output=Decimal("0.4"))})
    recs = analytics.recommend(calls_frame(calls), settings=RecommendSettings(), scores=scores_frame(scores))
    (unpriced,) = [r for r in recs if r.kind == "model_swap" and r.candidate == "house-model"]
    assert unpriced.status == "rejected" and "no known price" in unpriced.reason
    recs = analytics.recommend(
        calls_frame(calls), settings=RecommendSettings(), scores=scores_frame(scores), book=book
    )
    (priced,) = [r for r in recs if r.kind == "model_swap" and r.candidate == "house-model"]
    assert priced.status == "recommended" and priced.evidence == "paired_scores", priced.reason


def test_a_route_whose_scores_all_failed_needs_evidence_and_says_so():
    calls, scores = paired(50, incumbent=1.0, candidate=1.0)
    for s in scores:
        if s["call_id"].startswith("shadow"):
            s.update(value=None, error="grader bug")
    rec = decide(calls, scores)
    assert rec.status == "needs_evidence" and rec.evidence == "paired_scores", rec.reason
    assert rec.score_samples == 0 and "no paired samples yet" in rec.reason
