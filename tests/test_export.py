"""``llmtap export`` run as a real command against the store of a running proxy."""

from __future__ import annotations

import csv
import io
import json
import os
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import duckdb
import httpx
import pytest

from tests.conftest import LLM_HOSTS
from tests.proxyproc import ProxyProcess
from tests.upstream import FakeUpstream, Received, Reply

ROOT = Path(__file__).parent.parent
CHAT_URL = "https://api.openai.com/v1/chat/completions"

#: The llm_calls columns the contract promises (CONTRACT.md), in its order.
CONTRACT_COLUMNS = [
    "call_id",
    "started_at",
    "ended_at",
    "provider",
    "api",
    "method",
    "host",
    "path",
    "status_code",
    "stream",
    "request_model",
    "response_model",
    "routed_from_model",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "usage_source",
    "latency_ms",
    "ttft_ms",
    "cost_usd",
    "input_cost_usd",
    "output_cost_usd",
    "price_ref",
    "app",
    "user_id",
    "session_id",
    "properties",
    "trace_id",
    "span_id",
    "error",
]
MODELS = ["model-a", "model-b", "model-c"]


def echo_chat(received: Received) -> Reply:
    """A chat completion naming the requested model, with usage derived from its index."""
    model = json.loads(received.body)["model"]
    n = MODELS.index(model) + 1 if model in MODELS else 9
    return Reply.json(
        {
            "id": f"resp-{model}-{time.time_ns()}",
            "model": f"{model}-2025",
            "choices": [{"index": 0, "message": {"content": "ok"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10 * n, "completion_tokens": n},
        }
    )


def client(proxy: ProxyProcess) -> httpx.Client:
    verify = ssl.create_default_context(cafile=proxy.data_dir / "ca-bundle.pem")
    return httpx.Client(proxy=proxy.url, verify=verify, timeout=10)


def chat(c: httpx.Client, model: str) -> None:
    r = c.post(CHAT_URL, json={"model": model, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text


def llmtap(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """The installed ``llmtap`` command (the console script next to this interpreter)."""
    script = Path(sys.executable).with_name("llmtap")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "app.cli"]
    return subprocess.run(
        [*cmd, *args], cwd=ROOT, capture_output=True, timeout=60, env={**os.environ, **(env or {})}
    )


def ok(result: subprocess.CompletedProcess[bytes]) -> subprocess.CompletedProcess[bytes]:
    assert result.returncode == 0, result.stderr.decode()
    return result


def jsonl(out: bytes) -> list[dict]:
    return [json.loads(line) for line in out.decode().splitlines()]


@dataclass
class Recorded:
    proxy: ProxyProcess
    data_dir: str
    marks: list[datetime]  # marks[i] lies between call i and call i+1


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recorded]:
    """A running proxy whose store holds three calls (model-a, -b, -c) spread in time."""
    with FakeUpstream() as upstream:
        upstream.routes["/v1/chat/completions"] = echo_chat
        data_dir = tmp_path_factory.mktemp("export") / "data"
        proxy = ProxyProcess(data_dir, {h: upstream.url for h in LLM_HOSTS}).start()
        try:
            marks = []
            with client(proxy) as c:
                for i, model in enumerate(MODELS):
                    if i:
                        time.sleep(0.3)
                        marks.append(datetime.now(UTC))
                        time.sleep(0.3)
                    chat(c, model)
            assert len(proxy.rows(wait_for=3)) == 3
            yield Recorded(proxy, str(data_dir), marks)
        finally:
            assert proxy.stop() == 0, proxy.log.read_text()


def test_jsonl_to_stdout_has_contract_columns(recorded):
    rows = jsonl(ok(llmtap("export", "--data-dir", recorded.data_dir)).stdout)
    assert [r["request_model"] for r in rows] == MODELS  # ordered by start time
    for row in rows:
        missing = [c for c in CONTRACT_COLUMNS if c not in row]
        assert not missing, f"export lacks contract columns {missing}"
    a = rows[0]
    assert (a["provider"], a["api"], a["method"], a["host"], a["path"]) == (
        "openai",
        "chat",
        "POST",
        "api.openai.com",
        "/v1/chat/completions",
    )
    assert (a["status_code"], a["stream"], a["response_model"]) == (200, False, "model-a-2025")
    assert [(r["input_tokens"], r["output_tokens"]) for r in rows] == [(10, 1), (20, 2), (30, 3)]
    assert len({r["call_id"] for r in rows}) == 3
    started = [datetime.fromisoformat(r["started_at"]) for r in rows]
    assert all(t.tzinfo is not None for t in started)
    assert started[0] < recorded.marks[0] < started[1] < recorded.marks[1] < started[2]


def test_export_uses_llmtap_data_dir_variable(recorded):
    rows = jsonl(ok(llmtap("export", env={"LLMTAP_DATA_DIR": recorded.data_dir})).stdout)
    assert [r["request_model"] for r in rows] == MODELS


def test_csv_has_header_and_rows(recorded):
    out = ok(llmtap("export", "--data-dir", recorded.data_dir, "--format", "csv")).stdout.decode()
    reader = csv.DictReader(io.StringIO(out))
    assert reader.fieldnames is not None
    assert not [c for c in CONTRACT_COLUMNS if c not in reader.fieldnames]
    rows = list(reader)
    assert [r["request_model"] for r in rows] == MODELS
    assert [int(r["input_tokens"]) for r in rows] == [10, 20, 30]


def test_parquet_out_file_reads_back_with_types(recorded, tmp_path):
    target = tmp_path / "calls.parquet"
    result = ok(
        llmtap("export", "--data-dir", recorded.data_dir, "--format", "parquet", "--out", str(target))
    )
    assert result.stdout == b""
    with duckdb.connect() as con:
        rel = con.sql(f"SELECT * FROM read_parquet('{target}') ORDER BY started_at")
        types = dict(zip(rel.columns, (str(t) for t in rel.types), strict=True))
        rows = rel.fetchall()
    assert not [c for c in CONTRACT_COLUMNS if c not in types]
    assert types["started_at"] == "TIMESTAMP WITH TIME ZONE"
    assert (types["status_code"], types["input_tokens"], types["stream"], types["latency_ms"]) == (
        "INTEGER",
        "BIGINT",
        "BOOLEAN",
        "DOUBLE",
    )
    assert types["cost_usd"] == "DECIMAL(18,9)"
    model = list(types).index("request_model")
    assert [r[model] for r in rows] == MODELS


def test_parquet_to_stdout(recorded, tmp_path):
    out = ok(llmtap("export", "--data-dir", recorded.data_dir, "--format", "parquet")).stdout
    assert out[:4] == b"PAR1" and out[-4:] == b"PAR1"
    target = tmp_path / "stdout.parquet"
    target.write_bytes(out)
    with duckdb.connect() as con:
        assert con.execute(f"SELECT count(*) FROM read_parquet('{target}')").fetchone() == (3,)


def test_out_file_jsonl(recorded, tmp_path):
    target = tmp_path / "sub" / "calls.jsonl"
    target.parent.mkdir()
    result = ok(llmtap("export", "--data-dir", recorded.data_dir, "--out", str(target)))
    assert result.stdout == b""
    assert "wrote 3 calls" in result.stderr.decode()
    assert [r["request_model"] for r in jsonl(target.read_bytes())] == MODELS


def test_since_until_filter(recorded):
    first, second = (m.isoformat() for m in recorded.marks)

    def models(*args: str) -> list[str]:
        return [
            r["request_model"]
            for r in jsonl(ok(llmtap("export", "--data-dir", recorded.data_dir, *args)).stdout)
        ]

    assert models("--since", first) == ["model-b", "model-c"]
    assert models("--until", first) == ["model-a"]
    assert models("--since", first, "--until", second) == ["model-b"]
    assert models("--since", second) == ["model-c"]
    # The same instant written with another offset, and a naive time taken as UTC.
    plus2 = recorded.marks[0].astimezone(timezone(timedelta(hours=2))).isoformat()
    assert models("--since", plus2) == ["model-b", "model-c"]
    naive = recorded.marks[1].replace(tzinfo=None).isoformat()
    assert models("--until", naive) == ["model-a", "model-b"]
    # Dates alone.
    assert models("--since", "2000-01-01") == MODELS
    assert models("--until", "2000-01-01") == []
    csv_out = ok(llmtap("export", "--data-dir", recorded.data_dir, "--format", "csv", "--since", second))
    assert len(list(csv.DictReader(io.StringIO(csv_out.stdout.decode())))) == 1


@pytest.mark.parametrize("flag", ["--since", "--until"])
def test_bad_time_is_a_clear_error(recorded, flag):
    result = llmtap("export", "--data-dir", recorded.data_dir, flag, "yesterday")
    err = result.stderr.decode()
    assert result.returncode != 0
    assert "Traceback" not in err, err
    assert "error" in err and "'yesterday'" in err and "ISO" in err, err
    assert result.stdout == b""


def test_unknown_format_is_rejected(recorded):
    result = llmtap("export", "--data-dir", recorded.data_dir, "--format", "xml")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr.decode()
    assert "xml" in result.stderr.decode()


def test_no_store_is_a_clear_error(tmp_path):
    empty = tmp_path / "nothing-here"
    empty.mkdir()
    result = llmtap("export", "--data-dir", str(empty))
    err = result.stderr.decode()
    assert result.returncode != 0
    assert "Traceback" not in err, err
    assert "no llmtap store" in err and str(empty) in err, err
    assert list(empty.iterdir()) == [], "export must not create a store"


def test_export_while_traffic_flows(proxy, upstream):
    """Exports run while calls are being recorded: each succeeds, and none disturbs traffic."""
    upstream.routes["/v1/chat/completions"] = echo_chat
    stop = threading.Event()
    done: list[int] = []
    failures: list[str] = []

    def traffic() -> None:
        with client(proxy) as c:
            while not stop.is_set():
                try:
                    chat(c, "model-a")
                    done.append(1)
                except (httpx.HTTPError, AssertionError) as exc:
                    failures.append(repr(exc))

    threads = [threading.Thread(target=traffic, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        counts = []
        for _ in range(3):
            counts.append(len(jsonl(ok(llmtap("export", "--data-dir", str(proxy.data_dir))).stdout)))
            time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert failures == []
    assert counts == sorted(counts) and counts[-1] > 0, counts
    assert len(proxy.rows(wait_for=len(done))) == len(done)
    final = jsonl(ok(llmtap("export", "--data-dir", str(proxy.data_dir))).stdout)
    assert len(final) == len(done)
