"""Rows built in flight and rows built by the spool loader from observed calls are the same.

The recorder runs its hooks on real mitmproxy flows; the spool goes through the real
ingester into a real DuckDB file.
"""

from __future__ import annotations

import json
import time
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest
from mitmproxy import http
from mitmproxy.test import tflow

from collector.calls.rows import OBSERVED_KEY, RowBuilder
from collector.calls.spans import SpanRecorder
from collector.pricing.book import PriceBook
from collector.pricing.rates import Rates
from collector.providers import ProviderRegistry
from collector.proxy.addons.metadata import MetadataHeaders
from collector.proxy.addons.recorder import Recorder
from collector.settings.config import load_settings
from collector.storage.database import Ingester, ensure_schema, read_connection
from collector.storage.loader import IngestWorker
from collector.storage.spool import Spool

#: Every recording starts at the same instant, so that their rows compare equal.
START = time.time() - 100
SECRET = "sk-test-abcdefghijklmnop123456"
OPENAI = "api.openai.com"
ANTHROPIC = "api.anthropic.com"


@pytest.fixture(scope="module")
def prices() -> PriceBook:
    return PriceBook()


def chat_body(model: str, **extra) -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": "2+2?"}], **extra}).encode()


#: (host, path, request body, status, response content type, response body chunks)
CALLS = [
    (
        OPENAI,
        "/v1/chat/completions",
        chat_body("gpt-4o-mini", tools=[{"type": "function", "function": {"name": "f"}}], max_tokens=20),
        200,
        "application/json",
        [
            json.dumps(
                {
                    "id": "chatcmpl-1",
                    "model": "gpt-4o-mini-2024-07-18",
                    "choices": [{"finish_reason": "stop", "message": {"content": "4"}}],
                    "usage": {
                        "prompt_tokens": 1200,
                        "completion_tokens": 7,
                        "prompt_tokens_details": {"cached_tokens": 1024},
                        "completion_tokens_details": {"reasoning_tokens": 0},
                    },
                }
            ).encode()
        ],
    ),
    (
        ANTHROPIC,
        "/v1/messages",
        json.dumps({"model": "claude-3-5-haiku-latest", "max_tokens": 9, "messages": []}).encode(),
        200,
        "application/json",
        [
            json.dumps(
                {
                    "id": "msg_1",
                    "model": "claude-3-5-haiku-20241022",
                    "stop_reason": "end_turn",
                    "content": [{"type": "text", "text": "4"}],
                    "usage": {"input_tokens": 10, "output_tokens": 2, "cache_read_input_tokens": 5},
                }
            ).encode()
        ],
    ),
    (
        OPENAI,
        "/v1/chat/completions",
        chat_body("gpt-4o"),
        429,
        "application/json",
        [b'{"error": {"type": "rate_limit_exceeded", "message": "slow down"}}'],
    ),
    # No usage in the answer: estimated from text lengths.
    (OPENAI, "/v1/chat/completions", chat_body("gpt-4o"), 200, "application/json", [b'{"choices": []}']),
    # Not JSON at all, and a key echoed in the request body.
    (OPENAI, "/v1/chat/completions", f"key {SECRET}".encode(), 400, "text/plain", [b"bad request"]),
    (
        OPENAI,
        "/v1/chat/completions",
        chat_body("gpt-4o-mini", stream=True, stream_options={"include_usage": True}),
        200,
        "text/event-stream",
        [
            b'data: {"id":"c2","model":"gpt-4o-mini","choices":[{"delta":{"content":"4"}}]}\n\n',
            b'data: {"id":"c2","model":"gpt-4o-mini","choices":[{"delta":{},"finish_reason":"stop"}]}\n\n'
            b'data: {"id":"c2","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":1}}\n\n',
            b"data: [DONE]\n\n",
        ],
    ),
]


def run_calls(recorder: Recorder, start: float) -> None:
    """Each call in CALLS through the recorder's hooks, as mitmproxy calls them."""
    for i, (host, path, body, status, content_type, chunks) in enumerate(CALLS):
        flow = tflow.tflow()
        flow.request = http.Request.make(
            "POST", f"https://{host}{path}", body, {"authorization": f"Bearer {SECRET}", "x-llmtap-app": "a"}
        )
        flow.request.timestamp_start = start + i
        MetadataHeaders().requestheaders(flow)
        recorder.request(flow)
        flow.response = http.Response.make(status, b"", {"content-type": content_type})
        flow.response.timestamp_start = start + i + 0.25
        recorder.responseheaders(flow)
        if callable(flow.response.stream):
            for chunk in [*chunks, b""]:
                flow.response.stream(chunk)
        else:
            flow.response.content = b"".join(chunks)
        flow.response.timestamp_end = start + i + 0.5
        recorder.response(flow)


def stored(tmp: Path, recorder_kw: dict, prices: PriceBook, overrides=None) -> tuple[list[bytes], list[dict]]:
    """The spool lines the recorder wrote, and the rows they became in DuckDB."""
    spool, db = Spool(tmp / "spool"), tmp / "llmtap.duckdb"
    ensure_schema(db)
    recorder = Recorder(ProviderRegistry(), spool, SpanRecorder(None), prices, **recorder_kw)
    run_calls(recorder, START)
    sealed = spool.seal()
    assert sealed is not None
    lines = sealed.read_bytes().splitlines()
    assert Ingester(spool, db, overrides).run_once()
    with duckdb.connect(str(db), read_only=True) as con:
        cursor = con.execute(
            "SELECT c.*, b.request_body, b.response_body, s.name AS span_name, s.attributes "
            "FROM llm_calls c LEFT JOIN call_bodies b USING (call_id) LEFT JOIN spans s USING (call_id) "
            "ORDER BY started_at"
        )
        names = [d[0] for d in cursor.description]
        rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    return lines, rows


def comparable(row: dict) -> dict:
    """A row without what is unique to each recording: ids, and the time to first byte (a
    stream's is when its first chunk reached the recorder; it is checked apart)."""
    attributes = {
        k: v
        for k, v in json.loads(row["attributes"]).items()
        if k not in ("llmtap.call_id", "llmtap.ttft_ms")
    }
    skip = {"call_id", "trace_id", "span_id", "attributes", "ingested_at", "ttft_ms"}
    return {k: v for k, v in row.items() if k not in skip} | {"attributes": attributes}


def test_loader_builds_the_rows_the_proxy_would_have_built(tmp_path, prices):
    deferred_lines, deferred = stored(tmp_path / "deferred", {}, prices)
    in_flight_lines, in_flight = stored(tmp_path / "now", {"rows_in_flight": True}, prices)

    assert all(line.startswith(b'{"' + OBSERVED_KEY.encode()) for line in deferred_lines)
    assert not any(line.startswith(b'{"' + OBSERVED_KEY.encode()) for line in in_flight_lines)
    assert len(deferred) == len(in_flight) == len(CALLS)
    assert [comparable(r) for r in deferred] == [comparable(r) for r in in_flight]

    chat, messages, limited, no_usage, not_json, streamed = deferred
    assert (chat["input_tokens"], chat["cache_read_tokens"], chat["output_tokens"]) == (1200, 1024, 7)
    assert chat["request_features"] == ["tools"] and chat["max_output_tokens"] == 20
    assert chat["cost_usd"] is not None and chat["cost_usd"] > 0 and chat["app"] == "a"
    assert chat["ttft_ms"] == pytest.approx(250) and chat["latency_ms"] == pytest.approx(500)
    assert (messages["provider"], messages["cache_read_tokens"]) == ("anthropic", 5)
    assert messages["input_tokens"] == 15  # the contract's convention: cache reads included
    assert limited["error"].startswith("rate_limit_exceeded") and limited["input_tokens"] is None
    assert no_usage["usage_source"] == "estimated"
    assert not_json["error"] == "http 400" and not_json["request_model"] is None
    assert streamed["ttft_ms"] > 0  # the first chunk reached the recorder after the (earlier) start
    assert streamed["stream"] and streamed["output_tokens"] == 1 and streamed["finish_reasons"] == ["stop"]


def test_secrets_never_reach_the_spool_or_the_store(tmp_path, prices):
    lines, rows = stored(tmp_path, {}, prices)
    assert SECRET.encode() not in b"".join(lines)
    assert all(SECRET not in json.dumps(row, default=str) for row in rows)
    assert "[REDACTED]" in rows[4]["request_body"]


@pytest.mark.parametrize("mode", ["metadata", "redacted"])
def test_modes_that_must_not_spool_bodies_build_rows_in_flight(tmp_path, prices, mode):
    lines, rows = stored(tmp_path, {"capture_mode": mode}, prices)
    assert not any(line.startswith(b'{"' + OBSERVED_KEY.encode()) for line in lines)
    assert rows[0]["input_tokens"] == 1200
    if mode == "metadata":
        assert b"2+2?" not in b"".join(lines)


def test_a_row_that_cannot_be_built_is_stored_as_observed(tmp_path, prices, monkeypatch, caplog):
    def broken(self, seen, secrets=()):
        raise RuntimeError("bug")

    monkeypatch.setattr(RowBuilder, "row", broken)
    _, rows = stored(tmp_path, {}, prices)
    assert len(rows) == len(CALLS)
    assert rows[0]["status_code"] == 200 and rows[0]["app"] == "a" and rows[0]["input_tokens"] is None
    assert "2+2?" in rows[0]["request_body"]
    assert "internal error building the row" in caplog.text


def test_the_loader_child_prices_with_the_configs_overrides(tmp_path, prices):
    config = tmp_path / "llmtap.toml"
    config.write_text('[prices."gpt-4o-mini-2024-07-18"]\ninput = 1000\noutput = 2000\n')
    settings = load_settings(data_dir=str(tmp_path / "data"), config_file=str(config))
    assert isinstance(settings.prices["gpt-4o-mini-2024-07-18"], Rates)
    paths = settings.paths
    ensure_schema(paths.db)
    spool = Spool(paths.spool)
    recorder = Recorder(ProviderRegistry(), spool, SpanRecorder(None), prices)
    run_calls(recorder, START)
    worker = IngestWorker(spool, paths.db, settings.prices)
    worker.start()
    worker._nudge()  # as the sealer thread does every half second
    deadline = time.monotonic() + 60
    while list(paths.spool.glob("*.jsonl")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not list(paths.spool.glob("*.jsonl")), "the child did not load the spool"
    with read_connection(paths.db) as con:  # the child may still hold it for a moment
        cost, ref = con.execute(
            "SELECT cost_usd, price_ref FROM llm_calls WHERE request_model = 'gpt-4o-mini' AND NOT stream"
        ).fetchone()
    assert worker.stop(10)
    # the answer's model is priced: 1200 input (1024 cached, no cache rate: the input rate)
    # and 7 output tokens, per million
    assert cost == Decimal(1200 * 1000 + 7 * 2000) / 1_000_000
    assert ref == "override: gpt-4o-mini-2024-07-18"
