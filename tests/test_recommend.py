"""The routing recommender: Wilson bounds, capability filtering, costs per 1k requests,
the decision thresholds, drafted rules, realised savings and `llmtap recommend`, on real
DuckDB stores."""

from __future__ import annotations

import json
import re
from dataclasses import fields, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import duckdb
import polars as pl
import pytest

import analytics
from analytics import synthetic
from analytics.recommender.catalogue import model_info
from analytics.recommender.draft import draft_rules, rule_id
from analytics.recommender.record import SCHEMA, Recommendation
from analytics.recommender.route_costs import TokenMix, Volume, cost_per_1k, cost_per_request
from analytics.recommender.stats import samples_needed, wilson_interval
from analytics.recommender.swaps import Route, capability_gaps
from app.cli import main
from app.terminal.recommendations import evidence
from collector.pricing.book import PriceBook
from collector.pricing.rates import Rates
from collector.routing.rules import Match, Rule, dump_rules, load_rules, parse_rules
from collector.settings.config import ConfigError, RecommendSettings, load_settings

T0 = datetime(2026, 3, 2, tzinfo=UTC)
BOOK = PriceBook()


def call(i: int, **columns) -> dict:
    """One llm_calls row of app ``qa`` asking openai for gpt-4o (override any column)."""
    started = T0 + timedelta(minutes=i)
    return {
        "call_id": f"c{i}",
        "started_at": started,
        "ended_at": started + timedelta(seconds=2),
        "provider": "openai",
        "api": "chat",
        "host": "api.openai.com",
        "path": "/v1/chat/completions",
        "status_code": 200,
        "stream": False,
        "request_model": "gpt-4o",
        "response_model": "gpt-4o",
        "input_tokens": 1000,
        "output_tokens": 200,
        "cache_read_tokens": 0,
        "cache_write_tokens": 0,
        "reasoning_tokens": 0,
        "latency_ms": 2000.0,
        "cost_usd": Decimal("0.0045"),
        "app": "qa",
        "session_id": f"s{i % 7}",
        "finish_reasons": ["stop"],
        **columns,
    }


def shadow(i: int, agreement: bool | None, model: str = "gpt-4o-mini", **columns) -> dict:
    """The shadow copy of call ``i`` to ``model``."""
    return call(
        i,
        call_id=f"shadow{i}-{model}",
        request_model=model,
        response_model=model,
        routing_arm="shadow",
        routing_rule="qa-gpt-4o-to-gpt-4o-mini",
        shadow_of=f"c{i}",
        comparison="exact",
        agreement=agreement,
        latency_ms=1500.0,
        cost_usd=Decimal("0.00027"),
        session_id=None,
        **columns,
    )


def store(tmp_path: Path, rows: list[dict]) -> Path:
    """A real llmtap store holding ``rows``."""
    types = {name: dtype for name, dtype in analytics.SCHEMA.items()}
    columns = sorted({name for row in rows for name in row})
    frame = pl.DataFrame(rows, schema={name: types[name] for name in columns})
    bodies = pl.DataFrame(schema={"call_id": pl.String, "capture_mode": pl.String, "request_body": pl.String})
    synthetic.write_store(tmp_path / "llmtap.duckdb", frame, bodies)
    return tmp_path


def evidence_store(tmp_path: Path, agree: int, disagree: int, requests: int = 200) -> Path:
    rows = [call(i) for i in range(requests)]
    rows += [shadow(i, i < agree) for i in range(agree + disagree)]
    return store(tmp_path, rows)


def swap(recs: list[Recommendation], candidate: str = "gpt-4o-mini") -> Recommendation:
    (found,) = [r for r in recs if r.kind == "model_swap" and r.candidate == candidate]
    return found


# Wilson bound -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("successes", "n", "low", "high"),
    [
        (8, 10, 0.4902, 0.9433),  # the textbook example (Newcombe 1998, method 3)
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),
        (81, 263, 0.2553, 0.3662),  # Newcombe 1998, table I
    ],
)
def test_wilson_interval_matches_published_values(successes, n, low, high):
    got = wilson_interval(successes, n, 0.95)
    assert got == pytest.approx((low, high), abs=1e-4)


def test_wilson_bound_tightens_with_samples_and_confidence():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(30, 30)[0] < wilson_interval(300, 300)[0]
    assert wilson_interval(30, 30, 0.99)[0] < wilson_interval(30, 30, 0.90)[0]
    # Perfect agreement needs 73 samples for a 95% lower bound of 0.95; a rate at the
    # threshold never gets there.
    assert samples_needed(1.0, 0.95) == 73
    assert wilson_interval(73, 73)[0] >= 0.95 > wilson_interval(72, 72)[0]
    assert samples_needed(0.95, 0.95) is None
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


# Capabilities and costs ---------------------------------------------------------------


def route(**overrides) -> Route:
    base = Route(
        app="qa",
        provider="openrouter",
        incumbent="openai/gpt-4-1106-preview",
        requests=100,
        features=(),
        largest_prompt_tokens=2000,
        largest_output_tokens=500,
        mix=TokenMix(1000, output=200),
        volume=Volume(90, 100, 110),
        cost_per_1k=16.0,
        window_start=T0,
        window_end=T0 + timedelta(days=1),
        truncated=0,
        streams=0,
        attributed=0,
        active_hours=24,
    )
    return replace(base, **overrides)


def test_capability_filtering_by_features_context_and_output_limit():
    mixtral = model_info("openrouter", "mistralai/mixtral-8x7b-instruct")
    mini = model_info("openrouter", "openai/gpt-4o-mini")
    assert mixtral is not None and mini is not None
    assert capability_gaps(route(), mixtral) == []
    # Unknown capability for a needed feature is not eligible.
    assert capability_gaps(route(features=("tools",)), mixtral) == [
        "tools not supported (or not known to be)"
    ]
    assert capability_gaps(route(features=("tools", "images")), mini) == []
    assert "context window" in capability_gaps(route(largest_prompt_tokens=40_000), mixtral)[0]
    assert "output limit" in capability_gaps(route(largest_output_tokens=20_000), mini)[0]
    # A model the catalogue does not know may serve plain requests, not featured ones.
    assert capability_gaps(route(), None) == []
    assert capability_gaps(route(features=("audio",)), None)
    # Context windows come from genai-prices where the file has none.
    assert model_info("openai", "gpt-4o").context_window == 128_000


def test_cost_per_1k_prices_the_real_token_mix():
    rates = Rates(input=Decimal("2.5"), output=Decimal("10"), cache_read=Decimal("1.25"))
    mix = TokenMix(input=1000, cache_read=400, output=200)
    # 600 uncached at 2.5 + 400 cached at 1.25 + 200 out at 10, per million.
    assert cost_per_request(rates, mix) == pytest.approx(0.004)
    assert cost_per_request(rates, mix.cold()) == pytest.approx(0.0045)
    when = T0
    assert cost_per_1k(BOOK, "openai", "gpt-4o", mix, when) == pytest.approx(4.0)
    assert cost_per_1k(BOOK, "openai", "gpt-4o-mini", mix, when) == pytest.approx(
        1000 * (600 * 0.15 + 400 * 0.075 + 200 * 0.6) / 1e6
    )
    assert cost_per_1k(BOOK, "openai", "no-such-model", mix, when) is None
    tiered = Rates(
        input=Decimal(1), output=Decimal(2), tiers=((100, Rates(input=Decimal(3), output=Decimal(4))),)
    )
    assert cost_per_request(tiered, TokenMix(200, output=10)) == pytest.approx((200 * 3 + 10 * 4) / 1e6)


# Decisions on real stores --------------------------------------------------------------


def test_recommended_at_73_agreements_of_73(tmp_path):
    rec = swap(analytics.recommend(evidence_store(tmp_path, 73, 0)))
    assert rec.status == "recommended", rec.reason
    assert rec.shadow_samples == 73 and rec.agreement == 1.0
    assert rec.agreement_lower_bound == pytest.approx(wilson_interval(73, 73)[0])
    assert rec.method == "exact" and rec.latency_change_ms == -500.0
    assert rec.requests_seen == 200 and rec.app == "qa" and rec.incumbent == "gpt-4o"
    assert rec.cost_per_1k_incumbent_usd == pytest.approx(4.5)
    assert rec.cost_per_1k_candidate_usd == pytest.approx(0.27)
    # 200 requests over the window's 199 minutes, projected to 30 days.
    monthly = 200 * 30 * 24 * 60 / 199
    assert rec.monthly_savings_usd_mid == pytest.approx((4.5 - 0.27) / 1000 * monthly)
    assert rec.monthly_savings_usd_low < rec.monthly_savings_usd_mid < rec.monthly_savings_usd_high


def test_needs_evidence_says_how_many_more_samples(tmp_path):
    rec = swap(analytics.recommend(evidence_store(tmp_path, 40, 0)))
    assert rec.status == "needs_evidence"
    assert rec.more_samples_needed == 33 and "33 more shadow samples" in rec.reason
    looser = RecommendSettings(min_agreement=0.9, min_samples=30)
    assert swap(analytics.recommend(tmp_path, settings=looser)).status == "recommended"
    stricter = RecommendSettings(min_agreement=0.9, min_samples=50)
    rec = swap(analytics.recommend(tmp_path, settings=stricter))
    assert rec.status == "needs_evidence" and rec.more_samples_needed == 10


def test_rejected_when_agreement_is_too_low(tmp_path):
    rec = swap(analytics.recommend(evidence_store(tmp_path, 60, 20)))
    assert rec.status == "rejected" and rec.reason.startswith("agreement too low")
    assert rec.agreement == 0.75


def test_no_shadow_evidence_proposes_catalogue_candidates(tmp_path):
    recs = analytics.recommend(store(tmp_path, [call(i) for i in range(50)]))
    swaps = [r for r in recs if r.kind == "model_swap"]
    assert 1 <= len(swaps) <= 2
    for rec in swaps:
        assert rec.status == "needs_evidence" and rec.reason.startswith("no shadow evidence yet")
        assert rec.cost_per_1k_candidate_usd < rec.cost_per_1k_incumbent_usd
        assert rec.more_samples_needed == 73


def test_config_candidates_exclude_and_capability_rejection(tmp_path):
    rows = [call(i, request_features=["audio"]) for i in range(50)]
    data = store(tmp_path, rows)
    settings = RecommendSettings(candidates={"gpt-4o": ("gpt-4o-mini", "gpt-4.1-nano", "gpt-5")})
    recs = {r.candidate: r for r in analytics.recommend(data, settings=settings) if r.kind == "model_swap"}
    assert set(recs) == {"gpt-4o-mini", "gpt-4.1-nano", "gpt-5"}
    assert recs["gpt-4o-mini"].status == "rejected" and "audio" in recs["gpt-4o-mini"].reason
    settings = RecommendSettings(candidates={"*": ("gpt-4o-mini",)}, exclude=("gpt-4o-mini",))
    assert not [r for r in analytics.recommend(data, settings=settings) if r.kind == "model_swap"]


def test_noise_floor_and_failed_copies_are_reported(tmp_path):
    rows = [call(i) for i in range(100)]
    rows += [shadow(i, True) for i in range(80)]
    rows += [shadow(i, None, error="http 400: context too long") for i in range(80, 90)]
    rows += [shadow(i, i % 5 != 0, model="gpt-4o") for i in range(50)]  # the incumbent against itself
    rec = swap(analytics.recommend(store(tmp_path, rows)))
    assert rec.shadow_samples == 90 and rec.agreement == pytest.approx(80 / 90)
    assert rec.noise_floor == pytest.approx(0.8)
    assert any("10 of 90 shadow copies failed" in risk for risk in rec.risks)
    assert any("noise floor 80.0%" in risk for risk in rec.risks)
    # Shadow copies are spend apart from production.
    calls = analytics.load(tmp_path)
    assert analytics.spend(calls, by=[])["calls"].item() == 100
    assert analytics.spend(calls, by=[], include_shadow=True)["calls"].item() == 240
    assert analytics.shadow_spend(calls, by=["model"])["calls"].to_list() == [90, 50]


def test_batch_api_for_routes_no_one_waits_on(tmp_path):
    rows = [call(i * 30, session_id=None) for i in range(20)]
    recs = analytics.recommend(store(tmp_path, rows))
    (batch,) = [r for r in recs if r.kind == "batch_api"]
    assert batch.status == "recommended"
    assert batch.cost_per_1k_candidate_usd == pytest.approx(batch.cost_per_1k_incumbent_usd / 2)
    assert not [r for r in analytics.recommend(evidence_store(tmp_path / "b", 1, 0)) if r.kind == "batch_api"]


def test_recommendations_frame_has_every_field():
    assert list(SCHEMA) == [f.name for f in fields(Recommendation)]
    assert analytics.recommendations_frame([]).schema == SCHEMA


# Drafted rules -------------------------------------------------------------------------


def test_draft_rules_round_trip_through_the_rules_file(tmp_path):
    recs = analytics.recommend(evidence_store(tmp_path, 73, 0))
    (rule,) = draft_rules(recs, "canary")
    assert rule.id == "qa-gpt-4o-to-gpt-4o-mini" == rule_id(swap(recs))
    assert rule.match == Match(
        model="gpt-4o",
        app="qa",
        provider="openai",
        max_prompt_tokens=1000,
        without=("tools", "structured_output", "images", "audio"),
    )
    assert rule.to == "gpt-4o-mini" and rule.mode == "canary" and rule.fraction == 0.1
    assert rule.evidence["shadow_samples"] == 73 and rule.evidence["method"] == "exact"
    assert parse_rules(dump_rules([rule])) == [rule]
    assert draft_rules(recs, "shadow") == []
    with pytest.raises(ValueError):
        draft_rules(recs, "sometimes")


def test_cli_writes_rules_merged_by_id_with_a_draft_header(tmp_path):
    data = evidence_store(tmp_path, 73, 0)
    rules_file = tmp_path / "rules.yaml"
    kept = Rule(id="hand-written", match=Match(model="gpt-4o", app="other"), to="gpt-4o-mini", mode="enforce")
    stale = Rule(id="qa-gpt-4o-to-gpt-4o-mini", match=Match(model="gpt-4o"), to="gpt-4o-mini")
    rules_file.write_text(dump_rules([kept, stale]))
    assert main(["recommend", "--data-dir", str(data), "--write-rules", "--mode", "enforce"]) == 0
    text = rules_file.read_text()
    assert text.startswith("# DRAFT routing rules")
    rules = load_rules(rules_file)
    assert [r.id for r in rules] == ["hand-written", "qa-gpt-4o-to-gpt-4o-mini"]
    assert rules[0] == kept and rules[1].mode == "enforce" and rules[1].fraction == 1.0
    other = tmp_path / "elsewhere.yaml"
    assert main(["recommend", "--data-dir", str(data), "--write-rules", "--rules", str(other)]) == 0
    assert other.exists()


# CLI output ----------------------------------------------------------------------------


def test_cli_table_and_json(tmp_path, capsys):
    data = evidence_store(tmp_path, 73, 0)
    assert main(["recommend", "--data-dir", str(data)]) == 0
    table = capsys.readouterr().out
    assert "llmtap recommend" in table
    line = next(line for line in table.splitlines() if "gpt-4o -> gpt-4o-mini" in line)
    assert line.split()[0] == "recommended" and "100.0% (>= 95.0%)" in line and "4.5000" in line
    assert main(["recommend", "--data-dir", str(data), "--format", "json", "--since", "2026-03-02"]) == 0
    document = json.loads(capsys.readouterr().out)
    (rec,) = [r for r in document["recommendations"] if r["candidate"] == "gpt-4o-mini"]
    assert rec["status"] == "recommended" and rec["shadow_samples"] == 73
    assert rec["window_start"].startswith("2026-03-02T00:00:00")


def test_cli_table_and_json_say_what_a_scored_swap_rests_on(tmp_path, capsys):
    """Scored answers decide the swap: the table shows the score, its mean difference and lower
    bound in percentage points, and its samples instead of the agreement; JSON has the fields."""
    data = evidence_store(tmp_path, 73, 0)
    with duckdb.connect(str(data / "llmtap.duckdb")) as con:
        for i in range(73):
            for call_id, value in ((f"c{i}", 0.5), (f"shadow{i}-gpt-4o-mini", 0.8)):
                con.execute(
                    "INSERT INTO scores VALUES (?, 'helpful', ?, 'feedback', ?, NULL)",
                    [call_id, value, T0 + timedelta(minutes=i, seconds=30)],
                )
    assert main(["recommend", "--data-dir", str(data)]) == 0
    table = capsys.readouterr().out
    assert "agreement or quality (lower bound)" in table
    line = next(line for line in table.splitlines() if "gpt-4o -> gpt-4o-mini" in line)
    assert re.search(r"helpful: \+30\.0% \(>= \+\d+\.\d%\) on 73 paired samples", line), line
    assert "100.0% (>=" not in line  # the agreement no longer decides
    assert main(["recommend", "--data-dir", str(data), "--format", "json"]) == 0
    (rec,) = [
        r for r in json.loads(capsys.readouterr().out)["recommendations"] if r["candidate"] == "gpt-4o-mini"
    ]
    assert (
        rec["evidence"] == "paired_scores" and rec["score_name"] == "helpful" and rec["score_samples"] == 73
    )
    assert rec["quality_difference"] == pytest.approx(0.3)
    assert 0 < rec["quality_difference_lower_bound"] <= 0.3


def test_table_evidence_text_for_each_kind_of_evidence():
    base = Recommendation(**{f.name: None for f in fields(Recommendation)})
    agreement = replace(base, evidence="agreement", agreement=0.973, agreement_lower_bound=0.95)
    assert evidence(agreement) == "97.3% (>= 95.0%)"
    assert evidence(replace(base, kind="batch_api")) == "-"
    arms = replace(
        base,
        evidence="arm_scores",
        score_name="thumbs\x1b[2J",
        score_samples=1310,
        quality_difference=-0.00004,
        quality_difference_lower_bound=-0.021,
    )
    assert evidence(arms) == "thumbs\\x1b[2J: +0.0% (>= -2.1%) on 1,310 canary/control samples"
    assert evidence(replace(arms, score_samples=0, quality_difference=None)) == (
        "thumbs\\x1b[2J: no canary/control samples yet"
    )


def test_cli_rejects_a_bad_recommend_table(tmp_path, capsys):
    config = tmp_path / "llmtap.toml"
    config.write_text("[recommend]\nmin_agreement = 95\n")
    assert main(["recommend", "--data-dir", str(tmp_path), "--config", str(config)]) == 2
    assert "recommend.min_agreement must be a number between 0 and 1" in capsys.readouterr().err
    config.write_text("[recommend]\nmin_sample = 3\n")
    with pytest.raises(ConfigError, match=r"recommend: unknown keys min_sample \(allowed: confidence,"):
        load_settings(data_dir=str(tmp_path), config_file=str(config))
    config.write_text('[recommend]\ncandidates = ["a"]\nexclude = ["b"]\n')
    assert load_settings(data_dir=str(tmp_path), config_file=str(config)).recommend == RecommendSettings(
        candidates={"*": ("a",)}, exclude=("b",)
    )


# Realised savings ----------------------------------------------------------------------


def test_realised_savings_compares_canary_with_control(tmp_path):
    rule = {"routing_rule": "qa-gpt-4o-to-gpt-4o-mini"}
    rows = [
        call(0, routing_arm="control", cost_usd=Decimal("0.010"), latency_ms=2000.0, **rule),
        call(1, routing_arm="control", cost_usd=Decimal("0.010"), latency_ms=3000.0, **rule),
        call(
            2,
            routing_arm="canary",
            request_model="gpt-4o-mini",
            routed_from_model="gpt-4o",
            cost_usd=Decimal("0.002"),
            latency_ms=1000.0,
            finish_reasons=["length"],
            **rule,
        ),
        call(
            3,
            routing_arm="canary",
            request_model="gpt-4o-mini",
            routed_from_model="gpt-4o",
            cost_usd=None,
            status_code=500,
            error="http 500",
            **rule,
        ),
        call(4, retry_of="c3", cost_usd=Decimal("0.010"), **rule),  # the retry on the original model
    ]
    result = analytics.realised_savings(analytics.load(store(tmp_path, rows)))
    row = result.row(0, named=True)
    assert row["routing_rule"] == "qa-gpt-4o-to-gpt-4o-mini"
    assert (row["canary_calls"], row["control_calls"]) == (2, 2)
    assert row["canary_usd_per_request"] == pytest.approx(0.006)  # (0.002 + 0 + 0.010 retry) / 2
    assert row["control_usd_per_request"] == pytest.approx(0.010)
    assert (row["canary_error_rate"], row["control_error_rate"]) == (0.5, 0.0)
    assert (row["canary_truncation_rate"], row["control_truncation_rate"]) == (0.5, 0.0)
    assert row["control_latency_p50_ms"] == 2500.0 and row["canary_latency_p50_ms"] == 1000.0
    assert row["savings_usd"] == pytest.approx((0.010 - 0.006) * 2)


def test_synthetic_stores_carry_shadow_and_canary_rows(tmp_path):
    calls, bodies = synthetic.generate(4000, 7)
    routed = synthetic.with_routing(calls)
    synthetic.write_store(tmp_path / "llmtap.duckdb", routed, bodies)
    frame = analytics.load(tmp_path)
    arms = frame.group_by("routing_arm").len().collect()
    assert set(arms["routing_arm"].drop_nulls()) == {"shadow", "noise_floor", "canary", "control"}
    realised = analytics.realised_savings(frame)
    assert set(realised["routing_rule"]) == {"gpt-4o-to-gpt-4o-mini", "sonnet-to-haiku"}
    assert (realised["savings_usd"] > 0).all()
    assert analytics.spend(frame, by=[])["calls"].item() == 4000


def test_prompt_caching_for_long_repeated_prefixes(tmp_path):
    rows = [call(i, input_tokens=2000) for i in range(20)]
    calls = pl.DataFrame(rows, schema={name: analytics.SCHEMA[name] for name in rows[0]})
    shared = "You are the support assistant of Example Ltd. Policies follow. " * 80
    bodies = pl.DataFrame(
        {
            "call_id": [f"c{i}" for i in range(20)],
            "capture_mode": ["full"] * 20,
            "request_body": [
                json.dumps(
                    {
                        "model": "gpt-4o",
                        "messages": [
                            {"role": "system", "content": shared},
                            {"role": "user", "content": f"q{i}"},
                        ],
                    }
                )
                for i in range(20)
            ],
        }
    )
    synthetic.write_store(tmp_path / "llmtap.duckdb", calls, bodies)
    (caching,) = [r for r in analytics.recommend(tmp_path) if r.kind == "prompt_caching"]
    assert caching.status == "recommended" and "95% of requests repeat" in caching.reason
    # 19 repeats of 20 read 1024 tokens at 1.25 instead of 2.5 $/Mtok (OpenAI has no write premium).
    saved_per_1k = 1000 * 19 / 20 * 1024 * (2.5 - 1.25) / 1e6
    assert caching.cost_per_1k_candidate_usd == pytest.approx(
        caching.cost_per_1k_incumbent_usd - saved_per_1k
    )
    # Without bodies (a calls frame) the record says the repeats cannot be seen.
    (blind,) = [r for r in analytics.recommend(analytics.load(tmp_path)) if r.kind == "prompt_caching"]
    assert blind.status == "needs_evidence" and "no request body" in blind.reason
