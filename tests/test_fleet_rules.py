"""Routing rules across the fleet: written once into the fleet store, followed by every
sidecar's proxy through its hot reload, kept while the database is down."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import polars as pl
import pytest
import yaml

from analytics.synthetic import generate, with_routing, write_store
from app.cli import main
from bench.fleet_read import copy_to_fleet
from collector.fleet.rules import FleetRulesFeed, FleetRulesTable
from collector.routing.location import proxy_rules, rules_target
from collector.routing.rules import RulesFile, dump_rules, parse_rules, read_rules, write_rules
from collector.settings.config import load_settings
from tests.pgserver import PgServer
from tests.test_routing_proxy import ANSWERS, ask, chat_reply
from tests.upstream import FakeUpstream

ENFORCE = {"id": "fleet-enforce", "match": {"model": "gpt-4o"}, "to": "cheap-model", "mode": "enforce"}
#: Bound on a written rule reaching a proxy: the feed's poll (5 s) plus the router's check (1 s),
#: with slack for a loaded machine.
REACH_S = 20


@pytest.fixture
def fleet_url(pg_server: PgServer) -> str:
    return pg_server.url(pg_server.create_database())


def config(tmp_path: Path, url: str, node: str) -> Path:
    path = tmp_path / f"{node}.toml"
    path.write_text(f'[fleet]\nurl = "{url}"\nnode = "{node}"\n')
    return path


def test_rules_go_where_the_proxies_read_them(tmp_path: Path, fleet_url: str) -> None:
    """An explicit rules file wins; else a fleet (by --store or [fleet]); else DATA_DIR/rules.yaml."""
    plain = load_settings(data_dir=str(tmp_path / "a"))
    assert rules_target(plain) == RulesFile(tmp_path / "a" / "rules.yaml")
    assert rules_target(plain, fleet_url) == FleetRulesTable(fleet_url)
    fleet = load_settings(data_dir=str(tmp_path / "b"), config_file=str(config(tmp_path, fleet_url, "n")))
    assert rules_target(fleet) == FleetRulesTable(fleet_url)
    assert isinstance(proxy_rules(fleet), FleetRulesFeed)
    named = load_settings(
        data_dir=str(tmp_path / "b"),
        config_file=str(config(tmp_path, fleet_url, "n")),
        rules_file=str(tmp_path / "mine.yaml"),
    )
    assert rules_target(named, fleet_url) == RulesFile(tmp_path / "mine.yaml")
    assert proxy_rules(named) == RulesFile(tmp_path / "mine.yaml")


def test_written_rules_merge_and_count_versions(fleet_url: str) -> None:
    table = FleetRulesTable(fleet_url)
    assert table.fetch() is None and read_rules(table) == []
    (first,) = parse_rules(yaml.safe_dump({"rules": [ENFORCE]}))
    second = first.model_copy(update={"id": "another", "to": "other-model"})
    write_rules(table, [first], "one")
    write_rules(table, [second, first.model_copy(update={"mode": "shadow"})], "two")
    fetched = table.fetch()
    assert fetched is not None and fetched[0] == 2
    assert [(r.id, r.mode) for r in read_rules(table)] == [
        ("fleet-enforce", "shadow"),
        ("another", "enforce"),
    ]
    assert fetched[1].startswith("# two\n")


def test_recommend_writes_the_fleets_rules(
    tmp_path: Path, pg_server: PgServer, fleet_url: str, capsys
) -> None:
    """``recommend --write-rules`` over the fleet store's calls writes the fleet's rules."""
    db = tmp_path / "llmtap.duckdb"
    calls, bodies = generate(4000, days=7)
    write_store(db, with_routing(calls), bodies)
    with pg_server.connect(fleet_url.rsplit("/", 1)[1]) as conn:
        copy_to_fleet(db, conn)
    data_dir = tmp_path / "empty"
    code = main(
        ["recommend", "--data-dir", str(data_dir), "--store", fleet_url, "--write-rules", "--format", "json"]
    )
    assert code == 0
    err = capsys.readouterr().err
    assert "routing_rules in postgresql://llmtap_test:***@" in err and pg_server.password not in err
    rules = read_rules(FleetRulesTable(fleet_url))
    assert rules and all(rule.mode == "shadow" for rule in rules)
    assert not (data_dir / "rules.yaml").exists()


def test_the_feed_follows_the_file_until_the_fleet_has_rules_and_fails_open(
    tmp_path: Path, fleet_url: str, caplog
) -> None:
    caplog.set_level(logging.WARNING, "llmtap.fleet")
    file = RulesFile(tmp_path / "rules.yaml")
    file.write(dump_rules(parse_rules(yaml.safe_dump({"rules": [{**ENFORCE, "id": "local"}]}))))
    unreachable = FleetRulesFeed(fleet_url.replace("@127.0.0.1:", "@127.0.0.1:1"), file)
    feed = FleetRulesFeed(fleet_url, file)
    try:
        for _ in range(3):
            unreachable.refresh()
        assert unreachable.version()[0] == "file" and "local" in (unreachable.text() or "")
        warnings = [r.getMessage() for r in caplog.records]
        assert len(warnings) == 1 and "keeping the rules in use" in warnings[0]
        feed.refresh()
        assert feed.version()[0] == "file"  # no fleet document yet
        FleetRulesTable(fleet_url).write(dump_rules(parse_rules(yaml.safe_dump({"rules": [ENFORCE]}))))
        feed.refresh()
        assert feed.version() == ("fleet", 1) and "fleet-enforce" in (feed.text() or "")
    finally:  # version() started their polling threads
        unreachable.close()
        feed.close()


def test_two_proxies_apply_rules_written_once_centrally(
    tmp_path: Path, pg_server: PgServer, fleet_url: str
) -> None:
    """The issue's "rules across the fleet": two sidecars with the same [fleet] follow one
    rules document written in the fleet store, through the hot reload, and keep it while
    the database is down."""
    from tests.conftest import running_proxy

    with FakeUpstream() as fake:
        fake.routes["/v1/chat/completions"] = chat_reply
        for node in ("a", "b"):
            (tmp_path / node).mkdir()
        with (
            running_proxy(
                tmp_path / "a", fake, extra_args=["--config", str(config(tmp_path, fleet_url, "a"))]
            ) as a,
            running_proxy(
                tmp_path / "b", fake, extra_args=["--config", str(config(tmp_path, fleet_url, "b"))]
            ) as b,
        ):
            proxies = [a, b]
            assert [ask(p) for p in proxies] == [ANSWERS["gpt-4o"]] * 2  # no rules yet
            FleetRulesTable(fleet_url).write(dump_rules(parse_rules(yaml.safe_dump({"rules": [ENFORCE]}))))
            for proxy in proxies:
                deadline = time.monotonic() + REACH_S
                while ask(proxy) != ANSWERS["cheap-model"]:
                    assert time.monotonic() < deadline, f"the fleet's rule never reached {proxy.data_dir}"
                    time.sleep(0.5)
            with pg_server.down():
                time.sleep(12)  # two polls fail
                assert [ask(p) for p in proxies] == [ANSWERS["cheap-model"]] * 2
            rewritten = [
                pl.DataFrame(p.rows(wait_for=1)).filter(pl.col("routing_rule") == "fleet-enforce")
                for p in proxies
            ]
        logs = [p.log.read_text() for p in proxies]
    for frame in rewritten:
        assert set(frame["request_model"]) == {"cheap-model"}
        assert set(frame["routed_from_model"]) == {"gpt-4o"}
    for log in logs:
        assert log.count("keeping the rules in use") == 1, log
        assert pg_server.password not in log
    assert json.loads(fake.received[-1].body)["model"] == "cheap-model"
