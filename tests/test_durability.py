"""Durability of recorded calls through the real proxy process and a real DuckDB file.

* ``kill -9`` under load loses no call whose response the client fully received, and
  a restart loads each exactly once.
* A reader process looping over the store never errors while the proxy writes, sees
  the count grow, and sees a finished call within 2 s.
* SIGTERM and SIGINT exit 0 with every call in the store and nothing left in the spool.
"""

from __future__ import annotations

import json
import signal
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from collector.storage.database import read_connection
from tests.conftest import LLM_HOSTS
from tests.proxyproc import ProxyProcess
from tests.upstream import FakeUpstream, Received, Reply

ROOT = Path(__file__).parent.parent
CHAT_URL = "https://api.openai.com/v1/chat/completions"


class UniqueChat:
    """Route answering each request with an OpenAI chat completion carrying a fresh id."""

    def __init__(self) -> None:
        self.issued: set[str] = set()

    def __call__(self, received: Received) -> Reply:
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        self.issued.add(rid)
        return Reply.json(
            {
                "id": rid,
                "object": "chat.completion",
                "model": "gpt-4o-mini-2024-07-18",
                "choices": [{"index": 0, "message": {"content": "ok"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 7, "completion_tokens": 3},
            }
        )


def client(proxy: ProxyProcess) -> httpx.Client:
    verify = ssl.create_default_context(cafile=proxy.data_dir / "ca-bundle.pem")
    return httpx.Client(proxy=proxy.url, verify=verify, timeout=10)


def chat(c: httpx.Client) -> str:
    """One call; returns the response id once the whole body was received and parsed."""
    r = c.post(CHAT_URL, json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text
    return r.json()["id"]


class Load:
    """Client threads calling through the proxy until stopped; keeps every id fully received."""

    def __init__(self, proxy: ProxyProcess, threads: int) -> None:
        self.proxy = proxy
        self.received: list[str] = []
        self.failures = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with client(self.proxy) as c:
                    while not self._stop.is_set():
                        self.received.append(chat(c))
            except (httpx.HTTPError, AssertionError, ValueError):
                self.failures += 1
                time.sleep(0.02)

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(15)


def stored_ids(db: Path) -> dict[str, int]:
    with read_connection(db) as con:
        rows = con.execute("SELECT response_id, count(*) FROM llm_calls GROUP BY response_id").fetchall()
    return dict(rows)


def spool_files(proxy: ProxyProcess) -> list[str]:
    spool = proxy.data_dir / "spool"
    return sorted(p.name for p in spool.iterdir()) if spool.exists() else []


def wait_until(predicate, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


@pytest.fixture
def unique_chat(upstream: FakeUpstream) -> UniqueChat:
    route = UniqueChat()
    upstream.routes["/v1/chat/completions"] = route
    return route


def test_kill9_under_load_loses_no_completed_call(proxy, upstream, unique_chat):
    with Load(proxy, threads=6) as load:
        assert wait_until(lambda: len(load.received) >= 20, 10), f"no traffic; log:\n{proxy.log.read_text()}"
        time.sleep(2.0)
        proxy.kill9()
        time.sleep(0.5)  # the clients keep trying and fail: the kill happened mid-load
    received = list(load.received)
    assert load.failures > 0, "the load had stopped before the kill"
    assert len(set(received)) == len(received)

    again = ProxyProcess(proxy.data_dir, {h: upstream.url for h in LLM_HOSTS}).start()
    try:
        again.rows("SELECT response_id FROM llm_calls", wait_for=len(received))
    finally:
        assert again.stop() == 0, again.log.read_text()

    counts = stored_ids(proxy.db)
    missing = [rid for rid in received if rid not in counts]
    assert not missing, f"{len(missing)} of {len(received)} fully received calls lost, e.g. {missing[:3]}"
    duplicated = {rid: n for rid, n in counts.items() if n != 1}
    assert not duplicated, f"calls stored more than once: {list(duplicated.items())[:3]}"
    assert set(counts) <= unique_chat.issued, "a stored call has an id the upstream never sent"
    assert spool_files(proxy) == []


READER = """
import json, sys, time
from pathlib import Path
from collector.storage.database import read_connection

db, stop, seconds = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
errors, counts = [], []
print("ready", flush=True)
deadline = time.monotonic() + seconds
while not stop.exists() and time.monotonic() < deadline:
    try:
        with read_connection(db) as con:
            counts.append(con.execute("SELECT count(*) FROM llm_calls").fetchone()[0])
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
print(json.dumps({"errors": errors, "counts": counts}), flush=True)
"""


@contextmanager
def reader_process(db: Path, seconds: float = 20.0) -> Iterator[dict]:
    """A separate process reading the store in a tight loop until the block ends (at most
    ``seconds``); yields a dict that gets its report: errors and every count it read."""
    stop = db.parent.parent / f"stop-reader-{uuid.uuid4().hex}"
    proc = subprocess.Popen(
        [sys.executable, "-c", READER, str(db), str(stop), str(seconds)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read() if proc.stderr else ""
    report: dict = {}
    try:
        yield report
    finally:
        stop.touch()
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        report.update(json.loads(out.strip().splitlines()[-1]))


def probe_visibility(proxy: ProxyProcess, probes: int) -> list[float]:
    """Seconds from each finished call to its row being readable (waiting up to 3 s each)."""
    delays = []
    with client(proxy) as c:
        for _ in range(probes):
            rid = chat(c)
            done = time.monotonic()
            wait_until(lambda rid=rid: rid in stored_ids(proxy.db), 3.0)
            delays.append(round(time.monotonic() - done, 2))
    return delays


def test_reader_loop_during_writes_never_errors(proxy, upstream, unique_chat):
    delays = probe_visibility(proxy, probes=3)  # also: the store has rows before the reader starts
    assert max(delays) < 2.0, f"seconds until each call was readable: {delays}"

    with reader_process(proxy.db) as report:
        with Load(proxy, threads=3) as load:
            time.sleep(3.0)
        time.sleep(0.5)
    assert len(load.received) > 10 and load.failures == 0

    assert report["errors"] == [], report["errors"][:5]
    counts = report["counts"]
    assert len(counts) > 20, "the reader hardly ran"
    assert counts == sorted(counts), "the reader saw the row count go down"
    assert counts[-1] > counts[0], f"the reader never saw new rows: {counts[0]} .. {counts[-1]}"
    total = 3 + len(load.received)
    assert len(proxy.rows(wait_for=total)) == total


def test_finished_call_visible_within_2s_while_readers_loop(proxy, upstream, unique_chat):
    """Readers polling the store (a dashboard, a notebook) must not keep the ingester out."""
    with client(proxy) as c:
        chat(c)
    assert proxy.rows(wait_for=1)
    with reader_process(proxy.db) as first, reader_process(proxy.db) as second:
        delays = probe_visibility(proxy, probes=3)
    assert first["errors"] == second["errors"] == []
    assert max(delays) < 2.0, f"seconds until each call was readable: {delays}"


@contextmanager
def store_held(db: Path) -> Iterator[None]:
    """Another process keeps a read-only connection open, so no writer can get in."""
    code = (
        "import duckdb, sys; c = duckdb.connect(sys.argv[1], read_only=True); "
        "print('held', flush=True); input()"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdin is not None
    assert proc.stdout.readline().strip() == "held"
    try:
        yield
    finally:
        proc.stdin.write("\n")
        proc.stdin.close()
        assert proc.wait(10) == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_exits_zero_with_every_call_stored(proxy, upstream, unique_chat, sig):
    ids = []
    # A reader holding the store keeps the calls in the spool, so the signal arrives with
    # work still pending, and the clean exit has to load it.
    with store_held(proxy.db), client(proxy) as c:
        ids = [chat(c) for _ in range(8)]
        time.sleep(0.6)  # at least one ingester tick, which must not lose anything
        assert spool_files(proxy), "calls should still be in the spool while the store is held"
    code = proxy.stop(sig)
    log = proxy.log.read_text()
    assert code == 0, log
    assert "Traceback" not in log, log
    assert spool_files(proxy) == []
    counts = stored_ids(proxy.db)
    assert counts == dict.fromkeys(ids, 1)
    assert "8 calls recorded" in log


def test_proxy_starts_while_a_reader_holds_the_store(tmp_path, upstream, unique_chat):
    """A notebook or dashboard with the store open must not stop the proxy from starting."""
    first = ProxyProcess(tmp_path / "data", {h: upstream.url for h in LLM_HOSTS}).start()
    assert first.stop() == 0  # the store now exists
    second = ProxyProcess(first.data_dir, {h: upstream.url for h in LLM_HOSTS})
    with store_held(first.db):
        second.start()
        with client(second) as c:
            rid = chat(c)
    try:
        assert [r["response_id"] for r in second.rows("SELECT response_id FROM llm_calls", wait_for=1)] == [
            rid
        ]
    finally:
        assert second.stop() == 0, second.log.read_text()
