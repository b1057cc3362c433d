"""Reading the fleet store: on the same rows, every analysis gives the same answer from
PostgreSQL as from DuckDB, and the reading commands take ``--store postgresql://...``.

One generated store (:mod:`analytics.synthetic`: routing, llmtap's response cache, fallback
chains, scores) is written locally, then copied into a private PostgreSQL server's fleet
tables as the shipper stores them (:func:`bench.fleet_read.copy_to_fleet`, over three nodes);
each public analysis then runs on ``analytics.load(db)`` and ``analytics.load(url)`` and the
two frames must be equal, exact money included.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import duckdb
import polars as pl
import pytest
from polars.testing import assert_frame_equal

import analytics
from analytics.engines import FleetStoreError, Window, reader
from analytics.synthetic import START, generate, with_response_cache, with_routing, write_store
from app.cli import main
from bench.fleet_read import copy_to_fleet
from tests.pgserver import PgServer

ROWS = 12_000
DAYS = 14
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def stores(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """(the local store, the fleet store's URL) holding the same calls and scores."""
    db = tmp_path_factory.mktemp("fleet-read") / "llmtap.duckdb"
    calls, bodies = generate(ROWS, days=DAYS)
    calls = with_response_cache(with_routing(calls), bodies)
    # Fallback chains: some failed calls were a chain's first attempt.
    failed = pl.col("error").is_not_null() & (pl.col("call_id").hash(7) % 3 == 0)
    calls = calls.with_columns(
        routing_arm=pl.when(failed).then(pl.lit("fallback")).otherwise(pl.col("routing_arm")),
        routing_rule=pl.when(failed).then(pl.lit("fallback:main")).otherwise(pl.col("routing_rule")),
    )
    write_store(db, calls, bodies)
    scored = calls.filter(pl.col("call_id").hash(11) % 4 == 0).select(
        "call_id",
        name=pl.lit("helpful"),
        value=(pl.col("call_id").hash(13) % 1000).cast(pl.Float64) / 999,
        source=pl.lit("grader"),
        created_at=pl.col("started_at") + timedelta(seconds=1),
        error=pl.lit(None, pl.String),
    )
    with duckdb.connect(str(db)) as con:
        con.register("scored", scored.to_arrow())
        con.execute("INSERT INTO scores SELECT * FROM scored")
    url = pg_server.url(pg_server.create_database())
    with pg_server.connect(url.rsplit("/", 1)[1]) as conn:
        assert copy_to_fleet(db, conn) == calls.height
    yield db, url


def same(local: pl.DataFrame, fleet: pl.DataFrame) -> None:
    """Equal frames, whatever the row order of a frame without one. Money (Decimal), counts,
    names and times are exact; a float aggregate (a share, a float sum) may differ in its
    last bits, as the engines hand rows over in different orders and float addition is not
    associative."""
    assert_frame_equal(local.sort(local.columns), fleet.sort(fleet.columns), check_exact=False, rel_tol=1e-9)


WINDOW = {"since": START + timedelta(days=2), "until": START + timedelta(days=DAYS - 2)}
NOW = START + timedelta(days=DAYS - 1, hours=5)
ANALYSES = {
    "spend": lambda c: analytics.spend(c, by=["model", "app", "day"]),
    "spend_by_property": lambda c: analytics.spend(c, by=["property:team", "week"]),
    "summary": lambda c: analytics.summary(c, by=["provider"]),
    "latency": lambda c: analytics.latency(c, by=["model", "status_class"]),
    "errors": lambda c: analytics.errors(c, by=["provider", "error_kind"]),
    "truncations": analytics.truncations,
    "unpriced": analytics.unpriced,
    "shadow_spend": analytics.shadow_spend,
    "cache_savings": analytics.cache_savings,
    "cache_rates": analytics.cache_rates,
    "response_cache": analytics.response_cache,
    "cache_summary": analytics.cache_summary,
    "waste": lambda c: analytics.waste(c, by=["model", "app"]),
    "waste_flags": lambda c: analytics.waste_flags(c).drop("node").collect(),  # node: NULL locally
    "burn": lambda c: analytics.burn(c, period="week", by=["app"], now=NOW, limit_usd=50.0),
    "anomalies_hour": lambda c: analytics.anomalies(c, bucket="hour", metric="cost", all_buckets=True),
    "anomalies_day": lambda c: analytics.anomalies(
        c, bucket="day", metric="error_rate", by=["model"], all_buckets=True
    ),
    "fallbacks": analytics.fallbacks,
    "realised_savings": analytics.realised_savings,
}


@pytest.mark.parametrize("name", list(ANALYSES))
def test_every_analysis_gives_the_same_answer_from_both_stores(stores, name: str) -> None:
    db, url = stores
    analysis = ANALYSES[name]
    local, fleet = (analysis(analytics.load(store, **WINDOW)) for store in (db, url))
    assert local.height, f"{name}: the generated rows should give it something to say"
    same(local, fleet)


def test_the_frames_are_equal_column_for_column(stores) -> None:
    """Every column of the calls frame, bit for bit (money exact, times in microseconds,
    lists, JSON text, the body hash), except ``node``: NULL locally, the recording sidecar's
    name in the fleet."""
    db, url = stores
    local, fleet = (analytics.load(store, **WINDOW).collect().sort("call_id") for store in (db, url))
    assert local.schema == fleet.schema == analytics.SCHEMA
    assert local["node"].null_count() == local.height
    assert set(fleet["node"]) == {"node-0", "node-1", "node-2"}
    assert_frame_equal(local.drop("node"), fleet.drop("node"), check_exact=True)
    assert fleet["body_hash"].null_count() < fleet.height  # the hash made it across, not NULLs
    same(analytics.load_scores(db).collect(), analytics.load_scores(url).collect())


def test_the_recommender_gives_the_same_records(stores) -> None:
    """Records from scores and shadow agreement alike. The fleet keeps no request bodies, so
    the local side runs without them too (prompt-caching evidence needs them)."""
    db, url = stores
    local = analytics.recommend(analytics.load(db), scores=analytics.load_scores(db))
    fleet = analytics.recommend(url)
    assert local, "the generated routing should give records"
    same(analytics.recommendations_frame(local), analytics.recommendations_frame(fleet))


def test_nodes_filter_and_group_in_the_fleet_store(stores) -> None:
    _, url = stores
    by_node = analytics.spend(analytics.load(url), by=["node"])
    total = analytics.spend(analytics.load(url), by=[])
    assert by_node.height == 3
    assert by_node["cost_usd"].sum() == total.item(0, "cost_usd")
    one = analytics.load(url, nodes=["node-1"]).select("node").collect()
    everyone = analytics.load(url).filter(pl.col("node") == "node-1").select(pl.len()).collect()
    assert one.height == everyone.item()
    assert set(one["node"]) == {"node-1"}
    # The node filter is in the SQL, not applied after fetching every row.
    assert "c.node IN ('node-1')" in _fleet_sql(url, ["node-1"])


def _fleet_sql(url: str, nodes: list[str]) -> str:
    from analytics.engines.fleet import query

    return query(["node"], Window(nodes=tuple(nodes)), None)


def test_a_node_filter_on_a_local_store_is_refused(stores) -> None:
    db, _ = stores
    with pytest.raises(ValueError, match="node filter needs the fleet store"):
        analytics.load(db, nodes=["node-1"])


def test_loading_takes_the_store_from_the_environment(stores, monkeypatch) -> None:
    _, url = stores
    monkeypatch.setenv("LLMTAP_STORE", url)
    assert set(analytics.load().select("node").collect()["node"]) == {"node-0", "node-1", "node-2"}


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_report_on_the_fleet_store_equals_the_report_on_the_local_store(stores, capsys) -> None:
    db, url = stores
    outputs = []
    for store in (str(db), url):
        assert (
            main(["report", "--store", store, "--show", "spend", "--by", "model,day", "--format", "json"])
            == 0
        )
        outputs.append(json.loads(capsys.readouterr().out))
    assert outputs[0] == outputs[1]
    assert outputs[0]["rows"]


def test_report_by_node_and_export_from_the_fleet(stores, capsys, tmp_path) -> None:
    _, url = stores
    assert main(["report", "--store", url, "--show", "spend", "--by", "node", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert sorted(row["node"] for row in rows) == ["node-0", "node-1", "node-2"]
    out = tmp_path / "node-2.parquet"
    assert main(["export", "--store", url, "--node", "node-2", "--format", "parquet", "--out", str(out)]) == 0
    exported = pl.read_parquet(out)
    assert set(exported["node"]) == {"node-2"}
    assert exported.height == analytics.load(url, nodes=["node-2"]).select(pl.len()).collect().item()
    csv_out = tmp_path / "all.csv"
    assert main(["export", "--store", url, "--format", "csv", "--out", str(csv_out)]) == 0
    assert (
        pl.read_csv(csv_out, infer_schema=False).height
        == analytics.load(url).select(pl.len()).collect().item()
    )


def test_the_password_is_never_printed(pg_server: PgServer, stores) -> None:
    """A wrong password, an unreachable server, a URL that is not one: exit 2, one line,
    the password nowhere (in the URL or in PGPASSWORD)."""
    _, url = stores
    secret = pg_server.password
    unreachable = url.replace(f":{pg_server.port}/", ":1/")
    wrong = url.replace(secret, "not-" + secret)
    for bad in (unreachable, wrong, url.replace(f":{pg_server.port}/", ":port/")):
        done = run("report", "--store", bad, env={"LLMTAP_STORE": ""})
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith("llmtap: error: ") and done.stderr.count("\n") == 1, done.stderr
        assert secret not in done.stderr + done.stdout
        assert "***" in done.stderr
    via_env = run(
        "report",
        env={
            "LLMTAP_STORE": url.replace(f":{secret}@", "@").replace(f":{pg_server.port}/", ":1/"),
            "PGPASSWORD": secret,
        },
    )
    assert via_env.returncode == 2 and secret not in via_env.stderr, via_env.stderr
    # And with PGPASSWORD the store is read (connectorx gets the password too).
    ok = run("report", "--store", url.replace(f":{secret}@", "@"), env={"PGPASSWORD": secret})
    assert ok.returncode == 0, ok.stderr
    with pytest.raises(FleetStoreError) as raised:
        reader(unreachable).check(Window())
    assert secret not in str(raised.value)
    assert secret not in repr(reader(url))


def test_commands_that_cannot_use_the_fleet_store_say_so(stores) -> None:
    _, url = stores
    done = run("evaluate", "--store", url)
    assert done.returncode == 2
    assert "not on the fleet store" in done.stderr
    with pytest.raises(ValueError, match="sidecar's local store"):
        analytics.import_feedback("ratings.csv", url)
