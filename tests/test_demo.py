"""``llmtap demo``: the real command drives the official SDKs through a real proxy into a real
store; every kind of row the dashboard pages need must be there, checked with DuckDB SQL."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from tests.demo_data import DEMO_CALLS, ROOT


def scalar(data_dir: Path, sql: str) -> object:
    con = duckdb.connect(str(data_dir / "llmtap.duckdb"), read_only=True)
    try:
        return con.execute(sql).fetchone()[0]
    finally:
        con.close()


def test_every_planned_call_and_its_retries_are_stored(demo_data: Path) -> None:
    assert (
        scalar(
            demo_data,
            "SELECT count(*) FROM llm_calls WHERE routing_arm IS DISTINCT FROM 'shadow' "
            "AND routing_arm IS DISTINCT FROM 'judge'",
        )
        >= DEMO_CALLS
    )


@pytest.mark.parametrize(
    ("what", "sql", "at_least"),
    [
        ("apps", "SELECT count(DISTINCT app) FROM llm_calls", 4),
        ("users", "SELECT count(DISTINCT user_id) FROM llm_calls", 10),
        ("sessions", "SELECT count(DISTINCT session_id) FROM llm_calls", 10),
        ("properties", "SELECT count(*) FROM llm_calls WHERE properties IS NOT NULL", 100),
        ("providers", "SELECT count(DISTINCT provider) FROM llm_calls", 2),
        ("apis", "SELECT count(DISTINCT api) FROM llm_calls", 4),
        ("models", "SELECT count(DISTINCT request_model) FROM llm_calls", 7),
        (
            "providers with streams that have exact tokens",
            "SELECT count(DISTINCT provider) FROM llm_calls WHERE stream AND output_tokens > 0 "
            "AND usage_source = 'provider' AND ttft_ms < latency_ms",
            2,
        ),
        (
            "providers with cache reads",
            "SELECT count(DISTINCT provider) FROM llm_calls WHERE cache_read_tokens > 0",
            2,
        ),
        ("calls with cache writes", "SELECT count(*) FROM llm_calls WHERE cache_write_tokens > 0", 1),
        ("calls with reasoning", "SELECT count(*) FROM llm_calls WHERE reasoning_tokens > 0", 5),
        (
            "truncated answers",
            "SELECT count(*) FROM llm_calls WHERE list_contains(finish_reasons, 'length') "
            "OR list_contains(finish_reasons, 'max_tokens')",
            1,
        ),
        (
            "provider errors",
            "SELECT count(*) FROM llm_calls WHERE status_code IN (429, 500) "
            "AND error NOT LIKE '%blocked by budget%'",
            2,
        ),
        (
            "calls blocked by the budget",
            "SELECT count(*) FROM llm_calls WHERE status_code = 429 "
            "AND error LIKE '%blocked by budget marketing-writer-daily%'",
            1,
        ),
        (
            "calls downgraded by the budget",
            "SELECT count(*) FROM llm_calls WHERE routed_from_model = 'gpt-4o' "
            "AND request_model = 'gpt-4o-mini' AND routing_arm IS NULL",
            1,
        ),
        (
            "shadow copies compared",
            "SELECT count(*) FROM llm_calls WHERE routing_arm = 'shadow' AND agreement IS NOT NULL",
            3,
        ),
    ],
)
def test_the_demo_records_every_kind_of_row(demo_data: Path, what: str, sql: str, at_least: int) -> None:
    assert scalar(demo_data, sql) >= at_least, what


def test_answered_calls_are_priced_and_costs_add_up(demo_data: Path) -> None:
    assert (
        scalar(
            demo_data, "SELECT count(*) FROM llm_calls WHERE usage_source = 'provider' AND cost_usd IS NULL"
        )
        == 0
    )
    assert scalar(demo_data, "SELECT sum(cost_usd) FROM llm_calls") > 0
    assert (
        scalar(
            demo_data,
            "SELECT count(*) FROM llm_calls WHERE output_cost_usd IS NOT NULL "
            "AND cost_usd <> input_cost_usd + output_cost_usd",
        )
        == 0
    )


def test_budget_alerts_are_written_for_the_dashboard(demo_data: Path) -> None:
    alerts = json.loads((demo_data / "budget_alerts.json").read_text())["alerts"]
    assert {"marketing-writer-daily", "all-apps-daily"} <= {a["budget"] for a in alerts}
    assert any(a["exceeded"] for a in alerts)


def test_no_api_key_is_stored(demo_data: Path) -> None:
    for table in ("llm_calls", "call_bodies"):
        found = scalar(demo_data, f"SELECT count(*) FROM {table} t WHERE t::VARCHAR LIKE '%not-a-real-key%'")
        assert found == 0, table


def test_demo_refuses_a_directory_that_already_holds_a_store(demo_data: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "demo", "--data-dir", str(demo_data), "--no-ui"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "already holds an llmtap store" in done.stderr
