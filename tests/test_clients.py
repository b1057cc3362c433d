"""The official ``openai`` and ``anthropic`` SDKs, configured only by ``llmtap env``, through the real proxy.

Each SDK call runs in its own Python subprocess whose environment is exactly what
``llmtap env --port P --data-dir D`` prints (plus a fake API key): the SDKs keep their
default base URLs (https://api.openai.com, https://api.anthropic.com), so the call only
succeeds if the SDK honours ``HTTPS_PROXY`` and trusts llmtap's CA through
``SSL_CERT_FILE``. The proxy sends those hosts to a local :class:`FakeUpstream` that
replays real recorded provider responses (``tests/fixtures/corpus``); streams are
replayed event by event with a delay between events.
"""

from __future__ import annotations

import gzip
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import running_proxy
from tests.corpus import CORPUS
from tests.proxyproc import ProxyProcess
from tests.upstream import FakeUpstream, Reply

ROOT = Path(__file__).parent.parent

PATHS = {"openai": "/v1/chat/completions", "anthropic": "/v1/messages"}
API = {"openai": "chat", "anthropic": "messages"}
HOSTS = {"openai": "api.openai.com", "anthropic": "api.anthropic.com"}
# Request fields passed as named SDK arguments; anything else in a recorded request goes in extra_body.
SDK_ARGS = {
    "openai": {"model", "messages", "stream", "stream_options", "reasoning_effort", "max_tokens"},
    "anthropic": {"model", "messages", "max_tokens", "system", "thinking", "temperature"},
}

# Runs in a clean subprocess: makes one SDK call described by the JSON spec in argv[1] and prints
# what the SDK handed back to the application.
SDK_SCRIPT = r"""
import json, sys

spec = json.loads(sys.argv[1])
kwargs = spec["kwargs"]
if spec["provider"] == "openai":
    import openai

    client = openai.OpenAI(max_retries=0, timeout=30)
    if spec["stream"]:
        text, usage, model, events = [], None, None, 0
        for chunk in client.chat.completions.create(**kwargs):
            events += 1
            model = chunk.model
            for choice in chunk.choices:
                text.append(choice.delta.content or "")
            if chunk.usage is not None:
                usage = chunk.usage.model_dump()
        out = {"text": "".join(text), "usage": usage, "model": model, "events": events}
    else:
        r = client.chat.completions.create(**kwargs)
        out = {"text": r.choices[0].message.content, "usage": r.usage.model_dump(), "model": r.model}
else:
    import anthropic

    client = anthropic.Anthropic(max_retries=0, timeout=30)
    if spec["stream"]:
        events = 0
        with client.messages.stream(**kwargs) as stream:
            for _ in stream:
                events += 1
            message = stream.get_final_message()
    else:
        events = None
        message = client.messages.create(**kwargs)
    out = {
        "text": "".join(b.text for b in message.content if b.type == "text"),
        "usage": message.usage.model_dump(),
        "model": message.model,
        "id": message.id,
        "events": events,
    }
out["base_url"] = str(client.base_url)
print(json.dumps(out))
"""


def load(provider: str, name: str) -> dict[str, Any]:
    return json.loads((CORPUS / provider / f"{name}.json").read_text())


def sse_chunks(body: str) -> list[bytes]:
    """A recorded event stream split into its events, each one chunk on the wire."""
    return [f"{block}\n\n".encode() for block in body.split("\n\n") if block.strip()]


def sse_data(body: str) -> list[dict[str, Any]]:
    out = []
    for block in body.split("\n\n"):
        for line in block.splitlines():
            if line.startswith("data:") and line[5:].strip().startswith("{"):
                out.append(json.loads(line[5:]))
    return out


def expected_text(provider: str, case: dict[str, Any]) -> str:
    """The assistant text the SDK should hand back, read straight from the recording."""
    body = case["response"]["body"]
    if not case["expected"]["stream"]:
        doc = json.loads(body)
        if provider == "openai":
            return doc["choices"][0]["message"]["content"]
        return "".join(b["text"] for b in doc["content"] if b["type"] == "text")
    parts = []
    for ev in sse_data(body):
        if provider == "openai":
            parts += [c["delta"].get("content") or "" for c in ev.get("choices") or ()]
        elif ev.get("type") == "content_block_delta" and ev["delta"]["type"] == "text_delta":
            parts.append(ev["delta"]["text"])
    return "".join(parts)


def expected_tokens(provider: str, exp: dict[str, Any]) -> tuple:
    """The five token columns under the contract's convention (input includes cache reads and writes)."""
    inp = exp["input_tokens"]
    if provider == "anthropic":
        inp = inp + (exp["cache_read_tokens"] or 0) + (exp["cache_write_tokens"] or 0)
    return (
        inp,
        exp["output_tokens"],
        exp["cache_read_tokens"],
        exp["cache_write_tokens"],
        exp["reasoning_tokens"],
    )


def llmtap_env(port: int, data_dir: Path) -> dict[str, str]:
    """Run the real `llmtap env` and parse its `export NAME=VALUE` lines as a shell would."""
    out = subprocess.run(
        [sys.executable, "-m", "app.cli", "env", "--port", str(port), "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    env = {}
    for line in out.splitlines():
        if not line.strip():
            continue
        words = shlex.split(line)
        assert len(words) == 2 and words[0] == "export", line
        name, sep, value = words[1].partition("=")
        assert sep, line
        env[name] = value
    return env


def clean_base_env() -> dict[str, str]:
    """This process's environment minus anything that could configure a proxy, CA or SDK."""
    drop = ("PROXY", "SSL_", "CA_BUNDLE", "CA_CERTS", "OPENAI", "ANTHROPIC")
    return {k: v for k, v in os.environ.items() if not any(d in k.upper() for d in drop)}


# One proxy and one upstream serve every case in this module (starting a proxy takes ~2 s);
# each test resets the upstream's script and picks out the one row its call added.
@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as server:
        yield server


@pytest.fixture(scope="module")
def proxy(tmp_path_factory, upstream) -> Iterator[ProxyProcess]:
    with running_proxy(tmp_path_factory.mktemp("clients") / "data", upstream) as proc:
        yield proc


@pytest.fixture(scope="module")
def sdk_env(proxy) -> dict[str, str]:
    """The SDK subprocess environment: exactly what `llmtap env` prints, plus fake API keys."""
    env = llmtap_env(proxy.port, proxy.data_dir)
    assert env["HTTPS_PROXY"] == f"http://127.0.0.1:{proxy.port}"
    assert Path(env["SSL_CERT_FILE"]) == proxy.data_dir / "ca-bundle.pem"
    return {
        **clean_base_env(),
        **env,
        "OPENAI_API_KEY": "sk-test-llmtap-0000",
        "ANTHROPIC_API_KEY": "sk-ant-test-llmtap-0000",
    }


def run_sdk(proxy, env: dict[str, str], provider: str, case: dict[str, Any]) -> dict[str, Any]:
    request = json.loads(case["request"]["body"])
    stream = case["expected"]["stream"]
    kwargs = {k: v for k, v in request.items() if k in SDK_ARGS[provider]}
    if provider == "anthropic":
        kwargs.pop("stream", None)  # messages.stream() sets it
    if extra := {k: v for k, v in request.items() if k not in SDK_ARGS[provider] and k != "stream"}:
        kwargs["extra_body"] = extra
    spec = {"provider": provider, "stream": stream, "kwargs": kwargs}
    result = subprocess.run(
        [sys.executable, "-c", SDK_SCRIPT, json.dumps(spec)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, f"SDK call failed:\n{result.stderr}\nproxy log:\n{proxy.log.read_text()}"
    return json.loads(result.stdout)


def serve(upstream, provider: str, case: dict[str, Any], encoding: str | None) -> tuple[int, float]:
    """Script the upstream with the recorded reply; returns (events, delay) for streams."""
    resp = case["response"]
    headers = {"content-type": resp["headers"]["content-type"]}
    if case["expected"]["stream"]:
        chunks = sse_chunks(resp["body"])
        delay = min(0.02, 0.6 / len(chunks))  # each stream lasts at most ~0.6 s
        upstream.routes[PATHS[provider]] = Reply(
            status=resp["status"], chunks=chunks, delay=delay, headers=headers
        )
        return len(chunks), delay
    body = resp["body"].encode()
    if encoding == "gzip":  # as the providers send it when the client accepts gzip
        body = gzip.compress(body)
        headers["content-encoding"] = "gzip"
    upstream.routes[PATHS[provider]] = Reply(status=resp["status"], body=body, headers=headers)
    return 0, 0.0


# (provider, corpus file, content-encoding of a non-streamed reply)
CASES = [
    ("openai", "chat_cache_read_gpt56", None),
    ("openai", "chat_reasoning_gpt5nano", "gzip"),
    ("openai", "chat_stream_include_usage_gpt4o", None),
    ("openai", "chat_stream_include_usage_gpt5", None),
    ("anthropic", "messages_cache_read_and_write", None),
    ("anthropic", "messages_thinking_37sonnet", "gzip"),
    ("anthropic", "messages_stream_cache_write", None),
    ("anthropic", "messages_stream_thinking_sonnet4", None),
]


@pytest.mark.parametrize(
    ("provider", "name", "encoding"),
    CASES,
    ids=[f"{p}-{n}" + (f"-{e}" if e else "") for p, n, e in CASES],
)
def test_sdk_call_through_proxy(proxy, upstream, sdk_env, provider, name, encoding):
    case = load(provider, name)
    exp = case["expected"]
    upstream.routes.clear()
    upstream.received.clear()
    seen = {r["call_id"] for r in proxy.rows()}
    n_events, delay = serve(upstream, provider, case, encoding)

    out = run_sdk(proxy, sdk_env, provider, case)

    # The SDK targeted the real provider URL and got the recorded answer back intact.
    assert out["base_url"].startswith(f"https://{HOSTS[provider]}")
    assert out["model"] == exp["model"]
    assert out["text"] == expected_text(provider, case) and out["text"]
    if provider == "openai":
        assert (out["usage"]["prompt_tokens"], out["usage"]["completion_tokens"]) == (
            exp["input_tokens"],
            exp["output_tokens"],
        )
    else:
        assert (out["usage"]["input_tokens"], out["usage"]["output_tokens"]) == (
            exp["input_tokens"],
            exp["output_tokens"],
        )
        assert out["usage"]["cache_read_input_tokens"] == exp["cache_read_tokens"]
        assert out["usage"]["cache_creation_input_tokens"] == exp["cache_write_tokens"]

    # The provider saw the SDK's own request, addressed to its own host.
    (received,) = upstream.received
    assert received.path.split("?")[0] == PATHS[provider]
    assert received.headers["host"] == HOSTS[provider]
    sent = json.loads(received.body)
    assert sent["model"] == exp["request_model"]
    assert sent.get("stream", False) is exp["stream"]

    rows = proxy.rows(wait_for=len(seen) + 1)
    (row,) = [r for r in rows if r["call_id"] not in seen]
    assert (row["provider"], row["api"], row["host"], row["method"]) == (
        provider,
        API[provider],
        HOSTS[provider],
        "POST",
    )
    assert (row["status_code"], row["stream"], row["error"]) == (200, exp["stream"], None)
    assert (row["request_model"], row["response_model"]) == (exp["request_model"], exp["model"])
    tokens = (
        row["input_tokens"],
        row["output_tokens"],
        row["cache_read_tokens"],
        row["cache_write_tokens"],
        row["reasoning_tokens"],
    )
    assert tokens == expected_tokens(provider, exp)
    assert row["usage_source"] == "provider"
    assert row["latency_ms"] > 0
    assert row["ttft_ms"] is not None and 0 < row["ttft_ms"] <= row["latency_ms"]
    if exp["stream"]:
        # Events were spread over (n-1) * delay after the first byte; half of that is a safe floor.
        spread_ms = (n_events - 1) * delay * 1000
        assert row["latency_ms"] - row["ttft_ms"] > 0.5 * spread_ms, (row["ttft_ms"], row["latency_ms"])
        assert row["latency_ms"] >= n_events * delay * 1000 * 0.9
