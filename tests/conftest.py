from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.proxyproc import ProxyProcess
from tests.upstream import FakeUpstream

LLM_HOSTS = ("api.openai.com", "api.anthropic.com")


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as server:
        yield server


@contextmanager
def running_proxy(data_dir: Path, upstream: FakeUpstream, **kw) -> Iterator[ProxyProcess]:
    """A real llmtap proxy (subprocess) sending both OpenAI and Anthropic hosts to ``upstream``;
    on exit it must stop cleanly (exit 0)."""
    proc = ProxyProcess(data_dir, {h: upstream.url for h in LLM_HOSTS}, **kw).start()
    yield proc
    if proc.proc is not None and proc.proc.poll() is None:
        assert proc.stop() == 0, proc.log.read_text()


@pytest.fixture
def proxy(tmp_path: Path, upstream: FakeUpstream) -> Iterator[ProxyProcess]:
    with running_proxy(tmp_path / "data", upstream) as proc:
        yield proc
