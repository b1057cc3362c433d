"""The spool loader child process of a real proxy: it is replaced when it dies, and it
finishes its work when the proxy goes away."""

from __future__ import annotations

import json
import os
import signal
import ssl
import time
from pathlib import Path

import httpx

from tests.conftest import running_proxy
from tests.upstream import Reply

CHAT_URL = "https://api.openai.com/v1/chat/completions"
REPLY = {
    "id": "r1",
    "model": "gpt-4o-mini",
    "choices": [],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1},
}


def loader_pids(pid: int) -> list[int]:
    """The proxy's child processes running ``collector.storage.loader``."""
    children = [
        c for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()
    ]
    return [
        int(c) for c in children if b"collector.storage.loader" in Path(f"/proc/{c}/cmdline").read_bytes()
    ]


def chat(proxy, n: int) -> None:
    ctx = ssl.create_default_context(cafile=str(proxy.data_dir / "ca-bundle.pem"))
    with httpx.Client(proxy=proxy.url, verify=ctx, timeout=30) as client:
        for _ in range(n):
            assert client.post(CHAT_URL, json={"model": "gpt-4o-mini", "messages": []}).json() == REPLY


def test_a_killed_loader_is_replaced_and_no_call_is_lost(tmp_path, upstream):
    upstream.routes["/v1/chat/completions"] = Reply.json(REPLY)
    with running_proxy(tmp_path / "data", upstream) as proxy:
        assert proxy.proc is not None
        chat(proxy, 2)
        assert len(proxy.rows(wait_for=2)) == 2
        (first,) = loader_pids(proxy.proc.pid)
        os.kill(first, signal.SIGKILL)
        chat(proxy, 3)
        assert len(proxy.rows(wait_for=5)) == 5
        (second,) = loader_pids(proxy.proc.pid)
        assert second != first
    assert "the spool loader exited" in proxy.log.read_text()
    assert list((proxy.data_dir / "spool").iterdir()) == []


def test_loader_stores_what_a_killed_proxy_sealed_and_exits(tmp_path, upstream):
    upstream.routes["/v1/chat/completions"] = Reply.json(REPLY)
    with running_proxy(tmp_path / "data", upstream) as proxy:
        assert proxy.proc is not None
        chat(proxy, 3)
        (loader,) = loader_pids(proxy.proc.pid)
        time.sleep(0.6)  # a seal tick: the three calls are in a sealed file or already stored
        proxy.kill9()
    deadline = time.monotonic() + 15
    while Path(f"/proc/{loader}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{loader}").exists(), "the loader outlived its proxy"
    assert len(proxy.rows(wait_for=3)) == 3


def test_a_loader_that_grew_exits_for_a_fresh_one_after_loading(tmp_path, monkeypatch):
    """With any growth counting as too much, the loader loads the sealed file, then asks to be
    replaced; what it loaded is in the store exactly once."""
    from collector.storage import loader
    from collector.storage.database import Ingester, read_connection
    from collector.storage.spool import Spool

    spool = Spool(tmp_path / "spool")
    db = tmp_path / "llmtap.duckdb"
    ingester = Ingester(spool, db)
    ingester.run_once()  # creates the store before the loader measures its starting size
    call = {"call_id": "c1", "started_at": "2026-01-01T00:00:00+00:00", "provider": "openai"}
    spool.append(json.dumps(call).encode() + b"\n")
    spool.seal()
    monkeypatch.setattr(loader, "RECYCLE_GROWTH_BYTES", -1)
    read_end, write_end = os.pipe()
    os.write(write_end, b".")  # the first batch sets the baseline
    os.write(write_end, b".")
    try:
        assert loader.serve(ingester, read_end) == loader.RECYCLE_EXIT
    finally:
        os.close(read_end)
        os.close(write_end)
    with read_connection(db) as con:
        assert con.execute("SELECT call_id FROM llm_calls").fetchall() == [("c1",)]
