"""``llmtap evaluate`` end to end: calls recorded (capture = "full") by a real proxy process
from the official openai SDK against a local fake OpenAI, then copied offline by the real
command, with the key from the environment, to the same fake upstream."""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import duckdb
import httpx
import openai
import pytest

from collector.storage.database import read_connection
from tests.conftest import running_proxy
from tests.upstream import FakeUpstream, Received, Reply

ROOT = Path(__file__).parent.parent
CLIENT_KEY = "sk-client-key-used-while-recording-0001"
EVALUATE_KEY = "sk-evaluate-key-from-the-environment-0042"
MCQ = "Capital of France? A) Rome B) Paris"
EGGS = "16 eggs a day, she eats 3 and bakes 4, sells the rest at $2: how much a day?"
#: The fake's answer per model and question: the candidate agrees on the letter, not on the sum.
ANSWERS = {
    "gpt-4o": {MCQ: "The answer is (B).", EGGS: "She sells 16 - 3 - 4 = 9 eggs for 9 * $2 = $18 a day."},
    "gpt-4o-mini": {MCQ: "B", EGGS: "16 - 3 = 13 eggs, so 13 * 2 = $26.\n#### 26"},
    "gpt-4.1": {MCQ: "B) Paris"},
}
RULE = {"id": "4o-to-mini", "match": {"model": "gpt-4o"}, "to": "gpt-4o-mini", "mode": "shadow"}


def chat_reply(received: Received) -> Reply:
    body = json.loads(received.body)
    model, question = body["model"], body["messages"][-1]["content"]
    text = ANSWERS[model][question]
    usage = {"prompt_tokens": 2000, "completion_tokens": 500, "total_tokens": 2500}
    if not body.get("stream"):
        message = {"role": "assistant", "content": text}
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        return Reply.json({"id": "c1", "model": model, "choices": [choice], "usage": usage})
    chunks = [{"id": "c1", "model": model, "choices": [{"index": 0, "delta": {"content": w}}]} for w in text]
    last = {"id": "c1", "model": model, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    return Reply.sse([*chunks, last, {"id": "c1", "model": model, "choices": [], "usage": usage}, "[DONE]"])


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream() as server:
        server.routes["/v1/chat/completions"] = chat_reply
        yield server


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory, fake: FakeUpstream) -> Path:
    """A data dir holding three calls recorded with full bodies: the multiple-choice question
    and the (streamed) worked answer to gpt-4o, and one call to a model no rule matches."""
    root = tmp_path_factory.mktemp("recorded")
    config = root / "llmtap.toml"
    config.write_text('capture = "full"\n')
    data = root / "data"
    with running_proxy(data, fake, extra_args=["--config", str(config)]) as proxy:
        tls = ssl.create_default_context(cafile=str(data / "ca-bundle.pem"))
        with httpx.Client(proxy=proxy.url, verify=tls) as http_client:
            client = openai.OpenAI(api_key=CLIENT_KEY, http_client=http_client, max_retries=0)
            for model, question, stream in (
                ("gpt-4o", MCQ, False),
                ("gpt-4o", EGGS, True),
                ("gpt-4.1", MCQ, False),
            ):
                reply = client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": question}], stream=stream
                )
                if stream:
                    assert "".join(c.choices[0].delta.content or "" for c in reply if c.choices)
        assert len(proxy.rows(wait_for=3)) == 3
    return data


@pytest.fixture
def store(tmp_path: Path, recorded: Path) -> Path:
    """A copy of the recorded data dir, for one test to change."""
    return Path(shutil.copytree(recorded, tmp_path / "data"))


def write_rules(store: Path, *rules: dict) -> None:
    (store / "rules.yaml").write_text(json.dumps({"version": 1, "rules": list(rules)}))  # JSON is YAML


def evaluate(store: Path, fake: FakeUpstream, *args: str, key: str | None = EVALUATE_KEY):
    env = {name: value for name, value in os.environ.items() if name != "OPENAI_API_KEY"}
    if key is not None:
        env["OPENAI_API_KEY"] = key
    command = [sys.executable, "-m", "app.cli", "evaluate", "--data-dir", str(store)]
    command += ["--upstream", f"api.openai.com={fake.url}", *args]
    return subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)


def rows(store: Path, sql: str) -> list[dict]:
    with read_connection(store / "llmtap.duckdb") as con:
        cursor = con.execute(sql)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def shadows(store: Path) -> list[dict]:
    return rows(
        store,
        "SELECT s.*, c.request_model AS original_model, b.request_body AS original_request "
        "FROM llm_calls s JOIN llm_calls c ON c.call_id = s.shadow_of "
        "JOIN call_bodies b ON b.call_id = c.call_id ORDER BY s.started_at",
    )


def test_copies_are_compared_with_the_stored_answers_and_the_key_is_stored_nowhere(store, fake):
    write_rules(store, RULE)
    sent_before = len(fake.received)
    done = evaluate(store, fake)
    assert done.returncode == 0, done.stderr
    assert "2 copies sent" in done.stdout

    copies = fake.received[sent_before:]
    assert [json.loads(r.body)["model"] for r in copies] == ["gpt-4o-mini", "gpt-4o-mini"]
    assert all(r.headers["authorization"] == f"Bearer {EVALUATE_KEY}" for r in copies)

    mcq, eggs = shadows(store)
    for copy in (mcq, eggs):
        assert (copy["routing_arm"], copy["routing_rule"], copy["request_model"]) == (
            "shadow",
            "4o-to-mini",
            "gpt-4o-mini",
        )
        assert copy["original_model"] == "gpt-4o" and copy["cost_usd"] > 0 and copy["error"] is None
    # The stored request with the rule's model; a stream asks for usage, as through the proxy.
    stream_usage = ({}, {"stream_options": {"include_usage": True}})
    for sent, copy, extra in zip(copies, (mcq, eggs), stream_usage, strict=True):
        expected = {**json.loads(copy["original_request"]), "model": "gpt-4o-mini", **extra}
        assert json.loads(sent.body) == expected
    assert MCQ in mcq["original_request"] and EGGS in eggs["original_request"]
    assert (mcq["comparison"], mcq["agreement"]) == ("exact", True)
    assert (eggs["comparison"], eggs["agreement"]) == ("final_number", False)
    assert eggs["stream"] is True

    for path in store.rglob("*"):
        if path.is_file():
            assert EVALUATE_KEY.encode() not in path.read_bytes(), path
    with read_connection(store / "llmtap.duckdb") as con:
        for table in ("llm_calls", "call_bodies", "spans"):
            assert EVALUATE_KEY not in json.dumps(
                con.execute(f"SELECT * FROM {table}").fetchall(), default=str
            )

    again = evaluate(store, fake)
    assert again.returncode == 0, again.stderr
    assert "nothing to evaluate: all 2 matching calls have a shadow copy" in again.stderr
    assert len(fake.received) == sent_before + 2


def test_a_missing_key_is_named_and_nothing_is_sent(store, fake):
    write_rules(store, RULE)
    sent_before = len(fake.received)
    done = evaluate(store, fake, key=None)
    assert done.returncode == 1
    assert "skipped 2 stored openai call(s): set OPENAI_API_KEY" in done.stderr
    assert len(fake.received) == sent_before
    assert shadows(store) == []


@pytest.mark.parametrize(
    ("rule", "args", "message"),
    [
        (RULE, ["--limit", "1"], ""),
        ({**RULE, "shadow_spend_cap_usd": 0.0001}, [], "1 call(s) not copied: its shadow_spend_cap_usd"),
        ({**RULE, "id": "enforced", "mode": "enforce"}, ["--rule", "enforced", "--limit", "1"], ""),
    ],
    ids=["limit", "spend-cap", "named-rule-of-any-mode"],
)
def test_limit_spend_cap_and_named_rule(store, fake, rule, args, message):
    write_rules(store, rule)
    done = evaluate(store, fake, *args)
    assert done.returncode == 0, done.stderr
    assert message in done.stdout
    (copy,) = shadows(store)
    assert (copy["routing_rule"], copy["agreement"]) == (rule["id"], True)


def drop_bodies(store: Path) -> None:
    with duckdb.connect(str(store / "llmtap.duckdb")) as con:
        con.execute("DELETE FROM call_bodies")


@pytest.mark.parametrize(
    ("rules", "args", "change", "message"),
    [
        ([{**RULE, "mode": "canary"}], [], None, "no shadow rule in"),
        ([RULE], ["--rule", "nope"], None, "no rule 'nope' in"),
        ([{**RULE, "match": {"model": "gpt-3.5-turbo"}}], [], None, "none of the 3 stored calls with bodies"),
        ([RULE], [], drop_bodies, 'recorded with capture = "metadata"'),
        ([RULE], ["--limit", "0"], None, "--limit must be a positive number"),
    ],
    ids=["no-shadow-rule", "unknown-rule", "no-call-matches", "no-bodies", "bad-limit"],
)
def test_clear_errors_when_there_is_nothing_to_evaluate(store, fake, rules, args, change, message):
    write_rules(store, *rules)
    if change is not None:
        change(store)
    done = evaluate(store, fake, *args)
    assert done.returncode == 2
    assert message in done.stderr
    assert done.stderr.startswith("llmtap: error:")
