"""Quality evidence through a real proxy: the call id header, feedback posted by the app,
graders scoring answers off the request path, and a canary decided on feedback.

Clients are the official openai SDK (through the proxy) and plain HTTP posts of scores to the
proxy's own address; the upstream is the local fake of tests/test_routing_proxy.py.
"""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.proxyproc import ProxyProcess
from tests.test_routing_proxy import SECRET, answer, ask, chat_reply, client, proxy_with, rules_yaml
from tests.upstream import FakeUpstream

ROOT = Path(__file__).parent.parent
RECOMMEND = [sys.executable, "-m", "app.cli", "recommend", "--format", "json"]
QUESTION = [{"role": "user", "content": "Capital of France? A) Rome B) Paris"}]


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream() as server:
        server.routes["/v1/chat/completions"] = chat_reply
        yield server


def feedback(proxy: ProxyProcess, body: object, method: str = "POST") -> httpx.Response:
    """A post straight to the proxy's own address (as NO_PROXY sends it), not through it."""
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.request(method, f"{proxy.url}/llmtap/feedback", content=content, timeout=10)


def call_id_of(proxy: ProxyProcess, stream: bool = False) -> tuple[str, str]:
    """(X-Llmtap-Call-Id, answer text) of one call through the SDK."""
    raw = client(proxy).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=QUESTION, stream=stream
    )
    parsed = raw.parse()
    if stream:
        text = "".join(chunk.choices[0].delta.content or "" for chunk in parsed if chunk.choices)
    else:
        text = parsed.choices[0].message.content
    return raw.headers["x-llmtap-call-id"], text


def test_call_id_header_and_feedback_endpoint(tmp_path: Path, fake: FakeUpstream) -> None:
    with proxy_with(tmp_path, fake, None) as proxy:
        plain, text = call_id_of(proxy)
        streamed, streamed_text = call_id_of(proxy, stream=True)
        assert text == streamed_text == "The answer is (B)."
        rows = proxy.rows(wait_for=2)
        assert {row["call_id"] for row in rows} == {plain, streamed}

        assert feedback(proxy, {"call_id": plain, "name": "thumbs", "value": 1}).status_code == 202
        assert feedback(proxy, {"call_id": streamed, "name": "thumbs", "value": 0.25}).status_code == 202
        unknown = feedback(proxy, {"call_id": "0" * 32, "name": "thumbs", "value": 1})
        assert unknown.status_code == 404 and "no recorded call" in unknown.json()["error"]
        for bad, key in [
            ({"call_id": plain, "name": "thumbs", "value": 2}, "value"),
            ({"call_id": plain, "name": "thumbs", "value": "0.5"}, "value"),
            ({"call_id": plain, "name": "thumbs", "value": True}, "value"),
            ({"call_id": plain, "value": 1}, "name"),
            ({"call_id": plain, "name": "x" * 65, "value": 1}, "name"),
            ({"call_id": plain, "name": "thumbs", "value": 1, "extra": 1}, "extra"),
        ]:
            answer = feedback(proxy, bad)
            assert answer.status_code == 400, (bad, answer.text)
            assert answer.json()["error"].startswith(key), answer.json()
        assert feedback(proxy, b"{not json").status_code == 400
        assert feedback(proxy, b"x" * 20_000).status_code == 413
        assert feedback(proxy, b"", method="GET").status_code == 405
        # Nothing of it went upstream, and it is no call.
        assert all(r.path == "/v1/chat/completions" for r in fake.received)
        scores = proxy.rows("SELECT call_id, name, value, source FROM scores ORDER BY value", wait_for=2)
        assert scores == [
            {"call_id": streamed, "name": "thumbs", "value": 0.25, "source": "feedback"},
            {"call_id": plain, "name": "thumbs", "value": 1.0, "source": "feedback"},
        ]
        assert len(proxy.rows()) == 2

    # After a restart the proxy no longer holds the id in memory: the store knows it.
    with proxy_with_data(tmp_path, fake) as proxy:
        assert feedback(proxy, {"call_id": plain, "name": "later", "value": 0.5}).status_code == 202
        assert feedback(proxy, {"call_id": "f" * 32, "name": "later", "value": 0.5}).status_code == 404
        assert proxy.rows("SELECT * FROM scores WHERE name = 'later'", wait_for=1)


def proxy_with_data(tmp_path: Path, fake: FakeUpstream):
    from tests.conftest import running_proxy

    return running_proxy(tmp_path / "data", fake)


# -- graders ---------------------------------------------------------------------------------------


def says_b(request: dict | None, answer: str) -> float:
    """A python grader: the answer names B."""
    return 1.0 if "B" in answer else 0.0


def broken(request: dict | None, answer: str) -> float:
    raise RuntimeError("grader bug")


class SlowGrader(http.server.BaseHTTPRequestHandler):
    """An HTTP grader that answers after 3 s (past its 1 s timeout)."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        time.sleep(3)
        body = b'{"score": 1}'
        try:
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except BrokenPipeError:
            pass  # the grader's client gave up (its timeout): what this test wants

    def log_message(self, *args: object) -> None:
        pass


def test_graders_score_answers_off_the_request_path(tmp_path: Path, fake: FakeUpstream) -> None:
    slow = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlowGrader)
    threading.Thread(target=slow.serve_forever, daemon=True).start()
    config = f"""
[graders.says-b]
kind = "python"
function = "tests.test_quality:says_b"
[graders.broken]
kind = "python"
function = "tests.test_quality:broken"
[graders.slow]
kind = "http"
url = "http://127.0.0.1:{slow.server_address[1]}/grade"
timeout_s = 1
[graders.letter]
kind = "regex"
pattern = "[(]?C[)]?"
apps = ["only-this-app"]
"""
    try:
        with proxy_with(tmp_path, fake, None, config=config) as proxy:
            started = time.monotonic()
            assert ask(proxy) == "The answer is (B)."
            assert ask(proxy, stream=True) == "The answer is (B)."
            # The slow grader held up neither answer.
            assert time.monotonic() - started < 2.5
            calls = proxy.rows(wait_for=2)
            scores = proxy.rows("SELECT * FROM scores ORDER BY name", wait_for=6)
    finally:
        slow.shutdown()
    by_name: dict[str, list[dict]] = {}
    for row in scores:
        by_name.setdefault(row["name"], []).append(row)
    assert set(by_name) == {"says-b", "broken", "slow"}  # "letter" applies to another app only
    assert {row["call_id"] for row in by_name["says-b"]} == {c["call_id"] for c in calls}
    assert [row["value"] for row in by_name["says-b"]] == [1.0, 1.0]  # the stream's text too
    assert all(row["value"] is None and "RuntimeError" in row["error"] for row in by_name["broken"])
    assert all(row["value"] is None and "timed out after 1" in row["error"] for row in by_name["slow"])
    assert all(row["source"] == "grader" for row in scores)
    assert SECRET not in json.dumps(scores, default=str)


# -- a canary decided on feedback ------------------------------------------------------------------


def test_canary_with_feedback_reaches_a_decision_and_reports_savings(tmp_path, fake) -> None:
    config = """
[prices.cheap-model]
input = 0.1
output = 0.4
[recommend]
candidates = { "gpt-4o" = ["cheap-model"] }
max_quality_loss = 0.1
"""
    sessions = 240
    rules = rules_yaml("canary", fraction=0.5, sticky="session")
    with proxy_with(tmp_path, fake, rules, config=config) as proxy:
        for session in range(sessions):
            raw = client(proxy).chat.completions.with_raw_response.create(
                model="gpt-4o",
                messages=QUESTION,
                extra_headers={"X-Llmtap-Session": f"s{session}", "X-Llmtap-App": "quiz"},
            )
            right = raw.parse().choices[0].message.content.strip() in ("B", "The answer is (B).")
            call_id = raw.headers["x-llmtap-call-id"]
            posted = feedback(proxy, {"call_id": call_id, "name": "user-rating", "value": float(right)})
            assert posted.status_code == 202, posted.text
        proxy.rows("SELECT * FROM scores", wait_for=sessions)
        out = subprocess.run(
            [*RECOMMEND, "--data-dir", str(proxy.data_dir), "--config", str(tmp_path / "llmtap.toml")],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        )
    report = json.loads(out.stdout)
    swap = next(r for r in report["recommendations"] if r["kind"] == "model_swap" and r["app"] == "quiz")
    assert swap["evidence"] == "arm_scores", swap
    assert swap["score_name"] == "user-rating"
    assert swap["status"] == "recommended", swap
    assert swap["quality_difference"] == 0.0
    assert swap["quality_difference_lower_bound"] > -0.1
    realised = report["realised"]
    assert len(realised) == 1 and realised[0]["savings_usd"] > 0, realised


def judging_reply(received):
    """The fake upstream, plus a judge model that rates every answer 8 out of 10."""
    body = json.loads(received.body)
    if body["model"] == "judge-model":
        return answer(body, "Rating: 8/10")
    return chat_reply(received)


def test_judge_and_reference_graders_through_the_proxy(tmp_path: Path) -> None:
    references = tmp_path / "references.jsonl"
    references.write_text(
        json.dumps({"prompt": "Capital of France? A) Rome B) Paris", "reference": "B"}) + "\n"
    )
    config = f"""
[routing]
judge_model = "judge-model"
[graders.judge]
kind = "judge"
[graders.header-reference]
kind = "reference"
[graders.dataset-reference]
kind = "reference"
dataset = "{references}"
"""
    with FakeUpstream() as fake:
        fake.routes["/v1/chat/completions"] = judging_reply
        with proxy_with(tmp_path, fake, None, config=config) as proxy:
            right = client(proxy).chat.completions.with_raw_response.create(
                model="gpt-4o", messages=QUESTION, extra_headers={"X-Llmtap-Reference": "(B)"}
            )
            wrong = client(proxy).chat.completions.with_raw_response.create(
                model="gpt-4o", messages=QUESTION, extra_headers={"X-Llmtap-Reference": "A"}
            )
            ids = {right.headers["x-llmtap-call-id"]: "right", wrong.headers["x-llmtap-call-id"]: "wrong"}
            scores = proxy.rows("SELECT call_id, name, value, error FROM scores", wait_for=6)
            calls = proxy.rows(
                "SELECT call_id, routing_arm, shadow_of, request_model FROM llm_calls", wait_for=4
            )
        sent_headers = [dict(r.headers) for r in fake.received]
    got = {(ids[s["call_id"]], s["name"]): s["value"] for s in scores}
    assert got == {
        ("right", "judge"): 0.8,
        ("wrong", "judge"): 0.8,
        ("right", "header-reference"): 1.0,  # "(B)" and "The answer is (B)." name the same letter
        ("wrong", "header-reference"): 0.0,
        ("right", "dataset-reference"): 1.0,
        ("wrong", "dataset-reference"): 1.0,
    }
    # Each judge call is a recorded call of llmtap's own, tied to the call it graded, and is
    # itself not graded.
    judges = [c for c in calls if c["routing_arm"] == "judge"]
    assert sorted(c["shadow_of"] for c in judges) == sorted(ids)
    assert all(c["request_model"] == "judge-model" for c in judges)
    # The reference never went upstream.
    assert not any("x-llmtap-reference" in {k.lower() for k in h} for h in sent_headers)
