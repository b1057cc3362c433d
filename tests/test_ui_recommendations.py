"""The Recommendations page under AppTest, on a generated store with shadow and canary
traffic: the records match the recommender's, and rules are written only after the
confirmation, merged by id into the rules file."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

import analytics
from analytics.synthetic import generate, with_routing, write_store
from collector.routing.rules import Match, Rule, dump_rules, load_rules, merge_rules

DASHBOARD = str(Path(__file__).resolve().parent.parent / "app" / "ui" / "dashboard.py")
KEPT = Rule(id="kept-rule", match=Match(model="gpt-4o", app="eval"), to="gpt-4o-mini", mode="shadow")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ui-routing") / "data"
    root.mkdir()
    calls, bodies = generate(6000, 3, start=datetime.now(UTC) - timedelta(days=3, minutes=5))
    write_store(root / "llmtap.duckdb", with_routing(calls), bodies)
    return root


def open_recommendations(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.setenv("LLMTAP_DATA_DIR", str(data_dir))
    monkeypatch.delenv("LLMTAP_CONFIG", raising=False)
    at = AppTest.from_file(DASHBOARD, default_timeout=120).run()
    at.switch_page("page_scripts/recommendations.py").run()
    assert not at.exception, at.exception
    assert at.title[0].value == "Recommendations"
    return at


def test_records_and_writing_rules_after_confirmation(data_dir, monkeypatch):
    rules_file = data_dir / "rules.yaml"
    rules_file.write_text(dump_rules([KEPT]))
    at = open_recommendations(data_dir, monkeypatch)
    since = at.session_state["llmtap_view"].since
    records = analytics.recommend(data_dir, since=since)
    shown = {m.label: m.value for m in at.metric}
    recommended = [r for r in records if r.status == "recommended"]
    assert int(shown["Recommended"]) == len(recommended)
    assert int(shown["Needing evidence"]) == sum(r.status == "needs_evidence" for r in records)
    savings = sum(r.monthly_savings_usd_mid for r in recommended)
    assert float(
        re.sub(r"[^0-9.]", "", shown["Monthly savings if all recommended are applied"])
    ) == pytest.approx(savings, abs=0.005)
    assert len(at.dataframe[0].value) == len(records)

    at.radio(key="rules_action").set_value("shadow").run()
    drafted = analytics.draft_rules(records, "shadow")
    assert drafted
    assert at.code[0].value == dump_rules(drafted).rstrip()
    assert at.button(key="write_rules").disabled
    assert load_rules(rules_file) == [KEPT]  # nothing written before the confirmation
    at.checkbox(key="confirm_rules").check().run()
    at.button(key="write_rules").click().run()
    assert not at.exception, at.exception
    assert load_rules(rules_file) == [KEPT, *drafted]
    assert at.success[0].value.startswith(f"Wrote {len(drafted)} shadow rules")

    # Writing the same drafts again replaces them by id: nothing is doubled.
    at.checkbox(key="confirm_rules").check().run()
    at.button(key="write_rules").click().run()
    assert load_rules(rules_file) == [KEPT, *drafted]
    assert f"{len(drafted)} replace rules of the same id" in at.checkbox(key="confirm_rules").label


def test_merge_replaces_rules_in_place_and_appends_new_ones():
    old = [KEPT, Rule(id="b", match=Match(model="m"), to="n")]
    new = [
        Rule(id="b", match=Match(model="m"), to="n", mode="canary"),
        Rule(id="c", match=Match(model="x"), to="y"),
    ]
    assert merge_rules(old, new) == [KEPT, new[0], new[1]]


def test_draft_only_shows_the_rules(data_dir, monkeypatch):
    at = open_recommendations(data_dir, monkeypatch)
    at.radio(key="rules_action").set_value("draft").run()
    assert at.code and not at.get("button")
    assert any("Pick shadow, canary or enforce" in c.value for c in at.caption)
