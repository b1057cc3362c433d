"""Prometheus metrics (``llmtap proxy --metrics-port``): a real Prometheus scraping a real proxy,
and the exposition text on stores built to give known answers.

The end-to-end test runs the ``llmtap proxy`` command with the official openai SDK calling
through it (streamed and not, one rate-limited), then Debian's ``prometheus`` scraping the
endpoint every second, and asks Prometheus' HTTP API for the totals: they must equal the
store's. It is skipped only where /usr/bin/prometheus is missing (``.ci/run`` installs it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import httpx
import openai
import polars as pl
import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from analytics.dimensions import error_kind
from collector.budgets.limits import Budget
from collector.metrics import MetricsPortError, MetricsServer
from collector.metrics.exposition import number, render
from collector.metrics.families import budget_use, families
from collector.metrics.labels import OTHER, LabelBounds, escape, shown
from collector.metrics.query import (
    MAX_RAW_GROUPS,
    SECONDS_BUCKETS,
    TOKEN_BUCKETS,
    error_kind_sql,
    read_groups,
)
from collector.metrics.server import exposition
from collector.routing.rules import FALLBACK_ARM
from collector.settings.config import BudgetSpec
from collector.storage.database import ensure_schema, read_connection
from collector.trust.boundary import TRUNCATED
from tests.conftest import running_proxy
from tests.proxyproc import ProxyProcess, free_port
from tests.test_spans import OTLPCollector
from tests.upstream import FakeUpstream, Received, Reply

PROMETHEUS = "/usr/bin/prometheus"
PROMTOOL = "/usr/bin/promtool"
ROOT = Path(__file__).parent.parent
T0 = datetime(2026, 3, 2, 9, tzinfo=UTC)
LABELS = ("gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model", "app")


# --- a store with known rows, and the text's samples -----------------------------------------


def row(i: int, **kw: Any) -> dict[str, Any]:
    """An llm_calls row: a successful gpt-4o chat call of app ``web``, unless overridden."""
    return {
        "call_id": f"c{i}",
        "started_at": T0 + timedelta(seconds=i),
        "provider": "openai",
        "api": "chat",
        "status_code": 200,
        "stream": False,
        "request_model": "gpt-4o",
        "input_tokens": 100,
        "output_tokens": 10,
        "latency_ms": 500.0,
        "ttft_ms": 100.0,
        "cost_usd": Decimal("0.001"),
        "app": "web",
        "error": None,
        **kw,
    }


def make_store(tmp_path: Path, rows: list[dict[str, Any]], cache_columns: bool = True) -> Path:
    """A store holding ``rows``; ``cache_columns`` False: as written before the response cache
    (no ``cache_hit``, ``cache_of``, ``cache_saved_usd``), True: with them."""
    db = tmp_path / "data" / "llmtap.duckdb"
    ensure_schema(db)
    with duckdb.connect(str(db)) as con:
        for column, kind in (
            ("cache_hit", "BOOLEAN"),
            ("cache_of", "VARCHAR"),
            ("cache_saved_usd", "DECIMAL(18,9)"),
        ):
            if cache_columns:
                con.execute(f"ALTER TABLE llm_calls ADD COLUMN IF NOT EXISTS {column} {kind}")
            else:
                con.execute(f"ALTER TABLE llm_calls DROP COLUMN IF EXISTS {column}")
        for r in rows:
            columns = ", ".join(r)
            con.execute(
                f"INSERT INTO llm_calls ({columns}) VALUES ({', '.join('?' * len(r))})", list(r.values())
            )
    return db


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(?:,|$)')


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), value)


def parse(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Samples by name: (labels, value). Strict: every line is a comment or a whole sample."""
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("#"):
            assert re.match(r"^# (HELP|TYPE) [a-z_]+ .+$", line), line
            continue
        match = _SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        name, labels_text, value = match.groups()
        labels: dict[str, str] = {}
        if labels_text:
            consumed = 0
            for m in _LABEL.finditer(labels_text):
                assert m.start() == consumed, f"bad labels in {line!r}"
                labels[m.group(1)] = _unescape(m.group(2))
                consumed = m.end()
            assert consumed == len(labels_text), f"bad labels in {line!r}"
        samples.setdefault(name, []).append((labels, float(value)))
    return samples


def total(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **where: str) -> float:
    return sum(v for labels, v in samples.get(name, []) if all(labels.get(k) == w for k, w in where.items()))


def scrape(db: Path, bounds: LabelBounds | None = None, max_raw: int = MAX_RAW_GROUPS) -> str:
    """The scrape's text (as :func:`exposition` makes it), its caps applied in Python, or with
    ``max_raw=0`` in SQL: the two ways must agree."""
    bounds = bounds or LabelBounds()
    with read_connection(db) as con:
        groups = read_groups(con, bounds.kept_lists(), bounds.free(), max_raw)
    return render(families(groups, bounds, [], time.time()))


@pytest.fixture(params=["python", "sql"])
def capped_in(request) -> int:
    """Where the label caps are applied: ``max_raw`` for :func:`scrape`."""
    return MAX_RAW_GROUPS if request.param == "python" else 0


def check_histograms(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, bounds) -> int:
    """Every series of histogram ``name``: one bucket per bound plus +Inf, cumulative, the +Inf
    bucket equal to ``_count``, a ``_sum`` beside it. Returns how many series there are."""
    series: dict[frozenset, dict[str, float]] = {}
    for labels, value in samples.get(f"{name}_bucket", []):
        key = frozenset((k, v) for k, v in labels.items() if k != "le")
        series.setdefault(key, {})[labels["le"]] = value
    counts = {frozenset(labels.items()): v for labels, v in samples.get(f"{name}_count", [])}
    sums = {frozenset(labels.items()) for labels, _ in samples.get(f"{name}_sum", [])}
    assert set(series) == set(counts) == sums
    for key, buckets in series.items():
        assert list(buckets) == [number(b) for b in bounds] + ["+Inf"]
        values = list(buckets.values())
        assert values == sorted(values), f"{name} {dict(key)} buckets not cumulative: {values}"
        assert values[-1] == counts[key]
    return len(series)


# --- the text ----------------------------------------------------------------------------------


def test_label_values_are_escaped_bounded_and_printable():
    assert escape('a\\b"c\nd') == 'a\\\\b\\"c\\nd'
    assert shown("x" * 500) == "x" * 100 + TRUNCATED
    assert shown("evil\x1b[31m\u202e") == "evil\\x1b[31m\\u202e"
    assert (
        shown("leak sk-proj-abcdefghijklmnopqrstuvwxyz0123") != "leak sk-proj-abcdefghijklmnopqrstuvwxyz0123"
    )


def test_hostile_label_values_round_trip_through_the_format(tmp_path, capped_in):
    nasty = 'app "quoted" \\ back\nslash\x1b[2J'
    db = make_store(tmp_path, [row(0, app=nasty), row(1, request_model="m" * 300), row(2, app=None)])
    text = scrape(db, max_raw=capped_in)
    samples = parse(text)
    apps = {labels.get("app") for labels, _ in samples["llmtap_calls_total"]}
    assert apps == {shown(nasty), "web", None}
    assert shown(nasty) == 'app "quoted" \\ back\nslash\\x1b[2J'  # the escape is shown, not sent
    models = {labels["gen_ai_request_model"] for labels, _ in samples["llmtap_calls_total"]}
    assert "m" * 100 + TRUNCATED in models
    if os.path.exists(PROMTOOL):  # Prometheus' own parser and linter
        check = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr


def test_totals_histograms_and_error_kinds_equal_the_store(tmp_path, capped_in):
    rows = [
        row(0, input_tokens=1, output_tokens=4, latency_ms=10.0),  # on the first bounds exactly
        row(1, input_tokens=5, output_tokens=None, latency_ms=10.5, stream=True, ttft_ms=20.0),
        row(2, input_tokens=70_000_000, output_tokens=0, latency_ms=90_000.0),  # past the last bound
        row(3, app="batch", request_model="gpt-4o-mini", cost_usd=Decimal("0.123456789")),
        row(4, stream=True, ttft_ms=150.0, cost_usd=None),  # unpriced
        row(
            5,
            status_code=429,
            error="Rate limit reached",
            input_tokens=None,
            output_tokens=None,
            cost_usd=None,
        ),
        row(6, status_code=None, error="connection refused", stream=True, ttft_ms=3.0),  # a failed stream
        row(7, retry_of="c5"),
        row(8, routing_arm="shadow", shadow_of="c3", cost_usd=Decimal(5)),  # llmtap's own: left out
        row(9, routing_arm="judge", cost_usd=Decimal(5)),
        row(10, api="embeddings", request_model="text-embedding-3-small", output_tokens=None),
    ]
    db = make_store(tmp_path, rows)
    text = scrape(db, max_raw=capped_in)
    assert text == scrape(db)  # the same text either way
    samples = parse(text)
    production = [r for r in rows if r.get("routing_arm") not in ("shadow", "judge")]
    assert total(samples, "llmtap_calls_total") == len(production) == 9
    assert Decimal(str(total(samples, "llmtap_cost_usd_total"))) == sum(
        (r["cost_usd"] for r in production if r["cost_usd"] is not None), Decimal(0)
    )
    cost_lines = [line for line in text.splitlines() if line.startswith("llmtap_cost_usd_total{")]
    assert any(line.endswith(" 0.123456789") for line in cost_lines)  # exact, as stored
    for kind in ("input", "output"):
        values = [r[f"{kind}_tokens"] for r in production if r[f"{kind}_tokens"] is not None]
        assert total(samples, "gen_ai_client_token_usage_sum", gen_ai_token_type=kind) == sum(values)
        assert total(samples, "gen_ai_client_token_usage_count", gen_ai_token_type=kind) == len(values)
    assert total(samples, "gen_ai_client_token_usage_bucket", gen_ai_token_type="input", le="1") == 1
    assert total(samples, "gen_ai_client_token_usage_bucket", gen_ai_token_type="input", le="4") == 1
    assert total(samples, "gen_ai_client_token_usage_bucket", gen_ai_token_type="input", le="67108864") == 7
    assert total(samples, "gen_ai_client_token_usage_bucket", gen_ai_token_type="input", le="+Inf") == 8
    assert check_histograms(samples, "gen_ai_client_token_usage", TOKEN_BUCKETS) >= 4
    duration = "gen_ai_client_operation_duration_seconds"
    check_histograms(samples, duration, SECONDS_BUCKETS)
    assert total(samples, f"{duration}_count") == 9
    assert math.isclose(total(samples, f"{duration}_sum"), sum(r["latency_ms"] for r in production) / 1000)
    assert total(samples, f"{duration}_bucket", le="0.01") == 1  # 10.0 ms is in, 10.5 ms is not
    assert total(samples, f"{duration}_bucket", le="81.92") == 8
    assert total(samples, f"{duration}_count", error_type="rate_limited") == 1
    first_chunk = "gen_ai_client_operation_time_to_first_chunk_seconds"
    check_histograms(samples, first_chunk, SECONDS_BUCKETS)
    assert total(samples, f"{first_chunk}_count") == 2  # the failed stream is left out
    assert math.isclose(total(samples, f"{first_chunk}_sum"), 0.17)
    errors = {labels["error_type"]: v for labels, v in samples["llmtap_errors_total"]}
    assert errors == {"rate_limited": 1, "upstream_reset": 1}
    assert total(samples, "llmtap_fallbacks_total") == 1
    operations = {labels["gen_ai_operation_name"] for labels, _ in samples["llmtap_calls_total"]}
    assert operations == {"chat", "embeddings"}
    for name in ("llmtap_calls_total", "llmtap_cost_usd_total", "llmtap_cache_hits_total"):
        assert all(set(labels) <= set(LABELS) for labels, _ in samples[name])


def test_fallbacks_count_the_calls_a_fallback_answered(tmp_path):
    chain = {"routing_arm": FALLBACK_ARM, "routing_rule": "fallback:chat"}
    rows = [
        row(0, **chain, status_code=503, error="http 503"),  # the chain's first attempt failed,
        row(1, **chain, status_code=None, error="connection refused", retry_of="c0"),  # so did the next,
        row(2, **chain, retry_of="c0", request_model="gpt-4o-mini"),  # the third answered
        row(3, **chain),  # answered by a later target, the first ones skipped (breakers open)
        row(4, routing_arm="retry", retry_of="c9"),  # a routing rule's retry with the client's model
        row(5, routing_arm="retry", retry_of="c8", status_code=500, error="http 500"),  # failed too
        row(6),
    ]
    samples = parse(scrape(make_store(tmp_path, rows)))
    assert total(samples, "llmtap_fallbacks_total") == 3
    assert total(samples, "llmtap_calls_total") == 7  # the attempts are the client's calls
    assert total(samples, "llmtap_errors_total") == 3


def test_error_kinds_match_the_analytics():
    cases = [
        (None, None),
        (200, "Client disconnected."),
        (499, "client hung up: disconnect"),
        (None, "connection refused"),
        (200, "peer closed connection without sending complete message body (incomplete chunked read)"),
        (200, "Read TIMED OUT"),
        (429, "Rate limit reached"),
        (404, "model not found"),
        (500, "http 500"),
        (529, "overloaded_error: Overloaded"),
        (200, "server_error: the server had an error"),
        (200, "content blocked\nreset later"),
    ]
    frame = pl.DataFrame(
        {"status_code": [s for s, _ in cases], "error": [e for _, e in cases]},
        schema={"status_code": pl.Int32, "error": pl.String},
    )
    expected = frame.select(error_kind()).to_series().to_list()
    con = duckdb.connect()
    con.register("calls", frame.to_arrow())
    found = [k for (k,) in con.execute(f"SELECT {error_kind_sql()} FROM calls").fetchall()]
    assert found == expected
    assert set(expected) >= {
        "client_disconnect",
        "upstream_reset",
        "rate_limited",
        "http_4xx",
        "http_5xx",
        "in_band",
    }


def test_label_values_are_capped_and_sticky(tmp_path, capped_in):
    # 25 apps: app-00 called 25 times ... app-24 once.
    rows = [row(i * 100 + j, app=f"app-{i:02}") for i in range(25) for j in range(25 - i)]
    db = make_store(tmp_path, rows)
    bounds = LabelBounds()
    samples = parse(scrape(db, bounds, capped_in))
    calls = {labels["app"]: v for labels, v in samples["llmtap_calls_total"]}
    assert set(calls) == {f"app-{i:02}" for i in range(20)} | {OTHER}
    assert calls[OTHER] == 5 + 4 + 3 + 2 + 1  # app-20 .. app-24, summed: totals stay whole
    assert total(samples, "llmtap_calls_total") == len(rows)
    # A new app, now the busiest: the shown values stay (no counter goes down), it joins "other".
    with duckdb.connect(str(db)) as con:
        con.execute(
            "INSERT INTO llm_calls (call_id, started_at, provider, api, request_model, app)"
            " SELECT 'n' || i, now(), 'openai', 'chat', 'gpt-4o', 'newcomer' FROM range(100) t(i)"
        )
    later = parse(scrape(db, bounds, capped_in))
    after = {labels["app"]: v for labels, v in later["llmtap_calls_total"]}
    assert set(after) == set(calls)
    assert after[OTHER] == calls[OTHER] + 100
    assert all(after[app] >= calls[app] for app in calls)
    # A fresh proxy (new bounds) ranks the store again: the newcomer gets its own series.
    fresh = parse(scrape(db, max_raw=capped_in))
    assert "newcomer" in {labels["app"] for labels, _ in fresh["llmtap_calls_total"]}


def test_label_sets_are_capped(tmp_path, capped_in):
    rows = [row(i, app=f"a{i % 4}", request_model=f"m{i % 5}") for i in range(40)]  # 20 sets, 2 calls each
    db = make_store(tmp_path, rows)
    samples = parse(scrape(db, LabelBounds(max_sets=6), capped_in))
    sets = {tuple(labels.get(k) for k in LABELS) for labels, _ in samples["llmtap_calls_total"]}
    assert len(sets) == 7
    assert (OTHER, OTHER, OTHER, OTHER) in sets
    assert total(samples, "llmtap_calls_total") == 40


def test_an_empty_store_and_a_store_without_llm_calls(tmp_path):
    db = make_store(tmp_path, [])
    assert set(parse(exposition(db, LabelBounds())[0])) == {"llmtap_metrics_query_seconds"}
    assert parse(scrape(db, max_raw=0)) == {}
    bare = tmp_path / "bare.duckdb"
    duckdb.connect(str(bare)).close()
    assert set(parse(exposition(bare, LabelBounds())[0])) == {"llmtap_metrics_query_seconds"}


@pytest.mark.parametrize("cache_columns", [False, True])
def test_cache_counters_with_and_without_the_cache_columns(tmp_path, cache_columns):
    hit = (
        {"cache_hit": True, "cache_saved_usd": Decimal("0.25"), "cost_usd": Decimal(0)}
        if cache_columns
        else {}
    )
    db = make_store(tmp_path, [row(0), row(1, **hit)], cache_columns=cache_columns)
    samples = parse(scrape(db))
    assert total(samples, "llmtap_calls_total") == 2
    assert total(samples, "llmtap_cache_hits_total") == (1 if cache_columns else 0)
    assert total(samples, "llmtap_cache_saved_usd_total") == (0.25 if cache_columns else 0)
    assert len(samples["llmtap_cache_hits_total"]) == 1  # the series exists at 0 too


def test_budget_use_reads_the_proxys_running_totals():
    now = time.time()
    total_budget = Budget(BudgetSpec(name="daily", limit_usd=Decimal(4), period="day"), now)
    per_user = Budget(BudgetSpec(name="per-user", limit_usd=Decimal(2), period="month", per="user"), now)
    total_budget.tally.seed("", Decimal(1))
    for i in range(15):
        per_user.tally.seed(f"user-{i:02}", Decimal(i) / 10)
    # A budget per user shows its largest total: no user id becomes a label.
    assert budget_use([total_budget, per_user], now) == [("daily", 0.25), ("per-user", 14 / 20)]
    # Once the period is over (no call has rolled the tally yet), nothing is spent in the new one.
    assert budget_use([total_budget], total_budget.tally.window.end + 1) == [("daily", 0.0)]
    assert budget_use([per_user], per_user.tally.window.end + 1) == [("per-user", 0.0)]


# --- the endpoint ------------------------------------------------------------------------------


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def until(fetch, done, timeout: float = 15.0):
    """``fetch()`` again every 0.1 s until ``done`` holds for its result (at most ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    while not done(result := fetch()):
        assert time.monotonic() < deadline, f"still {result!r}"
        time.sleep(0.1)
    return result


def test_endpoint_answers_caches_and_fails_open(tmp_path, caplog):
    db = make_store(tmp_path, [row(0)])
    server = MetricsServer(db, 0).start()
    try:
        status, content_type, body = get(server.url)
        assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
        assert total(parse(body), "llmtap_calls_total") == 1
        assert get(f"http://127.0.0.1:{server.port}/")[0] == 404
        # Within the cache period a second scrape reuses the text (the store is not read again).
        with duckdb.connect(str(db)) as con:
            con.execute("INSERT INTO llm_calls (call_id, started_at) VALUES ('x', now())")
        assert get(server.url)[2] == body
        # A broken store: 500 with the reason, logged once however often scraped.
        db.rename(db.with_suffix(".bak"))
        db.write_bytes(b"not a duckdb file" * 100)
        with caplog.at_level(logging.ERROR, logger="llmtap.metrics"):
            first = until(lambda: get(server.url), lambda answer: answer[0] != 200)  # once the cache expires
            answers = [first] + [get(server.url) for _ in range(2)]
        assert {status for status, _, _ in answers} == {500}
        assert answers[0][2].startswith("llmtap metrics unavailable: ")
        assert answers[0][2].count("\n") == 1  # one line
        assert len([r for r in caplog.records if r.name == "llmtap.metrics"]) == 1
        db.unlink()
        db.with_suffix(".bak").rename(db)
        status, _, body = get(server.url)
        assert status == 200 and total(parse(body), "llmtap_calls_total") == 2
    finally:
        server.stop()


def test_a_port_in_use_is_refused(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(MetricsPortError, match=f"cannot serve metrics on 127.0.0.1:{port}: "):
            MetricsServer(tmp_path / "llmtap.duckdb", port)
        # The proxy refuses to start (as mitmproxy does for its own port), saying which port.
        proxy_port = free_port()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "app.cli",
                "proxy",
                "--data-dir",
                str(tmp_path / "data"),
                "--port",
                str(proxy_port),
                "--metrics-port",
                str(port),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )
    assert done.returncode == 1
    assert f"llmtap: error: cannot serve metrics on 127.0.0.1:{port}: Address already in use" in done.stderr
    assert "listening on" not in done.stdout


# --- a real Prometheus scraping a real proxy -------------------------------------------------------

ANSWER = "Paris."


def chat(received: Received) -> Reply:
    """OpenAI chat completions: ``rate-limited`` gets a 429; streams carry usage when asked."""
    body = json.loads(received.body)
    model = body["model"]
    if model == "rate-limited":
        return Reply.json({"error": {"message": "Rate limit reached", "type": "rate_limit"}}, 429)
    prompt = len(json.dumps(body["messages"]))
    usage = {"prompt_tokens": prompt, "completion_tokens": 7, "total_tokens": prompt + 7}
    if body.get("stream"):
        chunks: list[Any] = [
            {"id": "c1", "model": model, "choices": [{"index": 0, "delta": {"content": w}}]} for w in ANSWER
        ]
        chunks.append(
            {"id": "c1", "model": model, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        )
        if (body.get("stream_options") or {}).get("include_usage"):
            chunks.append({"id": "c1", "model": model, "choices": [], "usage": usage})
        return Reply.sse([*chunks, "[DONE]"], delay=0.002)
    message = {"role": "assistant", "content": ANSWER}
    return Reply.json(
        {
            "id": "c1",
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": usage,
        }
    )


@contextlib.contextmanager
def prometheus(tmp_path: Path, target_port: int) -> Iterator[str]:
    """Debian's prometheus scraping ``127.0.0.1:target_port`` every second; yields its URL."""
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: llmtap\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{target_port}']\n"
    )
    log = tmp_path / "prometheus.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError):
                if get(f"{url}/-/ready")[0] == 200:
                    break
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def query(url: str, promql: str) -> float | None:
    """The value of an instant query returning one sample (None: no sample yet)."""
    status, _, body = get(f"{url}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
    assert status == 200, body
    result = json.loads(body)["data"]["result"]
    assert len(result) <= 1, result
    return float(result[0]["value"][1]) if result else None


def test_prometheus_scrapes_totals_equal_to_the_store(tmp_path):
    if not os.path.exists(PROMETHEUS):
        pytest.skip(f"{PROMETHEUS} is missing (Debian's prometheus package; .ci/run installs it)")
    metrics_port = free_port()
    config = tmp_path / "llmtap.toml"
    config.write_text('[budgets."daily"]\nlimit_usd = 0.5\nperiod = "day"\n')
    with FakeUpstream() as upstream:
        upstream.routes["/v1/chat/completions"] = chat
        args = ["--metrics-port", str(metrics_port), "--config", str(config)]
        with running_proxy(tmp_path / "data", upstream, extra_args=args) as proxy:
            sent = drive(proxy)
            store = proxy.rows(wait_for=sent)
            assert len(store) == sent
            with prometheus(tmp_path, metrics_port) as url:
                deadline = time.monotonic() + 60
                while query(url, "sum(llmtap_calls_total)") != sent:
                    assert time.monotonic() < deadline, "Prometheus never saw every call"
                    time.sleep(0.5)
                check_against_store(url, proxy)
                assert query(url, 'up{job="llmtap"}') == 1


def drive(proxy: ProxyProcess) -> int:
    """Calls through the proxy with the official SDK: 6 plain (two apps), 4 streamed, 1 rate
    limited. Returns how many calls were made."""
    tls = ssl.create_default_context(cafile=str(proxy.data_dir / "ca-bundle.pem"))
    client = openai.OpenAI(
        api_key="sk-test-metrics", http_client=httpx.Client(proxy=proxy.url, verify=tls), max_retries=0
    )
    question = [{"role": "user", "content": "Capital of France?"}]
    for i in range(6):
        app = "checkout" if i % 2 else "search"
        reply = client.chat.completions.create(
            model="gpt-4o-mini", messages=question, extra_headers={"X-Llmtap-App": app}
        )
        assert reply.choices[0].message.content == ANSWER
    for _ in range(4):
        stream = client.chat.completions.create(model="gpt-4o-mini", messages=question, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == ANSWER
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="rate-limited", messages=question)
    return 11


def check_against_store(url: str, proxy: ProxyProcess) -> None:
    (store,) = proxy.rows(
        "SELECT sum(cost_usd) AS cost, sum(input_tokens) AS input, sum(output_tokens) AS output,"
        " count(input_tokens) AS input_calls, count_if(stream AND error IS NULL) AS streams,"
        " sum(latency_ms) / 1000 AS seconds, count_if(app = 'checkout') AS checkout FROM llm_calls"
    )
    assert store["cost"] > 0 and store["input"] > 0 and store["streams"] == 4
    cost = query(url, "sum(llmtap_cost_usd_total)")
    assert cost is not None and math.isclose(cost, float(store["cost"]), rel_tol=1e-12)
    tokens = "gen_ai_client_token_usage"
    assert query(url, f'sum({tokens}_sum{{gen_ai_token_type="input"}})') == store["input"]
    assert query(url, f'sum({tokens}_sum{{gen_ai_token_type="output"}})') == store["output"]
    assert query(url, f'sum({tokens}_count{{gen_ai_token_type="input"}})') == store["input_calls"]
    assert query(url, f'sum({tokens}_bucket{{gen_ai_token_type="input",le="+Inf"}})') == store["input_calls"]
    duration = query(url, "sum(gen_ai_client_operation_duration_seconds_sum)")
    assert duration is not None and math.isclose(duration, store["seconds"], rel_tol=1e-9)
    assert query(url, "sum(gen_ai_client_operation_time_to_first_chunk_seconds_count)") == 4
    assert query(url, 'sum(llmtap_calls_total{app="checkout"})') == store["checkout"] == 3
    assert query(url, 'sum(llmtap_errors_total{error_type="rate_limited"})') == 1
    assert (
        query(
            url, 'sum(llmtap_calls_total{gen_ai_provider_name="openai",gen_ai_request_model="gpt-4o-mini"})'
        )
        == 10
    )
    # The budget's running total in the proxy, as a share of its $0.50 limit.
    ratio = query(url, 'llmtap_budget_used_ratio{budget="daily"}')
    assert ratio is not None and math.isclose(ratio, float(store["cost"]) / 0.5, rel_tol=1e-9)
    # The quantile Prometheus computes from the buckets lies within the bucket bounds.
    p50 = query(url, "histogram_quantile(0.5, sum by (le) (gen_ai_client_token_usage_bucket))")
    assert p50 is not None and 1 <= p50 <= TOKEN_BUCKETS[-1]


# --- OTLP metrics, pushed to a local OTLP/HTTP receiver --------------------------------------------


def latest(collector: OTLPCollector) -> dict[str, Any]:
    """The last metrics export the collector took, its metrics by name (empty before the first)."""
    if not collector.metrics:
        return {}
    (resource,) = ExportMetricsServiceRequest.FromString(collector.metrics[-1]).resource_metrics
    (scope,) = resource.scope_metrics
    assert scope.scope.name == "llmtap"
    return {metric.name: metric for metric in scope.metrics}


def otlp_attributes(point: Any) -> dict[str, str]:
    return {kv.key: kv.value.string_value for kv in point.attributes}


def otlp_sum(metrics: dict[str, Any], name: str, **where: str) -> float:
    metric = metrics[name]
    points = metric.histogram.data_points if metric.HasField("histogram") else metric.sum.data_points
    chosen = [p for p in points if all(otlp_attributes(p).get(k) == v for k, v in where.items())]
    if metric.HasField("histogram"):
        return sum(p.sum for p in chosen)
    return sum(p.as_double or p.as_int for p in chosen)


def test_otlp_metrics_equal_the_store(tmp_path):
    """With an OTLP endpoint set, the proxy pushes the same metrics under their OpenTelemetry
    names every ``OTEL_METRIC_EXPORT_INTERVAL``, cumulative, and once more as it stops."""
    config = tmp_path / "llmtap.toml"
    config.write_text('[budgets."daily"]\nlimit_usd = 0.5\nperiod = "day"\n')
    with OTLPCollector() as receiver, FakeUpstream() as upstream:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_METRIC_EXPORT_INTERVAL": "300"}
        upstream.routes["/v1/chat/completions"] = chat
        with running_proxy(
            tmp_path / "data", upstream, extra_args=["--config", str(config)], env=env
        ) as proxy:
            sent = drive(proxy)
            proxy.rows(wait_for=sent)
            metrics = until(lambda: latest(receiver), lambda m: m and otlp_sum(m, "llmtap.calls") == sent)
            (store,) = proxy.rows(
                "SELECT sum(cost_usd) AS cost, sum(input_tokens) AS input, sum(output_tokens) AS output,"
                " count(input_tokens) AS input_calls, sum(latency_ms) / 1000 AS seconds FROM llm_calls"
            )
            exports = len(receiver.metrics)
        # The stop sends a last reading after the store has every call.
        assert len(receiver.metrics) > exports
    assert math.isclose(otlp_sum(metrics, "llmtap.cost"), float(store["cost"]), rel_tol=1e-12)
    assert metrics["llmtap.cost"].unit == "USD" and metrics["llmtap.cost"].sum.is_monotonic
    assert otlp_sum(metrics, "llmtap.calls", **{"llmtap.app": "checkout"}) == 3
    assert otlp_sum(metrics, "llmtap.errors", **{"error.type": "rate_limited"}) == 1
    tokens = metrics["gen_ai.client.token.usage"]
    assert tokens.unit == "{token}"
    assert otlp_sum(metrics, "gen_ai.client.token.usage", **{"gen_ai.token.type": "input"}) == store["input"]
    assert (
        otlp_sum(metrics, "gen_ai.client.token.usage", **{"gen_ai.token.type": "output"}) == store["output"]
    )
    cumulative = 2  # AGGREGATION_TEMPORALITY_CUMULATIVE
    for name in ("gen_ai.client.token.usage", "gen_ai.client.operation.duration"):
        histogram = metrics[name].histogram
        assert histogram.aggregation_temporality == cumulative
        for point in histogram.data_points:
            # OTLP counts per bucket (one more bucket than bounds), not cumulatively.
            assert len(point.bucket_counts) == len(point.explicit_bounds) + 1
            assert sum(point.bucket_counts) == point.count > 0
            assert not point.HasField("min") and not point.HasField("max")
            assert point.start_time_unix_nano < point.time_unix_nano
    inputs = [p for p in tokens.histogram.data_points if otlp_attributes(p)["gen_ai.token.type"] == "input"]
    assert sum(p.count for p in inputs) == store["input_calls"]
    assert list(inputs[0].explicit_bounds) == [float(b) for b in TOKEN_BUCKETS]
    duration = metrics["gen_ai.client.operation.duration"]
    assert duration.unit == "s"
    assert math.isclose(otlp_sum(metrics, "gen_ai.client.operation.duration"), store["seconds"], rel_tol=1e-9)
    first_chunk = metrics["gen_ai.client.operation.time_to_first_chunk"].histogram.data_points
    assert sum(p.count for p in first_chunk) == 4
    point = metrics["llmtap.calls"].sum.data_points[0]
    assert set(otlp_attributes(point)) >= {
        "gen_ai.operation.name",
        "gen_ai.provider.name",
        "gen_ai.request.model",
    }
    (ratio,) = metrics["llmtap.budget.used_ratio"].gauge.data_points
    assert otlp_attributes(ratio) == {"llmtap.budget": "daily"}
    assert math.isclose(ratio.as_double, float(store["cost"]) / 0.5, rel_tol=1e-9)


def test_otlp_metrics_fail_open(tmp_path, caplog):
    """An OTLP endpoint that is down: the export fails, is logged once, and traffic is untouched."""
    from collector.metrics.otlp import OtlpMetrics

    db = make_store(tmp_path, [row(0), row(1)])
    exporter = OtlpMetrics(db, f"http://127.0.0.1:{free_port()}/v1/metrics", 60.0)
    with caplog.at_level(logging.ERROR, logger="llmtap.metrics"):
        assert exporter.export() is False
        assert exporter.export() is False
    reasons = [r.getMessage() for r in caplog.records if r.name == "llmtap.metrics"]
    assert len(reasons) == 1 and "llmtap's OTLP metrics unavailable" in reasons[0], reasons
    with OTLPCollector() as receiver:
        exporter = OtlpMetrics(db, receiver.url + "/v1/metrics", 60.0)
        assert exporter.export() is True
        assert otlp_sum(latest(receiver), "llmtap.calls") == 2
