"""The dashboard's pages under Streamlit's AppTest, on a real generated store.

Every figure a page shows is checked against the same figure computed independently with
DuckDB SQL on the store (not through analytics/ or app/ui/data), after parsing the
rendered text back ("$1,234.56", "3.02 s", "2.9%").
"""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import polars as pl
import pytest
from streamlit.testing.v1 import AppTest

from analytics.synthetic import MODELS, generate, write_store
from app.ui import data
from app.ui.safe import md
from collector.storage.database import ensure_schema

DASHBOARD = str(Path(__file__).resolve().parent.parent / "app" / "ui" / "dashboard.py")
PAGES = ("overview", "costs", "latency", "calls", "budgets")
TITLES = {
    "overview": "Overview",
    "costs": "Costs",
    "latency": "Latency",
    "calls": "Calls",
    "budgets": "Budgets",
}
#: As the proxy stores it: the provider's error type, then llmtap's message.
BLOCKED_ERROR = (
    "rate_limit_exceeded: blocked by budget checkout-daily: "
    "app 'checkout' spent $5.02 of its $5.00 daily limit; it resets at X"
)
CONFIG = """
[budgets."daily-total"]
limit_usd = 50
period = "day"

[budgets."checkout-daily"]
app = "checkout"
limit_usd = 5
period = "day"
action = "block"

[budgets."per-user"]
per = "user"
limit_usd = 1
period = "month"
"""


def parse(text: str) -> float:
    """A rendered figure as a number: dollars, counts, percentages (as a share), ms or s (as ms)."""
    number = float(re.sub(r"[^0-9.\-]", "", text))
    if text.endswith("%"):
        return number / 100
    if text.endswith(" s"):
        return number * 1000
    return number


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def sql(db: Path, query: str, *params: object) -> tuple:
    with duckdb.connect(str(db), read_only=True) as con:
        con.execute("SET TimeZone = 'UTC'")
        return con.execute(query, list(params)).fetchone()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 days of generated calls ending now, two calls a budget blocked, one call's span,
    the proxy's alert file, and a config with three budgets."""
    data_dir = tmp_path_factory.mktemp("ui") / "data"
    data_dir.mkdir()
    db = data_dir / "llmtap.duckdb"
    now = datetime.now(UTC)
    calls, bodies = generate(6000, 3, start=now - timedelta(days=3, minutes=5))
    write_store(db, calls, bodies)
    with duckdb.connect(str(db)) as con:
        for i in range(2):
            con.execute(
                "INSERT INTO llm_calls (call_id, started_at, provider, api, status_code, request_model,"
                " app, error)"
                " VALUES (?, ?, 'openai', 'chat', 429, 'gpt-4o', 'checkout', ?)",
                [f"blocked-{i}", now - timedelta(minutes=3 + i), BLOCKED_ERROR],
            )
        con.execute(
            "INSERT INTO spans (trace_id, span_id, call_id, name, kind, status, attributes) SELECT "
            "'t1', 's1', call_id, 'chat gpt-4o', 'CLIENT', 'UNSET', ? FROM llm_calls "
            "WHERE cost_usd IS NOT NULL ORDER BY started_at DESC LIMIT 1",
            [json.dumps({"gen_ai.provider.name": "openai", "gen_ai.usage.input_tokens": 1234})],
        )
    (data_dir / "budget_alerts.json").write_text(
        json.dumps(
            {
                "updated_at": "x",
                "alerts": [
                    {
                        "budget": "checkout-daily",
                        "level": 1.0,
                        "exceeded": True,
                        "message": "budget checkout-daily: limit reached",
                    }
                ],
            }
        )
    )
    (data_dir / "llmtap.toml").write_text(CONFIG)
    return data_dir


def open_page(
    data_dir: Path, page: str, monkeypatch: pytest.MonkeyPatch, config: bool = True, **sidebar: object
) -> AppTest:
    """The dashboard on ``page``, with the sidebar's widgets (by key) set to ``sidebar`` first.

    (AppTest drops the entry script's sidebar from its element tree after the first run
    under st.navigation, so sidebar choices are made before it, through session state.)"""
    monkeypatch.setenv("LLMTAP_DATA_DIR", str(data_dir))
    if config:
        monkeypatch.setenv("LLMTAP_CONFIG", str(data_dir / "llmtap.toml"))
    else:
        monkeypatch.delenv("LLMTAP_CONFIG", raising=False)
    at = AppTest.from_file(DASHBOARD, default_timeout=60)
    for key, value in sidebar.items():
        at.session_state[key] = value
    at.run()
    if page != "overview":
        at.switch_page(f"page_scripts/{page}.py").run()
    assert not at.exception, at.exception
    assert at.title[0].value == TITLES[page]
    return at


def window(at: AppTest) -> datetime:
    """The window start the sidebar chose (the default: the last 7 days, to the minute)."""
    return at.session_state["llmtap_view"].since


def test_overview_shows_the_stores_figures(store, monkeypatch):
    at = open_page(store, "overview", monkeypatch)
    shown, db, since = metrics(at), store / "llmtap.duckdb", window(at)
    calls, tokens_in, tokens_out, cost, errors, p50, p95 = sql(
        db,
        "SELECT count(*), sum(input_tokens), sum(output_tokens), sum(cost_usd)::DOUBLE, count(error),"
        " quantile_cont(latency_ms, 0.5) FILTER (error IS NULL),"
        " quantile_cont(latency_ms, 0.95) FILTER (error IS NULL) FROM llm_calls WHERE started_at >= ?",
        since,
    )
    assert calls > 6000 - 10  # the window holds (nearly) everything
    assert parse(shown["Calls"]) == calls
    assert parse(shown["Input tokens"]) == tokens_in
    assert parse(shown["Output tokens"]) == tokens_out
    assert parse(shown["Cost"]) == pytest.approx(cost, abs=0.005)
    assert parse(shown["Error rate"]) == pytest.approx(errors / calls, abs=0.0005)
    assert parse(shown["Latency p50"]) == pytest.approx(p50, abs=5)
    assert parse(shown["Latency p95"]) == pytest.approx(p95, abs=5)
    for label, unit in (("Spend today", "day"), ("Spend this week", "week"), ("Spend this month", "month")):
        (spent,) = sql(
            db,
            "SELECT coalesce(sum(cost_usd), 0)::DOUBLE FROM llm_calls"
            f" WHERE started_at >= date_trunc('{unit}', now())",
        )
        assert parse(shown[label]) == pytest.approx(spent, abs=0.005), label
    # The daily budget on all calls is shown against today's spend; the alert as a banner.
    (today,) = sql(
        db, "SELECT sum(cost_usd)::DOUBLE FROM llm_calls WHERE started_at >= date_trunc('day', now())"
    )
    assert any(
        f"{today / 50 * 100:.1f}% of the $50.00 daily budget {md('daily-total')}" in p.text
        for p in at.get("progress")
    )
    assert [e.value for e in at.error] == [md("budget checkout-daily: limit reached")]
    assert not at.expander  # one alert is shown whole
    assert len(at.get("vega_lite_chart")) == 1


def test_sidebar_filters_and_window_change_the_figures(store, monkeypatch):
    db = store / "llmtap.duckdb"
    everything = parse(metrics(open_page(store, "overview", monkeypatch))["Calls"])
    chosen = {"filter_app": ["checkout", "search"], "filter_provider": ["openai"]}
    for label in ("Last 7 days", "Last 24 hours"):
        at = open_page(store, "overview", monkeypatch, window=label, **chosen)
        since = window(at)
        assert since == (datetime.now(UTC) - data.WINDOWS[label]).replace(second=0, microsecond=0)
        calls, cost = sql(
            db,
            "SELECT count(*), sum(cost_usd)::DOUBLE FROM llm_calls WHERE started_at >= ?"
            " AND app IN ('checkout', 'search') AND provider = 'openai'",
            since,
        )
        shown = metrics(at)
        assert 0 < parse(shown["Calls"]) == calls < everything
        assert parse(shown["Cost"]) == pytest.approx(cost, abs=0.005)
        assert not at.get("progress")  # a filtered view is not compared with the all-calls budget
    assert calls < everything / 3  # the last 24 hours of 3 days


def test_costs_page_breakdowns_cache_savings_and_unpriced_models(store, monkeypatch):
    at = open_page(store, "costs", monkeypatch)
    db, since = store / "llmtap.duckdb", window(at)
    shown = metrics(at)
    (cost,) = sql(db, "SELECT sum(cost_usd)::DOUBLE FROM llm_calls WHERE started_at >= ?", since)
    assert parse(shown["Cost"]) == pytest.approx(cost, abs=0.005)
    (unpriced,) = sql(
        db,
        "SELECT count(DISTINCT coalesce(response_model, request_model)) FROM llm_calls WHERE started_at >= ?"
        " AND cost_usd IS NULL AND (input_tokens IS NOT NULL OR output_tokens IS NOT NULL)",
        since,
    )
    assert parse(shown["Unpriced models"]) == unpriced == 1
    # Cache savings from the generator's own rates (USD per Mtok): reads save input - read,
    # writes cost write - input.
    rates = {m[1]: m[5] for m in MODELS if m[5]}
    values = ", ".join(
        f"('{model}', {r[0]}, {r[1] if r[1] is not None else r[0]}, {r[2] if r[2] is not None else r[0]})"
        for model, r in rates.items()
    )
    (saved,) = sql(
        db,
        f"WITH r(model, r_in, r_cr, r_cw) AS (VALUES {values})"
        " SELECT sum(c.cache_read_tokens * (r.r_in - r.r_cr)"
        " - c.cache_write_tokens * (r.r_cw - r.r_in)) / 1e6 FROM llm_calls c JOIN r"
        " ON r.model = coalesce(c.response_model, c.request_model) WHERE c.started_at >= ?",
        since,
    )
    assert parse(shown["Saved by prompt caching"]) == pytest.approx(saved, abs=0.005)
    # The tables: by model first; tabs for provider, app, user and each property key (env, team).
    assert [t.label for t in at.tabs] == ["Model", "Provider", "App", "User", "env", "team"]
    by_provider = at.dataframe[1].value.set_index("provider")
    with duckdb.connect(str(db), read_only=True) as con:
        query = (
            "SELECT provider, count(*), sum(cost_usd)::DOUBLE FROM llm_calls WHERE started_at >= ? GROUP BY 1"
        )
        expected = con.execute(query, [since]).fetchall()
    for provider, calls, provider_cost in expected:
        assert by_provider.loc[provider, "calls"] == calls
        if provider_cost is None:
            assert by_provider["cost_usd"].isna()[provider]
        else:
            assert by_provider.loc[provider, "cost_usd"] == pytest.approx(provider_cost, abs=1e-6)


def test_latency_page_percentiles(store, monkeypatch):
    at = open_page(store, "latency", monkeypatch)
    db, since = store / "llmtap.duckdb", window(at)
    shown = metrics(at)
    p50, p95, ttft = sql(
        db,
        "SELECT quantile_cont(latency_ms, 0.5) FILTER (error IS NULL), quantile_cont(latency_ms, 0.95)"
        " FILTER (error IS NULL), quantile_cont(ttft_ms, 0.5) FILTER (error IS NULL AND stream)"
        " FROM llm_calls WHERE started_at >= ?",
        since,
    )
    assert parse(shown["Latency p50"]) == pytest.approx(p50, abs=5)
    assert parse(shown["Latency p95"]) == pytest.approx(p95, abs=5)
    assert parse(shown["Time to first token p50"]) == pytest.approx(ttft, abs=5 if ttft >= 1000 else 0.5)
    by_model = at.dataframe[0].value.set_index("model")
    (gpt_p50,) = sql(
        db,
        "SELECT quantile_cont(latency_ms, 0.5) FROM llm_calls WHERE started_at >= ? AND error IS NULL"
        " AND response_model = 'gpt-4o'",
        since,
    )
    assert by_model.loc["gpt-4o", "latency_p50_ms"] == pytest.approx(gpt_p50)
    assert len(at.get("vega_lite_chart")) == 3


def test_calls_page_lists_calls_and_shows_one_with_its_span_and_bodies(store, monkeypatch):
    at = open_page(store, "calls", monkeypatch)
    db, since = store / "llmtap.duckdb", window(at)
    (calls, errors) = sql(db, "SELECT count(*), count(error) FROM llm_calls WHERE started_at >= ?", since)
    assert at.caption[0].value.startswith(f"{calls:,} calls match")
    latest = at.dataframe[0].value
    assert len(latest) == 500 and latest["started_at"].is_monotonic_decreasing
    (call_id,) = sql(db, "SELECT call_id FROM spans")
    at.selectbox(key="call_id").set_value(call_id).run()
    assert not at.exception
    status, latency, tokens_in, tokens_out, cost = sql(
        db,
        "SELECT status_code, latency_ms, input_tokens, output_tokens, cost_usd::DOUBLE FROM llm_calls"
        " WHERE call_id = ?",
        call_id,
    )
    shown = metrics(at)
    assert shown["Status"] == str(status)
    assert parse(shown["Latency"]) == pytest.approx(latency, abs=5 if latency >= 1000 else 0.5)
    assert shown["Tokens in / out"] == f"{tokens_in:,} / {tokens_out:,}"
    assert parse(shown["Call cost"]) == pytest.approx(cost, abs=0.00005)
    span_json = [j.value for j in at.json]
    assert any(
        '"gen_ai.usage.input_tokens": 1234' in v or '"gen_ai.usage.input_tokens":1234' in v for v in span_json
    )
    (request_body,) = sql(db, "SELECT request_body FROM call_bodies WHERE call_id = ?", call_id)
    assert at.code[0].value == request_body
    at.toggle(key="errors_only").set_value(True).run()
    assert at.caption[0].value.startswith(f"{errors:,} calls match")


def test_budgets_page_status_alerts_and_blocked_calls(store, monkeypatch):
    at = open_page(store, "budgets", monkeypatch)
    db = store / "llmtap.duckdb"
    shown = metrics(at)
    assert parse(shown["Budgets"]) == 3
    assert parse(shown["Blocked calls"]) == 2
    assert [e.value for e in at.error] == [md("budget checkout-daily: limit reached")]
    status = at.dataframe[0].value
    day = "started_at >= date_trunc('day', now())"
    (total_today,) = sql(db, f"SELECT sum(cost_usd)::DOUBLE FROM llm_calls WHERE {day}")
    (checkout_today,) = sql(
        db, f"SELECT sum(cost_usd)::DOUBLE FROM llm_calls WHERE {day} AND app = 'checkout'"
    )
    (users,) = sql(
        db,
        "SELECT count(DISTINCT user_id) FROM llm_calls WHERE started_at >= date_trunc('month', now())"
        " AND user_id IS NOT NULL",
    )
    rows = status.set_index("scope")
    assert rows.loc["all calls", "spent_usd"] == pytest.approx(total_today, abs=1e-6)
    assert rows.loc["app 'checkout'", "spent_usd"] == pytest.approx(checkout_today, abs=1e-6)
    assert rows.loc["app 'checkout'", "used_share"] == pytest.approx(checkout_today / 5, abs=1e-9)
    assert (status["budget"] == "per-user").sum() == users
    (over,) = sql(
        db,
        "SELECT count(*) FROM (SELECT user_id FROM llm_calls WHERE started_at >= date_trunc('month', now())"
        " AND user_id IS NOT NULL GROUP BY 1 HAVING sum(cost_usd) >= 1)",
    )
    over += int(total_today >= 50) + int(checkout_today >= 5)
    assert parse(shown["Totals at their limit"]) == over


def test_budgets_page_without_a_config_explains_how_to_add_one(store, monkeypatch):
    at = open_page(store, "budgets", monkeypatch, config=False)
    assert "No budgets configured" in at.info[0].value
    assert parse(metrics(at)["Blocked calls"]) == 2


@pytest.mark.parametrize("page", PAGES)
def test_every_page_explains_an_empty_or_missing_store(tmp_path, monkeypatch, page):
    missing = open_page(tmp_path / "nothing", page, monkeypatch, config=False)
    assert "No llmtap store at" in missing.info[0].value
    empty = tmp_path / "empty"
    empty.mkdir()
    ensure_schema(empty / "llmtap.duckdb")
    at = open_page(empty, page, monkeypatch, config=False)
    assert at.info, f"{page} shows no empty state"
    assert not at.get("vega_lite_chart")


def test_a_new_call_in_the_store_shows_on_the_next_run(tmp_path, monkeypatch):
    """Results are cached on the store's state, so a call the proxy adds is not hidden by the cache."""
    data_dir = tmp_path / "live"
    data_dir.mkdir()
    calls, bodies = generate(200, 1, start=datetime.now(UTC) - timedelta(hours=2))
    write_store(data_dir / "llmtap.duckdb", calls, bodies)
    at = open_page(data_dir, "overview", monkeypatch, config=False)
    assert parse(metrics(at)["Calls"]) == 200
    with duckdb.connect(str(data_dir / "llmtap.duckdb")) as con:
        con.execute(
            "INSERT INTO llm_calls (call_id, started_at, provider, api, status_code) VALUES"
            " ('new', now(), 'openai', 'chat', 200)"
        )
    # A new session, as AppTest reruns only the page script under st.navigation; the results
    # cached by the first one (st.cache_data is per process) must not hide the new call.
    assert parse(metrics(open_page(data_dir, "overview", monkeypatch, config=False))["Calls"]) == 201


def at_least_seconds_left_in_the_minute(seconds: int) -> None:
    """Wait for the next minute when this one has fewer than ``seconds`` left, so calls
    stored now are still in the current minute when the page runs."""
    now = datetime.now(UTC)
    if now.second >= 60 - seconds:
        time.sleep(60 - now.second - now.microsecond / 1e6 + 0.1)


def test_spend_today_counts_the_current_minutes_calls(tmp_path, monkeypatch):
    """With live traffic, calls of the current minute count in "Spend today" (and the
    Budgets page's spend) as they do in the window's "Cost": the two agree."""
    data_dir = tmp_path / "live"
    data_dir.mkdir()
    ensure_schema(data_dir / "llmtap.duckdb")
    (data_dir / "llmtap.toml").write_text('[budgets."daily-total"]\nlimit_usd = 50\nperiod = "day"\n')
    at_least_seconds_left_in_the_minute(20)
    with duckdb.connect(str(data_dir / "llmtap.duckdb")) as con:
        for i in range(3):
            con.execute(
                "INSERT INTO llm_calls (call_id, started_at, provider, api, status_code, request_model,"
                " cost_usd) VALUES (?, now(), 'openai', 'chat', 200, 'gpt-4o', 1.25)",
                [f"now-{i}"],
            )
    at = open_page(data_dir, "overview", monkeypatch)
    shown = metrics(at)
    assert shown["Cost"] == "$3.75"
    assert shown["Spend today"] == shown["Spend this week"] == shown["Spend this month"] == "$3.75"
    at.switch_page("page_scripts/budgets.py").run()
    assert at.dataframe[0].value.set_index("budget").loc["daily-total", "spent_usd"] == pytest.approx(3.75)


def test_many_budget_alerts_make_one_banner_and_a_list(tmp_path, monkeypatch):
    """Eight alerts do not stack eight banners above the Overview's figures: one banner
    counts them and names the most severe; an expander lists them all."""
    data_dir = tmp_path / "alerts"
    data_dir.mkdir()
    calls, bodies = generate(200, 1, start=datetime.now(UTC) - timedelta(hours=2))
    write_store(data_dir / "llmtap.duckdb", calls, bodies)
    alerts = [
        {
            "budget": f"b{i}",
            "level": 0.8 + i / 100,
            "exceeded": i >= 5,
            "message": f"budget b{i}: at its limit",
        }
        for i in range(8)
    ]
    (data_dir / "budget_alerts.json").write_text(json.dumps({"updated_at": "x", "alerts": alerts}))
    for page in ("overview", "budgets"):
        at = open_page(data_dir, page, monkeypatch, config=False)
        assert len(at.error) == 1 and not at.warning, page
        assert at.error[0].value.startswith("8 budgets alerting, 3 exceeded")
        assert md("budget b7: at its limit") in at.error[0].value  # the most severe
        (expander,) = at.expander
        assert expander.label == "All 8 budget alerts"
        listed = expander.markdown[0].value.splitlines()
        assert listed[0] == f"- exceeded: {md('budget b7: at its limit')}"
        assert sorted(listed) == sorted(
            f"- {'exceeded' if i >= 5 else 'alert'}: {md(f'budget b{i}: at its limit')}" for i in range(8)
        )


def test_costs_page_takes_any_property_key(tmp_path, monkeypatch):
    """Property keys are the caller's choice: one named like a column of the breakdown
    ("calls"), or holding Altair's separators (":" and "."), still gets its tab and chart."""
    data_dir = tmp_path / "keys"
    data_dir.mkdir()
    calls, bodies = generate(100, 1, start=datetime.now(UTC) - timedelta(hours=2))
    calls = calls.with_columns(properties=pl.lit(json.dumps({"calls": "x", "a.b:N": "y", "api_calls": "z"})))
    write_store(data_dir / "llmtap.duckdb", calls, bodies)
    at = open_page(data_dir, "costs", monkeypatch, config=False)
    assert [t.label for t in at.tabs][4:] == [md("a.b:N"), "api" + md("_") + "calls", "calls"]
    tables = {frame.value.columns[0]: frame.value for frame in at.dataframe}
    assert tables["property:calls"]["calls"].sum() == 100  # not renamed onto the count column
    assert list(tables["api_calls"]["api_calls"]) == ["z"]
    assert len(at.get("vega_lite_chart")) == 7  # model, provider, app, user and the three keys
