"""Fleet shipping against a real PostgreSQL server (tests/pgserver.py) and real proxies: the
schema made once whoever starts first, every call, span and score shipped exactly once with
its node, through a database outage, a ``kill -9`` and three sidecars at once; the password in
no log line, file or message; hostile values never stopping the shipper (Hypothesis)."""

from __future__ import annotations

import contextlib
import json
import os
import ssl
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import duckdb
import httpx
import openai
import polars as pl
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

import analytics
from collector.fleet import schema as fleet_schema
from collector.fleet.outbox import Outbox
from collector.fleet.postgres import FleetAddress, PostgresSink
from collector.fleet.shipper import Shipper
from collector.settings.config import ConfigError, load_settings, redacted_url
from collector.storage import schema
from collector.storage.database import read_connection
from tests.pgserver import PgServer
from tests.proxyproc import ProxyProcess
from tests.upstream import FakeUpstream, Received, Reply

EXAMPLES = int(os.environ.get("LLMTAP_FUZZ_EXAMPLES", "25"))
CHAT_PATH = "/v1/chat/completions"
HOSTS = ("api.openai.com", "api.anthropic.com")


# -- helpers -------------------------------------------------------------------------------


def chat_reply(received: Received) -> Reply:
    """An OpenAI chat completion, streamed when asked, with usage, for gpt-4o-mini pricing."""
    body = json.loads(received.body)
    usage = {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
    if body.get("stream"):
        chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": body["model"]}
        return Reply.sse(
            [
                {**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "o"}}]},
                {**chunk, "choices": [{"index": 0, "delta": {"content": "k"}, "finish_reason": "stop"}]},
                {**chunk, "choices": [], "usage": usage},
                "[DONE]",
            ]
        )
    return Reply.json(
        {
            "id": "c1",
            "object": "chat.completion",
            "created": 1,
            "model": body["model"],
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
            ],
            "usage": usage,
        }
    )


@pytest.fixture
def llm(upstream: FakeUpstream) -> FakeUpstream:
    upstream.routes[CHAT_PATH] = chat_reply
    return upstream


@pytest.fixture
def fleet_db(pg_server: PgServer) -> str:
    return pg_server.create_database()


def write_config(path: Path, url: str, node: str | None = None, extra: str = "") -> Path:
    node_line = f'node = "{node}"\n' if node else ""
    path.write_text(f'[fleet]\nurl = "{url}"\n{node_line}{extra}')
    return path


def start(
    data_dir: Path, upstream: FakeUpstream, config: Path, env: dict[str, str] | None = None
) -> ProxyProcess:
    return ProxyProcess(
        data_dir, dict.fromkeys(HOSTS, upstream.url), extra_args=["--config", str(config)], env=env
    ).start()


def sdk(proxy: ProxyProcess) -> openai.OpenAI:
    """The official SDK through the proxy (no retries: a failed call is a failed call)."""
    verify = ssl.create_default_context(cafile=str(proxy.data_dir / "ca-bundle.pem"))
    client = httpx.Client(proxy=proxy.url, verify=verify, timeout=30)
    return openai.OpenAI(api_key="sk-test-not-real", http_client=client, max_retries=0)


def call(client: openai.OpenAI, stream: bool, app: str = "fleet-test") -> str:
    """One chat call, received in full; returns its call id (the proxy's response header)."""
    args = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"X-Llmtap-App": app}
    if stream:
        raw = client.chat.completions.with_raw_response.create(**args, stream=True, extra_headers=headers)
        text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
        assert text == "ok"
    else:
        raw = client.chat.completions.with_raw_response.create(**args, extra_headers=headers)
        assert raw.parse().choices[0].message.content == "ok"
    return raw.headers["x-llmtap-call-id"]


def local_ids(proxy_or_db: ProxyProcess | Path, table: str = "llm_calls") -> set[str]:
    db = proxy_or_db.db if isinstance(proxy_or_db, ProxyProcess) else proxy_or_db
    with read_connection(db) as con:
        return {row[0] for row in con.execute(f"SELECT call_id FROM {table}").fetchall()}


def central(pg: PgServer, database: str, sql: str, params: tuple = ()) -> list[tuple]:
    """A query on the fleet store; no rows while its tables are not made yet."""
    with pg.connect(database) as conn:
        try:
            return conn.execute(sql, params).fetchall()
        except psycopg.errors.UndefinedTable:
            return []


def central_ids(pg: PgServer, database: str, node: str | None = None) -> set[str]:
    if node is None:
        return {r[0] for r in central(pg, database, "SELECT call_id FROM llm_calls")}
    return {r[0] for r in central(pg, database, "SELECT call_id FROM llm_calls WHERE node = %s", (node,))}


def wait_for(predicate, timeout: float = 30.0, step: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def files_under(*dirs: Path) -> Iterator[Path]:
    for directory in dirs:
        yield from (p for p in directory.rglob("*") if p.is_file())


# -- the schema ----------------------------------------------------------------------------


def test_schema_is_versioned_idempotent_and_safe_to_create_at_once(
    pg_server: PgServer, fleet_db: str
) -> None:
    url = pg_server.url(fleet_db)
    barrier = threading.Barrier(8)
    applied: list[int] = []
    errors: list[BaseException] = []

    def create() -> None:
        try:
            with psycopg.connect(url) as conn:
                barrier.wait()
                applied.append(fleet_schema.ensure_schema(conn))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(applied) == [0] * 7 + [1]
    rows = central(pg_server, fleet_db, "SELECT version FROM llmtap_schema")
    assert rows == [(fleet_schema.SCHEMA_VERSION,)]
    columns = central(
        pg_server,
        fleet_db,
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'llm_calls' "
        "ORDER BY ordinal_position",
    )
    assert [c for (c,) in columns] == [*schema.LLM_CALLS, "node", "body_hash", "shipped_at"]
    with psycopg.connect(url) as conn:
        assert fleet_schema.ensure_schema(conn) == 0


def test_a_column_declared_later_is_added_once(pg_server: PgServer, fleet_db: str, monkeypatch) -> None:
    with psycopg.connect(pg_server.url(fleet_db)) as conn:
        fleet_schema.ensure_schema(conn)
    grown = {**fleet_schema.TABLES, "spans": {**fleet_schema.TABLES["spans"], "sampled": "boolean"}}
    monkeypatch.setattr(fleet_schema, "TABLES", grown)
    with psycopg.connect(pg_server.url(fleet_db)) as conn:
        assert fleet_schema.ensure_schema(conn) == 1
        assert fleet_schema.ensure_schema(conn) == 0
    columns = central(
        pg_server, fleet_db, "SELECT column_name FROM information_schema.columns WHERE table_name = 'spans'"
    )
    assert ("sampled",) in columns


# -- shipping through a real proxy -----------------------------------------------------------


def test_calls_spans_and_scores_are_shipped_exactly_once(
    pg_server: PgServer, fleet_db: str, llm: FakeUpstream, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "fleet.toml", pg_server.url(fleet_db), node="solo")
    data = tmp_path / "data"
    proxy = start(data, llm, config)
    try:
        client = sdk(proxy)
        received = {call(client, stream=i % 2 == 0) for i in range(10)}
        proxy.rows(wait_for=10)
        feedback = httpx.post(
            f"{proxy.url}/llmtap/feedback",
            json={"call_id": sorted(received)[0], "name": "helpful", "value": 1},
        )
        assert feedback.status_code == 202, feedback.text
        assert wait_for(lambda: central(pg_server, fleet_db, "SELECT count(*) FROM scores") == [(1,)])
        assert wait_for(lambda: central_ids(pg_server, fleet_db) == received)
    finally:
        assert proxy.stop() == 0
    # Every column as stored locally, the node beside it; the body hash as the analyses compute it.
    columns = ", ".join(schema.LLM_CALLS)
    with read_connection(data / "llmtap.duckdb") as con:
        local_rows = con.execute(f"SELECT {columns} FROM llm_calls ORDER BY call_id").fetchall()
        local_hashes = dict(
            con.execute(
                "SELECT c.call_id, hash(c.host, c.path, hash(b.request_body)) FROM llm_calls c "
                "JOIN call_bodies b USING (call_id)"
            ).fetchall()
        )
        local_spans = con.execute(f"SELECT {', '.join(schema.SPANS)} FROM spans ORDER BY call_id").fetchall()
    remote_rows = central(pg_server, fleet_db, f"SELECT {columns} FROM llm_calls ORDER BY call_id")
    assert [_comparable(r) for r in remote_rows] == [_comparable(r) for r in local_rows]
    assert {r[0] for r in central(pg_server, fleet_db, "SELECT DISTINCT node FROM llm_calls")} == {"solo"}
    remote_hashes = dict(central(pg_server, fleet_db, "SELECT call_id, body_hash FROM llm_calls"))
    assert {k: v % 2**64 for k, v in remote_hashes.items()} == local_hashes
    remote_spans = central(
        pg_server, fleet_db, f"SELECT {', '.join(schema.SPANS)} FROM spans ORDER BY call_id"
    )
    assert [_comparable(r) for r in remote_spans] == [_comparable(r) for r in local_spans]
    assert central(pg_server, fleet_db, "SELECT name, value, source FROM scores") == [
        ("helpful", 1.0, "feedback")
    ]

    # Shipped again from scratch (the outbox turned off and on: every stored row queued anew), and
    # still stored once.
    (data / "fleet-outbox" / ".enabled").unlink()
    proxy = start(data, llm, config)
    try:
        assert wait_for(lambda: not list(Outbox(data / "fleet-outbox").ready()))
    finally:
        assert proxy.stop() == 0
    assert central(pg_server, fleet_db, "SELECT count(*), count(DISTINCT call_id) FROM llm_calls") == [
        (10, 10)
    ]
    assert central(pg_server, fleet_db, "SELECT count(*) FROM spans") == [(10,)]
    assert central(pg_server, fleet_db, "SELECT count(*) FROM scores") == [(1,)]


def _comparable(row: tuple) -> tuple:
    """A row as both engines return it: JSON text parsed, decimals exact, times in UTC."""
    out = []
    for value in row:
        if isinstance(value, str) and value[:1] in "{[":
            with contextlib.suppress(ValueError):
                value = json.loads(value)
        if hasattr(value, "astimezone"):
            value = value.astimezone().timestamp()
        if isinstance(value, Decimal):
            value = str(value)
        out.append(value)
    return tuple(out)


def test_calls_stored_before_the_fleet_was_configured_are_shipped(
    pg_server: PgServer, fleet_db: str, llm: FakeUpstream, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    island = ProxyProcess(data, dict.fromkeys(HOSTS, llm.url)).start()
    try:
        before = {call(sdk(island), stream=False) for _ in range(3)}
    finally:
        assert island.stop() == 0
    proxy = start(data, llm, write_config(tmp_path / "fleet.toml", pg_server.url(fleet_db)))
    try:
        after = {call(sdk(proxy), stream=True) for _ in range(2)}
        assert wait_for(lambda: central_ids(pg_server, fleet_db) == before | after)
    finally:
        assert proxy.stop() == 0


def test_a_database_outage_delays_shipping_only(
    pg_server: PgServer, fleet_db: str, llm: FakeUpstream, tmp_path: Path
) -> None:
    """Traffic flows and is stored while the database is down; the log says so once, and once
    when it is back; then everything arrives."""
    proxy = start(tmp_path / "data", llm, write_config(tmp_path / "fleet.toml", pg_server.url(fleet_db)))
    try:
        client = sdk(proxy)
        received = {call(client, stream=False)}
        assert wait_for(lambda: central_ids(pg_server, fleet_db) == received)
        with pg_server.down():
            t0 = time.monotonic()
            for i in range(20):
                received.add(call(client, stream=i % 2 == 0))
            assert time.monotonic() - t0 < 10  # nothing waited on the database
            assert wait_for(lambda: local_ids(proxy) == received, timeout=10)  # stored locally meanwhile
            assert wait_for(lambda: "cannot reach the fleet store" in proxy.log.read_text(), timeout=15)
            time.sleep(3)  # retries while down
        assert wait_for(lambda: central_ids(pg_server, fleet_db) == received, timeout=30)
    finally:
        assert proxy.stop() == 0
    log = proxy.log.read_text()
    assert log.count("cannot reach the fleet store") == 1, log
    assert log.count("reachable again") == 1, log
    assert pg_server.password not in log


# -- secrets -------------------------------------------------------------------------------


def test_the_password_is_never_logged_stored_or_shown(
    pg_server: PgServer, fleet_db: str, llm: FakeUpstream, tmp_path: Path
) -> None:
    password = pg_server.password
    # A wrong password (the real one's prefix) and a malformed URL: errors name the store redacted.
    wrong = pg_server.url(fleet_db).replace(password, password[:-4] + "zzzz")
    proxy = start(tmp_path / "bad", llm, write_config(tmp_path / "bad.toml", wrong))
    try:
        call(sdk(proxy), stream=False)  # traffic is unaffected
        assert wait_for(lambda: "cannot reach the fleet store" in proxy.log.read_text(), timeout=15)
    finally:
        assert proxy.stop() == 0
    bad_log = proxy.log.read_text()
    assert "password authentication failed" in bad_log and "***@" in bad_log
    assert password[:-4] not in bad_log
    malformed = pg_server.url(fleet_db).replace(password, password + "%zz")
    message = FleetAddress(malformed).describe(_connect_error(malformed))
    assert password not in message and "***" in message
    with pytest.raises(ConfigError) as bad_scheme:
        load_settings(config_file=str(write_config(tmp_path / "x.toml", "mysql://u:" + password + "@h/db")))
    assert password not in str(bad_scheme.value)
    assert password not in repr(load_settings(config_file=str(write_config(tmp_path / "y.toml", wrong))))
    assert redacted_url(f"postgresql://u:{password}@h/db?password={password}&x=1") == (
        "postgresql://u:***@h/db?password=***&x=1"
    )

    # The password from PGPASSWORD, the URL without it: shipping works, and it is nowhere either.
    url = pg_server.url(fleet_db, password=False)
    proxy = start(
        tmp_path / "good", llm, write_config(tmp_path / "good.toml", url), env={"PGPASSWORD": password}
    )
    try:
        received = {call(sdk(proxy), stream=True)}
        assert wait_for(lambda: central_ids(pg_server, fleet_db) == received)
    finally:
        assert proxy.stop() == 0
    for path in [*files_under(tmp_path / "bad", tmp_path / "good"), proxy.log]:
        assert password.encode() not in path.read_bytes(), path


def _connect_error(url: str) -> BaseException:
    try:
        psycopg.connect(url, connect_timeout=2)
    except psycopg.Error as exc:
        return exc
    raise AssertionError("connected with a malformed URL")


# -- hostile values ---------------------------------------------------------------------------

#: Any text a call may carry (lone surrogates never reach a row: see collector/trust/boundary.py),
#: with what PostgreSQL's COPY and text types could trip on mixed in.
HOSTILE_TEXT = st.lists(
    st.text(alphabet=st.characters(codec="utf-8"), max_size=8)
    | st.sampled_from(["\x00", "\\.\n", "\\.", "\n", "\r\n", '"', "\\", "\t", "\\N"]),
    max_size=6,
).map("".join)


@pytest.fixture(scope="module")
def fuzz_store(pg_server: PgServer) -> Iterator[tuple[str, PostgresSink]]:
    database = pg_server.create_database()
    sink = PostgresSink(FleetAddress(pg_server.url(database)))
    yield database, sink
    sink.close()


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    texts=st.lists(HOSTILE_TEXT, min_size=4, max_size=4),
    properties=st.dictionaries(HOSTILE_TEXT, HOSTILE_TEXT, max_size=3),
    reasons=st.lists(HOSTILE_TEXT, max_size=3),
    number=st.floats(allow_nan=True, allow_infinity=True),
)
def test_hostile_values_never_stop_shipping(
    fuzz_store: tuple[str, PostgresSink],
    pg_server: PgServer,
    tmp_path_factory,
    texts,
    properties,
    reasons,
    number,
) -> None:
    """Whatever text a call carries (NUL, COPY's end marker, quotes, newlines, any plane), its
    row is shipped, with the text as stored (NUL as U+FFFD, which PostgreSQL text cannot hold)."""
    database, sink = fuzz_store
    outbox_dir = tmp_path_factory.mktemp("outbox")
    call_id = f"fuzz-{time.time_ns()}"
    app, error, model, attribute = texts
    values = {
        "call_id": call_id,
        "started_at": "2026-01-01 00:00:00+00",
        "app": app,
        "error": error,
        "request_model": model,
        "properties": json.dumps(properties),
        "finish_reasons": reasons,
        "latency_ms": number,
    }
    span = {c: t for c, t in schema.SPANS.items() if c != "call_id"}
    con = duckdb.connect()
    con.execute(
        "CREATE TEMP TABLE batch AS SELECT "
        + ", ".join(f"{'?' if c in values else 'NULL'}::{t} AS {c}" for c, t in schema.LLM_CALLS.items())
        + ", struct_pack(request_body := ?::VARCHAR) AS body, struct_pack("
        + ", ".join(f"{c} := {'?' if c == 'attributes' else 'NULL'}::{t}" for c, t in span.items())
        + ") AS span, NULL::STRUCT("
        + ", ".join(f"{c} {t}" for c, t in schema.SCORES.items())
        + ") AS score",
        [*(values[c] for c in schema.LLM_CALLS if c in values), app, json.dumps({"a": attribute})],
    )
    outbox = Outbox(outbox_dir)
    outbox.directory.mkdir(exist_ok=True)
    (outbox.directory / ".enabled").touch()
    pending = outbox.stage(con, "fuzz.jsonl")
    assert pending is not None
    outbox.publish(pending)
    shipper = Shipper(outbox, sink, "fuzz-node")
    assert shipper.ship_ready()
    assert not list(outbox.ready()) and not (outbox.directory / ".refused").exists()
    ((got_app, got_error, got_model, got_props, got_reasons, got_latency),) = central(
        pg_server,
        database,
        "SELECT app, error, request_model, properties, finish_reasons, latency_ms FROM llm_calls "
        "WHERE call_id = %s",
        (call_id,),
    )
    clean = lambda s: s.replace("\x00", "\ufffd")  # noqa: E731
    assert (got_app, got_error, got_model) == (clean(app), clean(error), clean(model))
    assert json.loads(got_props) == properties
    assert got_reasons == [clean(r) for r in reasons]
    assert got_latency == number or (got_latency != got_latency and number != number)
    spans = central(pg_server, database, "SELECT attributes FROM spans WHERE call_id = %s", (call_id,))
    assert json.loads(spans[0][0]) == {"a": attribute}


# -- a fleet -------------------------------------------------------------------------------


class Traffic(threading.Thread):
    """Calls through one sidecar in a loop (streams every other call), keeping the id of each
    call the client received in full; the sidecar may be swapped (a restart) under it."""

    def __init__(self, proxy: ProxyProcess) -> None:
        super().__init__(daemon=True)
        self.proxy = proxy
        self.received: set[str] = set()
        self.failed = 0
        self.stop = threading.Event()

    def run(self) -> None:
        proxy, client, i = self.proxy, sdk(self.proxy), 0
        while not self.stop.is_set():
            if proxy is not self.proxy:
                proxy, client = self.proxy, sdk(self.proxy)
            i += 1
            try:
                self.received.add(call(client, stream=i % 2 == 0, app=f"app-{i % 3}"))
            except (openai.APIError, httpx.HTTPError):
                self.failed += 1  # the sidecar was killed under the call: not received in full
                time.sleep(0.05)
            time.sleep(0.01)


def test_three_sidecars_one_store_through_a_kill_and_an_outage(
    pg_server: PgServer, fleet_db: str, llm: FakeUpstream, tmp_path: Path
) -> None:
    """Three sidecars with their own data dirs ship to one database under concurrent SDK
    traffic; one is killed with ``kill -9`` mid-load and restarted; the database is stopped for
    30 s mid-load. Afterwards the fleet store holds every call each client received, once, and
    equals the union of the three local stores, node by node."""
    url = pg_server.url(fleet_db)
    nodes = ("a", "b", "c")
    configs = {n: write_config(tmp_path / f"{n}.toml", url, node=n) for n in nodes}
    proxies = {n: start(tmp_path / n, llm, configs[n]) for n in nodes}
    traffic = {n: Traffic(proxies[n]) for n in nodes}
    try:
        for t in traffic.values():
            t.start()
        time.sleep(3)
        proxies["b"].kill9()
        proxies["b"] = start(tmp_path / "b", llm, configs["b"])
        traffic["b"].proxy = proxies["b"]
        time.sleep(2)
        with pg_server.down():
            time.sleep(30)
        time.sleep(2)
        for t in traffic.values():
            t.stop.set()
        for t in traffic.values():
            t.join(30)
        received = {n: traffic[n].received for n in nodes}
        assert all(len(r) > 50 for r in received.values()), {n: len(r) for n, r in received.items()}
        everything = set().union(*received.values())
        assert wait_for(lambda: everything <= central_ids(pg_server, fleet_db), timeout=90, step=1)
        for n in nodes:
            assert wait_for(
                lambda n=n: local_ids(tmp_path / n / "llmtap.duckdb") == central_ids(pg_server, fleet_db, n)
            )
    finally:
        for proxy in proxies.values():
            if proxy.proc is not None and proxy.proc.poll() is None:
                assert proxy.stop() == 0
    union = set().union(*(local_ids(tmp_path / n / "llmtap.duckdb") for n in nodes))
    assert central(pg_server, fleet_db, "SELECT count(*), count(DISTINCT call_id) FROM llm_calls") == [
        (len(union), len(union))
    ]
    assert central_ids(pg_server, fleet_db) == union
    assert central(pg_server, fleet_db, "SELECT count(*) FROM spans") == [(len(union),)]
    assert central(pg_server, fleet_db, "SELECT count(*) FROM llm_calls WHERE stream") != [(0,)]
    # The analytics (and so report, dashboard, notebooks) on the fleet store give the union's figures.
    fleet = analytics.spend(analytics.load(url), by=["app", "model"]).sort(["app", "model"])
    local = (
        pl.concat([analytics.load(tmp_path / n).collect() for n in nodes])
        .lazy()
        .pipe(analytics.spend, by=["app", "model"])
        .sort(["app", "model"])
    )
    assert_frame_equal(fleet, local, rel_tol=1e-9)  # float sums depend on the rows' order
    assert fleet["calls"].sum() == len(union)
    for n in nodes:  # the data dirs and logs hold no password
        for path in [*files_under(tmp_path / n), *tmp_path.glob("proxy-*.log")]:
            assert pg_server.password.encode() not in path.read_bytes(), path
