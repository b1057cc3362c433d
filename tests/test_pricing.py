"""Prices and costs: the catalogue against providers' published prices, overrides, reprice, report.

Expected costs are computed by hand from each provider's published price per million
tokens (written out below), not from genai-prices, so a wrong lookup, tier or
fallback shows up as a mismatch. Call dates are after 2026-10-14, when the bundled
catalogue's service-tier and batch variants start.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import duckdb
import pytest

from collector.pricing.book import PriceBook, cost_columns
from collector.pricing.rates import Rates
from collector.pricing.reprice import reprice
from collector.providers import builtin_providers
from collector.providers.base import Usage
from collector.settings.config import ConfigError, load_settings
from collector.storage import schema
from collector.storage.database import ensure_schema

WHEN = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
NANO = Decimal("0.000000001")
PRICES_IDS = {p.name: p.prices_id for p in builtin_providers()}
COST_COLUMNS = ("cost_usd", "input_cost_usd", "output_cost_usd", "price_ref")


def usd(*parts: tuple[int, str]) -> Decimal:
    """Sum of tokens x (USD per million tokens), rounded half-up to the stored 9 places."""
    exact = sum((Decimal(tokens) * Decimal(per_m) / 1_000_000 for tokens, per_m in parts), Decimal(0))
    return exact.quantize(NANO, ROUND_HALF_UP)


@pytest.fixture(scope="module")
def book() -> PriceBook:
    return PriceBook()


def price(book: PriceBook, provider: str, model: str | None, usage: Usage | None, **kw):
    kw.setdefault("service_tier", None)
    kw.setdefault("provider_cost_usd", None)
    kw.setdefault("when", WHEN)
    return book.price(prices_id=PRICES_IDS[provider], model=model, usage=usage, **kw)


def assert_cost(p, input_usd: Decimal, output_usd: Decimal, ref_contains: str) -> None:
    assert (p.input_cost_usd, p.output_cost_usd) == (input_usd, output_usd)
    assert p.cost_usd == input_usd + output_usd
    assert ref_contains in p.price_ref and "genai-prices 0.2." in p.price_ref


def test_cached_input_openai(book):
    # OpenAI gpt-4o: $2.50 input, $1.25 cached input, $10.00 output per 1M.
    p = price(book, "openai", "gpt-4o-2024-08-06", Usage(12_000, 800, cache_read_tokens=4_000))
    assert_cost(p, usd((8_000, "2.50"), (4_000, "1.25")), usd((800, "10.00")), "openai/gpt-4o")


def test_cache_write_and_read_anthropic(book):
    # Anthropic Claude Sonnet 4.5: $3 input, $3.75 5-minute cache write (1.25x), $0.30 cache
    # read, $15 output per 1M. llmtap's input_tokens include the cache reads and writes.
    usage = Usage(30_000, 2_000, cache_read_tokens=15_000, cache_write_tokens=5_000)
    p = price(book, "anthropic", "claude-sonnet-4-5-20250929", usage)
    expected_in = usd((10_000, "3"), (15_000, "0.30"), (5_000, "3.75"))
    assert_cost(p, expected_in, usd((2_000, "15")), "anthropic/claude-sonnet-4-5")
    assert "prompt >" not in p.price_ref


def test_reasoning_tokens_are_billed_as_output(book):
    # OpenAI o4-mini: $1.10 input, $0.275 cached input, $4.40 output per 1M; reasoning
    # tokens are output tokens (output_tokens already includes them).
    p = price(book, "openai", "o4-mini", Usage(2_000, 5_000, reasoning_tokens=4_000))
    assert_cost(p, usd((2_000, "1.10")), usd((5_000, "4.40")), "openai/o4-mini")


def test_reasoning_priced_separately(book):
    # Perplexity Sonar Deep Research: $2 input, $8 output, $3 reasoning per 1M (its citation
    # tokens and per-search fees are not in llmtap's usage columns, so they are not priced).
    usage = Usage(1_000, 5_000, reasoning_tokens=4_000)
    p = book.price(
        prices_id="perplexity",
        model="sonar-deep-research",
        usage=usage,
        service_tier=None,
        provider_cost_usd=None,
        when=WHEN,
    )
    assert_cost(p, usd((1_000, "2")), usd((1_000, "8"), (4_000, "3")), "perplexity/sonar-deep-research")
    # The same through an override's reasoning price.
    custom = PriceBook(
        {"r1": Rates(input=Decimal(1), output=Decimal(4), reasoning=Decimal(2), ref="override: r1")}
    )
    p = custom.price(
        prices_id=None, model="r1", usage=usage, service_tier=None, provider_cost_usd=None, when=WHEN
    )
    assert (p.input_cost_usd, p.output_cost_usd) == (usd((1_000, "1")), usd((1_000, "4"), (4_000, "2")))


def test_long_context_tier_gemini_cliff_at_200k(book):
    # Google Gemini 2.5 Pro per 1M: prompts <= 200k tokens $1.25 input, $0.125 cached, $10
    # output; prompts > 200k $2.50 input, $0.25 cached, $15 output, for ALL tokens.
    at = price(book, "gemini", "gemini-2.5-pro", Usage(200_000, 1_000, cache_read_tokens=50_000))
    assert_cost(at, usd((150_000, "1.25"), (50_000, "0.125")), usd((1_000, "10")), "google/gemini-2.5-pro")
    above = price(book, "gemini", "gemini-2.5-pro", Usage(200_001, 1_000, cache_read_tokens=50_000))
    assert_cost(above, usd((150_001, "2.50"), (50_000, "0.25")), usd((1_000, "15")), "prompt > 200000")
    # Vertex AI sells the same model at the same price.
    assert price(book, "vertex", "gemini-2.5-pro", Usage(200_001, 1_000, cache_read_tokens=50_000)) == above


def test_long_context_tier_claude_with_cache(book):
    # Anthropic Claude Sonnet 4.5, prompts > 200k input tokens, per 1M: $6 input, $7.50
    # cache write, $0.60 cache read, $22.50 output.
    usage = Usage(250_000, 1_000, cache_read_tokens=50_000, cache_write_tokens=10_000)
    p = price(book, "anthropic", "claude-sonnet-4-5", usage)
    expected_in = usd((190_000, "6"), (50_000, "0.60"), (10_000, "7.50"))
    assert_cost(p, expected_in, usd((1_000, "22.50")), "prompt > 200000 tokens")


def test_service_tiers_flex_priority_batch(book):
    usage = Usage(100_000, 10_000, cache_read_tokens=40_000)
    # OpenAI gpt-5 per 1M: standard $1.25 input, $0.125 cached, $10 output;
    # Flex $0.625, $0.0625, $5; Priority $2.50, $0.25, $20.
    standard = price(book, "openai", "gpt-5", usage, service_tier="default")
    assert_cost(standard, usd((60_000, "1.25"), (40_000, "0.125")), usd((10_000, "10")), "openai/gpt-5")
    assert "tier" not in standard.price_ref
    flex = price(book, "openai", "gpt-5", usage, service_tier="flex")
    assert_cost(flex, usd((60_000, "0.625"), (40_000, "0.0625")), usd((10_000, "5")), "(flex tier)")
    priority = price(book, "openai", "gpt-5", usage, service_tier="priority")
    assert_cost(priority, usd((60_000, "2.50"), (40_000, "0.25")), usd((10_000, "20")), "(priority tier)")
    # Anthropic Message Batches: 50% of standard, Claude Sonnet 4.5 $1.50 input, $7.50 output per 1M.
    batch = price(book, "anthropic", "claude-sonnet-4-5", Usage(10_000, 1_000), service_tier="batch")
    assert_cost(batch, usd((10_000, "1.50")), usd((1_000, "7.50")), "(batch tier)")


def test_time_of_day_prices_deepseek(book):
    # DeepSeek deepseek-chat per 1M: $0.27 input (cache miss), $0.07 cache hit, $1.10 output;
    # 50% off in the off-peak hours 16:30-00:30 UTC: $0.135, $0.035, $0.55.
    usage = Usage(10_000, 1_000, cache_read_tokens=4_000)
    peak = price(book, "deepseek", "deepseek-chat", usage, when=datetime(2026, 11, 20, 16, 29, tzinfo=UTC))
    assert_cost(peak, usd((6_000, "0.27"), (4_000, "0.07")), usd((1_000, "1.10")), "deepseek/deepseek-chat")
    for hour, minute in ((16, 30), (0, 29)):
        when = datetime(2026, 11, 20, hour, minute, tzinfo=UTC)
        off_peak = price(book, "deepseek", "deepseek-chat", usage, when=when)
        assert_cost(off_peak, usd((6_000, "0.135"), (4_000, "0.035")), usd((1_000, "0.55")), "deepseek")


def test_unpriced_is_null_never_zero(book):
    for p in (
        price(book, "openai", "my-finetune-nobody-prices", Usage(1_000, 100)),
        price(book, "openai", None, Usage(1_000, 100)),
        price(book, "openai", "gpt-4o", None),  # no usage reported: unknown cost, not free
        price(book, "openai", "gpt-4o", Usage()),
    ):
        assert (p.cost_usd, p.input_cost_usd, p.output_cost_usd, p.price_ref) == (None, None, None, None)
    assert book.rates("openai", "my-finetune-nobody-prices", None, WHEN) is None


def test_openrouter_reported_cost_wins(book):
    # OpenRouter reports the call's cost in usage.cost. The catalogue's anthropic/claude-sonnet-4
    # ($3 input, $15 output per 1M) gives the input:output split: here 0.003 : 0.003.
    p = price(book, "openrouter", "anthropic/claude-sonnet-4", Usage(1_000, 200), provider_cost_usd=0.0066)
    assert p.cost_usd == Decimal("0.0066")
    assert (p.input_cost_usd, p.output_cost_usd) == (Decimal("0.0033"), Decimal("0.0033"))
    assert p.price_ref == "provider-reported (openrouter usage.cost)"
    # A model the catalogue lacks: the reported total, no parts.
    unknown = price(book, "openrouter", "someone/new-model", Usage(1_000, 200), provider_cost_usd=0.01)
    assert (unknown.cost_usd, unknown.input_cost_usd, unknown.output_cost_usd) == (
        Decimal("0.01"),
        None,
        None,
    )
    assert unknown.price_ref == "provider-reported (openrouter usage.cost)"


def test_cost_columns_for_the_recorder(book):
    columns = cost_columns(
        book,
        prices_id="openai",
        model="gpt-4o",
        usage=Usage(1_000, 100),
        service_tier=None,
        provider_cost_usd=None,
        when=WHEN,
    )
    # OpenAI gpt-4o: $2.50 input, $10.00 output per 1M.
    assert columns["cost_usd"] == usd((1_000, "2.50"), (100, "10"))
    assert set(columns) == set(COST_COLUMNS)


CONFIG = """
[prices."acme-large"]
input = 2
output = 8
cache_read = 0.5
tiers = [{above = 100000, input = 4, output = 12}]

[prices."gpt-4o"]
input = 1
output = 2
"""


def test_overrides_from_toml_config(tmp_path):
    config = tmp_path / "llmtap.toml"
    config.write_text(CONFIG)
    settings = load_settings(data_dir=str(tmp_path), config_file=str(config))
    acme = settings.prices["acme-large"]
    assert (acme.input, acme.output, acme.cache_read, acme.cache_write) == (2, 8, Decimal("0.5"), None)
    assert acme.tiers[0][0] == 100_000 and acme.tiers[0][1].cache_read == Decimal("0.5")
    book = PriceBook(settings.prices)

    # Base: cache reads at the override's $0.50; no cache_write price, so writes cost input.
    p = book.price(
        prices_id=None,
        model="acme-large",
        usage=Usage(10_000, 1_000, cache_read_tokens=2_000, cache_write_tokens=1_000),
        service_tier=None,
        provider_cost_usd=None,
        when=WHEN,
    )
    assert p.input_cost_usd == usd((7_000, "2"), (2_000, "0.5"), (1_000, "2"))
    assert p.output_cost_usd == usd((1_000, "8")) and p.price_ref == "override: acme-large"
    # Above the tier: its input and output; cache_read left out of the tier keeps $0.50.
    p = book.price(
        prices_id=None,
        model="acme-large",
        usage=Usage(100_001, 1_000, cache_read_tokens=1),
        service_tier=None,
        provider_cost_usd=None,
        when=WHEN,
    )
    assert (p.input_cost_usd, p.output_cost_usd) == (usd((100_000, "4"), (1, "0.5")), usd((1_000, "12")))
    assert p.price_ref == "override: acme-large, prompt > 100000 tokens"
    # An override wins over the catalogue (and over the service tier).
    p = book.price(
        prices_id="openai",
        model="gpt-4o",
        usage=Usage(1_000, 1_000),
        service_tier="priority",
        provider_cost_usd=None,
        when=WHEN,
    )
    assert (p.cost_usd, p.price_ref) == (usd((1_000, "1"), (1_000, "2")), "override: gpt-4o")


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            '[prices."m"]\ninput = 1\n',
            'prices."m".output must be a non-negative number (USD per million tokens), got None',
        ),
        ('[prices."m"]\ninput = -1\noutput = 1\n', 'prices."m".input must be a non-negative number'),
        ('[prices."m"]\ninput = "1"\noutput = 1\n', 'prices."m".input must be a non-negative number'),
        ('[prices."m"]\ninput = 1\noutput = 1\ncached = 1\n', 'prices."m": unknown keys cached'),
        (
            '[prices."m"]\ninput = 1\noutput = 1\ntiers = [{above = 0, input = 2}]\n',
            'prices."m".tiers[0].above must be a positive whole number',
        ),
        (
            '[prices."m"]\ninput = 1\noutput = 1\ntiers = [{above = 9, input = 2}, {above = 5, input = 3}]\n',
            "increasing order",
        ),
        ("[prices]\nm = 3\n", 'prices."m" must be a table'),
    ],
)
def test_bad_price_overrides_are_clear_errors(tmp_path, toml, message):
    config = tmp_path / "bad.toml"
    config.write_text(toml)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_settings(data_dir=str(tmp_path), config_file=str(config))


# --- reprice and report on a real store -----------------------------------------------------

#: (call_id, started_at, provider, model, input, output, cache_read, cache_write, reasoning,
#:  service_tier, provider_cost_usd)
CALLS = [
    ("c01", "2026-11-01T10:00:00+00:00", "openai", "gpt-4o", 12_000, 800, 4_000, None, None, None, None),
    ("c02", "2026-11-21T10:00:00+00:00", "openai", "gpt-4o", 1_000, 100, None, None, None, None, None),
    (
        "c03",
        "2026-11-21T11:00:00+00:00",
        "openai",
        "gpt-5",
        100_000,
        10_000,
        40_000,
        None,
        2_000,
        "flex",
        None,
    ),
    (
        "c04",
        "2026-11-21T11:00:00+00:00",
        "anthropic",
        "claude-sonnet-4-5",
        250_000,
        900,
        50_000,
        10_000,
        None,
        "standard",
        None,
    ),
    (
        "c05",
        "2026-11-21T11:00:00+00:00",
        "anthropic",
        "claude-sonnet-4-5",
        30_000,
        2_000,
        15_000,
        5_000,
        None,
        "batch",
        None,
    ),
    (
        "c06",
        "2026-11-21T12:00:00+00:00",
        "gemini",
        "gemini-2.5-pro",
        200_001,
        1_000,
        50_000,
        None,
        700,
        None,
        None,
    ),
    (
        "c07",
        "2026-11-21T17:00:00+00:00",
        "deepseek",
        "deepseek-chat",
        10_000,
        1_000,
        4_000,
        None,
        None,
        None,
        None,
    ),
    (
        "c08",
        "2026-11-21T09:00:00+00:00",
        "deepseek",
        "deepseek-chat",
        10_000,
        1_000,
        4_000,
        None,
        None,
        None,
        None,
    ),
    (
        "c09",
        "2026-11-21T13:00:00+00:00",
        "openrouter",
        "anthropic/claude-sonnet-4",
        1_000,
        200,
        None,
        None,
        None,
        None,
        Decimal("0.0066"),
    ),
    (
        "c10",
        "2026-11-21T13:00:00+00:00",
        "openrouter",
        "someone/new-model",
        1_000,
        200,
        None,
        None,
        None,
        None,
        Decimal("0.01"),
    ),
    ("c11", "2026-11-01T13:00:00+00:00", "openai", "acme-large", 5_000, 500, None, None, None, None, None),
    ("c12", "2026-11-21T13:00:00+00:00", "openai", "acme-large", 5_000, 500, 1_000, None, None, None, None),
    ("c13", "2026-11-21T13:00:00+00:00", "openai", "acme-large", 7_000, 100, None, None, None, None, None),
    ("c14", "2026-11-21T14:00:00+00:00", "openai", "gpt-4o", None, None, None, None, None, None, None),
    ("c15", "2026-11-21T14:00:00+00:00", "together", "acme-small", 10, 10, None, None, None, None, None),
    (
        "c16",
        "2026-11-21T15:00:00+00:00",
        "vertex",
        "gemini-2.5-pro",
        200_000,
        10,
        None,
        None,
        None,
        None,
        None,
    ),
    ("c17", "2026-11-21T15:00:00+00:00", "openai", "acme-large", 150_000, 10, 20_000, None, None, None, None),
    (
        "c18",
        "2026-11-21T15:00:00+00:00",
        "openrouter",
        "openai/gpt-4o-mini",
        1_000,
        100,
        None,
        None,
        None,
        None,
        Decimal("0.0001"),
    ),
]


def _full_row(call: tuple) -> dict:
    """Every llm_calls column filled with something distinctive, so reprice's leaving them alone shows."""
    cid, started, provider, model, inp, out, cr, cw, rs, tier, reported = call
    start = datetime.fromisoformat(started)
    return {
        "call_id": cid,
        "started_at": start,
        "ended_at": start.replace(second=3),
        "provider": provider,
        "api": "chat",
        "method": "POST",
        "host": f"api.{provider}.example",
        "path": "/v1/chat/completions",
        "status_code": 200,
        "stream": cid.endswith("3"),
        "request_model": model,
        "response_model": f"{model}" if cid != "c13" else None,
        "routed_from_model": None,
        "input_tokens": inp,
        "output_tokens": out,
        "cache_read_tokens": cr,
        "cache_write_tokens": cw,
        "reasoning_tokens": rs,
        "usage_source": "provider" if inp is not None else "none",
        "latency_ms": 3000.5,
        "ttft_ms": 120.25,
        "cost_usd": None,
        "input_cost_usd": None,
        "output_cost_usd": None,
        "price_ref": None,
        "app": "checkout",
        "user_id": f"user-{cid}",
        "session_id": "s1",
        "properties": '{"team": "pay"}',
        "trace_id": "ab" * 16,
        "span_id": cid.ljust(16, "0"),
        "error": None,
        "finish_reasons": ["stop"],
        "response_id": f"resp-{cid}",
        "usage_raw": '{"raw": true}',
        "service_tier": tier,
        "provider_cost_usd": reported,
        "request_features": ["tools"],
        "max_output_tokens": 1024,
        "routing_rule": "rule-1",
        "routing_arm": "canary",
        "shadow_of": None,
        "retry_of": None,
        "comparison": None,
        "agreement": None,
        "cache_hit": None,
        "cache_of": None,
        "cache_saved_usd": None,
    }


def _store(tmp_path: Path, book: PriceBook) -> Path:
    """A store holding CALLS, priced at record time the way the recorder does it."""
    db = tmp_path / "data" / "llmtap.duckdb"
    ensure_schema(db)
    columns = list(schema.LLM_CALLS)
    with duckdb.connect(str(db)) as con:
        for call in CALLS:
            row = _full_row(call)
            row |= cost_columns(
                book,
                prices_id=PRICES_IDS[row["provider"]],
                model=row["response_model"] or row["request_model"],
                usage=Usage(
                    *(
                        row[c]
                        for c in (
                            "input_tokens",
                            "output_tokens",
                            "cache_read_tokens",
                            "cache_write_tokens",
                            "reasoning_tokens",
                        )
                    )
                ),
                service_tier=row["service_tier"],
                provider_cost_usd=row["provider_cost_usd"],
                when=row["started_at"],
            )
            con.execute(
                f"INSERT INTO llm_calls ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                [row[c] for c in columns],
            )
    return db


def _rows(db: Path, *, costs: bool) -> dict[str, tuple]:
    select = "*" if costs else f"* EXCLUDE ({', '.join(COST_COLUMNS)})"
    with duckdb.connect(str(db), read_only=True) as con:
        return {r[0]: r for r in con.execute(f"SELECT {select} FROM llm_calls ORDER BY call_id").fetchall()}


def _costs(db: Path) -> dict[str, tuple]:
    with duckdb.connect(str(db), read_only=True) as con:
        query = f"SELECT call_id, {', '.join(COST_COLUMNS)} FROM llm_calls"
        return {r[0]: r[1:] for r in con.execute(query).fetchall()}


def llmtap(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_reprice_with_unchanged_prices_changes_nothing(tmp_path, book):
    """SQL reprice and the recorder's Python arithmetic agree to the nano-dollar, across
    caches, tiers, service tiers, time-of-day prices and provider-reported costs."""
    db = _store(tmp_path, book)
    before = _rows(db, costs=True)
    result = reprice(db, PriceBook(), PRICES_IDS)
    assert (result.calls, result.changed) == (len(CALLS), 0)
    assert _rows(db, costs=True) == before
    costs = _costs(db)
    # Spot checks against the published prices (see the tests above).
    assert costs["c07"][0] == usd((6_000, "0.135"), (4_000, "0.035")) + usd((1_000, "0.55"))  # off-peak
    assert costs["c08"][0] == usd((6_000, "0.27"), (4_000, "0.07")) + usd((1_000, "1.10"))  # peak
    assert costs["c09"][:3] == (Decimal("0.0066"), Decimal("0.0033"), Decimal("0.0033"))
    assert costs["c10"] == (Decimal("0.01"), None, None, "provider-reported (openrouter usage.cost)")
    # OpenRouter openai/gpt-4o-mini ($0.15 input, $0.60 output per 1M) splits a reported
    # $0.0001 as 150:60, rounded half-up to the nano-dollar.
    assert costs["c18"][:3] == (Decimal("0.0001"), Decimal("0.000071429"), Decimal("0.000028571"))
    assert costs["c14"] == (None, None, None, None)
    # Gemini 2.5 Pro: exactly 200k prompt tokens is still the base $1.25 input, $10 output.
    assert costs["c16"][0] == usd((200_000, "1.25")) + usd((10, "10"))


def test_reprice_cli_applies_new_override_since_and_changes_nothing_else(tmp_path, book):
    db = _store(tmp_path, book)
    before_costs, before_rest = _costs(db), _rows(db, costs=False)
    assert before_costs["c11"] == before_costs["c12"] == (None, None, None, None)  # acme-large unknown
    config = tmp_path / "llmtap.toml"
    config.write_text(CONFIG)  # prices acme-large, and re-prices gpt-4o at $1 / $2 per 1M

    out = llmtap("reprice", "--data-dir", str(db.parent), "--config", str(config), "--since", "2026-11-10")
    assert out.returncode == 0, out.stderr
    # c02 (gpt-4o) and c12/c13/c17 (acme-large) changed; c15's acme-small is still unpriced.
    assert out.stdout.strip() == (
        "llmtap: repriced 16 calls started since 2026-11-10T00:00:00+00:00: 4 changed, "
        "1 with usage but no price (listed by `llmtap report`)"
    )
    after = _costs(db)
    assert _rows(db, costs=False) == before_rest
    # acme-large override: $2 input, $0.50 cache read, $8 output per 1M; c13 has no
    # response_model, so its request_model prices it.
    assert after["c12"] == (
        usd((4_000, "2"), (1_000, "0.5")) + usd((500, "8")),
        usd((4_000, "2"), (1_000, "0.5")),
        usd((500, "8")),
        "override: acme-large",
    )
    assert after["c13"][0] == usd((7_000, "2"), (100, "8"))
    # Above the override's 100k tier: $4 input, $12 output; cache reads keep the base $0.50.
    assert after["c17"] == (
        usd((130_000, "4"), (20_000, "0.5")) + usd((10, "12")),
        usd((130_000, "4"), (20_000, "0.5")),
        usd((10, "12")),
        "override: acme-large, prompt > 100000 tokens",
    )
    assert after["c02"] == (
        usd((1_000, "1"), (100, "2")),
        usd((1_000, "1")),
        usd((100, "2")),
        "override: gpt-4o",
    )
    # Before --since: untouched, though the override would change them.
    assert after["c01"] == before_costs["c01"] and after["c11"] == before_costs["c11"]
    assert "genai-prices" in after["c01"][3]
    changed = {cid for cid in after if after[cid] != before_costs[cid]}
    assert changed == {"c02", "c12", "c13", "c17"}


def test_report_lists_unpriced_models(tmp_path, book):
    db = _store(tmp_path, book)
    out = llmtap("report", "--data-dir", str(db.parent))
    assert out.returncode == 0, out.stderr
    head, _, unpriced = out.stdout.partition("unpriced models")
    assert "gpt-4o" in head
    lines = [line.split() for line in unpriced.splitlines()[1:]]
    assert lines[0] == ["model", "provider", "calls"]
    # acme-large: c11, c12, c13 and c17; acme-small: c15. c10 has a reported cost, c14 no usage.
    assert lines[2:] == [["acme-large", "openai", "4"], ["acme-small", "together", "1"]]

    config = tmp_path / "llmtap.toml"
    config.write_text(
        CONFIG
        + textwrap.dedent("""
        [prices."acme-small"]
        input = 0.1
        output = 0.1
    """)
    )
    assert llmtap("reprice", "--data-dir", str(db.parent), "--config", str(config)).returncode == 0
    out = llmtap("report", "--data-dir", str(db.parent))
    assert out.returncode == 0 and "unpriced" not in out.stdout


def test_reprice_reports_bad_config(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('[prices."m"]\ninput = 1\n')
    out = llmtap("reprice", "--data-dir", str(tmp_path), "--config", str(config))
    assert out.returncode == 2 and 'prices."m".output must be a non-negative number' in out.stderr
