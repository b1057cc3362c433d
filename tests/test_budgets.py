"""Budgets enforced at the proxy: block, downgrade and alert, through the real proxy and the
vendors' own SDKs, surviving restarts; plus unit tests of periods, Retry-After and formats."""

from __future__ import annotations

import json
import logging
import os
import re
import ssl
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from mitmproxy import http
from mitmproxy.test import tflow

from collector.budgets.limits import Budget, Tally, retry_after, stored_spend
from collector.budgets.periods import period_window
from collector.providers import ProviderRegistry
from collector.proxy.addons.budget_guard import Budgets, block_response
from collector.proxy.call import CAPTURE_KEY, REWRITE_KEY, Capture
from collector.proxy.model_rewrite import rewrite_model
from collector.settings.config import BudgetSpec, ConfigError, load_settings
from collector.storage.schema import CallMetadata
from collector.trust.failopen import failures
from tests.conftest import running_proxy
from tests.proxyproc import ProxyProcess, free_port
from tests.upstream import FakeUpstream, Received, Reply

OPENAI_CHAT = "https://api.openai.com/v1/chat/completions"
ANTHROPIC_MESSAGES = "https://api.anthropic.com/v1/messages"
# gpt-4o costs $2.50 / $10 per million input / output tokens: by default a call is $0.02.
DEFAULT_USAGE = "in=4000 out=1000"


def _usage_hint(body: dict) -> tuple[int, int]:
    """The usage a test asks the fake upstream for, in the prompt as "in=N out=M"."""
    text = json.dumps(body.get("messages") or [])
    found = re.search(r"in=(\d+) out=(\d+)", text) or re.search(r"in=(\d+) out=(\d+)", DEFAULT_USAGE)
    return int(found.group(1)), int(found.group(2))


def openai_chat(received: Received) -> Reply:
    """An OpenAI chat completion for the requested model, with the usage the prompt asks for."""
    body = json.loads(received.body)
    prompt, completion = _usage_hint(body)
    return Reply.json(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1700000000,
            "model": body["model"],
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
        }
    )


def anthropic_message(received: Received) -> Reply:
    body = json.loads(received.body)
    return Reply.json(
        {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": [{"type": "text", "text": "ok"}],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": 4000, "output_tokens": 1000},
        }
    )


@pytest.fixture
def routes(upstream: FakeUpstream) -> FakeUpstream:
    upstream.routes["/v1/chat/completions"] = openai_chat
    upstream.routes["/v1/messages"] = anthropic_message
    return upstream


def config_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "llmtap.toml"
    path.write_text(textwrap.dedent(text))
    return path


def start_proxy(tmp_path: Path, upstream: FakeUpstream, config: Path) -> ProxyProcess:
    hosts = ("api.openai.com", "api.anthropic.com")
    return ProxyProcess(
        tmp_path / "data", dict.fromkeys(hosts, upstream.url), extra_args=["--config", str(config)]
    ).start()


def post(proxy: ProxyProcess, url: str, body: dict, headers: dict[str, str] | None = None) -> httpx.Response:
    ctx = ssl.create_default_context(cafile=str(proxy.data_dir / "ca-bundle.pem"))
    with httpx.Client(proxy=proxy.url, verify=ctx) as client:
        return client.post(url, json=body, headers=headers or {})


def chat(
    proxy: ProxyProcess, usage: str = DEFAULT_USAGE, model: str = "gpt-4o", **headers: str
) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": usage}]}
    return post(proxy, OPENAI_CHAT, body, {f"x-llmtap-{k.replace('_', '-')}": v for k, v in headers.items()})


OPENAI_SDK = textwrap.dedent(
    """
    import json, sys, openai
    app, n = sys.argv[1], int(sys.argv[2])
    # default retries: a budget block must not be retried (x-should-retry: false)
    client = openai.OpenAI(api_key="sk-test-not-real", default_headers={"X-Llmtap-App": app})
    out = []
    for _ in range(n):
        try:
            reply = client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
            out.append({"ok": reply.model})
        except openai.RateLimitError as exc:
            out.append({"error": "RateLimitError", "message": str(exc),
                        "retry_after": exc.response.headers.get("retry-after")})
    print(json.dumps(out))
    """
)

ANTHROPIC_SDK = textwrap.dedent(
    """
    import json, anthropic
    client = anthropic.Anthropic(api_key="sk-ant-test-not-real")
    try:
        client.messages.create(model="claude-3-5-haiku-20241022", max_tokens=10,
                               messages=[{"role": "user", "content": "hi"}])
        print(json.dumps({"ok": True}))
    except anthropic.RateLimitError as exc:
        print(json.dumps({"error": "RateLimitError", "message": str(exc),
                          "retry_after": exc.response.headers.get("retry-after")}))
    """
)


def run_sdk(proxy: ProxyProcess, script: str, *args: str) -> object:
    clean = {
        k: v
        for k, v in os.environ.items()
        if "proxy" not in k.lower() and not k.startswith(("OPENAI", "ANTHROPIC"))
    }
    out = subprocess.run(
        [sys.executable, "-c", script, *args],
        env={**clean, **proxy.env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def wait_until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def seconds_to_midnight_utc() -> float:
    return period_window("day", time.time()).end - time.time()


# -- through the real proxy ------------------------------------------------------------


def test_block_raises_rate_limit_error_in_the_sdk_and_survives_a_restart(tmp_path, routes):
    config = config_file(
        tmp_path,
        """
        [budgets.checkout-daily]
        app = "checkout"
        limit_usd = 0.05
        period = "day"
        action = "block"
        """,
    )
    proxy = start_proxy(tmp_path, routes, config)
    # $0.02 a call: $0.02, $0.04, $0.06 -- the fourth call finds the limit reached
    outcomes = run_sdk(proxy, OPENAI_SDK, "checkout", "4")
    assert [o.get("ok") for o in outcomes[:3]] == ["gpt-4o"] * 3
    blocked = outcomes[3]
    assert blocked["error"] == "RateLimitError"
    assert "blocked by budget checkout-daily" in blocked["message"]
    assert "app 'checkout' spent $0.06 of its $0.05 daily limit" in blocked["message"]
    assert abs(int(blocked["retry_after"]) - seconds_to_midnight_utc()) < 10
    assert run_sdk(proxy, OPENAI_SDK, "search", "1") == [{"ok": "gpt-4o"}]  # other apps are not covered
    assert len(routes.received) == 4  # the blocked call never went upstream

    rows = proxy.rows("SELECT * FROM llm_calls ORDER BY started_at", wait_for=5)
    assert [r["status_code"] for r in rows] == [200, 200, 200, 429, 200]  # the SDK did not retry
    row = rows[3]
    assert row["app"] == "checkout" and row["request_model"] == "gpt-4o" and row["cost_usd"] is None
    assert "blocked by budget checkout-daily" in row["error"]
    assert proxy.stop() == 0
    log = proxy.log.read_text()
    assert "budget checkout-daily: app 'checkout' spent $0.04 of its $0.05 daily limit (80% alert)" in log
    assert "limit reached; its calls are blocked until" in log

    restarted = start_proxy(tmp_path, routes, config)
    try:
        (again,) = run_sdk(restarted, OPENAI_SDK, "checkout", "1")
        assert again["error"] == "RateLimitError" and "blocked by budget checkout-daily" in again["message"]
        assert len(routes.received) == 4
    finally:
        assert restarted.stop() == 0
    # the alerts were not raised again after the restart
    assert "limit reached" not in restarted.log.read_text()


def test_block_survives_kill_9(tmp_path, routes):
    """Calls a killed proxy left in its spool still count after the restart."""
    config = config_file(
        tmp_path,
        """
        [budgets.tiny]
        limit_usd = 0.01
        period = "day"
        action = "block"
        """,
    )
    proxy = start_proxy(tmp_path, routes, config)
    assert chat(proxy).status_code == 200
    assert chat(proxy).status_code == 429
    proxy.kill9()
    restarted = start_proxy(tmp_path, routes, config)
    try:
        resp = chat(restarted)
        assert resp.status_code == 429 and "blocked by budget tiny" in resp.json()["error"]["message"]
        assert abs(int(resp.headers["retry-after"]) - seconds_to_midnight_utc()) < 10
    finally:
        assert restarted.stop() == 0


def test_downgrade_rewrites_the_model_and_survives_a_restart(tmp_path, routes):
    config = config_file(
        tmp_path,
        """
        [budgets.gpt4o-monthly]
        limit_usd = 0.03
        period = "month"
        action = "downgrade"
        downgrade_to = {"gpt-4o" = "gpt-4o-mini"}
        """,
    )
    proxy = start_proxy(tmp_path, routes, config)
    assert [chat(proxy).json()["model"] for _ in range(2)] == ["gpt-4o", "gpt-4o"]  # $0.04 now
    assert chat(proxy).json()["model"] == "gpt-4o-mini"
    assert chat(proxy, model="gpt-4o-mini").status_code == 200  # already cheap: unchanged
    sent = [json.loads(r.body)["model"] for r in routes.received]
    assert sent == ["gpt-4o", "gpt-4o", "gpt-4o-mini", "gpt-4o-mini"]
    rows = proxy.rows("SELECT * FROM llm_calls ORDER BY started_at", wait_for=4)
    assert [(r["request_model"], r["routed_from_model"]) for r in rows] == [
        ("gpt-4o", None),
        ("gpt-4o", None),
        ("gpt-4o-mini", "gpt-4o"),
        ("gpt-4o-mini", None),
    ]
    assert rows[2]["cost_usd"] == Decimal("0.0012")  # priced as the model that answered
    (stored,) = proxy.rows(
        f"SELECT request_body FROM call_bodies WHERE call_id = '{rows[2]['call_id']}'", wait_for=1
    )
    assert json.loads(stored["request_body"])["model"] == "gpt-4o"  # the client's own request
    assert proxy.stop() == 0
    assert "its calls go to a cheaper model until" in proxy.log.read_text()

    restarted = start_proxy(tmp_path, routes, config)
    try:
        assert chat(restarted).json()["model"] == "gpt-4o-mini"
        assert json.loads(routes.received[-1].body)["model"] == "gpt-4o-mini"
    finally:
        assert restarted.stop() == 0


def test_alerts_log_post_a_webhook_and_persist_their_state(tmp_path, routes):
    with FakeUpstream() as hook:
        hook.routes["/hook"] = Reply.json({"ok": True})
        config = config_file(
            tmp_path,
            f"""
            [budgets.team-alerts]
            limit_usd = 0.10
            period = "day"
            webhook = "{hook.url}/hook"

            [budgets.broken-hook]
            limit_usd = 0.05
            period = "day"
            alerts = []
            webhook = "http://127.0.0.1:{free_port()}/secret-token"
            """,
        )
        proxy = start_proxy(tmp_path, routes, config)
        # gpt-4o output is $10 per million: out=8200 is $0.082
        for usage in ("in=0 out=8200", "in=0 out=900", "in=0 out=500", "in=0 out=500", "in=0 out=100"):
            assert chat(proxy, usage).status_code == 200  # action alert never stops calls
        assert wait_until(lambda: len(hook.received) == 4)
        posts = [json.loads(r.body) for r in hook.received]
        assert [p["level"] for p in posts] == [0.8, 0.9, 0.95, 1.0]  # each level once
        assert all(r.headers["content-type"] == "application/json" for r in hook.received)
        last = posts[-1]
        assert last["event"] == "llmtap.budget_alert" and last["budget"] == "team-alerts"
        assert last["exceeded"] is True and last["spent_usd"] == pytest.approx(0.101)
        assert last["text"].startswith("budget team-alerts: all calls spent $0.101 of its $0.10 daily limit")
        assert wait_until(lambda: "webhook to 127.0.0.1 failed" in proxy.log.read_text())

        state_file = proxy.data_dir / "budget_alerts.json"
        state = json.loads(state_file.read_text())
        by_budget = {a["budget"]: a for a in state["alerts"]}
        assert by_budget["team-alerts"]["level"] == 1.0 and by_budget["team-alerts"]["action"] == "alert"
        window = period_window("day", time.time())
        assert by_budget["team-alerts"]["period_end"] == datetime.fromtimestamp(window.end, UTC).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        )
        assert by_budget["broken-hook"]["exceeded"] is True
        assert proxy.stop() == 0
        log = proxy.log.read_text()
        assert "(80% alert)" in log and "(90% alert)" in log and "(95% alert)" in log
        assert "secret-token" not in log  # webhook URLs can hold secrets: only the host is logged

        restarted = start_proxy(tmp_path, routes, config)
        try:
            assert chat(restarted, "in=0 out=100").status_code == 200
            time.sleep(1)
            assert len(hook.received) == 4  # alerts already raised this period are not repeated
        finally:
            assert restarted.stop() == 0


def test_per_user_and_per_property_scopes(tmp_path, routes):
    config = config_file(
        tmp_path,
        """
        [budgets.per-user]
        per = "user"
        limit_usd = 0.03
        period = "day"
        action = "block"

        [budgets.per-team]
        per = "property:Team"
        properties = {env = "prod"}
        limit_usd = 0.03
        period = "day"
        action = "block"
        """,
    )
    proxy = start_proxy(tmp_path, routes, config)
    assert [chat(proxy, user="alice").status_code for _ in range(3)] == [200, 200, 429]
    blocked = chat(proxy, user="alice").json()["error"]["message"]
    assert blocked.startswith("blocked by budget per-user: user 'alice' spent $0.04 of its $0.03 daily limit")
    assert chat(proxy, user="bob").status_code == 200

    search = {"property_team": "search", "property_env": "prod"}
    assert [chat(proxy, **search).status_code for _ in range(3)] == [200, 200, 429]
    message = chat(proxy, **search).json()["error"]["message"]
    assert "blocked by budget per-team: property env='prod', property team='search'" in message
    assert chat(proxy, property_team="ads", property_env="prod").status_code == 200
    assert chat(proxy, property_team="search", property_env="dev").status_code == 200  # not covered
    assert chat(proxy).status_code == 200  # no user, no team: neither budget covers it
    assert proxy.stop() == 0

    restarted = start_proxy(tmp_path, routes, config)
    try:
        assert chat(restarted, user="alice").status_code == 429
        assert chat(restarted, user="bob").status_code == 200
        assert chat(restarted, **search).status_code == 429
        assert chat(restarted, property_team="ads", property_env="prod").status_code == 200
    finally:
        assert restarted.stop() == 0


def test_anthropic_calls_get_anthropic_format_429(tmp_path, routes):
    config = config_file(
        tmp_path,
        """
        [budgets.everything]
        limit_usd = 0.01
        period = "day"
        action = "block"
        """,
    )
    with running_proxy(tmp_path / "data", routes, extra_args=["--config", str(config)]) as proxy:
        body = {"model": "claude-3-5-haiku-20241022", "max_tokens": 10, "messages": []}
        assert post(proxy, ANTHROPIC_MESSAGES, body).status_code == 200  # $0.0072
        assert post(proxy, ANTHROPIC_MESSAGES, body).status_code == 200  # $0.0144: over
        resp = post(proxy, ANTHROPIC_MESSAGES, body)
        assert resp.status_code == 429 and int(resp.headers["retry-after"]) > 0
        error = resp.json()
        assert error["type"] == "error" and error["error"]["type"] == "rate_limit_error"
        assert error["error"]["message"].startswith("blocked by budget everything: all calls spent $0.0144")
        outcome = run_sdk(proxy, ANTHROPIC_SDK)
        assert outcome["error"] == "RateLimitError" and "blocked by budget everything" in outcome["message"]
        assert outcome["retry_after"] is not None
        openai_style = chat(proxy).json()["error"]  # the same budget, in OpenAI's format for OpenAI
        assert openai_style["type"] == "rate_limit_exceeded" and openai_style["code"] == "budget_exceeded"
        assert len(routes.received) == 2
        rows = proxy.rows("SELECT * FROM llm_calls ORDER BY started_at", wait_for=5)
        assert [r["status_code"] for r in rows] == [200, 200, 429, 429, 429]
        assert all("blocked by budget everything" in r["error"] for r in rows[2:])


# -- config -----------------------------------------------------------------------------

BASE = '[budgets.b]\nlimit_usd = 5\nperiod = "day"\n'


def test_budget_config_is_parsed(tmp_path):
    config = config_file(
        tmp_path,
        """
        [budgets.daily]
        limit_usd = 5
        period = "day"

        [budgets.team]
        limit_usd = 0.5
        period = "month"
        action = "downgrade"
        downgrade_to = "gpt-4o-mini"
        app = "checkout"
        properties = {Env = "prod"}
        per = "property:Team"
        alerts = [0.95, 0.5]
        webhook = "https://hooks.example.com/x"
        """,
    )
    daily, team = load_settings(data_dir=str(tmp_path), config_file=str(config)).budgets
    assert daily == BudgetSpec(name="daily", limit_usd=Decimal("5"), period="day")
    assert daily.action == "alert" and daily.alerts == (0.8, 0.9, 0.95)
    assert (team.limit_usd, team.period, team.action, team.downgrade_to) == (
        Decimal("0.5"),
        "month",
        "downgrade",
        "gpt-4o-mini",
    )
    assert (team.app, team.properties, team.per, team.alerts) == (
        "checkout",
        {"env": "prod"},
        "property:team",
        (0.5, 0.95),
    )


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('budgets = "lots"', 'budgets must be a table of [budgets."NAME"] tables'),
        ("[budgets]\nb = 5", 'budgets."b" must be a table like {limit_usd = 5, period = "day"}'),
        (
            '[budgets.b]\nperiod = "day"',
            'budgets."b".limit_usd must be a positive number of US dollars, got None',
        ),
        (
            '[budgets.b]\nlimit_usd = "5"\nperiod = "day"',
            "limit_usd must be a positive number of US dollars, got '5'",
        ),
        (
            '[budgets.b]\nlimit_usd = 0\nperiod = "day"',
            "limit_usd must be a positive number of US dollars, got 0",
        ),
        ("[budgets.b]\nlimit_usd = 5", 'budgets."b".period must be one of hour, day, month, got None'),
        ('[budgets.b]\nlimit_usd = 5\nperiod = "week"', "period must be one of hour, day, month, got 'week'"),
        (
            BASE + 'action = "panic"',
            "budgets.\"b\".action must be one of alert, downgrade, block, got 'panic'",
        ),
        (BASE + "limit = 5", 'budgets."b": unknown keys limit (allowed: limit_usd, period, action'),
        (BASE + "alerts = 0.8", 'budgets."b".alerts must be a list of fractions of the limit'),
        (BASE + "alerts = [80]", "each alert is a fraction of the limit between 0 and 1 (0.8 = 80%"),
        (BASE + 'per = "team"', 'budgets."b".per must be "app", "user" or "property:NAME", got \'team\''),
        (BASE + 'per = "property:"', 'per must be "app", "user" or "property:NAME"'),
        (BASE + 'per = "property:a b"', "budgets.\"b\".per: 'a b' is not a property name"),
        (BASE + 'properties = {"x\\"y" = "1"}', "properties: 'x\"y' is not a property name"),
        (BASE + "app = 3", 'budgets."b".app must be a non-empty string, got 3'),
        (BASE + "properties = {team = 1}", 'budgets."b".properties must be a table of NAME = "value"'),
        (BASE + 'action = "downgrade"', 'budgets."b".downgrade_to is required with action = "downgrade"'),
        (BASE + 'action = "block"\ndowngrade_to = "m"', 'downgrade_to applies only to action = "downgrade"'),
        (BASE + 'webhook = "hooks.example.com"', 'budgets."b".webhook must be an http:// or https:// URL'),
    ],
)
def test_bad_budget_config_is_a_clear_error(tmp_path, toml, message):
    config = tmp_path / "bad.toml"
    config.write_text(toml)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_settings(data_dir=str(tmp_path), config_file=str(config))


def test_bad_budget_config_stops_the_proxy_with_a_message(tmp_path):
    config = config_file(tmp_path, '[budgets.b]\nlimit_usd = -1\nperiod = "day"\n')
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "proxy", "--data-dir", str(tmp_path), "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert 'budgets."b".limit_usd must be a positive number of US dollars, got -1' in result.stderr
    assert "Traceback" not in result.stderr


# -- units ------------------------------------------------------------------------------


def ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


@pytest.mark.parametrize(
    ("period", "at", "start", "end"),
    [
        ("hour", "2025-03-04T05:59:59.9+00:00", "2025-03-04T05:00:00+00:00", "2025-03-04T06:00:00+00:00"),
        ("hour", "2025-12-31T23:30:00+00:00", "2025-12-31T23:00:00+00:00", "2026-01-01T00:00:00+00:00"),
        ("day", "2025-03-04T00:00:00+00:00", "2025-03-04T00:00:00+00:00", "2025-03-05T00:00:00+00:00"),
        # periods are UTC whatever the offset the time is given in
        ("day", "2025-03-04T23:30:00-02:00", "2025-03-05T00:00:00+00:00", "2025-03-06T00:00:00+00:00"),
        ("month", "2024-02-29T12:00:00+00:00", "2024-02-01T00:00:00+00:00", "2024-03-01T00:00:00+00:00"),
        ("month", "2025-12-15T00:00:00+00:00", "2025-12-01T00:00:00+00:00", "2026-01-01T00:00:00+00:00"),
        ("month", "2025-01-31T23:59:59+00:00", "2025-01-01T00:00:00+00:00", "2025-02-01T00:00:00+00:00"),
    ],
)
def test_period_windows_are_utc(period, at, start, end):
    assert period_window(period, ts(at)) == (ts(start), ts(end))


def test_retry_after_counts_whole_seconds_to_the_reset():
    window = period_window("day", ts("2025-03-04T12:00:00+00:00"))
    assert retry_after(window, ts("2025-03-04T00:00:00+00:00")) == 86400
    assert retry_after(window, ts("2025-03-04T23:00:00+00:00")) == 3600
    assert retry_after(window, ts("2025-03-04T23:59:58.2+00:00")) == 2  # rounded up
    assert retry_after(window, ts("2025-03-04T23:59:59.9999+00:00")) == 1  # never 0


def test_tally_levels_and_rollover():
    now = ts("2025-03-04T23:00:00+00:00")
    tally = Tally("day", Decimal("1"), (0.8, 0.9), now)
    assert tally.add("", Decimal("0.5"), now, now) is None
    assert tally.add("", Decimal("0.45"), now, now) == Decimal("0.9")  # 0.8 passed too: one alert
    assert not tally.over("", now)
    assert tally.add("", Decimal("0.05"), now, now) == Decimal("1")
    assert tally.over("", now) and not tally.over("other", now)
    assert tally.add("", Decimal("1"), now, now) is None  # each level once a period
    tomorrow = ts("2025-03-05T00:00:01+00:00")
    assert not tally.over("", tomorrow)  # a new period starts from zero
    assert tally.add("", Decimal("5"), now, tomorrow) is None  # a call started yesterday: not today's
    assert tally.add("", Decimal("0.8"), tomorrow, tomorrow) == Decimal("0.8")


def test_budget_spend_is_read_from_the_store(tmp_path):
    """The start-up query: the period's spend per total, only the covered calls."""
    import duckdb

    from collector.storage import schema

    db = tmp_path / "llmtap.duckdb"
    now = time.time()
    today = datetime.fromtimestamp(now, UTC).isoformat()
    long_ago = "2001-01-01T00:00:00+00:00"
    with duckdb.connect(str(db)) as con:
        for statement in schema.create_statements():
            con.execute(statement)
        for started, app, user, props, cost in [
            (today, "a", "u1", '{"team": "x"}', 0.5),
            (today, "a", "u2", None, 0.25),
            (today, "b", "u1", '{"team": "x"}', 1.0),
            (today, "a", "u1", None, None),
            (long_ago, "a", "u1", '{"team": "x"}', 100.0),
        ]:
            con.execute(
                "INSERT INTO llm_calls (started_at, app, user_id, properties, cost_usd) "
                "VALUES (?, ?, ?, ?, ?)",
                [started, app, user, props, cost],
            )
    specs = [
        BudgetSpec(name="all", limit_usd=Decimal(1), period="day"),
        BudgetSpec(name="app-a-users", limit_usd=Decimal(1), period="day", app="a", per="user"),
        BudgetSpec(name="teams", limit_usd=Decimal(1), period="month", per="property:team"),
    ]
    budgets = [Budget(spec, now) for spec in specs]
    found = {(b.name, key): spent for b, key, spent in stored_spend(db, budgets, now)}
    assert found == {
        ("all", ""): Decimal("1.75"),
        ("app-a-users", "u1"): Decimal("0.5"),
        ("app-a-users", "u2"): Decimal("0.25"),
        ("teams", "x"): Decimal("1.5"),
    }


def test_unreadable_store_starts_budgets_from_zero(tmp_path, caplog):
    budget = Budget(BudgetSpec(name="b", limit_usd=Decimal(1), period="day"), time.time())
    with caplog.at_level(logging.ERROR, logger="llmtap.budgets"):
        assert stored_spend(tmp_path / "missing.duckdb", [budget], time.time()) == []
    assert "budgets start from zero" in caplog.text


def capture_for(host: str, path: str, body: dict | None = None) -> Capture:
    endpoint = ProviderRegistry().match(host, path)
    assert endpoint is not None
    capture = Capture(endpoint, "POST", host, path, time.time(), None, [], True)
    capture.parsed_request = endpoint.provider.read_request(endpoint.api, path, body)
    return capture


def over_budget(action: str = "block", **kw) -> Budget:
    budget = Budget(
        BudgetSpec(name="cap", limit_usd=Decimal("0.05"), period="day", action=action, **kw), time.time()
    )
    budget.tally.seed("", Decimal("0.06"))
    return budget


@pytest.mark.parametrize(
    ("host", "path", "status_key"),
    [
        ("generativelanguage.googleapis.com", "/v1beta/models/gemini-2.0-flash:generateContent", "status"),
        (
            "us-central1-aiplatform.googleapis.com",
            "/v1/publishers/google/models/gemini-2.0-flash:generateContent",
            "status",
        ),
    ],
)
def test_google_429_format(host, path, status_key):
    response = block_response(capture_for(host, path), over_budget(), "", time.time())
    error = json.loads(response.content)["error"]
    assert (error["code"], error[status_key]) == (429, "RESOURCE_EXHAUSTED")
    assert error["message"].startswith(
        "blocked by budget cap: all calls spent $0.06 of its $0.05 daily limit"
    )


def test_other_families_429_formats():
    now = time.time()
    budget = over_budget()
    bedrock = block_response(
        capture_for("bedrock-runtime.us-east-1.amazonaws.com", "/model/amazon.nova-lite-v1:0/converse"),
        budget,
        "",
        now,
    )
    assert json.loads(bedrock.content)["__type"] == "ThrottlingException"
    cohere = block_response(capture_for("api.cohere.com", "/v2/chat"), budget, "", now)
    assert json.loads(cohere.content)["message"].startswith("blocked by budget cap")
    groq = block_response(capture_for("api.groq.com", "/openai/v1/chat/completions"), budget, "", now)
    assert json.loads(groq.content)["error"]["type"] == "rate_limit_exceeded"
    assert groq.status_code == 429 and groq.headers["x-should-retry"] == "false"
    assert 0 < int(groq.headers["retry-after"]) <= 86400


def request(host: str, path: str, body: dict, **headers: str) -> http.HTTPFlow:
    return tflow.tflow(req=http.Request.make("POST", f"https://{host}{path}", json.dumps(body), headers))


def routed_from(flow: http.HTTPFlow) -> str | None:
    rewrite = flow.metadata.get(REWRITE_KEY)
    return rewrite.routed_from_model if rewrite is not None else None


def test_rewrite_model_in_the_body_or_a_gemini_path():
    body = {"model": "gpt-4o", "messages": []}
    flow = request("api.openai.com", "/v1/chat/completions", body)
    capture = capture_for("api.openai.com", "/v1/chat/completions", body)
    assert rewrite_model(flow, capture, "gpt-4o-mini") is None
    assert json.loads(flow.request.content) == {"model": "gpt-4o-mini", "messages": []}
    assert (capture.request.model, routed_from(flow)) == ("gpt-4o-mini", "gpt-4o")

    path = "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse"
    flow = request("generativelanguage.googleapis.com", path, {"contents": []})
    capture = capture_for("generativelanguage.googleapis.com", path, {"contents": []})
    assert rewrite_model(flow, capture, "gemini-2.0-flash") is None
    assert flow.request.path == "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse"
    assert routed_from(flow) == "gemini-2.5-pro"


def test_rewrite_model_skips_signed_and_model_less_requests():
    path = "/model/anthropic.claude-3-5-sonnet/invoke"
    signed = request(
        "bedrock-runtime.us-east-1.amazonaws.com", path, {"messages": []}, authorization="AWS4-HMAC"
    )
    capture = capture_for("bedrock-runtime.us-east-1.amazonaws.com", path)
    assert "signed" in rewrite_model(signed, capture, "cheap")
    assert json.loads(signed.request.content) == {"messages": []} and routed_from(signed) is None
    azure = "/openai/deployments/big/chat/completions"
    flow = request("x.openai.azure.com", azure, {"messages": []})
    why_not = rewrite_model(flow, capture_for("x.openai.azure.com", azure), "small")
    assert why_not is not None and "neither in the JSON body" in why_not


def test_budget_errors_never_break_traffic(monkeypatch, tmp_path):
    addon = Budgets(
        [BudgetSpec(name="b", limit_usd=Decimal(1), period="day", action="block")], tmp_path / "a.json"
    )

    def broken(meta: CallMetadata) -> str:
        raise RuntimeError("bug")

    monkeypatch.setattr(addon.budgets[0].scope, "key", broken)
    flow = http.HTTPFlow(None, None)  # type: ignore[arg-type]
    flow.request = request("api.openai.com", "/v1/chat/completions", {"model": "gpt-4o"})
    flow.metadata[CAPTURE_KEY] = capture_for("api.openai.com", "/v1/chat/completions", {"model": "gpt-4o"})
    before = failures["Budgets.request"]
    addon.request(flow)
    assert flow.response is None and failures["Budgets.request"] == before + 1
