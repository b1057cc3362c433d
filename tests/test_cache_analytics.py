"""What the response cache saved, beside what the waste analysis says a cache would still have
saved: on a hand-made store whose answers are worked out below, on generated data (checked
against the same data before any hit), through ``llmtap report --show cache`` and on the
dashboard's Costs page."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import duckdb
import polars as pl
import pytest

import analytics
from analytics.synthetic import generate, with_response_cache, write_store
from collector.storage.database import ensure_schema
from tests.test_ui_pages import metrics, open_page, parse

ROOT = Path(__file__).parent.parent
T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)

#: (call_id, minutes after T0, model, request body, cost, cache_hit, saved, error)
CALLS = [
    # A: fetched, served three times from the cache, then paid twice more (its entry expired).
    ("a0", 0, "gpt-4o", "A", "1", False, None, None),
    ("a1", 1, "gpt-4o", "A", "0", True, "1", None),
    ("a2", 2, "gpt-4o", "A", "0", True, "1", None),
    ("a3", 3, "gpt-4o", "A", "0", True, "1", None),
    ("a4", 90, "gpt-4o", "A", "1", False, None, None),
    ("a5", 91, "gpt-4o", "A", "1", False, None, None),
    # B: a request the cache does not cover (a filter), repeated once: a paid duplicate.
    ("b0", 5, "gpt-4o", "B", "2", None, None, None),
    ("b1", 6, "gpt-4o", "B", "2", None, None, None),
    # C: failed first (not an answer to repeat), then answered, then repeated and paid.
    ("c0", 10, "claude-haiku-4-5", "C", "0.5", False, None, "http 500"),
    ("c1", 11, "claude-haiku-4-5", "C", "3", False, None, None),
    ("c2", 12, "claude-haiku-4-5", "C", "3", False, None, None),
]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("cache-analytics") / "data"
    data.mkdir()
    db = data / "llmtap.duckdb"
    ensure_schema(db)
    with duckdb.connect(str(db)) as con:
        for call_id, minutes, model, body, cost, hit, saved, error in CALLS:
            con.execute(
                "INSERT INTO llm_calls (call_id, started_at, provider, api, host, path, status_code,"
                " request_model, response_model, input_tokens, output_tokens, cost_usd, app, error,"
                " cache_hit, cache_of, cache_saved_usd) VALUES (?, ?, 'openai', 'chat', 'api.example',"
                " '/v1/chat/completions', ?, ?, ?, 100, 10, ?, 'app', ?, ?, ?, ?)",
                [
                    call_id,
                    T0 + timedelta(minutes=minutes),
                    500 if error else 200,
                    model,
                    model,
                    Decimal(cost),
                    error,
                    hit,
                    call_id[0] + "0" if hit else None,
                    Decimal(saved) if saved else None,
                ],
            )
            con.execute(
                "INSERT INTO call_bodies VALUES (?, 'full', ?, NULL)",
                [call_id, json.dumps({"model": model, "input": body})],
            )
    return data


def test_saved_and_still_wasted_on_known_answers(store):
    calls = analytics.load(store)
    by_model = {
        row["model"]: row for row in analytics.response_cache(calls, by="model").iter_rows(named=True)
    }
    assert list(by_model) == ["gpt-4o", "claude-haiku-4-5"]  # most saved first
    assert by_model["gpt-4o"] == {
        "model": "gpt-4o",
        "calls": 8,
        "cache_lookups": 6,  # B's calls were not the cache's
        "cache_hits": 3,
        "cache_hit_rate": 0.5,
        "cache_saved_usd": Decimal("3"),
        "duplicate_calls": 3,  # a4, a5, b1; never the hits
        "duplicate_cost_usd": Decimal("4"),
    }
    assert by_model["claude-haiku-4-5"] == {
        "model": "claude-haiku-4-5",
        "calls": 3,
        "cache_lookups": 3,
        "cache_hits": 0,
        "cache_hit_rate": 0.0,
        "cache_saved_usd": None,
        "duplicate_calls": 1,  # c2: c0 failed before the first answer
        "duplicate_cost_usd": Decimal("3"),
    }
    # The waste view agrees: a hit is not waste.
    waste = analytics.waste(calls, by=[]).row(0, named=True)
    assert (waste["duplicate_calls"], waste["duplicate_cost_usd"]) == (4, Decimal("7"))
    (total,) = analytics.cache_summary(calls, by=[]).iter_rows(named=True)
    assert (total["cache_hits"], total["cache_saved_usd"], total["duplicate_cost_usd"]) == (
        3,
        Decimal("3"),
        Decimal("7"),
    )
    assert total["cache_hit_rate"] == pytest.approx(3 / 9)
    assert total["prompt_cache_saved_usd"] == 0


def test_report_show_cache(store):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "app.cli",
            "report",
            "--show",
            "cache",
            "--data-dir",
            str(store),
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    document = json.loads(out.stdout)
    assert [row["model"] for row in document["rows"]] == ["gpt-4o", "claude-haiku-4-5"]
    assert document["rows"][0]["cache_saved_usd"] == 3.0
    total = document["total"]
    assert (
        total["cache_hits"],
        total["cache_saved_usd"],
        total["duplicate_calls"],
        total["duplicate_cost_usd"],
    ) == (
        3,
        3.0,
        4,
        7.0,
    )
    table = subprocess.run(
        [sys.executable, "-m", "app.cli", "report", "--show", "cache", "--data-dir", str(store)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    ).stdout
    header = next(line for line in table.splitlines() if "cache hits" in line)
    assert "cache saved $" in header and "duplicate cost $" in header


def test_on_generated_data_hits_and_remaining_duplicates_add_up_to_the_duplicates_without_a_cache(tmp_path):
    calls, bodies = generate(30_000, 5, start=T0)
    served = with_response_cache(calls, bodies, hit_share=0.6)
    before_db, after_db = tmp_path / "before.duckdb", tmp_path / "after.duckdb"
    write_store(before_db, calls, bodies)
    write_store(after_db, served, bodies)
    hits = served.filter(pl.col("cache_hit"))
    assert hits.height > 50
    for by in ([], ["model"], ["app"]):
        before = {
            tuple(r[k] for k in by): r for r in analytics.waste(analytics.load(before_db), by=by).to_dicts()
        }
        after = {
            tuple(r[k] for k in by): r
            for r in analytics.response_cache(analytics.load(after_db), by=by).to_dicts()
        }
        assert before.keys() == after.keys()
        for key, row in after.items():
            # Known answers: every hit was a paid duplicate before; what it saved is what it cost.
            assert row["cache_hits"] + row["duplicate_calls"] == before[key]["duplicate_calls"], key
            saved, remaining = row["cache_saved_usd"] or 0, row["duplicate_cost_usd"] or 0
            assert saved + remaining == (before[key]["duplicate_cost_usd"] or 0), key
            assert row["cache_lookups"] == row["calls"]
    (total,) = analytics.response_cache(analytics.load(after_db), by=[]).iter_rows(named=True)
    assert total["cache_hits"] == hits.height
    assert total["cache_saved_usd"] == hits.get_column("cache_saved_usd").sum()
    # Spend counts a hit as nothing.
    spent = analytics.spend(analytics.load(after_db), by=[]).item(0, "cost_usd")
    assert spent == calls.get_column("cost_usd").sum() - total["cache_saved_usd"]


def test_costs_page_shows_saved_beside_still_paid(monkeypatch, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    now = datetime.now(UTC)
    calls, bodies = generate(20_000, 2, start=now - timedelta(days=2))
    served = with_response_cache(calls, bodies, hit_share=0.5)
    write_store(data / "llmtap.duckdb", served, bodies)
    at = open_page(data, "costs", monkeypatch, config=False)
    shown = metrics(at)
    since = at.session_state["llmtap_view"].since
    frame = analytics.load(data, since=since)
    (total,) = analytics.response_cache(frame, by=[]).iter_rows(named=True)
    assert total["cache_hits"] > 0
    assert parse(shown["Saved by the response cache"]) == pytest.approx(
        float(total["cache_saved_usd"]), abs=0.005
    )
    assert parse(shown["Repeated requests still paid for"]) == pytest.approx(
        float(total["duplicate_cost_usd"]), abs=0.005
    )
