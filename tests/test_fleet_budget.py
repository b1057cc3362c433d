"""Fleet budgets (``scope = "fleet"``) against a real PostgreSQL server and real proxies: spend
through two sidecars blocks the next call on a third; without the database a sidecar counts
its own spend and says so once; the PostgreSQL spend query agrees with DuckDB's."""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path

import openai
import pytest

from collector.budgets.limits import Budget
from collector.budgets.periods import period_window
from collector.settings.config import BudgetSpec, ConfigError, load_settings
from tests.pgserver import PgServer
from tests.proxyproc import ProxyProcess
from tests.test_budgets import openai_chat
from tests.test_fleet_ship import HOSTS, central, sdk, wait_for, write_config
from tests.upstream import FakeUpstream

# gpt-4o at the default usage of tests/test_budgets.py (4000 in, 1000 out): $0.02 a call.
FLEET_BUDGET = """
budget_refresh_s = 0.3

[budgets."team-daily"]
limit_usd = 0.05
period = "day"
action = "block"
scope = "fleet"
"""


def chat(proxy: ProxyProcess) -> None:
    sdk(proxy).chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}], extra_headers={"X-Llmtap-App": "team"}
    )


def test_fleet_budget_spent_through_two_sidecars_blocks_the_next_call_on_a_third(
    pg_server: PgServer, upstream: FakeUpstream, tmp_path: Path
) -> None:
    upstream.routes["/v1/chat/completions"] = openai_chat
    database = pg_server.create_database()
    url = pg_server.url(database)
    proxies = []
    try:
        for name in ("a", "b", "c"):
            config = write_config(tmp_path / f"{name}.toml", url, node=name, extra=FLEET_BUDGET)
            proxies.append(
                ProxyProcess(
                    tmp_path / name, dict.fromkeys(HOSTS, upstream.url), extra_args=["--config", str(config)]
                ).start()
            )
        a, b, c = proxies
        chat(a)
        chat(a)  # $0.04 on a
        assert wait_for(lambda: central(pg_server, database, "SELECT count(*) FROM llm_calls") == [(2,)])
        time.sleep(1.0)  # two refreshes
        chat(c)  # the fleet has spent $0.04 of $0.05: c still goes through ($0.06 now)
        assert wait_for(lambda: central(pg_server, database, "SELECT count(*) FROM llm_calls") == [(3,)])
        time.sleep(1.0)
        with pytest.raises(openai.RateLimitError) as blocked_b:
            chat(b)  # b never spent a cent; a and c did
        assert "blocked by budget team-daily" in str(blocked_b.value)
        assert "spent $0.06 of its $0.05 daily limit" in str(blocked_b.value)
        with pytest.raises(openai.RateLimitError):
            chat(c)
        for proxy in proxies:
            assert "budget team-daily" in proxy.log.read_text()
    finally:
        for proxy in proxies:
            assert proxy.stop() == 0


def test_fleet_budget_without_the_database_counts_its_own_spend(
    pg_server: PgServer, upstream: FakeUpstream, tmp_path: Path
) -> None:
    upstream.routes["/v1/chat/completions"] = openai_chat
    database = pg_server.create_database()
    unreachable = pg_server.url(database).replace(f":{pg_server.port}/", ":1/")
    config = write_config(tmp_path / "c.toml", unreachable, node="alone", extra=FLEET_BUDGET)
    proxy = ProxyProcess(
        tmp_path / "data", dict.fromkeys(HOSTS, upstream.url), extra_args=["--config", str(config)]
    ).start()
    try:
        chat(proxy)
        chat(proxy)
        chat(proxy)  # $0.06 of its own
        with pytest.raises(openai.RateLimitError):
            chat(proxy)
        time.sleep(1.0)
    finally:
        assert proxy.stop() == 0
    log = proxy.log.read_text()
    assert log.count("fleet budgets: cannot read the fleet's spend") == 1, log
    assert pg_server.password not in log


def test_fleet_scope_needs_a_fleet(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[budgets.x]\nlimit_usd = 1\nperiod = "day"\nscope = "fleet"\n')
    with pytest.raises(ConfigError, match=r'budgets."x".scope = "fleet" needs a \[fleet\] table'):
        load_settings(config_file=str(config))


def test_the_fleet_spend_query_leaves_out_this_node_and_reads_properties(pg_server: PgServer) -> None:
    """Per property, with a property filter: the PostgreSQL query sums what DuckDB's would."""
    import psycopg

    from collector.fleet import schema

    database = pg_server.create_database()
    now = time.time()
    window = period_window("day", now)
    spec = BudgetSpec(
        name="p", limit_usd=Decimal(1), period="day", per="property:team", properties={"env": "prod"}
    )
    budget = Budget(spec, now)
    started = window.start + 10
    rows = [
        ("1", "a", '{"team": "x", "env": "prod"}', "0.5"),
        ("2", "b", '{"team": "x", "env": "prod"}', "0.25"),
        ("3", "b", '{"team": "y", "env": "prod"}', "0.125"),
        ("4", "b", '{"team": "x", "env": "dev"}', "1"),
        ("5", "b", '{"env": "prod"}', "1"),
    ]
    with psycopg.connect(pg_server.url(database), autocommit=True) as conn:
        schema.ensure_schema(conn)
        for call_id, node, properties, cost in rows:
            conn.execute(
                "INSERT INTO llm_calls (call_id, node, started_at, properties, cost_usd) "
                "VALUES (%s, %s, to_timestamp(%s), %s, %s)",
                [call_id, node, started, properties, cost],
            )
        sql, params = budget.scope.spend_query(window, "postgres", other_than="a")
        found = {key: spent for key, spent in conn.execute(sql, params).fetchall() if key is not None}
        assert found == {"x": Decimal("0.25"), "y": Decimal("0.125")}
