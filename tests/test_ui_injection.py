"""Text from recorded traffic is never Markdown or HTML on the dashboard, in a real browser.

A store whose app, model, provider, user, property keys and values, errors, finish
reasons, path, span and bodies are image Markdown (``![b](URL)``) or an HTML ``<img>``
pointing at a local HTTP server that counts what it is asked for (scores' names and errors
too); every page of
``llmtap ui`` is opened in Debian's chromium (with the Calls page's detail of such a
call, a recommendation naming such a model, and the sidebar's filter options), and the
server must hear nothing while each text shows literally.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import duckdb
import pytest

from analytics.synthetic import generate, with_routing, write_store
from app.ui.safe import WORD_JOINER
from tests.test_browser import CHROMIUM, open_page, running_dashboard

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium on the PATH")

#: How long a page is given to fetch what it would (images load after the script ends).
SETTLE_MS = 1500
CONFIG = """
[budgets."daily-total"]
limit_usd = 50
period = "day"

[budgets."per-app"]
per = "app"
limit_usd = 1
period = "day"
"""


class Beacon:
    """A local HTTP server that records every path it is asked for."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        beacon = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                beacon.paths.append(self.path)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]

    def markdown(self, field: str) -> str:
        """Image Markdown that fetches ``/beacon-FIELD`` when rendered."""
        return f"![b](http://127.0.0.1:{self.port}/beacon-{field})"

    def html(self, field: str) -> str:
        """An HTML image that fetches ``/x-FIELD`` when rendered."""
        return f"<img src=http://127.0.0.1:{self.port}/x-{field}>"


@pytest.fixture(scope="module")
def beacon() -> Iterator[Beacon]:
    server = Beacon()
    thread = threading.Thread(target=server.server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


def hostile_store(data_dir: Path, beacon: Beacon) -> None:
    """Two days of generated calls with routing, their names replaced by beacon texts,
    the newest call hostile in every text field (with its span and bodies), a
    recommendation whose candidate model is one, and eight budget alerts naming them."""
    md, html = beacon.markdown, beacon.html
    db = data_dir / "llmtap.duckdb"
    now = datetime.now(UTC)
    calls, bodies = generate(3000, 2, start=now - timedelta(days=2, minutes=5))
    write_store(db, with_routing(calls), bodies)
    model = "request_model = ?, response_model = ?, provider = ?"
    updates = [
        ("app = ?", "app = 'checkout'", [md("app")]),
        ("app = ?", "app = 'search'", [html("app")]),
        ("user_id = ?", "app = 'support-bot'", [md("user")]),
        ("user_id = ?", "app = 'batch-summaries'", [html("user")]),
        (model, "request_model = 'acme-large'", [md("model"), md("model"), md("provider")]),
        (model, "provider = 'mistral'", [html("model"), html("model"), html("provider")]),
        (
            "properties = json_object(?, ?, ?, ?)",
            "app = 'eval'",
            [md("key"), md("value"), html("key"), html("value")],
        ),
        ("error = ?", "error IS NOT NULL AND status_code = 500", [md("error")]),
        ("error = ?", "error IS NOT NULL AND status_code <> 500", [html("error")]),
        ("finish_reasons = [?, ?], path = ?", "true", [md("finish"), html("finish"), md("path")]),
        # Shadow copies of one route answered by a "model" the recommender will name as candidate.
        (
            "request_model = ?, response_model = ?",
            "routing_arm = 'shadow' AND app = 'support-bot' AND request_model = 'claude-haiku-4-5'",
            [md("candidate")] * 2,
        ),
    ]
    with duckdb.connect(str(db)) as con:
        for assignment, where, values in updates:
            con.execute(f"UPDATE llm_calls SET {assignment} WHERE {where}", values)
        con.execute(
            "INSERT INTO llm_calls (call_id, started_at, provider, api, host, path, status_code,"
            " request_model, response_model, app, user_id, properties, error, finish_reasons,"
            " input_tokens, output_tokens, latency_ms) VALUES ('hostile', ?, ?, ?, ?, ?, 502, ?, ?, ?, ?,"
            " json_object(?, ?), ?, [?], 10, 2, 120)",
            [
                now - timedelta(minutes=1),
                *(md(f) for f in ("provider", "api", "host", "path", "model", "model", "app", "user")),
                *(md(f) for f in ("key", "value", "error", "finish")),
            ],
        )
        con.execute(
            "INSERT INTO spans (trace_id, span_id, call_id, name, kind, status, attributes)"
            " VALUES (?, ?, 'hostile', ?, 'CLIENT', ?, ?)",
            [
                md("trace"),
                md("span"),
                md("span-name"),
                html("status"),
                json.dumps({md("attr"): html("attr")}),
            ],
        )
        con.execute(
            "INSERT INTO call_bodies (call_id, capture_mode, request_body, response_body)"
            " VALUES ('hostile', ?, ?, ?)",
            [md("mode"), md("body"), html("body")],
        )
        con.execute(  # a grader that failed, and feedback the app named
            "INSERT INTO scores VALUES ('hostile', ?, NULL, 'grader', ?, ?),"
            " ('hostile', ?, 0.5, 'feedback', ?, NULL)",
            [md("score-name"), now, html("score-error"), html("score-name"), now],
        )
    alerts = [  # alert0 the most severe
        {
            "budget": html(f"budget{i}") if i % 2 else md(f"budget{i}"),
            "level": 1.5 - i / 10,
            "exceeded": i < 3,
            "message": f"budget per-app: app '{html(f'alert{i}') if i % 2 else md(f'alert{i}')}' spent $0.90",
        }
        for i in range(8)
    ]
    (data_dir / "budget_alerts.json").write_text(json.dumps({"updated_at": "x", "alerts": alerts}))
    (data_dir / "demo.toml").write_text(CONFIG)


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory, beacon: Beacon) -> Iterator[str]:
    """``llmtap ui`` on the hostile store."""
    data_dir = tmp_path_factory.mktemp("hostile") / "data"
    data_dir.mkdir()
    hostile_store(data_dir, beacon)
    with running_dashboard(data_dir) as url:
        yield url


def literally(text: str) -> re.Pattern:
    """``text`` as shown: the invisible word joiners that keep URLs from becoming links
    (app.ui.safe.md) may sit between its characters."""
    joiner = f"\\u{ord(WORD_JOINER):04x}?"  # spelt as an escape: Playwright's selectors take no raw one
    return re.compile(joiner.join(map(re.escape, text)))


def visible(page, text: str) -> None:
    """``text`` shows literally somewhere on the page (a table's hidden accessible copy aside)."""
    page.get_by_text(literally(text)).filter(visible=True).first.wait_for(state="visible", timeout=10_000)


def settle(page, beacon: Beacon, where: str) -> None:
    """Give the page time to fetch what it would, then check the beacon heard nothing."""
    page.wait_for_timeout(SETTLE_MS)
    assert beacon.paths == [], f"{where} rendered traffic text as Markdown/HTML: fetched {beacon.paths}"
    links = page.locator(f'a[href*="127.0.0.1:{beacon.port}"]')
    assert not links.count(), f"{where} made traffic text a link: {links.first.inner_text()}"
    errors = page.locator('[data-testid="stException"]')
    assert not errors.count(), f"{where}: {errors.first.inner_text()}"


def alerts(page, beacon: Beacon, where: str) -> None:
    """The budget alerts' banner names the most severe; its expander lists all eight."""
    visible(page, beacon.markdown("alert0"))
    page.locator('[data-testid="stExpander"] summary').filter(has_text="budget alerts").click()
    settle(page, beacon, f"{where}'s budget alerts")
    visible(page, beacon.html("alert7"))


@pytest.fixture
def opened(browser, dashboard: str, beacon: Beacon) -> Iterator:
    """Opens a page of the dashboard, the beacon's record cleared first; closes it after."""
    pages = []

    def open_(path: str, title: str):
        beacon.paths.clear()
        pages.append(open_page(browser, dashboard, path, title))
        return pages[-1]

    yield open_
    for page in pages:
        page.close()


def test_overview_and_the_sidebars_filters(opened, beacon: Beacon) -> None:
    page = opened("", "Overview")
    settle(page, beacon, "Overview")
    alerts(page, beacon, "Overview")
    page.locator('[data-testid="stSidebar"] [data-testid="stMultiSelect"]').first.click()  # App
    options = page.get_by_role("option")
    options.first.wait_for()
    assert {beacon.markdown("app"), beacon.html("app")} <= set(options.all_inner_texts())
    settle(page, beacon, "the sidebar's app filter")


def test_costs(opened, beacon: Beacon) -> None:
    page = opened("costs", "Costs")
    settle(page, beacon, "Costs")
    tabs = [label.replace(WORD_JOINER, "") for label in page.get_by_role("tab").all_inner_texts()]
    for key in (beacon.markdown("key"), beacon.html("key")):  # property keys are tab labels
        assert key in tabs, tabs


def test_latency(opened, beacon: Beacon) -> None:
    settle(opened("latency", "Latency"), beacon, "Latency")


def test_calls_and_a_calls_detail(opened, beacon: Beacon) -> None:
    md = beacon.markdown
    page = opened("calls", "Calls")  # the newest call, the hostile one, is shown in detail
    settle(page, beacon, "Calls' call detail")
    visible(page, md("error"))
    visible(page, md("model"))
    for tab, shown in (("Span", md("span-name")), ("Bodies", md("mode")), ("Scores", md("score-name"))):
        page.get_by_role("tab", name=tab).click()
        settle(page, beacon, f"Calls' call detail, tab {tab}")
        visible(page, shown)


def test_budgets(opened, beacon: Beacon) -> None:
    page = opened("budgets", "Budgets")
    settle(page, beacon, "Budgets")
    alerts(page, beacon, "Budgets")


def test_recommendations_and_a_records_evidence(opened, beacon: Beacon) -> None:
    page = opened("recommendations", "Recommendations")
    settle(page, beacon, "Recommendations")
    page.locator('[data-testid="stSelectbox"]').filter(has_text="Record").click()
    page.keyboard.type("beacon-candidate")  # (the list shows its first options only)
    page.get_by_role("option").filter(has_text=beacon.markdown("candidate")).first.click()
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=60_000
    )
    settle(page, beacon, "Recommendations' evidence")
    visible(page, f"{beacon.markdown('candidate')} has no known price")
