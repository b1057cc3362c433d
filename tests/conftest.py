from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.demo_data import demo_data  # noqa: F401 - one demo store per session, for several modules
from tests.pgserver import PgServer
from tests.proxyproc import ProxyProcess
from tests.upstream import FakeUpstream

LLM_HOSTS = ("api.openai.com", "api.anthropic.com")


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as server:
        yield server


@contextmanager
def running_proxy(
    data_dir: Path, upstream: FakeUpstream, upstream_hosts: Iterable[str] = LLM_HOSTS, **kw
) -> Iterator[ProxyProcess]:
    """A real llmtap proxy (subprocess) sending ``upstream_hosts`` (default: the OpenAI and
    Anthropic hosts) to ``upstream``; on exit it must stop cleanly (exit 0)."""
    proc = ProxyProcess(data_dir, dict.fromkeys(upstream_hosts, upstream.url), **kw).start()
    try:
        yield proc
    except BaseException:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.stop()  # a failing test must not leave its proxy running
        raise
    if proc.proc is not None and proc.proc.poll() is None:
        assert proc.stop() == 0, proc.log.read_text()


@pytest.fixture
def proxy(tmp_path: Path, upstream: FakeUpstream) -> Iterator[ProxyProcess]:
    with running_proxy(tmp_path / "data", upstream) as proc:
        yield proc


@pytest.fixture(scope="module")
def browser() -> Iterator:
    """Debian's chromium driven by Playwright (no browser download), for the dashboard tests."""
    from playwright.sync_api import sync_playwright

    from tests.test_browser import CHROMIUM, CHROMIUM_ARGS

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A private PostgreSQL cluster for the session (tests/pgserver.py), removed afterwards;
    each test makes its own database with ``pg_server.create_database()``."""
    server = PgServer()
    try:
        yield server.init()
    finally:
        server.remove()
