"""The spool and the store with real files: torn lines, exactly-once loading, an unusable
spool directory, a failing write, a broken database; and the real proxy with a broken store."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import httpx
import pytest

from collector.storage import schema
from collector.storage.database import Ingester, ingest_file, read_connection
from collector.storage.spool import Spool
from tests.conftest import LLM_HOSTS
from tests.proxyproc import ProxyProcess
from tests.upstream import Reply

GARBAGE = b"this is not a duckdb file\n" * 1000


def line(call_id: str, seconds: int = 0) -> bytes:
    """One spool line as the recorder writes it: every llm_calls column plus body and span."""
    row: dict = dict.fromkeys(schema.LLM_CALLS)
    row.update(
        call_id=call_id,
        started_at=f"2026-01-01T00:00:{seconds:02d}+00:00",
        ended_at=f"2026-01-01T00:00:{seconds:02d}.5+00:00",
        provider="openai",
        api="chat",
        status_code=200,
        stream=False,
        request_model="gpt-4o-mini",
        input_tokens=10,
        output_tokens=2,
        usage_source="provider",
        properties={"team": "core"},
        finish_reasons=["stop"],
        response_id=f"resp-{call_id}",
    )
    row["body"] = {"capture_mode": "full", "request_body": "{}", "response_body": "{}"}
    row["span"] = {
        "trace_id": "0" * 31 + "1",
        "span_id": "0" * 15 + "1",
        "parent_span_id": None,
        "name": "chat gpt-4o-mini",
        "kind": "CLIENT",
        "start_time": row["started_at"],
        "end_time": row["ended_at"],
        "status": "OK",
        "attributes": {"gen_ai.request.model": "gpt-4o-mini"},
    }
    return json.dumps(row).encode() + b"\n"


def call_ids(db: Path) -> list[str]:
    with read_connection(db, timeout=5) as con:
        return [
            r[0] for r in con.execute("SELECT call_id FROM llm_calls ORDER BY started_at, call_id").fetchall()
        ]


def table_count(db: Path, table: str) -> int:
    with read_connection(db, timeout=5) as con:
        return con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def dead_pid() -> int:
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(proc.stdout)


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "data" / "spool"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "data" / "llmtap.duckdb"


def test_unterminated_last_line_of_dead_process_is_dropped(spool_dir, db, caplog):
    spool_dir.mkdir(parents=True)
    orphan = spool_dir / f"active-{dead_pid()}-{time.time_ns()}-1.jsonl"
    torn = line("c4", 4)[:57]
    orphan.write_bytes(line("c1", 1) + line("c2", 2) + line("c3", 3) + torn)

    ingester = Ingester(Spool(spool_dir), db)
    with caplog.at_level(logging.WARNING):
        assert ingester.run_once() is True
    assert call_ids(db) == ["c1", "c2", "c3"]
    assert table_count(db, "spans") == 3 and table_count(db, "call_bodies") == 3
    assert list(spool_dir.iterdir()) == []
    assert "unfinished spool line" in caplog.text


def test_active_file_of_live_process_is_left_alone(spool_dir, db):
    spool_dir.mkdir(parents=True)
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        active = spool_dir / f"active-{owner.pid}-{time.time_ns()}-1.jsonl"
        active.write_bytes(line("c1", 1) + line("c2", 2)[:20])  # its owner may still finish the line
        ingester = Ingester(Spool(spool_dir), db)
        assert ingester.run_once() is True
        assert active.exists() and active.read_bytes().endswith(line("c2", 2)[:20])
        assert not db.exists() or call_ids(db) == []
    finally:
        owner.kill()
        owner.wait()
    assert ingester.run_once() is True
    assert call_ids(db) == ["c1"]
    assert list(spool_dir.iterdir()) == []


def test_sealed_file_is_ingested_exactly_once(spool_dir, db):
    spool = Spool(spool_dir)
    spool.append(line("c1", 1))
    spool.append(line("c2", 2))
    spool.seal()
    (sealed,) = spool.sealed_files()
    content = sealed.read_bytes()
    ingester = Ingester(spool, db)
    assert ingester.run_once() is True
    assert not sealed.exists()
    assert call_ids(db) == ["c1", "c2"]

    # The process died after the commit but before deleting the file: it reappears.
    sealed.write_bytes(content)
    assert ingester.run_once() is True
    assert Ingester(Spool(spool_dir), db).run_once() is True  # and a restarted proxy too
    assert not sealed.exists()
    assert call_ids(db) == ["c1", "c2"]
    assert table_count(db, "spans") == 2 and table_count(db, "call_bodies") == 2

    # Loading the same file twice on one connection adds nothing the second time.
    sealed.write_bytes(content)
    with duckdb.connect(str(db)) as con:
        assert ingest_file(con, sealed) == 0
        assert con.execute("SELECT rows FROM spool_ingested WHERE name = ?", [sealed.name]).fetchall() == [
            (2,)
        ]
    assert call_ids(db) == ["c1", "c2"]


def test_unusable_spool_keeps_lines_in_memory_until_it_works_again(spool_dir, db, caplog):
    spool = Spool(spool_dir)
    ingester = Ingester(spool, db)
    spool.append(line("c1", 1))
    assert ingester.run_once() is True
    assert call_ids(db) == ["c1"]

    # Root ignores permission bits, so make the path unusable: a regular file where the
    # spool directory should be.
    moved = spool_dir.with_name("spool-moved")
    spool_dir.rename(moved)
    spool_dir.write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="llmtap.spool"):
        spool.append(line("c2", 2))
        spool.append(line("c3", 3))
        assert spool.backlog == 2
        assert ingester.run_once() is True  # nothing sealed; must not raise
        spool.append(line("c4", 4))
        assert spool.backlog == 3
        assert ingester.pending() == 1

        spool_dir.unlink()
        moved.rename(spool_dir)
        assert ingester.run_once() is True  # the seal writes the backlog out first
        assert spool.backlog == 0
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "cannot write to spool" in errors[0].getMessage()
    assert "writable again" in caplog.text
    assert ingester.run_once() is True
    assert call_ids(db) == ["c1", "c2", "c3", "c4"]
    assert list(spool_dir.iterdir()) == []


@contextlib.contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """Writes past ``limit`` bytes fail with EFBIG, like a full disk (works as root too)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)


def test_write_failing_mid_line_leaves_no_torn_line(spool_dir, db):
    spool = Spool(spool_dir)
    first = line("c1", 1)
    spool.append(first)
    (active,) = spool_dir.glob("active-*.jsonl")
    with file_size_limit(len(first) + 40):  # the next line fits only in part
        spool.append(line("c2", 2))
        assert spool.backlog == 1
        assert active.read_bytes() == first, "a half-written line was left in the spool"
    spool.append(line("c3", 3))
    assert spool.backlog == 0
    assert Ingester(spool, db).run_once() is True
    assert call_ids(db) == ["c1", "c2", "c3"]


def break_db(db: Path) -> bytes:
    """Replace the store with garbage (atomically); returns the good bytes."""
    assert not db.with_name(db.name + ".wal").exists()
    good = db.read_bytes()
    tmp = db.with_name("broken.tmp")
    tmp.write_bytes(GARBAGE)
    os.replace(tmp, db)
    return good


def restore_db(db: Path, good: bytes) -> None:
    tmp = db.with_name("restore.tmp")
    tmp.write_bytes(good)
    os.replace(tmp, db)


def broken_store_keeps_spool(spool: Spool, ingester: Ingester, caplog) -> None:
    """With the store broken: run_once fails without raising, logs once, keeps the files."""
    spool.append(line("c2", 2))
    with caplog.at_level(logging.WARNING, logger="llmtap.store"):
        assert ingester.run_once() is False
        spool.append(line("c3", 3))
        assert ingester.run_once() is False
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, errors
    assert "cannot write to" in errors[0] and "not a valid DuckDB database file" in errors[0]
    assert len(spool.sealed_files()) == 2


def test_broken_database_keeps_spool_and_catches_up_once_restored(spool_dir, db, caplog):
    spool = Spool(spool_dir)
    ingester = Ingester(spool, db)
    spool.append(line("c1", 1))
    assert ingester.run_once() is True
    good = break_db(db)

    broken_store_keeps_spool(spool, ingester, caplog)

    restore_db(db, good)
    with caplog.at_level(logging.WARNING, logger="llmtap.store"):
        assert ingester.run_once() is True
    assert "writable again" in caplog.text
    assert call_ids(db) == ["c1", "c2", "c3"]
    assert list(spool_dir.iterdir()) == []


def test_broken_database_removed_then_ingestion_starts_a_fresh_store(spool_dir, db, caplog):
    spool = Spool(spool_dir)
    ingester = Ingester(spool, db)
    spool.append(line("c1", 1))
    assert ingester.run_once() is True
    break_db(db)

    broken_store_keeps_spool(spool, ingester, caplog)

    db.unlink()  # the user moves the broken file aside
    assert ingester.run_once() is True, caplog.text
    assert call_ids(db) == ["c2", "c3"]
    assert list(spool_dir.iterdir()) == []


def test_broken_database_is_not_mistaken_for_a_lock(tmp_path, caplog):
    """A path containing "lock" (here "blocked") must not make a broken store look busy."""
    data = tmp_path / "blocked"
    spool, db = Spool(data / "spool"), data / "llmtap.duckdb"
    data.mkdir()
    db.write_bytes(GARBAGE)
    spool.append(line("c1", 1))
    with caplog.at_level(logging.WARNING, logger="llmtap.store"):
        assert Ingester(spool, db).run_once() is False
    assert "not a valid DuckDB database file" in caplog.text
    assert len(spool.sealed_files()) == 1


# -- the real proxy ------------------------------------------------------------------------


CHAT_URL = "https://api.openai.com/v1/chat/completions"


def curl_chat(proxy: ProxyProcess) -> dict:
    result = subprocess.run(
        [
            *("curl", "-sS", "--fail-with-body", CHAT_URL, "-H", "content-type: application/json"),
            *("-d", json.dumps({"model": "gpt-4o-mini", "messages": []})),
        ],
        env={**os.environ, **proxy.env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def chat_reply() -> Reply:
    return Reply.json(
        {
            "id": "r1",
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [{"finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1},
        }
    )


def test_proxy_traffic_unaffected_by_broken_store(proxy, upstream):
    upstream.routes["/v1/chat/completions"] = chat_reply()
    assert curl_chat(proxy)["id"] == "r1"
    assert len(proxy.rows(wait_for=1)) == 1
    spool = proxy.data_dir / "spool"
    assert list(spool.glob("*.jsonl")) == []  # the ingester is idle: nothing has the store open
    good = break_db(proxy.db)

    for _ in range(3):
        assert curl_chat(proxy)["id"] == "r1"
    deadline = time.monotonic() + 5
    while "not a valid DuckDB database file" not in proxy.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    log = proxy.log.read_text()
    assert f"cannot write to {proxy.db}" in log and "not a valid DuckDB database file" in log, log
    assert "calls stay in the spool" in log
    assert list(spool.glob("sealed-*.jsonl")), "the calls should wait in the spool"

    restore_db(proxy.db, good)
    assert len(proxy.rows(wait_for=4)) == 4
    assert proxy.stop() == 0, proxy.log.read_text()
    assert list(spool.iterdir()) == []
    assert "writable again" in proxy.log.read_text()


def test_proxy_starts_and_serves_with_a_broken_store(tmp_path, upstream):
    """A broken store must not stop traffic: the proxy starts, says what is wrong, spools calls."""
    upstream.routes["/v1/chat/completions"] = chat_reply()
    data = tmp_path / "data"
    data.mkdir()
    (data / "llmtap.duckdb").write_bytes(GARBAGE)
    proxy = ProxyProcess(data, {h: upstream.url for h in LLM_HOSTS}).start()
    try:
        assert curl_chat(proxy)["id"] == "r1"
        time.sleep(1.0)
        log = proxy.log.read_text()
        assert "not a valid DuckDB database file" in log and "Traceback" not in log, log
    finally:
        proxy.stop()
    assert len(list((data / "spool").glob("sealed-*.jsonl"))) == 1


def test_full_disk_keeps_traffic_intact_and_stores_every_call_once_it_frees(tmp_path, upstream):
    """The proxy's writes past 1 MiB fail with EFBIG (RLIMIT_FSIZE set on the running proxy, as
    a full disk fails them): every answer still reaches the client byte for byte, the calls
    wait in memory, and all of them are stored once writes work again."""
    upstream.routes["/v1/chat/completions"] = chat_reply()
    proxy = ProxyProcess(tmp_path / "data", {h: upstream.url for h in LLM_HOSTS}).start()
    assert proxy.proc is not None
    ctx = ssl.create_default_context(cafile=str(proxy.data_dir / "ca-bundle.pem"))
    big = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 2**21}]})
    small = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
    direct = httpx.post(f"{upstream.url}/v1/chat/completions", content=small).content
    limits = resource.prlimit(proxy.proc.pid, resource.RLIMIT_FSIZE)
    with httpx.Client(proxy=proxy.url, verify=ctx, timeout=30) as client:
        assert client.post(CHAT_URL, content=small).content == direct
        assert len(proxy.rows(wait_for=1)) == 1
        resource.prlimit(proxy.proc.pid, resource.RLIMIT_FSIZE, (2**20, limits[1]))
        try:
            for body in (big, small, small):
                assert client.post(CHAT_URL, content=body).content == direct
            time.sleep(0.6)  # a seal tick while the disk is full
            assert "File too large" in proxy.log.read_text()
            assert len(proxy.rows()) == 1
        finally:
            resource.prlimit(proxy.proc.pid, resource.RLIMIT_FSIZE, limits)
        assert client.post(CHAT_URL, content=small).content == direct
    rows = proxy.rows("SELECT request_model, status_code, error FROM llm_calls", wait_for=5)
    assert rows == [{"request_model": "gpt-4o-mini", "status_code": 200, "error": None}] * 5
    with read_connection(proxy.db, timeout=5) as con:
        (longest,) = con.execute("SELECT max(length(request_body)) FROM call_bodies").fetchone()
    assert longest == len(big)  # the call that hit the limit is stored whole
    assert proxy.stop() == 0, proxy.log.read_text()
    log = proxy.log.read_text()
    assert "cannot write to spool" in log and "spool writable again" in log and "Traceback" not in log
    assert list((proxy.data_dir / "spool").iterdir()) == []
