"""Hostile input through the real proxy: bad bytes, surrogates, broken stores, header floods,
echoed keys, deleted spools, killed proxies. Nothing may stop recording or keep a secret.

Each test here reproduces one finding of a hostile run against an earlier llmtap (issue
"Trust under hostile input"); the fuzz suite (tests/test_fuzz.py) generalises them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import httpx
import pytest

from collector.settings.paths import QUARANTINE_DIR
from collector.storage.database import Ingester, ensure_schema, read_connection
from collector.storage.spool import Quarantine, Spool
from tests.conftest import LLM_HOSTS, running_proxy
from tests.proxyproc import ProxyProcess
from tests.upstream import Reply

CHAT = "https://api.openai.com/v1/chat/completions"
REPLY = {
    "id": "chatcmpl-1",
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [{"finish_reason": "stop", "message": {"content": "hi"}}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1},
}


def curl(proxy: ProxyProcess, *args: str | bytes, body: str = '{"model":"gpt-4o-mini","messages":[]}') -> str:
    """curl through the proxy; ``args`` may be bytes (a header with a non-UTF-8 byte)."""
    command: list[str | bytes] = ["curl", "-sS", "-N", CHAT, "-H", "content-type: application/json"]
    command += ["-d", body, *args]
    result = subprocess.run(command, env={**os.environ, **proxy.env}, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.decode("utf-8", "replace")


def client(proxy: ProxyProcess) -> httpx.Client:
    ctx = ssl.create_default_context(cafile=str(proxy.data_dir / "ca-bundle.pem"))
    return httpx.Client(proxy=proxy.url, verify=ctx, timeout=60)


def test_bad_bytes_and_lone_surrogates_are_stored_and_recording_goes_on(tmp_path, upstream):
    upstream.routes["/v1/chat/completions"] = Reply(
        body=b'{"id":"r\\udc80","model":"gpt-4o\\ud800","usage":{"prompt_tokens":3,"completion_tokens":1}}',
        headers={"content-type": "application/json"},
    )
    data = tmp_path / "data"
    with running_proxy(data, upstream) as proxy:
        curl(proxy, "-H", b"X-Llmtap-App: app\xff", "-H", b"X-Llmtap-Property-Team: t\xfe\x80")
        curl(proxy, body='{"model":"gpt-4o\\ud800","messages":[]}')
        curl(proxy, "-H", b"X-Llmtap-User: u\xc3")
        rows = proxy.rows("SELECT * FROM llm_calls ORDER BY started_at", wait_for=3)
        assert len(rows) == 3
        assert rows[0]["app"] == "app\ufffd"
        assert json.loads(rows[0]["properties"]) == {"team": "t\ufffd\ufffd"}
        assert rows[1]["request_model"] == "gpt-4o\ufffd"
        assert rows[1]["response_model"] == "gpt-4o\ufffd" and rows[1]["response_id"] == "r\ufffd"
        assert rows[2]["user_id"] == "u\ufffd"
    # The next start neither exits nor finds anything left behind.
    with running_proxy(data, upstream) as proxy:
        curl(proxy)
        assert len(proxy.rows(wait_for=4)) == 4
    assert not list((data / "spool").glob("*.jsonl"))
    assert Quarantine(data / "spool" / QUARANTINE_DIR).count() == 0


def test_a_broken_store_with_calls_in_the_spool_does_not_stop_the_proxy_starting(tmp_path, upstream):
    upstream.routes["/v1/chat/completions"] = Reply.json(REPLY)
    data = tmp_path / "data"
    with running_proxy(data, upstream) as proxy:
        curl(proxy)
        assert len(proxy.rows(wait_for=1)) == 1
        os.truncate(proxy.db, 0)
        (data / "llmtap.duckdb").write_bytes(b"not a duckdb file" * 100)
        curl(proxy)
        proxy.stop()  # the call cannot be stored: it stays in the spool
    assert list((data / "spool").glob("sealed-*.jsonl"))
    proxy = ProxyProcess(data, dict.fromkeys(LLM_HOSTS, upstream.url)).start()
    try:
        assert json.loads(curl(proxy))["id"] == "chatcmpl-1"  # it serves traffic
    finally:
        proxy.stop()
    log = proxy.log.read_text()
    assert "Error logged during startup" not in log
    assert "cannot write to" in log and "calls stay in the spool" in log


def test_many_metadata_headers_neither_stall_the_proxy_nor_reach_upstream(tmp_path, upstream):
    upstream.routes["/v1/chat/completions"] = Reply.json(REPLY)
    with running_proxy(tmp_path / "data", upstream) as proxy:
        body = b'{"model":"gpt-4o-mini","messages":[]}'
        flood = b"".join(b"X-Llmtap-Property-P%d: v%d\r\n" % (i, i) for i in range(30_000))
        head = (
            b"POST http://api.openai.com/v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\n"
            b"Content-Type: application/json\r\nX-Llmtap-App: flood\r\n" + flood
        )
        request = head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body
        answers: list[bytes] = []

        def send_flood() -> None:
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=60) as sock:
                sock.sendall(request)
                answers.append(b"".join(iter(lambda: sock.recv(65536), b"")))

        started = time.monotonic()
        flooding = threading.Thread(target=send_flood)
        flooding.start()
        time.sleep(0.2)
        with client(proxy) as c:  # a small call meanwhile is answered at once
            small = time.monotonic()
            assert c.post(CHAT, json={"model": "gpt-4o-mini", "messages": []}).status_code == 200
            small_s = time.monotonic() - small
        flooding.join(60)
        flood_s = time.monotonic() - started
        assert answers and answers[0].startswith(b"HTTP/1.1 200"), answers[:1]
        # Generous bounds: linear work takes well under a second here; quadratic took minutes.
        assert small_s < 5 and flood_s < 20, (small_s, flood_s)
        rows = proxy.rows("SELECT * FROM llm_calls WHERE app = 'flood'", wait_for=1)
        assert len(json.loads(rows[0]["properties"])) == 64
    assert not any(k.lower().startswith("x-llmtap") for r in upstream.received for k in r.headers)


def test_deleting_the_spool_directory_keeps_the_calls_of_its_active_file(tmp_path):
    spool = Spool(tmp_path / "spool")
    lines = [b'{"call_id":"c%d"}\n' % i for i in range(6)]
    for line in lines[:3]:
        spool.append(line)
    shutil.rmtree(tmp_path / "spool")  # the active file is open and now unlinked
    for line in lines[3:]:
        spool.append(line)  # still "written", to the unlinked file
    assert spool.seal() is None  # nothing to hand over: its lines went back to memory
    sealed = spool.seal()  # they are written anew, to a new directory
    assert sealed is not None and sealed.read_bytes() == b"".join(lines)
    assert oct(sealed.parent.stat().st_mode & 0o777) == "0o700"


def test_recording_goes_on_after_the_spool_directory_is_deleted(tmp_path, upstream):
    upstream.routes["/v1/chat/completions"] = Reply.json(REPLY)
    with running_proxy(tmp_path / "data", upstream) as proxy, client(proxy) as c:
        assert c.post(CHAT, json={"model": "gpt-4o-mini", "messages": []}).status_code == 200
        assert len(proxy.rows(wait_for=1)) == 1
        shutil.rmtree(proxy.data_dir / "spool")
        for _ in range(5):
            assert c.post(CHAT, json={"model": "gpt-4o-mini", "messages": []}).status_code == 200
        assert len(proxy.rows(wait_for=6)) == 6


def test_calls_of_a_killed_proxy_are_loaded_without_a_restart(tmp_path, upstream):
    upstream.routes["/v1/chat/completions"] = Reply.json(REPLY)
    proxy = ProxyProcess(tmp_path / "data", dict.fromkeys(LLM_HOSTS, upstream.url)).start()
    with client(proxy) as c:
        for _ in range(20):
            assert c.post(CHAT, json={"model": "gpt-4o-mini", "messages": []}).status_code == 200
    assert proxy.proc is not None
    os.kill(proxy.proc.pid, signal.SIGKILL)  # not reaped: a zombie, as under a supervisor that waits late
    try:
        assert len(proxy.rows(wait_for=20)) == 20
    finally:
        proxy.proc.wait(10)


def test_the_loader_sets_aside_lines_it_cannot_load_and_loads_the_rest(tmp_path, caplog):
    """Files on disk are outside input: a corrupt spool file must not stop the loader."""
    spool_dir, db = tmp_path / "spool", tmp_path / "llmtap.duckdb"
    ensure_schema(db)

    def row(call_id: str, **extra: object) -> bytes:
        line = {"call_id": call_id, "started_at": "2026-01-01T00:00:00+00:00", "provider": "openai", **extra}
        return json.dumps(line).encode() + b"\n"

    spool_dir.mkdir()
    (spool_dir / "sealed-1-1-1.jsonl").write_bytes(
        row("ok-1")
        + b'{"call_id":"surrogate","started_at":"2026-01-01T00:00:00+00:00","app":"a\\ud800"}\n'
        + b"not json at all\n"
        + b'["an", "array"]\n'
        + b'{"call_id":"nan","started_at":"2026-01-01T00:00:00+00:00",'
        + b'"input_tokens":NaN,"latency_ms":1e999}\n'
        + row("huge", output_tokens=10**30, cost_usd="1e40", status_code=-(2**40), properties={"k": "\udcff"})
        + b'{"call_id":"no-start"}\n'
        + b'{"observed": {"call_id": "x", "bogus": 1}}\n'
        + row("ok-2", stream="yes", finish_reasons="stop", started_at_extra=1)
    )
    ingester = Ingester(Spool(spool_dir), db)
    assert ingester.run_once()
    with read_connection(db) as con:
        stored = dict(con.execute("SELECT call_id, app FROM llm_calls").fetchall())
        huge = con.execute(
            "SELECT output_tokens, cost_usd, status_code, properties FROM llm_calls WHERE call_id = 'huge'"
        ).fetchone()
        nan = con.execute("SELECT input_tokens, latency_ms FROM llm_calls WHERE call_id = 'nan'").fetchone()
    assert set(stored) == {"ok-1", "surrogate", "nan", "huge", "ok-2"}
    assert stored["surrogate"] == "a\ufffd"
    assert huge == (None, None, None, '{"k":"\ufffd"}')
    assert nan == (None, None)
    quarantine = Quarantine(spool_dir / QUARANTINE_DIR)
    assert quarantine.count() == 4
    assert oct((spool_dir / QUARANTINE_DIR).stat().st_mode & 0o777) == "0o700"
    assert all(oct(p.stat().st_mode & 0o777) == "0o600" for p in (spool_dir / QUARANTINE_DIR).iterdir())
    assert "set aside 4 spool line(s)" in caplog.text
    assert not list(spool_dir.glob("*.jsonl"))
    command = [sys.executable, "-m", "app.cli", "report", "--data-dir", str(tmp_path)]
    report = subprocess.run(command, capture_output=True, text=True)
    assert report.returncode == 0, report.stderr
    kept = spool_dir / QUARANTINE_DIR
    assert f"4 recorded call(s) could not be loaded into the store; they are kept in {kept}" in report.stderr


def test_lines_duckdb_refuses_are_set_aside_one_by_one(tmp_path, monkeypatch):
    """A line that passes llmtap's checks but that DuckDB's reader still refuses (here: the
    checks are switched off) costs only itself."""
    import collector.calls.rows as rows

    spool_dir, db = tmp_path / "spool", tmp_path / "llmtap.duckdb"
    ensure_schema(db)
    spool_dir.mkdir()
    good = b'{"call_id":"good","started_at":"2026-01-01T00:00:00+00:00"}\n'
    bad = b'{"call_id":"bad","started_at":"2026-01-01T00:00:00+00:00","app":"\\ud800"}\n'
    (spool_dir / "sealed-1-1-1.jsonl").write_bytes(good + bad + good.replace(b"good", b"good2"))

    def unchecked(sealed: Path, builder, set_aside) -> Path:
        built = sealed.with_name("built-" + sealed.name)
        built.write_bytes(sealed.read_bytes())
        return built

    monkeypatch.setattr(rows, "built_spool_file", unchecked)
    assert Ingester(Spool(spool_dir), db).run_once()
    with duckdb.connect(str(db), read_only=True) as con:
        stored = sorted(r[0] for r in con.execute("SELECT call_id FROM llm_calls").fetchall())
    assert stored == ["good", "good2"]
    assert Quarantine(spool_dir / QUARANTINE_DIR).count() == 1


@pytest.mark.parametrize("mode", ["full", "redacted", "metadata"])
def test_keys_an_upstream_echoes_back_are_never_kept(tmp_path, upstream, mode):
    from tests.test_spans import OTLPCollector

    key = "Zq7" + os.urandom(20).hex()  # not key-shaped: only the exact cut can find it
    goog = "AIza" + os.urandom(18).hex()

    def echo(received) -> Reply:
        headers = {name.lower(): value for name, value in received.headers.items()}
        seen = headers.get("authorization", "").removeprefix("Bearer ")
        if "stream" in received.body.decode():
            return Reply.sse([("error", {"error": {"message": f"key {seen} revoked"}})])
        if "fail" in received.body.decode():
            return Reply.json({"error": {"message": f"Incorrect API key provided: {seen}"}}, status=401)
        return Reply.json({**REPLY, "id": f"resp-{seen}", "model": f"gpt-4o-{seen}"})

    upstream.routes["/v1/chat/completions"] = echo
    config = tmp_path / "llmtap.toml"
    config.write_text(f'capture = "{mode}"\n')
    with OTLPCollector() as otlp:
        with (
            running_proxy(
                tmp_path / "data",
                upstream,
                extra_args=["--config", str(config)],
                env={"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url},
            ) as proxy,
            client(proxy) as c,
        ):
            headers = {"Authorization": f"Bearer {key}", "X-Llmtap-App": f"app {goog}"}
            for body in ({"model": "m"}, {"model": "m", "fail": 1}, {"model": "m", "stream": True}):
                c.post(CHAT + f"?key={goog}", json=body, headers=headers)
            rows = proxy.rows(wait_for=3)
            assert len(rows) == 3
            exports = b""
            for fmt in ("jsonl", "csv", "parquet"):
                out = tmp_path / f"export.{fmt}"
                command = ["export", "--data-dir", str(proxy.data_dir), "--format", fmt, "--out", str(out)]
                subprocess.run([sys.executable, "-m", "app.cli", *command], check=True, capture_output=True)
                exports += out.read_bytes()
                if fmt == "parquet":  # compressed on disk: read it back as text
                    exports += str(duckdb.sql(f"SELECT * FROM '{out}'").fetchall()).encode()
        received = b"".join([*(request.SerializeToString() for request in otlp.requests), *otlp.metrics])
    assert otlp.requests, "no span was exported"
    assert otlp.metrics, "no metrics were exported"
    with duckdb.connect(str(proxy.db), read_only=True) as con:
        tables = ("llm_calls", "call_bodies", "spans")
        stored = str([con.execute(f"SELECT * FROM {t}").fetchall() for t in tables])
    errors = [r["error"] for r in rows if r["error"]]
    assert any("Incorrect API key provided: [REDACTED]" in e for e in errors), errors
    for secret in (key, goog):
        for where, content in (
            ("store", stored.encode()),
            ("export", exports),
            ("otlp", received),
            ("log", proxy.log.read_bytes()),
        ):
            assert secret.encode() not in content, f"{secret} in {where} ({mode})"
    # The upstream saw the real key: llmtap only keeps it out of its own records.
    assert all(f"Bearer {key}" in r.headers.values() for r in upstream.received)


def _modes(root: Path) -> dict[str, str]:
    """Every entry under ``root`` (and ``root`` itself) with its permission bits."""
    found = {".": oct(root.stat().st_mode & 0o777)}
    for path in root.rglob("*"):
        if not path.is_symlink():
            found[str(path.relative_to(root))] = oct(path.stat().st_mode & 0o777)
    return found


def test_the_data_directory_is_private(tmp_path, upstream):
    upstream.routes["/v1/chat/completions"] = Reply.json(REPLY)
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)
    stale = data / "budget_alerts.json"
    stale.write_text("{}")
    os.chmod(stale, 0o644)  # as an older llmtap left it
    config = tmp_path / "llmtap.toml"
    config.write_text('[budgets.tiny]\nlimit_usd = 0.000001\nperiod = "day"\n')
    with running_proxy(data, upstream, extra_args=["--config", str(config)]) as proxy, client(proxy) as c:
        for _ in range(3):
            assert c.post(CHAT, json={"model": "gpt-4o-mini", "messages": []}).status_code == 200
        assert len(proxy.rows(wait_for=3)) == 3
        deadline = time.monotonic() + 10
        while '"alerts": []' in stale.read_text() or stale.read_text() == "{}":
            assert time.monotonic() < deadline, "no budget alert was written"
            time.sleep(0.1)
        during = _modes(data)
    after = _modes(data)
    for modes in (during, after):
        assert modes["."] == "0o700"
        assert "llmtap.duckdb" in modes and "budget_alerts.json" in modes
        wrong = {
            name: mode
            for name, mode in modes.items()
            if mode != ("0o700" if (data / name).is_dir() else "0o600")
        }
        assert not wrong, wrong


def test_writing_rules_keeps_a_private_rules_file_private(tmp_path, upstream):
    upstream.routes["/v1/chat/completions"] = Reply.json(REPLY)
    with running_proxy(tmp_path / "data", upstream) as proxy, client(proxy) as c:
        assert c.post(CHAT, json={"model": "gpt-4o-mini", "messages": []}).status_code == 200
        assert len(proxy.rows(wait_for=1)) == 1
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules: []\n")
    os.chmod(rules, 0o600)
    fresh = tmp_path / "new-rules.yaml"
    for path in (rules, fresh):
        command = ["recommend", "--data-dir", str(tmp_path / "data"), "--write-rules", "--rules", str(path)]
        result = subprocess.run([sys.executable, "-m", "app.cli", *command], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_verbose_logs_never_show_secret_headers_or_key_parameters(tmp_path, upstream):
    """HTTP/2 (curl --http2): hpack and mitmproxy print every header at debug level."""
    upstream.routes["/v1/chat/completions"] = Reply.json(REPLY)
    key, cookie, query = (f"{name}{os.urandom(12).hex()}" for name in ("Zbearer", "Zcookie", "Zquery"))
    with running_proxy(tmp_path / "data", upstream, extra_args=["-v"]) as proxy:
        curl(
            proxy,
            "--http2",
            "-H",
            f"Authorization: Bearer {key}",
            "-H",
            f"Cookie: session={cookie}",
            "-H",
            f"x-api-key: {key}",
        )
        url = f"https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent?key={query}"
        env = {**os.environ, **proxy.env}
        subprocess.run(["curl", "-sS", "--http2", url, "-d", "{}"], env=env, check=True, capture_output=True)
        assert len(proxy.rows(wait_for=2)) == 2
    log = proxy.log.read_text()
    for secret in (key, cookie, query):
        assert secret not in log


def test_a_request_with_thousands_of_secret_values_costs_little_and_keeps_no_body(tmp_path):
    """Each secret value cost a scan of each kept body: 20,000 cookies made that 20,000 scans
    of up to 8 MiB. Past privacy.MAX_SECRET_VALUES the bodies are not kept; the short fields
    are still cleaned of every value (the upstream echoes one in its response id here)."""
    from mitmproxy import http
    from mitmproxy.test import tflow

    from collector.calls.spans import SpanRecorder
    from collector.pricing.book import PriceBook
    from collector.providers import ProviderRegistry
    from collector.proxy.addons.metadata import MetadataHeaders
    from collector.proxy.addons.recorder import Recorder
    from collector.proxy.call import CAPTURE_KEY
    from collector.trust.privacy import MAX_SECRET_VALUES

    spool, db = Spool(tmp_path / "spool"), tmp_path / "llmtap.duckdb"
    ensure_schema(db)
    recorder = Recorder(ProviderRegistry(), spool, SpanRecorder(None), PriceBook())
    cookies = "; ".join(f"c{i}=value{i:08d}" for i in range(20_000))
    echoed = "value00012345"
    flow = tflow.tflow()
    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": echoed * 10_000}]})
    flow.request = http.Request.make("POST", CHAT, body.encode(), {"cookie": cookies})
    MetadataHeaders().requestheaders(flow)
    recorder.request(flow)
    capture = flow.metadata[CAPTURE_KEY]
    assert len(capture.secrets) > MAX_SECRET_VALUES and not capture.keep_bodies
    flow.response = http.Response.make(200, json.dumps({**REPLY, "id": echoed}).encode())
    flow.response.timestamp_end = flow.request.timestamp_start + 0.5
    recorder.response(flow)
    assert Ingester(spool, db).run_once()
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM llm_calls").fetchone() == (1,)
        bodies = con.execute("SELECT request_body, response_body FROM call_bodies").fetchall()
        assert bodies in ([], [(None, None)])
        assert con.execute("SELECT input_tokens, response_id FROM llm_calls").fetchone() == (3, "[REDACTED]")
