"""The analytics package on generated stores with known answers, cross-checked with SQL.

Rows go straight into a real store (created by ``ensure_schema``) through Arrow; each
test states the answer its rows were built to give. The SQL cross-checks recompute a
few analyses with plain DuckDB on the same file.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest

import analytics
from analytics.anomalies import METRICS as ANOMALY_METRICS
from analytics.source import SCHEMA
from analytics.synthetic import START, generate, write_store
from app.cli import main
from app.terminal import spend_report as report
from collector.budgets.periods import period_window
from collector.pricing.book import PriceBook
from collector.providers import builtin_providers
from collector.providers.base import Usage
from collector.storage import schema as store_schema

T0 = datetime(2026, 3, 2, 9, tzinfo=UTC)  # a Monday
MTOK = Decimal(1_000_000)
NANO = Decimal("0.000000001")


def row(i: int, **kw: Any) -> dict[str, Any]:
    """One llm_calls row: a successful gpt-4o chat call ``i`` minutes after T0, unless overridden."""
    return {
        "call_id": f"c{i}",
        "started_at": T0 + timedelta(minutes=i),
        "provider": "openai",
        "api": "chat",
        "method": "POST",
        "host": "api.openai.com",
        "path": "/v1/chat/completions",
        "status_code": 200,
        "stream": False,
        "request_model": "gpt-4o",
        "response_model": "gpt-4o",
        "input_tokens": 1000,
        "output_tokens": 100,
        "cache_read_tokens": 0,
        "cache_write_tokens": 0,
        "latency_ms": 1000.0,
        "ttft_ms": 200.0,
        "cost_usd": Decimal("0.01"),
        "price_ref": "test: gpt-4o",
        "app": "web",
        "user_id": "u1",
        "session_id": None,
        "properties": None,
        "error": None,
        "finish_reasons": ["stop"],
        **kw,
    }


def store(
    tmp_path: Path, rows: list[dict[str, Any]] | pl.DataFrame, bodies: dict[str, str] | None = None
) -> Path:
    """A store holding ``rows`` (and the request bodies by call id); returns its file."""
    if isinstance(rows, list):
        columns = list(dict.fromkeys(c for r in rows for c in r)) or ["call_id"]
        rows = pl.from_dicts(rows, schema={c: SCHEMA[c] for c in columns})
    body_frame = pl.DataFrame(
        {
            "call_id": list(bodies or {}),
            "capture_mode": "full",
            "request_body": list((bodies or {}).values()),
        },
        schema={"call_id": pl.String, "capture_mode": pl.String, "request_body": pl.String},
    )
    db = tmp_path / "data" / "llmtap.duckdb"
    write_store(db, rows, body_frame)
    return db


def priced(r: dict[str, Any], rates: tuple[str, str, str, str]) -> dict[str, Any]:
    """``r`` with exact costs at (input, cache read, cache write, output) USD per Mtok."""
    r_in, r_read, r_write, r_out = (Decimal(x) / MTOK for x in rates)
    read, write = r["cache_read_tokens"], r["cache_write_tokens"]
    cost_in = ((r["input_tokens"] - read - write) * r_in + read * r_read + write * r_write).quantize(NANO)
    cost_out = (r["output_tokens"] * r_out).quantize(NANO)
    return {**r, "input_cost_usd": cost_in, "output_cost_usd": cost_out, "cost_usd": cost_in + cost_out}


def by_key(frame: pl.DataFrame, *keys: str) -> dict[Any, dict[str, Any]]:
    return {
        tuple(r[k] for k in keys) if len(keys) > 1 else r[keys[0]]: r for r in frame.iter_rows(named=True)
    }


# --- loading -------------------------------------------------------------------------------


def test_load_applies_the_window_derives_model_and_body_hash_and_releases_the_store(tmp_path):
    rows = [
        row(0),
        row(60),
        row(120, response_model=None, request_model="asked-for"),
        row(180, response_model=None, request_model=None),
    ]
    body = '{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}'
    db = store(tmp_path, rows, {"c0": body, "c60": body, "c120": body})
    # another path makes the same body a different request
    with duckdb.connect(str(db)) as con:
        con.execute("UPDATE llm_calls SET path = '/v1/responses' WHERE call_id = 'c120'")

    window = analytics.load(db.parent, since=T0 + timedelta(hours=1), until=T0 + timedelta(hours=2))
    assert window.select("call_id").collect()["call_id"].to_list() == ["c60"]
    calls = analytics.load(db).sort("started_at").collect()
    assert calls.schema == SCHEMA
    assert calls["model"].to_list() == ["gpt-4o", "gpt-4o", "asked-for", "(unknown)"]
    hashes = calls["body_hash"].to_list()
    assert hashes[0] == hashes[1] and hashes[2] not in (hashes[0], None) and hashes[3] is None

    # Neither a built plan nor a finished collect holds the store: a writer gets in, and
    # the next collect of the same plan reads afresh.
    plan = analytics.load(db).select(pl.len())
    with duckdb.connect(str(db)) as con:
        con.execute("INSERT INTO llm_calls (call_id, started_at) VALUES ('late', ?)", [T0])
    assert plan.collect().item() == 5
    with duckdb.connect(str(db)) as con:
        con.execute("DELETE FROM llm_calls WHERE call_id = 'late'")
    assert plan.collect().item() == 4


def test_load_without_a_store_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="no llmtap store"):
        analytics.load(tmp_path)


def test_every_analysis_handles_an_empty_store(tmp_path):
    calls = analytics.load(store(tmp_path, []))
    for analysis in (
        analytics.spend,
        analytics.summary,
        analytics.latency,
        analytics.errors,
        analytics.truncations,
        analytics.cache_savings,
        analytics.waste,
        analytics.anomalies,
    ):
        assert analysis(calls).is_empty(), analysis.__name__
    # Nothing reported: the token sums are unknown (null), like the cost, not 0.
    assert analytics.spend(calls, by=[]).row(0) == (0, None, None, None, None, None, None, 0)
    assert analytics.burn(calls, now=T0).select("calls", "spent_usd").row(0) == (0, None)


def test_unknown_dimension_is_refused():
    with pytest.raises(ValueError, match="cannot group by 'colour'"):
        analytics.dimension("colour")


# --- spend ---------------------------------------------------------------------------------


def test_spend_by_property_and_week_sums_exactly(tmp_path):
    week2 = timedelta(days=7)
    rows = [
        row(0, properties='{"team": "core", "env": "prod"}', cost_usd=Decimal("1.000000001")),
        row(1, properties='{"team": "growth"}', cost_usd=Decimal("2")),
        row(2, properties=None, cost_usd=Decimal("4")),
        row(3, properties='{"env": "prod"}', cost_usd=Decimal("0.5")),
        row(4, started_at=T0 + week2, properties='{"team": "core"}', cost_usd=Decimal("8")),
        # an unpriced call: counted, its tokens summed, its cost unknown (not 0)
        row(5, started_at=T0 + week2, properties='{"team": "core"}', cost_usd=None, input_tokens=7),
    ]
    calls = analytics.load(store(tmp_path, rows))
    spend = by_key(analytics.spend(calls, by=["property:team", "week"]), "property:team", "week")
    week = T0.replace(hour=0)
    assert {k: (v["calls"], v["cost_usd"]) for k, v in spend.items()} == {
        ("core", week): (1, Decimal("1.000000001")),
        ("growth", week): (1, Decimal("2")),
        ("(none)", week): (2, Decimal("4.5")),
        ("core", week + week2): (2, Decimal("8")),
    }
    assert spend[("core", week + week2)]["input_tokens"] == 1007
    assert spend[("core", week + week2)]["unpriced_calls"] == 1
    env = by_key(analytics.spend(calls, by="property:Env"), "property:Env")  # names are stored lower-cased
    assert env["prod"]["cost_usd"] == Decimal("1.500000001")

    only_unpriced = analytics.spend(calls.filter(pl.col("cost_usd").is_null()), by=[])
    assert only_unpriced.row(0, named=True)["cost_usd"] is None
    assert analytics.unpriced(calls).rows() == [("gpt-4o", "openai", 1)]


def test_time_buckets_are_utc_and_ordered(tmp_path):
    rows = [
        row(0, started_at=datetime(2026, 3, 1, 23, 59, 59, tzinfo=UTC), cost_usd=Decimal(1)),
        row(1, started_at=datetime(2026, 3, 2, 0, 0, tzinfo=UTC), cost_usd=Decimal(2)),
        row(2, started_at=datetime(2026, 2, 28, 12, tzinfo=UTC), cost_usd=Decimal(4)),
    ]
    calls = analytics.load(store(tmp_path, rows))
    days = analytics.spend(calls, by="day")
    assert [d.day for d in days["day"]] == [28, 1, 2]
    assert days["cost_usd"].to_list() == [Decimal(4), Decimal(1), Decimal(2)]
    months = analytics.spend(calls, by=["month"])
    assert [(m.month, c) for m, c in months.select("month", "cost_usd").rows()] == [(2, 4), (3, 3)]
    weeks = analytics.spend(calls, by="week")  # Sunday 1 March belongs to the week of Monday 23 February
    assert [w.day for w in weeks["week"]] == [23, 2]


# --- latency -------------------------------------------------------------------------------


def test_latency_and_ttft_percentiles_and_stream_speed(tmp_path):
    rows = [row(i, latency_ms=float(i)) for i in range(101)]  # 0..100 ms: p95 is 95
    rows += [row(200 + i, latency_ms=1e6, error="http 500", status_code=500) for i in range(5)]
    rows += [
        row(
            300 + k,
            provider="anthropic",
            stream=True,
            ttft_ms=100.0 + 10 * k,  # 100..200 ms
            latency_ms=1100.0 + 10 * k,  # one second after the first byte
            output_tokens=100 * (k + 1),  # 100..1100 tokens/s
        )
        for k in range(11)
    ]
    latency = by_key(analytics.latency(analytics.load(store(tmp_path, rows)), by="provider"), "provider")
    openai, anthropic = latency["openai"], latency["anthropic"]
    assert openai["ok_calls"] == 101  # the errors' latencies are left out
    assert [openai[f"latency_p{q}_ms"] for q in (50, 90, 95, 99)] == pytest.approx([50, 90, 95, 99])
    assert openai["ok_streams"] == 0 and openai["ttft_p50_ms"] is None
    assert [anthropic[f"ttft_p{q}_ms"] for q in (50, 90, 95, 99)] == pytest.approx([150, 190, 195, 199])
    assert anthropic["output_tokens_per_s_p50"] == pytest.approx(600)
    assert anthropic["output_tokens_per_s_p10"] == pytest.approx(200)


# --- errors and truncations ----------------------------------------------------------------

ERROR_ROWS = [
    ("Client disconnected.", 200, "client_disconnect"),
    ("peer closed connection without sending complete message body", 200, "upstream_reset"),
    ("Connection refused", None, "upstream_reset"),
    ("http 429", 429, "rate_limited"),
    ("Rate limit reached for requests", 429, "rate_limited"),
    ("http 400", 400, "http_4xx"),
    ("overloaded_error: Overloaded", 529, "http_5xx"),
    ("http 504 gateway timeout", 504, "http_5xx"),
    ("server_error: The server had an error", 200, "in_band"),
    ("prompt blocked: SAFETY", 200, "in_band"),
]


def test_error_kinds_are_counted(tmp_path):
    rows = [row(i, error=text, status_code=status) for i, (text, status, _) in enumerate(ERROR_ROWS)]
    rows += [row(100 + i) for i in range(5)]
    calls = analytics.load(store(tmp_path, rows))
    (total,) = analytics.errors(calls, by=[]).iter_rows(named=True)
    assert (total["calls"], total["errors"]) == (15, 10)
    assert total["error_rate"] == pytest.approx(10 / 15)
    assert {kind: total[kind] for kind in analytics.ERROR_KINDS} == {
        "client_disconnect": 1,
        "upstream_reset": 2,
        "rate_limited": 2,
        "http_4xx": 1,
        "http_5xx": 2,
        "in_band": 2,
    }
    kinds = by_key(analytics.spend(calls, by="error_kind"), "error_kind")
    assert kinds["(none)"]["calls"] == 5 and kinds["in_band"]["calls"] == 2
    classes = by_key(analytics.errors(calls, by="status_class"), "status_class")
    assert {k: (v["calls"], v["errors"]) for k, v in classes.items()} == {
        "2xx": (9, 4),
        "4xx": (3, 3),
        "5xx": (2, 2),
        "none": (1, 1),
    }


def test_truncations_are_counted_with_their_cost(tmp_path):
    reasons = [["length"], ["max_tokens"], ["MAX_TOKENS"], ["max_output_tokens"], ["stop", "length"]]
    rows = [
        row(i, finish_reasons=r, cost_usd=Decimal(i + 1), output_tokens=10) for i, r in enumerate(reasons)
    ]
    rows += [row(10, finish_reasons=["stop"]), row(11, finish_reasons=[]), row(12, finish_reasons=None)]
    (cut,) = analytics.truncations(analytics.load(store(tmp_path, rows)), by=[]).iter_rows(named=True)
    assert (cut["calls"], cut["truncated"], cut["truncated_output_tokens"]) == (8, 5, 50)
    assert cut["truncated_cost_usd"] == Decimal(15) and cut["truncated_share"] == pytest.approx(5 / 8)


# --- prompt cache --------------------------------------------------------------------------

SONNET = ("3", "0.3", "3.75", "15")  # Anthropic-style: reads at 0.1x, writes at 1.25x


def test_cache_savings_from_rates_recovered_from_stored_costs(tmp_path):
    usage = [
        (1000, 0, 0),
        (2000, 1500, 0),
        (3000, 0, 1000),
        (5000, 2000, 1000),
        (800, 700, 0),
        (4000, 1000, 2000),
    ]
    rows = [
        priced(
            row(
                i,
                provider="anthropic",
                response_model="claude-sonnet-4-5",
                price_ref="test: sonnet",
                input_tokens=n,
                cache_read_tokens=r,
                cache_write_tokens=w,
            ),
            SONNET,
        )
        for i, (n, r, w) in enumerate(usage)
    ]
    rows += [priced(row(10 + i, input_tokens=500 + i), ("2.5", "1.25", "2.5", "10")) for i in range(3)]
    # an unpriced model's cache reads cannot be valued
    rows += [row(20, response_model="mystery", cost_usd=None, price_ref=None, cache_read_tokens=400)]
    calls = analytics.load(store(tmp_path, rows))

    rates = by_key(analytics.cache_rates(calls), "model")
    sonnet = rates["claude-sonnet-4-5"]
    assert sonnet["source"] == "stored costs"
    assert [sonnet[f"{k}_usd_per_mtok"] for k in ("input", "cache_read", "cache_write")] == pytest.approx(
        [3.0, 0.3, 3.75], rel=1e-6
    )
    assert rates["gpt-4o"]["input_usd_per_mtok"] == pytest.approx(2.5, rel=1e-6)
    assert rates["gpt-4o"]["cache_read_usd_per_mtok"] is None  # never read from cache: not needed
    assert "mystery" not in rates

    savings = by_key(analytics.cache_savings(calls, by="model"), "model")
    s = savings["claude-sonnet-4-5"]
    assert (s["input_tokens"], s["cache_read_tokens"], s["cache_write_tokens"]) == (15800, 5200, 4000)
    assert s["cache_read_share"] == pytest.approx(5200 / 15800)
    assert s["saved_usd"] == pytest.approx(5200 * 2.7e-6, rel=1e-6)
    assert s["write_premium_usd"] == pytest.approx(4000 * 0.75e-6, rel=1e-6)
    assert s["net_saved_usd"] == pytest.approx(5200 * 2.7e-6 - 4000 * 0.75e-6, rel=1e-6)
    assert savings["gpt-4o"]["saved_usd"] == 0
    assert savings["mystery"]["unrated_cache_read_tokens"] == 400


def test_cache_rates_come_from_the_catalogue_when_the_fit_is_undetermined(tmp_path):
    """Every call read half its prompt from cache: uncached and cached tokens are
    collinear, so the stored costs cannot separate the two rates."""
    book = PriceBook()
    prices_id = {p.name: p.prices_id for p in builtin_providers()}["openai"]
    rows = []
    for i in range(4):
        usage = Usage(1000 * (i + 1), 10, cache_read_tokens=500 * (i + 1))
        price = book.price(
            prices_id=prices_id,
            model="gpt-4o",
            usage=usage,
            service_tier=None,
            provider_cost_usd=None,
            when=T0,
        )
        rows.append(
            row(
                i,
                input_tokens=usage.input_tokens,
                output_tokens=10,
                cache_read_tokens=usage.cache_read_tokens,
                cost_usd=price.cost_usd,
                input_cost_usd=price.input_cost_usd,
                output_cost_usd=price.output_cost_usd,
                price_ref=price.price_ref,
            )
        )
    calls = analytics.load(store(tmp_path, rows))
    (rate,) = analytics.cache_rates(calls).iter_rows(named=True)
    catalogue = book.rates(prices_id, "gpt-4o", None, T0)
    assert rate["source"] == "catalogue"
    assert rate["input_usd_per_mtok"] == pytest.approx(float(catalogue.input))
    assert rate["cache_read_usd_per_mtok"] == pytest.approx(float(catalogue.cache_read))
    (saved,) = analytics.cache_savings(calls, by=[]).iter_rows(named=True)
    assert saved["saved_usd"] == pytest.approx(5000 * float(catalogue.input - catalogue.cache_read) / 1e6)


# --- waste ---------------------------------------------------------------------------------


def test_waste_counts_duplicates_retries_and_truncations_once_each(tmp_path):
    def call(i: int, minute: float, body: str | None, **kw: Any) -> tuple[dict[str, Any], str | None]:
        return row(i, started_at=T0 + timedelta(minutes=minute), **kw), body

    failed = {"error": "http 429", "status_code": 429, "cost_usd": None}
    made = [
        call(0, 0, "A", cost_usd=Decimal(1)),
        call(1, 1, "A", cost_usd=Decimal(1)),  # duplicate
        call(2, 2, "A", cost_usd=Decimal(1)),  # duplicate
        call(3, 0, "B", **failed),  # retried 3 minutes later
        call(4, 3, "B", cost_usd=Decimal(2)),  # the retry; the first success
        call(5, 30, "B", cost_usd=Decimal(2)),  # duplicate
        call(6, 0, "C", error="server_error", cost_usd=Decimal("0.5")),  # next try 20 minutes on: not a retry
        call(7, 20, "C", cost_usd=Decimal("0.5")),
        call(8, 0, "D", **failed),  # the next identical call is another app's: not a retry
        call(9, 1, "D", app="batch", cost_usd=Decimal(1)),
        call(10, 15, "D", cost_usd=Decimal(1)),  # duplicate of the batch app's answer
        call(11, 0, "E", error="stream error", cost_usd=Decimal("0.25")),  # retried
        call(12, 1, "E", **failed),  # retried; a failure is no answer to duplicate
        call(13, 2, "E", cost_usd=Decimal(1)),
        call(14, 0, "F", finish_reasons=["length"], cost_usd=Decimal(3)),  # truncated
        call(15, 5, "A", finish_reasons=["length"], cost_usd=Decimal(1)),  # truncated and duplicate
        call(16, 0, None, **failed),  # no stored body: neither retried nor a duplicate
        call(17, 1, None),
    ]
    rows = [r for r, _ in made]
    calls = analytics.load(store(tmp_path, rows, {r["call_id"]: b for r, b in made if b is not None}))

    flags = analytics.waste_flags(calls).sort("started_at", "call_id").collect()
    flagged = {
        name: sorted(flags.filter(pl.col(name))["call_id"]) for name in ("duplicate", "retried_failure")
    }
    assert flagged == {
        "duplicate": sorted(["c1", "c2", "c5", "c10", "c15"]),
        "retried_failure": sorted(["c3", "c11", "c12"]),
    }
    (w,) = analytics.waste(calls, by=[]).iter_rows(named=True)
    assert (w["calls"], w["duplicate_calls"], w["retries"], w["truncated_calls"]) == (18, 5, 3, 2)
    assert (w["duplicate_cost_usd"], w["failed_attempt_cost_usd"], w["truncated_cost_usd"]) == (
        6,
        Decimal("0.25"),
        4,
    )
    assert w["wasted_cost_usd"] == Decimal("9.25")  # c15 counted once
    assert w["wasted_share"] == pytest.approx(9.25 / float(w["cost_usd"]))
    by_app = by_key(analytics.waste(calls, by="app"), "app")
    assert by_app["batch"]["duplicate_calls"] == 0 and by_app["web"]["duplicate_calls"] == 5

    within_30 = analytics.waste(calls, by=[], retry_within=timedelta(minutes=30))
    assert within_30["retries"].item() == 5  # C's and D's failures now count as retried


# --- budget burn ---------------------------------------------------------------------------


def test_burn_spend_run_rate_and_forecast(tmp_path):
    day = T0.replace(hour=0)
    rows = [
        row(
            h,
            started_at=day + timedelta(hours=h, minutes=30),
            app="a" if h % 2 else "b",
            cost_usd=Decimal(3) if h >= 10 else Decimal(1),
        )
        for h in range(12)
    ]
    rows.append(row(99, started_at=day - timedelta(minutes=30), cost_usd=Decimal(100)))  # yesterday
    rows.append(row(98, started_at=day + timedelta(hours=13), cost_usd=Decimal(100)))  # after "now"
    calls = analytics.load(store(tmp_path, rows))
    now = day + timedelta(hours=12)

    (b,) = analytics.burn(calls, period="day", now=now, limit_usd=40).iter_rows(named=True)
    assert (b["period_start"], b["period_end"]) == (day, day + timedelta(days=1))
    assert (b["calls"], b["spent_usd"]) == (12, Decimal(16))
    assert b["run_rate_usd_per_hour"] == pytest.approx(16 / 12)
    assert b["forecast_usd"] == pytest.approx(32)
    assert (b["used_share"], b["forecast_share"]) == pytest.approx((0.4, 0.8))

    (recent,) = analytics.burn(calls, period="day", now=now, lookback=timedelta(hours=2)).iter_rows(
        named=True
    )
    assert recent["run_rate_usd_per_hour"] == pytest.approx(3) and recent["forecast_usd"] == pytest.approx(52)

    per_app = by_key(analytics.burn(calls, period="day", by="app", now=now), "app")
    assert {a: v["spent_usd"] for a, v in per_app.items()} == {"a": Decimal(8), "b": Decimal(8)}
    assert sum(v["forecast_usd"] for v in per_app.values()) == pytest.approx(32)

    month = period_window("month", datetime(2026, 2, 14, tzinfo=UTC).timestamp())
    assert month.bounds() == (datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC))
    assert period_window("week", now.timestamp()).bounds()[0] == day  # T0 is a Monday
    (week,) = analytics.burn(calls, period="week", now=now).iter_rows(named=True)
    assert (week["period_start"], week["period_end"]) == (day, day + timedelta(weeks=1))
    with pytest.raises(ValueError, match="period must be one of"):
        analytics.burn(calls, period="fortnight")


# --- anomalies -----------------------------------------------------------------------------


def test_anomalies_find_an_injected_spend_spike_and_error_burst(tmp_path):
    hours, per_hour = 24 * 10, 40
    spike, burst = T0 + timedelta(hours=200), T0 + timedelta(hours=150)
    frame = (
        pl.select(i=pl.int_range(hours * per_hour))
        .with_columns(hour=pl.lit(T0) + pl.duration(hours=pl.col("i") // per_hour))
        .select(
            call_id=pl.format("c{}", pl.col("i")),
            started_at=pl.col("hour") + pl.duration(seconds=pl.col("i") % per_hour),
            provider=pl.lit("openai"),
            # an hourly spend that wobbles between 4.0 and 4.8; 40 in the spike hour (10 x 4.0)
            cost_usd=(pl.lit(0.1) + 0.005 * ((pl.col("i") // per_hour) % 5)).cast(pl.Decimal(18, 9))
            * pl.when(pl.col("hour") == spike).then(10).otherwise(1),
            # one error an hour, twenty in one hour
            error=pl.when(
                (pl.col("i") % per_hour == 0) | ((pl.col("hour") == burst) & (pl.col("i") % 2 == 0))
            ).then(pl.lit("http 500")),
        )
    )
    calls = analytics.load(store(tmp_path, frame))

    cost = analytics.anomalies(calls, metric="cost", bucket="hour", window=48)
    assert cost["hour"].to_list() == [spike]
    assert cost["robust_z"].item() > 3.5 and cost["value"].item() == pytest.approx(40.0)
    errors = analytics.anomalies(calls, metric="error_rate", bucket="hour", window=48)
    assert errors["hour"].to_list() == [burst]
    assert errors["value"].item() == pytest.approx(20 / 40)
    everything = analytics.anomalies(calls, metric="calls", all_buckets=True)
    assert everything.height == hours and everything["calls"].sum() == hours * per_hour
    assert not everything["anomaly"].any()  # the same number of calls every hour


def test_an_hour_without_calls_counts_as_zero_spend(tmp_path):
    rows = [row(i, started_at=T0 + timedelta(hours=i), cost_usd=Decimal(1)) for i in range(30) if i != 20]
    result = analytics.anomalies(analytics.load(store(tmp_path, rows)), bucket="hour", window=12)
    assert result.select("hour", "calls", "cost_usd").rows() == [(T0 + timedelta(hours=20), 0, 0.0)]
    assert result["robust_z"].item() == float("-inf")  # a constant baseline: any change is far off


# --- agreement, and SQL cross-checks on generated data ------------------------------------


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    calls, bodies = generate(20_000, days=10)
    db = tmp_path_factory.mktemp("synthetic") / "llmtap.duckdb"
    write_store(db, calls, bodies)
    return db


def sql(db: Path, query: str) -> list[tuple]:
    with duckdb.connect(str(db), read_only=True) as con:
        con.execute("SET TimeZone = 'UTC'")
        return con.execute(query).fetchall()


def test_analyses_agree_with_each_other(synthetic):
    calls = analytics.load(synthetic)
    total = analytics.spend(calls, by=[]).row(0, named=True)
    summary = analytics.summary(calls, by=[]).row(0, named=True)
    errors = analytics.errors(calls, by=[]).row(0, named=True)
    waste = analytics.waste(calls, by=[]).row(0, named=True)
    cut = analytics.truncations(calls, by=[]).row(0, named=True)
    cache = analytics.cache_savings(calls, by=[]).row(0, named=True)
    burn = analytics.burn(calls, period="month", now=START + timedelta(days=10)).row(0, named=True)
    hourly = analytics.anomalies(calls, bucket="hour", all_buckets=True)

    assert total["calls"] == summary["calls"] == errors["calls"] == waste["calls"] == 20_000
    assert total["cost_usd"] == summary["cost_usd"] == waste["cost_usd"] == burn["spent_usd"]
    assert total["cost_usd"] == analytics.spend(calls, by="model")["cost_usd"].sum()
    assert float(total["cost_usd"]) == pytest.approx(hourly["cost_usd"].sum())
    assert hourly["calls"].sum() == 20_000 and hourly["errors"].sum() == errors["errors"]
    assert summary["errors"] == errors["errors"] == sum(errors[k] for k in analytics.ERROR_KINDS)
    assert (
        cut["truncated"] == waste["truncated_calls"]
        and cut["truncated_cost_usd"] == waste["truncated_cost_usd"]
    )
    assert (
        cache["input_tokens"] == total["input_tokens"]
        and cache["cache_read_tokens"] == total["cache_read_tokens"]
    )
    assert cache["unrated_cache_read_tokens"] == 0  # every model that reads from cache is priced
    assert waste["duplicate_calls"] > 0 and waste["retries"] > 0 and cut["truncated"] > 0
    by_day = analytics.spend(calls, by=["model", "day"])
    assert by_day["calls"].sum() == 20_000 and by_day["cost_usd"].sum() == total["cost_usd"]


def test_synthetic_cache_rates_match_the_generator(synthetic):
    rates = by_key(analytics.cache_rates(analytics.load(synthetic)), "model")
    sonnet = rates["claude-sonnet-4-5"]
    assert [sonnet[f"{k}_usd_per_mtok"] for k in ("input", "cache_read", "cache_write")] == pytest.approx(
        [3.0, 0.3, 3.75], rel=1e-4
    )
    assert rates["gpt-4o-mini"]["cache_read_usd_per_mtok"] == pytest.approx(0.075, rel=1e-4)


def test_spend_and_buckets_match_sql(synthetic):
    calls = analytics.load(synthetic)
    polars_rows = (
        analytics.spend(calls, by=["model", "day"]).select("model", "day", "calls", "cost_usd").rows()
    )
    sql_rows = sql(
        synthetic,
        "SELECT coalesce(response_model, request_model, '(unknown)'), date_trunc('day', started_at), "
        "count(*), sum(cost_usd) FROM llm_calls GROUP BY ALL",
    )
    assert sorted(polars_rows, key=str) == sorted(sql_rows, key=str)

    teams = (
        analytics.spend(calls, by=["property:team", "week"]).select("property:team", "week", "calls").rows()
    )
    sql_teams = sql(
        synthetic,
        "SELECT coalesce(properties->>'team', '(none)'), date_trunc('week', started_at), count(*) "
        "FROM llm_calls GROUP BY ALL",
    )
    assert sorted(teams, key=str) == sorted(sql_teams, key=str)


def test_latency_errors_and_truncations_match_sql(synthetic):
    calls = analytics.load(synthetic)
    latency = (
        analytics.latency(calls, by="provider").select("provider", "latency_p95_ms", "ttft_p50_ms").rows()
    )
    sql_latency = sql(
        synthetic,
        "SELECT provider, quantile_cont(latency_ms, 0.95) FILTER (WHERE error IS NULL), "
        "quantile_cont(ttft_ms, 0.5) FILTER (WHERE error IS NULL AND stream) FROM llm_calls GROUP BY ALL",
    )
    assert [r[0] for r in sorted(latency)] == [r[0] for r in sorted(sql_latency)]
    assert [r[1:] for r in sorted(latency)] == [pytest.approx(r[1:]) for r in sorted(sql_latency)]

    errors = analytics.errors(calls, by="provider").select("provider", "errors", "rate_limited").rows()
    sql_errors = sql(
        synthetic,
        "SELECT provider, count(*) FILTER (WHERE error IS NOT NULL), "
        "count(*) FILTER (WHERE status_code = 429) FROM llm_calls GROUP BY ALL",
    )
    assert sorted(errors) == sorted(sql_errors)

    cut = analytics.truncations(calls, by="model").select("model", "truncated", "truncated_cost_usd").rows()
    sql_cut = sql(
        synthetic,
        "SELECT coalesce(response_model, request_model, '(unknown)'), "
        "count(*) FILTER (WHERE list_has_any(finish_reasons, ['length', 'max_tokens', 'MAX_TOKENS', "
        "'max_output_tokens'])), sum(cost_usd) FILTER (WHERE list_has_any(finish_reasons, ['length', "
        "'max_tokens', 'MAX_TOKENS', 'max_output_tokens'])) FROM llm_calls GROUP BY ALL",
    )
    assert sorted(cut, key=str) == sorted(sql_cut, key=str)

    shares = analytics.cache_savings(calls, by="model").select("model", "cache_read_share").rows()
    sql_shares = sql(
        synthetic,
        "SELECT coalesce(response_model, request_model, '(unknown)'), "
        "sum(cache_read_tokens) / sum(input_tokens) FROM llm_calls GROUP BY ALL",
    )
    assert dict(shares) == pytest.approx(dict(sql_shares))


def test_duplicates_and_retries_match_sql(synthetic):
    (w,) = analytics.waste(analytics.load(synthetic), by=[]).iter_rows(named=True)
    bodies = """
        WITH b AS (
            SELECT c.*, hash(c.host, c.path, hash(cb.request_body)) AS h
            FROM llm_calls c JOIN call_bodies cb USING (call_id) WHERE cb.request_body IS NOT NULL
        )"""
    (duplicates,) = sql(
        synthetic,
        bodies
        + """, first_ok AS (SELECT h, min(started_at) AS t FROM b WHERE error IS NULL GROUP BY h)
        SELECT count(*), sum(cost_usd) FROM b JOIN first_ok USING (h) WHERE b.started_at > first_ok.t""",
    )
    assert (w["duplicate_calls"], w["duplicate_cost_usd"]) == duplicates
    (retries,) = sql(
        synthetic,
        bodies
        + """, n AS (
            SELECT error, started_at,
                   lead(started_at) OVER (PARTITION BY app, request_model, h ORDER BY started_at) AS next_at
            FROM b)
        SELECT count(*) FROM n WHERE error IS NOT NULL AND next_at - started_at <= INTERVAL 10 MINUTE""",
    )[0]
    assert w["retries"] == retries


# --- the report ----------------------------------------------------------------------------


def test_report_formats(tmp_path, capsys):
    rows = [
        row(0, properties='{"team": "core"}', cost_usd=Decimal("1.5")),
        row(
            1,
            properties='{"team": "core"}',
            cost_usd=Decimal("2.25"),
            response_model="mystery",
            price_ref=None,
        ),
        row(2, started_at=T0 + timedelta(days=7), cost_usd=None, response_model="mystery"),
    ]
    db = store(tmp_path, rows)
    data = ["--data-dir", str(db.parent)]

    assert main(["report", *data, "--by", "property:team,week", "--format", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["by"] == ["property:team", "week"]
    assert document["rows"][0] == {
        "property:team": "core",
        "week": "2026-03-02T00:00:00+00:00",
        "calls": 2,
        "input_tokens": 2000,
        "output_tokens": 200,
        "cost_usd": 3.75,
        "latency_p50_ms": 1000.0,
        "latency_p95_ms": 1000.0,
        "errors": 0,
    }
    assert document["unpriced"] == [{"model": "mystery", "provider": "openai", "calls": 1}]

    assert main(["report", *data, "--show", "spend", "--by", "day", "--format", "csv"]) == 0
    out = capsys.readouterr()
    assert out.out.splitlines()[0].startswith("day,calls,input_tokens")
    assert out.out.splitlines()[1].startswith("2026-03-02T00:00:00Z,2,")
    assert "mystery" in out.err

    assert main(["report", *data, "--until", "2026-03-02T12:00", "--show", "burn", "--limit", "10"]) == 0
    table = capsys.readouterr().out
    assert "spent $" in table and "3.7500" in table and "37.5%" in table

    assert main(["report", *data, "--since", "2027-01-01"]) == 0
    assert "no calls recorded in this window" in capsys.readouterr().out

    assert main(["report", *data, "--by", "colour"]) == 2
    assert "cannot group by 'colour'" in capsys.readouterr().err


def test_every_report_view_renders(synthetic, capsys):
    for view in report.VIEWS:
        assert main(["report", "--data-dir", str(synthetic.parent), "--show", view]) == 0, view
        out = capsys.readouterr().out
        assert out.startswith(f"llmtap {view}") and len(out.splitlines()) > 1, out


def test_report_options_follow_the_analytics_package():
    assert tuple(analytics.TIME_BUCKETS) == report.PERIODS
    assert report.METRICS == ANOMALY_METRICS
    assert all(hasattr(analytics, view.function) for view in report.VIEWS.values())
    assert set(store_schema.LLM_CALLS) < set(SCHEMA)
