"""Quality evidence per route and candidate, from scores: what graders and feedback said.

Agreement with the incumbent is not quality (a candidate can disagree and be right more
often, or agree and be wrong when it matters). Where answers are scored, the recommender
decides on the scores instead:

* **paired** (``paired_scores``): a shadow copy and its original answered the same prompt,
  and a score of the same name exists for both: the difference candidate minus incumbent,
  in [-1, 1], one per prompt;
* **two arms** (``arm_scores``): a canary rule's ``canary`` and ``control`` calls answered
  different prompts from the same kind of traffic: the difference of the arms' means.

The bounds are confidence sequences (:mod:`analytics.recommender.sequential`), valid however
often the recommender is run as the evidence grows. A score that could not be had (its
grader failed: ``value`` NULL) is counted in ``failures``, never as a 0. When a name has
several scores for one call (feedback posted twice), the latest counts.
"""

from __future__ import annotations

import polars as pl

from analytics.recommender.routes import INCUMBENT, ROUTE, production
from analytics.recommender.sequential import paired_lower_bound, two_arm_lower_bound

__all__ = ["EVIDENCE_COLUMNS", "latest_scores", "quality_evidence"]

#: One row per (route, candidate, score name).
EVIDENCE_COLUMNS = pl.Schema(
    {
        "app": pl.String(),
        "provider": pl.String(),
        "incumbent": pl.String(),
        "candidate": pl.String(),
        "name": pl.String(),
        "evidence": pl.String(),
        "samples": pl.Int64(),
        "failures": pl.Int64(),
        "mean_difference": pl.Float64(),
        "lower_bound": pl.Float64(),
        "upper_bound": pl.Float64(),
    }
)
CANARY_ARMS = ("canary", "control")


def latest_scores(scores: pl.LazyFrame) -> pl.LazyFrame:
    """The latest score per (call, name): ``call_id``, ``name``, ``value`` (NULL: not had)."""
    return scores.sort("created_at").group_by("call_id", "name").agg(pl.col("value").last())


def quality_evidence(calls: pl.LazyFrame, scores: pl.LazyFrame, alpha: float) -> pl.DataFrame:
    """Paired and two-arm evidence, one row per (route, candidate, score name), with the
    mean difference (candidate minus incumbent) and its bounds at ``alpha`` (one-sided each)."""
    latest = latest_scores(scores)
    return pl.concat([_paired(calls, latest, alpha), _two_arms(calls, latest, alpha)], how="vertical")


def _paired(calls: pl.LazyFrame, latest: pl.LazyFrame, alpha: float) -> pl.DataFrame:
    originals = production(calls).select(pl.col("call_id").alias("shadow_of"), *ROUTE)
    copies = calls.filter((pl.col("routing_arm") == "shadow") & pl.col("shadow_of").is_not_null()).select(
        "call_id", "shadow_of", "started_at", pl.col("request_model").alias("candidate")
    )
    candidate_scores = latest.rename({"value": "candidate_score"})
    incumbent_scores = latest.rename({"call_id": "shadow_of", "value": "incumbent_score"})
    pairs = (
        copies.join(originals, on="shadow_of", how="inner")
        .join(candidate_scores, on="call_id", how="inner")
        .join(incumbent_scores, on=["shadow_of", "name"], how="inner")
        .filter(pl.col("candidate") != pl.col("incumbent"))
        .sort("started_at")  # the order the evidence arrived: the sequence's order
    )
    scored = pl.col("candidate_score").is_not_null() & pl.col("incumbent_score").is_not_null()
    difference = (pl.col("candidate_score") - pl.col("incumbent_score")).filter(scored)
    return (
        pairs.group_by(*ROUTE, "candidate", "name")
        .agg(
            samples=scored.sum().cast(pl.Int64),
            failures=(~scored).sum().cast(pl.Int64),
            mean_difference=difference.mean(),
            lower_bound=paired_lower_bound(difference, alpha).last(),
            upper_bound=-paired_lower_bound(-difference, alpha).last(),
        )
        .with_columns(evidence=pl.lit("paired_scores"))
        .select(EVIDENCE_COLUMNS.names())
        .collect()
        .cast(EVIDENCE_COLUMNS)
    )


def _two_arms(calls: pl.LazyFrame, latest: pl.LazyFrame, alpha: float) -> pl.DataFrame:
    """Per canary rule and score name: each arm's scores in arrival order, then the bound
    (the arms are few: one small computation per rule and name)."""
    armed = (
        calls.filter(pl.col("routing_arm").is_in(CANARY_ARMS) & pl.col("retry_of").is_null())
        .with_columns(incumbent=INCUMBENT)
        .join(latest, on="call_id", how="inner")
        .sort("started_at")
    )
    is_canary = pl.col("routing_arm") == "canary"
    scored = pl.col("value").is_not_null()
    groups = (
        armed.group_by(*ROUTE, "routing_rule", "name")
        .agg(
            candidate=pl.col("request_model").filter(is_canary).first(),
            canary=pl.col("value").filter(is_canary & scored),
            control=pl.col("value").filter(~is_canary & scored),
            failures=(~scored).sum().cast(pl.Int64),
        )
        .filter(pl.col("candidate").is_not_null())
        .collect()
    )
    rows = []
    for group in groups.iter_rows(named=True):
        canary, control = group["canary"], group["control"]
        both = bool(canary) and bool(control)
        rows.append(
            {
                **{name: group[name] for name in (*ROUTE, "candidate", "name", "failures")},
                "evidence": "arm_scores",
                "samples": min(len(canary), len(control)),
                "mean_difference": sum(canary) / len(canary) - sum(control) / len(control) if both else None,
                "lower_bound": two_arm_lower_bound(canary, control, alpha),
                "upper_bound": -two_arm_lower_bound(control, canary, alpha),
            }
        )
    return pl.DataFrame(rows, schema=EVIDENCE_COLUMNS)
