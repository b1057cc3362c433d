"""Costs of recorded corpus calls, replayed through the real proxy, against prices worked out
by hand from the providers' published per-million-token prices."""

from __future__ import annotations

import json
import ssl
from decimal import Decimal
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest

from tests.corpus import CORPUS
from tests.proxyproc import ProxyProcess
from tests.test_corpus_replay import case_url, recorded_reply
from tests.upstream import FakeUpstream, Received


def usd(*parts: tuple[int, str]) -> Decimal:
    """Sum of tokens x USD-per-million-tokens."""
    return (
        sum((Decimal(tokens) * Decimal(per_million) for tokens, per_million in parts), Decimal(0)) / 1_000_000
    )


def long_context_variant() -> dict:
    """gemini/stream_25pro_thinking with its prompt count raised past 200k tokens."""
    case = json.loads((CORPUS / "gemini/stream_25pro_thinking.json").read_text())
    case["response"]["body"] = case["response"]["body"].replace(
        '"promptTokenCount": 34', '"promptTokenCount": 250000'
    )
    assert "250000" in case["response"]["body"]
    return case


EXPECTED = {
    # Anthropic claude-sonnet-4.5: $3 input, $0.30 cache read, $3.75 cache write (5 min), $15 output.
    # 3 uncached + 1111 read + 418 written in, 33 out.
    "anthropic/messages_cache_read_and_write": usd((3, "3"), (1111, "0.30"), (418, "3.75"), (33, "15")),
    # OpenAI gpt-4o-mini: $0.15 input, $0.075 cached input, $0.60 output. 1149 in (1024 cached), 353 out.
    "openai/chat_prompt_cache_hit_1024": usd((125, "0.15"), (1024, "0.075"), (353, "0.60")),
    # OpenAI gpt-5-nano: $0.05 input, $0.40 output; the 192 reasoning tokens are part of the 228 out.
    "openai/chat_reasoning_gpt5nano": usd((11, "0.05"), (228, "0.40")),
    # OpenAI gpt-5 at the priority tier the response reports: $2.50 input, $20 output.
    "openai/chat_gpt5_service_tier": usd((8, "2.50"), (82, "20")),
    # Gemini 2.5 Flash: $0.30 input, $0.03 cached, $2.50 output (thinking included).
    # 3520 in (3512 cached), 2 candidates + 42 thoughts out.
    "gemini/generate_cached_content": usd((8, "0.30"), (3512, "0.03"), (44, "2.50")),
    # Gemini 2.5 Pro above 200k prompt tokens: $2.50 input, $15 output for all tokens.
    # 250000 in, 469 candidates + 787 thoughts out.
    "gemini/stream_25pro_thinking_250k": usd((250000, "2.50"), (1256, "15")),
    # OpenRouter reports the cost itself: usage.cost.
    "openrouter/chat_gpt5mini_reasoning_cost": Decimal("0.00435825"),
}


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> dict[str, dict]:
    cases = {
        name: json.loads((CORPUS / f"{name}.json").read_text())
        for name in EXPECTED
        if not name.endswith("_250k")
    }
    cases["gemini/stream_25pro_thinking_250k"] = long_context_variant()
    hosts = {urlsplit(c["request"]["url"]).hostname for c in cases.values()}

    def serve(received: Received) -> object:
        return recorded_reply(cases[dict(parse_qsl(urlsplit(received.path).query))["llmtap_case"]])

    with FakeUpstream() as upstream:
        upstream.default = serve
        proxy = ProxyProcess(
            tmp_path_factory.mktemp("costs") / "data", dict.fromkeys(hosts, upstream.url)
        ).start()
        try:
            ctx = ssl.create_default_context(cafile=str(proxy.data_dir / "ca-bundle.pem"))
            with httpx.Client(proxy=proxy.url, verify=ctx, timeout=30) as client:
                for name, case in cases.items():
                    req = case["request"]
                    client.request(req["method"], case_url(case, name), content=req["body"] or b"")
            stored = proxy.rows(wait_for=len(cases))
        finally:
            assert proxy.stop() == 0
    return {dict(parse_qsl(urlsplit(r["path"]).query))["llmtap_case"]: r for r in stored}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_cost_matches_published_prices(rows, name):
    row = rows[name]
    assert row["cost_usd"] == EXPECTED[name].quantize(Decimal("1e-9")), row["price_ref"]
    if name.startswith("openrouter/"):
        assert "provider-reported" in row["price_ref"]
    else:
        assert row["input_cost_usd"] + row["output_cost_usd"] == row["cost_usd"]
    if name.endswith("_250k"):
        assert "200000" in row["price_ref"]
