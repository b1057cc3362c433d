"""The dashboard in a real browser: ``llmtap ui`` on the demo's store, each page loaded in
Debian's chromium (never a browser Playwright downloads), its key numbers compared with
the same figures computed independently from the store with DuckDB SQL, and a screenshot
of each page kept as a test artefact ($LLMTAP_TEST_ARTIFACTS, else tests/artifacts/)."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import duckdb
import pytest

from tests.conftest import running_proxy
from tests.demo_data import APP_CALLS, ROOT
from tests.proxyproc import ProxyProcess, free_port
from tests.upstream import FakeUpstream, Reply

CHROMIUM = shutil.which("chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ARTIFACTS = Path(os.environ.get("LLMTAP_TEST_ARTIFACTS") or Path(__file__).parent / "artifacts")
#: url path -> the page's title (app/ui/dashboard.py).
PAGES = {
    "": "Overview",
    "costs": "Costs",
    "latency": "Latency",
    "calls": "Calls",
    "budgets": "Budgets",
    "recommendations": "Recommendations",
}

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium on the PATH")


def usd(value: float) -> str:
    """Dollars as a person reads them: cents from a dollar up, four places below."""
    return f"${value:,.2f}" if value >= 1 or value == 0 else f"${value:.4f}"


@contextmanager
def running_dashboard(data_dir: Path, *extra: str) -> Iterator[str]:
    """``llmtap ui`` on ``data_dir`` and its demo config (and ``extra`` options), on a free
    port; its URL."""
    port = free_port()
    command = [
        "--data-dir",
        str(data_dir),
        "--port",
        str(port),
        "--config",
        str(data_dir / "demo.toml"),
        *extra,
    ]
    log_path = data_dir.parent / f"ui-{port}.log"
    with open(log_path, "w") as log:
        ui = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "ui", *command], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as answer:
                        if answer.status == 200:
                            break
                except OSError:
                    if ui.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"llmtap ui did not start:\n{log_path.read_text()}") from None
                    time.sleep(0.3)
            yield url
        finally:
            ui.terminate()
            ui.wait(15)


@pytest.fixture(scope="module")
def dashboard(demo_data: Path) -> Iterator[str]:
    """The dashboard on the session's demo store, shared by this module's read-only tests."""
    with running_dashboard(demo_data) as url:
        yield url


@pytest.fixture(scope="module")
def store(demo_data: Path) -> dict[str, float]:
    """The figures the pages must show, straight from the store."""
    con = duckdb.connect(str(demo_data / "llmtap.duckdb"), read_only=True)
    calls, input_tokens, cost = con.execute(
        "SELECT count(*), sum(input_tokens), sum(cost_usd)::DOUBLE FROM llm_calls WHERE " + APP_CALLS
    ).fetchone()
    (blocked,) = con.execute(
        "SELECT count(*) FROM llm_calls WHERE status_code = 429 AND error LIKE '%blocked by budget %'"
    ).fetchone()
    con.close()
    return {"calls": calls, "input_tokens": input_tokens, "cost": cost, "blocked": blocked}


#: Bound on a page's first render: a new dashboard server imports the app's modules then, which
#: on a busy 2-core machine has taken over 30 s.
OPEN_WAIT_MS = 60_000


#: Run before a page's scripts: no native "Save as" dialog (headless chromium has one that never
#: answers), so a table's "Download as CSV" takes Streamlit's fallback, a plain download.
NO_SAVE_PICKER = (
    "window.showSaveFilePicker = async () => { throw new TypeError('no file picker in tests'); };"
)


def open_page(browser, url: str, path: str, title: str):
    page = browser.new_page(viewport={"width": 1400, "height": 1100}, accept_downloads=True)
    page.add_init_script(NO_SAVE_PICKER)
    page.goto(f"{url}/{path}")
    page.get_by_role("heading", name=title, exact=True).first.wait_for(timeout=OPEN_WAIT_MS)
    # The script has finished once Streamlit's status widget ("Running...") is gone.
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=OPEN_WAIT_MS
    )
    return page


def metric_value(page, label: str):
    """The value element of the metric labelled ``label`` (found afresh each time it is used)."""
    box = page.locator('[data-testid="stMetric"]').filter(
        has=page.locator('[data-testid="stMetricLabel"]', has_text=label)
    )
    return box.locator('[data-testid="stMetricValue"]').first


def metric(page, label: str) -> str:
    return metric_value(page, label).inner_text().strip()


@pytest.mark.parametrize(("path", "title"), PAGES.items(), ids=[t for t in PAGES.values()])
def test_page_renders_without_error(browser, dashboard: str, path: str, title: str) -> None:
    page = open_page(browser, dashboard, path, title)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"dashboard-{title.lower()}.png"), full_page=True)
    errors = page.locator('[data-testid="stException"]')  # (error boxes are budget alerts)
    assert errors.count() == 0, errors.first.inner_text()
    page.close()


def test_overview_numbers_match_the_store(browser, dashboard: str, store: dict) -> None:
    page = open_page(browser, dashboard, "", "Overview")
    assert metric(page, "Calls") == f"{store['calls']:,}"
    assert metric(page, "Input tokens") == f"{store['input_tokens']:,}"
    assert metric(page, "Cost") == usd(store["cost"])
    page.close()


def test_budgets_page_counts_the_blocked_calls(browser, dashboard: str, store: dict) -> None:
    assert store["blocked"] > 0
    page = open_page(browser, dashboard, "budgets", "Budgets")
    assert metric(page, "Budgets") == "3"
    assert metric(page, "Blocked calls") == f"{store['blocked']:,}"
    page.close()


#: What the fake provider answers to the calls the live-refresh test sends.
CHAT_REPLY = {
    "id": "chatcmpl-live",
    "object": "chat.completion",
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 3},
}
LIVE_CALLS = 3
#: Bound on waiting for the page to show the new calls: the proxy stores a call within about
#: a second and the page checks the store every 5 s (app.ui.widgets.REFRESH_S); the rest is
#: slack for a loaded machine. The assertion is on what the page shows, not on the time.
LIVE_WAIT_MS = 15_000


def chat_through(proxy: ProxyProcess, question: str) -> None:
    """One OpenAI chat call with curl, routed and trusted the way ``llmtap env`` sets it up."""
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": question}]}
    headers = ["-H", "content-type: application/json", "-H", "X-Llmtap-App: live-test"]
    subprocess.run(
        [
            "curl",
            "-sS",
            "--fail-with-body",
            *headers,
            "-d",
            json.dumps(body),
            "https://api.openai.com/v1/chat/completions",
        ],
        env={**os.environ, **proxy.env},
        capture_output=True,
        check=True,
    )


def test_overview_shows_new_calls_without_a_reload(
    browser, tmp_path: Path, demo_data: Path, upstream: FakeUpstream
) -> None:
    """The issue's "live while the proxy runs": with the Overview open, calls that a real proxy
    records into the same data directory appear in its Calls metric, the page never reloaded."""
    from playwright.sync_api import expect

    data_dir = tmp_path / "data"
    shutil.copytree(demo_data, data_dir)  # the shared demo store keeps its numbers for the other tests
    upstream.routes["/v1/chat/completions"] = Reply.json(CHAT_REPLY)
    with running_dashboard(data_dir) as url:
        page = open_page(browser, url, "", "Overview")
        before = int(metric(page, "Calls").replace(",", ""))
        # A reload or navigation would drop this mark along with the page's JavaScript state.
        page.evaluate("() => { window.llmtapLiveMark = true; }")
        with running_proxy(data_dir, upstream) as proxy:
            for n in range(LIVE_CALLS):
                chat_through(proxy, f"question {n}")
            expect(metric_value(page, "Calls")).to_have_text(f"{before + LIVE_CALLS:,}", timeout=LIVE_WAIT_MS)
        assert page.evaluate("() => window.llmtapLiveMark === true"), "the page was reloaded"
        page.close()


def test_a_page_opened_by_its_url_on_a_fresh_server_has_its_sidebar(demo_data, browser):
    """A bookmark to a page, opened before anyone opened the Overview: the page runs inside
    the app (sidebar, filters), not as a bare script missing the app's state."""
    with running_dashboard(demo_data) as url:
        page = open_page(browser, url, "costs", "Costs")
        try:
            assert page.locator('[data-testid="stSidebar"]').count() == 1
            assert not page.locator('[data-testid="stException"]').count()
        finally:
            page.close()


#: The scores the Calls page test gives one call, in the order inserted: a feedback score, and
#: a grader's failure made a second earlier (the page lists them oldest first).
SCORES = [
    ("helpful", 0.75, "feedback", 2, None),
    ("correct", None, "grader", 1, "grader timed out after 30 s"),
]


def test_calls_page_lists_a_calls_scores_and_a_graders_failure(
    browser, tmp_path: Path, demo_data: Path
) -> None:
    """A call with a feedback score and a failed grader: the call's Scores tab lists both,
    oldest first (the failure with its error, also said in a warning); a call without scores
    says it has none. The table is a canvas: its content is read through its CSV download."""

    from collector.storage.database import ensure_schema

    data_dir = tmp_path / "data"
    shutil.copytree(demo_data, data_dir)  # the shared demo store keeps its numbers for the other tests
    db = data_dir / "llmtap.duckdb"
    ensure_schema(db)  # the scores table, whether or not the demo's proxy made it
    with duckdb.connect(str(db)) as con:
        (scored, started), (unscored, _) = con.execute(
            "SELECT call_id, started_at FROM llm_calls ORDER BY started_at DESC LIMIT 2"
        ).fetchall()
        for name, value, source, after_s, error in SCORES:
            created = started + timedelta(seconds=after_s)
            con.execute(
                "INSERT INTO scores VALUES (?, ?, ?, ?, ?, ?)", [scored, name, value, source, created, error]
            )
    with running_dashboard(data_dir) as url:
        page = open_page(browser, url, "calls", "Calls")
        try:
            pick_call(page, scored)
            failure = "Grader correct could not score this call: grader timed out after 30 s"
            panel = scores_tab(page, failure)
            grid = panel.locator('[data-testid="stDataFrame"]')
            grid.hover()  # shows the table's toolbar
            with page.expect_download() as download:
                # Dispatched to the button itself: as the panel settles, the tab list can lie
                # over the toolbar and take a pointer click.
                grid.get_by_role("button", name="Download as CSV").dispatch_event("click")
            with open(download.value.path(), newline="") as csv_file:
                rows = list(csv.DictReader(csv_file))
            assert [(r["name"], r["value"], r["source"], r["error"]) for r in rows] == [
                ("correct", "", "grader", "grader timed out after 30 s"),
                ("helpful", "0.75", "feedback", ""),
            ]
            assert rows[0]["created_at"] < rows[1]["created_at"]

            pick_call(page, unscored)
            scores_tab(page, "No scores for this call")
            assert not page.locator('[data-testid="stException"]').count()
        finally:
            page.close()


def scores_tab(page, text: str):
    """Open the call's Scores tab and return its panel once it shows ``text``. The click is
    repeated: a run of the page that was still starting when the call was picked redraws the
    tabs, back on the first one."""
    from playwright.sync_api import expect

    for _ in range(3):
        page.get_by_role("tab", name="Scores").click()
        panel = page.get_by_role("tabpanel").filter(visible=True)
        with contextlib.suppress(AssertionError):  # redrawn on the first tab: click again
            expect(panel.get_by_text(text)).to_be_visible(timeout=10_000)
            return panel
    page.get_by_role("tab", name="Scores").click()
    panel = page.get_by_role("tabpanel").filter(visible=True)
    expect(panel.get_by_text(text)).to_be_visible(timeout=10_000)
    return panel


def pick_call(page, call_id: str) -> None:
    """Choose ``call_id`` in the Calls page's "Call" box (typed, as a person would), and wait
    for the page to run with it."""
    from playwright.sync_api import expect

    box = page.get_by_role("combobox", name="Call", exact=True)
    box.click()
    page.keyboard.type(call_id)
    page.keyboard.press("Enter")
    expect(box).to_have_value(call_id)
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=OPEN_WAIT_MS
    )


def test_the_dashboard_on_the_fleet_store(browser, demo_data: Path, pg_server) -> None:
    """``llmtap ui --store postgresql://...``: the demo's calls copied into a fleet store over
    two nodes show the same figures, the sidebar offers a node filter, and the store is named
    with its password hidden."""
    from bench.fleet_read import copy_to_fleet

    database = pg_server.create_database()
    with pg_server.connect(database) as conn:
        copy_to_fleet(demo_data / "llmtap.duckdb", conn, node="'node-' || (hash(c.call_id) % 2)")
    url = pg_server.url(database)
    with running_dashboard(demo_data, "--store", url) as dashboard_url:
        page = open_page(browser, dashboard_url, "", "Overview")
        try:
            con = duckdb.connect(str(demo_data / "llmtap.duckdb"), read_only=True)
            (calls,) = con.execute("SELECT count(*) FROM llm_calls WHERE " + APP_CALLS).fetchone()
            con.close()
            assert metric(page, "Calls") == f"{calls:,}"
            sidebar = page.locator('[data-testid="stSidebar"]')
            assert sidebar.get_by_text("Node", exact=True).count() == 1
            assert "***@127.0.0.1" in sidebar.inner_text()
            assert pg_server.password not in page.content()
            assert not page.locator('[data-testid="stException"]').count()
        finally:
            page.close()
