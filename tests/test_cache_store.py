"""The response cache's parts without a proxy: its key, its file (expiry, the size bound, restarts,
damage), the config table, and how a hit's row is priced (in flight, by the loader and by reprice)."""

from __future__ import annotations

import json
import sqlite3
import time
from decimal import Decimal

import duckdb
import pytest

from collector.cache.keys import CANONICAL_LIMIT, cache_key, credential_digest, shaping_headers
from collector.cache.store import ENTRY_OVERHEAD, CacheStore, Entry
from collector.calls.rows import Observed, RowBuilder
from collector.calls.spans import SpanRecorder
from collector.pricing.book import PriceBook
from collector.pricing.reprice import reprice
from collector.providers import builtin_providers
from collector.settings.config import ConfigError, load_settings
from collector.storage import schema
from collector.storage.database import ensure_schema
from collector.storage.schema import CacheMarks

# -- the key ------------------------------------------------------------------------------------

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "héllo"}], "temperature": 0}
AUTH = [(b"Authorization", b"Bearer sk-one"), (b"Content-Type", b"application/json")]


def key(
    body: bytes | dict = BODY, fields=AUTH, path: str = "/v1/chat/completions", share: bool = False, **kw
) -> bytes:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    parts = {"provider": "openai", "api": "chat", "method": "POST", "host": "api.openai.com", **kw}
    return cache_key(
        **parts,
        path=path.partition("?")[0],
        shaping=shaping_headers(fields),
        credential=None if share else credential_digest(fields, path),
        body=raw,
    )


def test_json_key_order_escapes_and_whitespace_do_not_matter():
    reordered = (
        b'{ "temperature":0,\n "messages":[{"content":"h\\u00e9llo","role":"user"}], "model":"gpt-4o-mini"}'
    )
    assert key(reordered) == key(BODY)
    assert len(key(BODY)) == 32


@pytest.mark.parametrize(
    "change",
    [
        {"body": {**BODY, "temperature": 0.5}},
        {"body": {**BODY, "temperature": 0.0}},  # 0.0 is not 0 in JSON text: kept apart
        {"fields": [(b"Authorization", b"Bearer sk-two")]},
        {"fields": [*AUTH, (b"anthropic-beta", b"output-128k")]},
        {"provider": "azure_openai"},
        {"api": "completions"},
        {"host": "other.example"},
        {"path": "/v1/other"},
    ],
)
def test_anything_else_makes_another_key(change):
    assert key(**change) != key()


def test_the_credential_is_the_key_headers_and_secret_query_parameters_only():
    cookies = [*AUTH, (b"Cookie", b"__cf_bm=rotates"), (b"Proxy-Authorization", b"Basic x")]
    assert key(fields=cookies) == key()
    gemini = "/v1beta/models/gemini-2.5-flash:generateContent?key=AIza-one&alt=sse"
    assert key(fields=[], path=gemini) != key(fields=[], path=gemini.replace("one", "two"))
    assert key(fields=[], path=gemini) == key(fields=[], path=gemini)
    # Shared across keys: the credential no longer counts.
    assert key(share=True) == key(fields=[(b"Authorization", b"Bearer sk-two")], share=True)
    assert key(share=True) != key()


def test_bodies_that_are_not_json_or_are_large_must_match_byte_for_byte():
    assert key(b"not json") == key(b"not json") != key(b"not json ")
    big = {"model": "m", "input": "x" * CANONICAL_LIMIT}
    assert key(json.dumps(big).encode()) != key(json.dumps(big, indent=1).encode())
    assert key(json.dumps(big).encode()) == key(json.dumps(big).encode())


# -- the file ------------------------------------------------------------------------------------


def entry(body: bytes = b'{"answer": 1}', now: float | None = None, ttl: float = 60.0, **kw) -> Entry:
    now = time.time() if now is None else now
    values = {
        "status": 200,
        "headers": ((b"content-type", b"application/json"), (b"x-request-id", b"\xff raw")),
        "body": body,
        "streamed": False,
        "call_id": "c1",
        "usage": None,
        "created_at": now,
        "expires_at": now + ttl,
    }
    return Entry(**(values | kw))


@pytest.fixture
def store(tmp_path):
    opened = CacheStore(tmp_path / "cache.sqlite3", max_bytes=1_000_000)
    yield opened
    opened.close()


def test_an_answer_is_served_at_once_then_from_the_file_and_after_a_restart(tmp_path, store):
    stored = entry(usage='{"usage": {}}')
    assert store.put(b"k" * 32, stored)
    now = time.time()
    assert store.get(b"k" * 32, now) == stored  # queued: served from memory
    assert store.flush()
    assert store._pending == {}
    assert store.get(b"k" * 32, now) == stored  # from the file: header bytes survive as they were
    assert store.get(b"other", now) is None
    store.close()
    assert (tmp_path / "cache.sqlite3").stat().st_mode & 0o777 == 0o600
    again = CacheStore(tmp_path / "cache.sqlite3", max_bytes=1_000_000)
    try:
        assert again.get(b"k" * 32, now) == stored
    finally:
        again.close()


def test_expiry_and_max_age(store):
    now = time.time()
    store.put(b"a", entry(now=now, ttl=10))
    assert store.flush()
    assert store.get(b"a", now + 9.9) is not None
    assert store.get(b"a", now + 10) is None  # expired
    assert store.get(b"a", now + 5, max_age=5) is None  # older than the caller accepts
    assert store.get(b"a", now + 4, max_age=5) is not None


def test_the_size_bound_evicts_the_least_recently_used(tmp_path):
    size = entry(b"x" * 1000).size
    store = CacheStore(tmp_path / "cache.sqlite3", max_bytes=3 * size)
    try:
        now = time.time()
        for name in (b"a", b"b", b"c"):
            store.put(name, entry(b"x" * 1000, now=now))
            now += 1
        assert store.flush() and store.totals() == (3, 3 * size)
        store.touch(b"a", now)  # a is now the most recently used; b the least
        store.put(b"d", entry(b"x" * 1000, now=now + 1))
        assert store.flush()
        later = now + 2
        assert [name for name in (b"a", b"b", b"c", b"d") if store.get(name, later)] == [b"a", b"c", b"d"]
        assert store.totals() == (3, 3 * size)
        # An entry larger than the bound is not kept at all.
        assert not store.put(b"huge", entry(b"x" * (3 * size)))
        # Replacing an entry counts its new size, not both.
        store.put(b"a", entry(b"y" * 500, now=later))
        assert store.flush() and store.totals() == (3, 2 * size + entry(b"y" * 500).size)
    finally:
        store.close()


def test_expired_entries_are_evicted_before_any_live_one_however_recently_used(tmp_path):
    size = entry(b"x" * 1000).size
    store = CacheStore(tmp_path / "cache.sqlite3", max_bytes=3 * size)
    try:
        now = time.time()
        store.put(b"old", entry(b"x" * 1000, now=now - 100, ttl=100.5))  # expires in half a second
        store.put(b"y", entry(b"x" * 1000, now=now))
        store.put(b"z", entry(b"x" * 1000, now=now + 1))
        store.touch(b"old", now + 2)  # the most recently used, yet expired when w comes
        assert store.flush() and store.totals() == (3, 3 * size)
        time.sleep(0.6)
        store.put(b"w", entry(b"x" * 1000, now=now + 3))
        assert store.flush()
        assert [name for name in (b"old", b"y", b"z", b"w") if store.get(name, now)] == [b"y", b"z", b"w"]
    finally:
        store.close()
    assert ENTRY_OVERHEAD > 0


def test_many_answers_stay_within_the_bound_and_the_file_near_it(tmp_path):
    bound = 200_000
    store = CacheStore(tmp_path / "cache.sqlite3", max_bytes=bound)
    try:
        for i in range(400):
            store.put(str(i).encode(), entry(bytes([i % 256]) * 3000))
            if i % 50 == 0:
                store.touch(b"0", time.time())
        assert store.flush()
        count, total = store.totals()
        assert total <= bound and count == bound // entry(b"x" * 3000).size
        assert store.get(b"0", time.time()) is not None  # used often: kept
        assert store.get(b"399", time.time()) is not None  # the newest
        assert store.get(b"1", time.time()) is None
    finally:
        store.close()
    assert (tmp_path / "cache.sqlite3").stat().st_size < 3 * bound


def test_a_file_that_is_not_a_cache_is_replaced_and_damaged_entries_are_misses(tmp_path):
    path = tmp_path / "cache.sqlite3"
    path.write_bytes(b"garbage" * 5000)
    store = CacheStore(path, max_bytes=1_000_000)
    try:
        store.put(b"a", entry(b'{"answer": "original"}'))
        assert store.flush() and store.get(b"a", time.time()) is not None
    finally:
        store.close()
    raw = path.read_bytes()
    assert raw.startswith(b"SQLite format 3")
    path.write_bytes(raw.replace(b'"original"', b'"damaged!"'))
    store = CacheStore(path, max_bytes=1_000_000)
    try:
        assert store.get(b"a", time.time()) is None  # the checksum does not match
        with sqlite3.connect(path) as con:  # a file whose table went away under the proxy
            con.execute("DROP TABLE entries")
        assert store.get(b"a", time.time()) is None
        assert store.put(b"b", entry()) and store.flush()  # the writer fails open too
    finally:
        store.close()


def test_an_unusable_location_leaves_the_cache_off(tmp_path):
    store = CacheStore(tmp_path / "missing-dir" / "cache.sqlite3", max_bytes=1_000_000)
    assert not store.put(b"a", entry())
    assert store.get(b"a", time.time()) is None
    store.close()


# -- the config -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["metadata", "redacted"])
def test_a_cache_is_refused_with_a_capture_mode_that_keeps_no_whole_answers(tmp_path, mode):
    config = tmp_path / "llmtap.toml"
    config.write_text(f'capture = "{mode}"\n[cache]\nttl_s = 60\n')
    with pytest.raises(
        ConfigError, match=f"cache cannot be used with capture = '{mode}': the response cache keeps"
    ):
        load_settings(config_file=str(config), data_dir=str(tmp_path))


def test_the_cache_table(tmp_path):
    config = tmp_path / "llmtap.toml"
    config.write_text('[cache]\nttl_s = 60\nmax_mb = 0.5\nmodels = ["gpt-4o"]\nproviders = ["openai"]\n')
    cache = load_settings(config_file=str(config), data_dir=str(tmp_path)).cache
    assert cache is not None and (cache.ttl_s, cache.max_mb, cache.share_across_keys) == (60, 0.5, False)
    assert cache.applies("any-app", "gpt-4o", "openai")
    assert not cache.applies("any-app", "gpt-4o-mini", "openai")
    assert not cache.applies("any-app", "gpt-4o", "anthropic")
    assert load_settings(data_dir=str(tmp_path)).cache is None
    config.write_text('[cache]\nproviders = ["opneai"]\n')
    with pytest.raises(ConfigError, match=r"cache\.providers: unknown providers 'opneai'"):
        load_settings(config_file=str(config), data_dir=str(tmp_path))


# -- a hit's row ----------------------------------------------------------------------------------

RESPONSE = {
    "id": "chatcmpl-1",
    "model": "gpt-4o-mini",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 2000, "completion_tokens": 500},
}


def observed(call_id: str, hit: bool | None) -> Observed:
    return Observed(
        call_id=call_id,
        started=1_790_000_000.0,
        ended=1_790_000_000.002,
        first_byte=1_790_000_000.001,
        provider="openai",
        api="chat",
        method="POST",
        host="api.openai.com",
        path="/v1/chat/completions",
        status_code=200,
        streamed=False,
        traceparent=None,
        error=None,
        capture_mode="full",
        request_text=json.dumps(BODY),
        response_text=json.dumps(RESPONSE),
        cache=CacheMarks(cache_hit=hit, cache_of="original" if hit else None),
    )


def test_a_hit_costs_nothing_and_saved_what_its_tokens_cost_in_flight_by_the_loader_and_after_reprice(
    tmp_path,
):
    builder = RowBuilder(PriceBook(), SpanRecorder(None))
    miss, hit = builder.row(observed("original", False)), builder.row(observed("hit", True))
    cost = Decimal("0.0006")  # gpt-4o-mini: 2000 x $0.15 + 500 x $0.60 per 1M
    assert (miss["cost_usd"], miss["cache_hit"], miss["cache_saved_usd"]) == (cost, False, None)
    assert (hit["cost_usd"], hit["input_cost_usd"], hit["output_cost_usd"]) == (0, 0, 0)
    assert (hit["cache_hit"], hit["cache_of"], hit["cache_saved_usd"]) == (True, "original", cost)
    assert hit["price_ref"] == miss["price_ref"] and hit["input_tokens"] == 2000
    attributes = hit["span"]["attributes"]
    assert (attributes["llmtap.cost_usd"], attributes["llmtap.cache_hit"]) == (0, True)
    assert attributes["llmtap.cache_saved_usd"] == float(cost)
    # The loader builds the same row from the spool line.
    line = json.loads(observed("hit", True).spool_line())
    assert builder.row(Observed.from_json(line["observed"]))["cache_saved_usd"] == cost

    db = tmp_path / "llmtap.duckdb"
    ensure_schema(db)
    columns = list(schema.LLM_CALLS)
    with duckdb.connect(str(db)) as con:
        for row in (miss, hit):
            con.execute(
                f"INSERT INTO llm_calls ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                [row[c] for c in columns],
            )
    prices_ids = {p.name: p.prices_id for p in builtin_providers()}
    assert reprice(db, PriceBook(), prices_ids).changed == 0  # unchanged prices change nothing
    from collector.settings.config import ModelPrices

    override = {"gpt-4o-mini": ModelPrices(input=1, output=2).rates("gpt-4o-mini")}
    assert reprice(db, PriceBook(override), prices_ids).changed == 2
    with duckdb.connect(str(db), read_only=True) as con:
        columns_after = "call_id, cost_usd, input_cost_usd, cache_saved_usd, price_ref"
        after = con.execute(f"SELECT {columns_after} FROM llm_calls ORDER BY call_id").fetchall()
    new = Decimal("0.003")  # 2000 x $1 + 500 x $2 per 1M
    assert after == [
        ("hit", 0, 0, new, "override: gpt-4o-mini"),
        ("original", new, Decimal("0.002"), None, "override: gpt-4o-mini"),
    ]


@pytest.mark.parametrize(
    "header", [b"authorization", b"x-api-key", b"api-key", b"x-goog-api-key", b"x-amz-security-token"]
)
def test_every_credential_header_separates_callers(header):
    """Two callers differing only in one provider credential never share a key; the header's
    case does not matter; a cookie (a browser session, not who pays) does not enter it."""
    one = credential_digest([(header, b"key-of-caller-one")], "/v1/x")
    assert one != credential_digest([(header, b"key-of-caller-two")], "/v1/x")
    assert one == credential_digest([(header.upper(), b"key-of-caller-one"), (b"cookie", b"s=1")], "/v1/x")
    assert credential_digest([], "/v1/x?key=a") != credential_digest([], "/v1/x?key=b")
