from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.proxyproc import ProxyProcess
from tests.upstream import FakeUpstream

LLM_HOSTS = ("api.openai.com", "api.anthropic.com")


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as server:
        yield server


@pytest.fixture
def proxy(tmp_path: Path, upstream: FakeUpstream) -> Iterator[ProxyProcess]:
    """A real llmtap proxy (subprocess) sending both OpenAI and Anthropic hosts to ``upstream``."""
    proc = ProxyProcess(tmp_path / "data", {h: upstream.url for h in LLM_HOSTS}).start()
    yield proc
    if proc.proc is not None and proc.proc.poll() is None:
        assert proc.stop() == 0, proc.log.read_text()
