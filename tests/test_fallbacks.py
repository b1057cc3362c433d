"""Fallback chains through a real proxy, with the official openai SDK: a primary upstream that
answers 500, 429 with Retry-After, resets the connection or never answers; the client gets the
fallback's answer each time, the attempts are linked rows, the circuit breaker opens and
closes, and a fallback's stream reaches the client unbuffered."""

from __future__ import annotations

import gzip
import json
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from streamlit.testing.v1 import AppTest

import analytics
from collector.routing.breaker import Breaker, BreakerSettings, retry_after_s
from collector.settings.config import ConfigError, load_settings
from tests.test_routing_proxy import SECRET, SIGV4, answer, client, proxy_with
from tests.upstream import FakeUpstream, Received, Reply

DASHBOARD = str(Path(__file__).resolve().parent.parent / "app" / "ui" / "dashboard.py")
QUESTION = [{"role": "user", "content": "Capital of France? A) Rome B) Paris"}]
OTHER_KEY = "sk-or-fallback-key-0123456789"


def by_model(primary: Reply | None) -> object:
    """gpt-4o answers ``primary`` (when given), any other model answers normally."""

    def reply(received: Received) -> Reply:
        body = json.loads(received.body)
        if body["model"] == "gpt-4o" and primary is not None:
            return primary
        return answer(body, f"answered by {body['model']}")

    return reply


def chain(*to: str, extra: str = "") -> str:
    targets = ", ".join(to)
    return f"""
[fallbacks.chat]
match = {{ model = "gpt-4o" }}
to = [{targets}]
first_byte_timeout_s = 1
max_retry_after_s = 0
{extra}
"""


def ask(proxy, stream: bool = False) -> str:
    reply = client(proxy).chat.completions.create(model="gpt-4o", messages=QUESTION, stream=stream)
    if stream:
        return "".join(c.choices[0].delta.content or "" for c in reply if c.choices)
    return reply.choices[0].message.content


@pytest.mark.parametrize(
    "primary",
    [
        Reply.json({"error": {"message": "boom"}}, 500),
        Reply(status=429, body=b'{"error": "slow down"}', headers={"retry-after": "30"}),
    ],
    ids=["500", "429"],
)
def test_an_error_answer_falls_back_to_the_next_model(tmp_path: Path, primary: Reply) -> None:
    with FakeUpstream() as fake:
        fake.routes["/v1/chat/completions"] = by_model(primary)
        with proxy_with(tmp_path, fake, None, config=chain('"gpt-4o-mini"')) as proxy:
            assert ask(proxy) == "answered by gpt-4o-mini"
            if primary.status == 429:  # Retry-After: the next call skips gpt-4o's upstream... for 30 s
                assert ask(proxy) == "answered by gpt-4o-mini"
            rows = proxy.rows(
                "SELECT call_id, status_code, request_model, routed_from_model, routing_arm, retry_of"
                " FROM llm_calls ORDER BY started_at",
                wait_for=2,
            )
    first = next(r for r in rows if r["status_code"] == primary.status)
    served = next(r for r in rows if r["retry_of"] == first["call_id"])
    assert first["request_model"] == "gpt-4o"
    assert first["routing_arm"] == "fallback"
    assert first["retry_of"] is None
    assert served["request_model"] == "gpt-4o-mini" and served["routed_from_model"] == "gpt-4o"
    assert served["retry_of"] == first["call_id"] and served["status_code"] == 200
    models = [json.loads(r.body)["model"] for r in fake.received]
    if primary.status == 429:
        # the whole upstream waits out Retry-After: the second call went to the fallback at once
        assert models == ["gpt-4o", "gpt-4o-mini", "gpt-4o-mini"]


class Misbehaving:
    """A TCP server that resets every connection, or accepts and never answers."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.held: list[socket.socket] = []
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            if self.mode == "reset":
                conn.recv(65536)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()
            else:
                self.held.append(conn)  # read nothing, answer nothing

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.fixture(params=["reset", "silent"])
def misbehaving(request) -> Iterator[Misbehaving]:
    server = Misbehaving(request.param)
    yield server
    server.close()


def test_a_transport_failure_falls_back_to_another_host(
    tmp_path: Path, misbehaving: Misbehaving, monkeypatch: pytest.MonkeyPatch
) -> None:
    """api.openai.com (here a server that resets or never answers) fails; the chain's next
    target is another host speaking the same API, with its own key from the environment."""
    with FakeUpstream() as other:
        other.routes["/api/v1/chat/completions"] = by_model(None)
        target = f'{{ url = "{other.url}/api/v1", model = "openai/gpt-4o", api_key_env = "OTHER_KEY" }}'
        config = chain(target) + f'\n[upstreams]\n"api.openai.com" = "http://127.0.0.1:{misbehaving.port}"\n'
        data = tmp_path / "data"
        data.mkdir()
        (tmp_path / "llmtap.toml").write_text(config)
        from tests.conftest import running_proxy

        with running_proxy(
            data,
            other,
            upstream_hosts=[],
            extra_args=["--config", str(tmp_path / "llmtap.toml")],
            env={"OTHER_KEY": OTHER_KEY},
        ) as proxy:
            started = time.monotonic()
            assert ask(proxy) == "answered by openai/gpt-4o"
            assert time.monotonic() - started < 5
            rows = proxy.rows("SELECT * FROM llm_calls ORDER BY started_at", wait_for=2)
    assert misbehaving.accepted >= 1
    first = next(r for r in rows if r["status_code"] is None)
    served = next(r for r in rows if r is not first)
    assert first["status_code"] is None and first["error"] and first["routing_arm"] == "fallback"
    assert served["retry_of"] == first["call_id"] and served["request_model"] == "openai/gpt-4o"
    sent = other.received[0]
    assert sent.headers.get("authorization") == f"Bearer {OTHER_KEY}"
    assert SECRET not in json.dumps(sent.headers)  # the client's own key never left for another host
    assert OTHER_KEY not in json.dumps([{k: str(v) for k, v in r.items()} for r in rows])


def test_the_circuit_breaker_opens_and_closes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    failing = Reply.json({"error": {"message": "down"}}, 503)
    config = chain('"gpt-4o-mini"', extra="breaker = { failures = 2, window_s = 60, cooldown_s = 2 }")
    with FakeUpstream() as fake:
        fake.routes["/v1/chat/completions"] = by_model(failing)
        with proxy_with(tmp_path, fake, None, config=config) as proxy:
            for _ in range(3):
                assert ask(proxy) == "answered by gpt-4o-mini"
            models = [json.loads(r.body)["model"] for r in fake.received]
            # two failures open the breaker: the third call goes straight to the fallback
            assert models == ["gpt-4o", "gpt-4o-mini", "gpt-4o", "gpt-4o-mini", "gpt-4o-mini"]
            time.sleep(2.2)  # the cool-down passes: one trial call goes to gpt-4o again
            fake.routes["/v1/chat/completions"] = by_model(None)
            assert ask(proxy) == "answered by gpt-4o"
            proxy.rows(wait_for=6)  # 2 failed attempts, 3 answers by the fallback, 1 by gpt-4o
    (row,) = analytics.fallbacks(analytics.load(proxy.data_dir)).to_dicts()
    assert row["chain"] == "chat" and row["failed_attempts"] == 2 and row["transport_failures"] == 0
    assert row["error_kinds"] == ["http_5xx"]
    # the third was sent straight to the fallback (gpt-4o's breaker open): answered by it too
    assert row["answered_by_fallback"] == 3 and row["answered_by"] == ["gpt-4o-mini"]
    # The dashboard's Recommendations page shows the chain.
    monkeypatch.setenv("LLMTAP_DATA_DIR", str(proxy.data_dir))
    monkeypatch.delenv("LLMTAP_CONFIG", raising=False)
    page = AppTest.from_file(DASHBOARD, default_timeout=120).run()
    page.switch_page("page_scripts/recommendations.py").run()
    assert not page.exception, page.exception
    assert [h.value for h in page.subheader][:1] == ["Fallbacks"]
    shown = page.dataframe[0].value
    assert list(shown["chain"]) == ["chat"] and list(shown["failed_attempts"]) == [2]


def test_a_fallbacks_stream_reaches_the_client_as_it_comes(tmp_path: Path) -> None:
    chunks = [
        {"id": "c1", "model": "gpt-4o-mini", "choices": [{"index": 0, "delta": {"content": w}}]}
        for w in ("one ", "two ", "three")
    ]
    streamed = Reply.sse([*chunks, "[DONE]"], delay=0.4)

    def reply(received: Received) -> Reply:
        body = json.loads(received.body)
        return Reply.json({"error": {"message": "boom"}}, 500) if body["model"] == "gpt-4o" else streamed

    with FakeUpstream() as fake:
        fake.routes["/v1/chat/completions"] = reply
        with proxy_with(tmp_path, fake, None, config=chain('"gpt-4o-mini"')) as proxy:
            stream = client(proxy).chat.completions.create(model="gpt-4o", messages=QUESTION, stream=True)
            started = time.monotonic()
            arrivals = []
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    arrivals.append(time.monotonic() - started)
    assert len(arrivals) == 3
    assert arrivals[0] < arrivals[-1] - 0.5  # the first word came well before the last


def test_breaker_state_machine() -> None:
    breaker = Breaker(BreakerSettings(failures=2, window_s=10, cooldown_s=5))
    assert breaker.allows("a", 0)
    breaker.failed("a", 0)
    breaker.failed("a", 20)  # the first fell out of the window
    assert breaker.allows("a", 20)
    breaker.failed("a", 21)
    assert not breaker.allows("a", 22) and breaker.is_open("a", 22)
    assert breaker.allows("a", 26.5)  # half-open: one trial
    assert not breaker.allows("a", 26.6)  # only one
    breaker.failed("a", 27)  # the trial failed: open again
    assert not breaker.allows("a", 31)
    assert breaker.allows("a", 32.5)
    breaker.succeeded("a")
    assert breaker.allows("a", 32.6) and breaker.allows("a", 32.7)
    breaker.failed("b", 0, retry_after_s=3)
    assert not breaker.allows("b", 2) and breaker.allows("b", 3.1)


def test_retry_after_values() -> None:
    assert retry_after_s("7", 0) == 7
    assert retry_after_s(" 1.5 ", 0) == 1.5
    assert retry_after_s("-3", 0) == 0
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT", 1445412470) == 10
    assert retry_after_s("soon", 0) is None and retry_after_s(None, 0) is None


def test_a_signed_request_is_never_sent_anywhere_else(tmp_path: Path) -> None:
    with FakeUpstream() as fake:
        fake.routes["/v1/chat/completions"] = by_model(Reply.json({"error": {"message": "boom"}}, 500))
        with proxy_with(tmp_path, fake, None, config=chain('"gpt-4o-mini"')) as proxy:
            body = json.dumps({"model": "gpt-4o", "messages": QUESTION})
            out = subprocess.run(
                ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--proxy", proxy.url,
                 "--cacert", str(proxy.data_dir / "ca-bundle.pem"),
                 "https://api.openai.com/v1/chat/completions", "-H", "content-type: application/json",
                 "-H", f"authorization: {SIGV4}", "-d", body],
                capture_output=True, text=True, timeout=30, check=True,
            ).stdout  # fmt: skip
    assert out == "500"  # the upstream's own answer: no fallback
    assert [json.loads(r.body)["model"] for r in fake.received] == ["gpt-4o"]


def test_a_bad_chain_is_a_clear_config_error(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[fallbacks.chat]\nmatch = { model = "gpt-4o" }\nto = []\non_status = [200]\n')
    with pytest.raises(ConfigError) as error:
        load_settings(data_dir=str(tmp_path / "data"), config_file=str(config))
    message = str(error.value)
    assert 'fallbacks."chat".to must be a list of models' in message, message
    assert 'fallbacks."chat".on_status: statuses that count as failures are from 400 to 599' in message


GOOGLE_KEY = "AIzaSyD-client-own-key-0123456789abcdefgh"
GEMINI_ANSWER = {
    "candidates": [{"content": {"parts": [{"text": "Paris"}], "role": "model"}, "finishReason": "STOP"}],
    "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 1, "totalTokenCount": 10},
}


def curl(proxy, url: str, body: bytes, *headers: str) -> tuple[int, bytes]:
    """POST ``body`` to ``url`` through ``proxy`` with curl; (status, body)."""
    args = ["curl", "-sS", "-w", "\n%{http_code}", "--proxy", proxy.url,
            "--cacert", str(proxy.data_dir / "ca-bundle.pem"), url, "--data-binary", "@-"]  # fmt: skip
    for header in ("content-type: application/json", *headers):
        args += ["-H", header]
    out = subprocess.run(args, input=body, capture_output=True, timeout=30, check=True).stdout
    answer, _, status = out.rpartition(b"\n")
    return int(status), answer


def test_the_clients_google_key_never_leaves_for_another_host(tmp_path: Path) -> None:
    """A Gemini call carries its key in ``x-goog-api-key`` and ``?key=``: its own host gets
    both; the fallback on another host gets neither, only its own key, in the header the
    target names, and the rest of the query."""
    from tests.conftest import running_proxy

    path = "/v1beta/models/{}:generateContent"
    with FakeUpstream() as primary, FakeUpstream() as other:
        primary.routes[path.format("gemini-pro")] = Reply.json({"error": {"message": "down"}}, 503)
        other.routes[path.format("gemini-flash")] = Reply.json(GEMINI_ANSWER)
        (tmp_path / "llmtap.toml").write_text(
            '[fallbacks.g]\nmatch = { model = "gemini-pro" }\n'
            f'to = [{{ url = "{other.url}/v1beta", model = "gemini-flash", api_key_env = "OTHER_KEY",'
            ' api_key_header = "x-api-key" }]\nmax_retry_after_s = 0\n'
        )
        data = tmp_path / "data"
        data.mkdir()
        with running_proxy(
            data,
            primary,
            upstream_hosts=["generativelanguage.googleapis.com"],
            extra_args=["--config", str(tmp_path / "llmtap.toml")],
            env={"OTHER_KEY": OTHER_KEY},
        ) as proxy:
            url = "https://generativelanguage.googleapis.com" + path.format("gemini-pro")
            body = json.dumps({"contents": [{"parts": [{"text": "Capital of France?"}]}]}).encode()
            status, answer = curl(
                proxy, f"{url}?alt=json&key={GOOGLE_KEY}", body, f"x-goog-api-key: {GOOGLE_KEY}"
            )
            rows = proxy.rows("SELECT * FROM llm_calls ORDER BY started_at", wait_for=2)
    assert status == 200 and json.loads(answer) == GEMINI_ANSWER
    (own,) = primary.received
    assert GOOGLE_KEY in own.path and own.headers["x-goog-api-key"] == GOOGLE_KEY  # its own host
    (sent,) = other.received
    assert sent.path == path.format("gemini-flash") + "?alt=json"
    assert GOOGLE_KEY not in json.dumps(sent.headers)
    assert sent.headers["x-api-key"] == OTHER_KEY and "authorization" not in sent.headers
    assert sorted(r["request_model"] for r in rows) == ["gemini-flash", "gemini-pro"]
    assert GOOGLE_KEY not in json.dumps([{k: str(v) for k, v in r.items()} for r in rows])


def test_an_azure_openai_target_gets_its_api_key_header_and_api_version(tmp_path: Path) -> None:
    with FakeUpstream() as fake, FakeUpstream() as azure:
        fake.routes["/v1/chat/completions"] = by_model(Reply.json({"error": {"message": "boom"}}, 500))
        azure.routes["/openai/v1/chat/completions"] = by_model(None)
        target = (
            f'{{ url = "{azure.url}/openai/v1?api-version=preview", model = "gpt-4o-deployment",'
            ' api_key_env = "OTHER_KEY", api_key_header = "api-key" }'
        )
        with proxy_with(tmp_path, fake, None, config=chain(target), env={"OTHER_KEY": OTHER_KEY}) as proxy:
            assert ask(proxy) == "answered by gpt-4o-deployment"
    (sent,) = azure.received
    assert sent.path == "/openai/v1/chat/completions?api-version=preview"
    assert sent.headers["api-key"] == OTHER_KEY
    assert "authorization" not in sent.headers and SECRET not in json.dumps(sent.headers)


def test_a_compressed_request_falls_back_with_a_body_its_headers_describe(tmp_path: Path) -> None:
    """A gzip-encoded request body: each target gets a body that decodes under the
    ``Content-Encoding`` it is sent with (the rewritten model's too)."""
    with FakeUpstream() as fake:
        fake.routes["/v1/chat/completions"] = lambda received: by_model(
            Reply.json({"error": {"message": "boom"}}, 500)
        )(Received(received.method, received.path, received.headers, gzip.decompress(received.body)))
        with proxy_with(tmp_path, fake, None, config=chain('"gpt-4o-mini"')) as proxy:
            body = gzip.compress(json.dumps({"model": "gpt-4o", "messages": QUESTION}).encode())
            status, answer = curl(
                proxy,
                "https://api.openai.com/v1/chat/completions",
                body,
                "content-encoding: gzip",
                f"authorization: Bearer {SECRET}",
            )
    assert status == 200, answer
    assert json.loads(answer)["choices"][0]["message"]["content"] == "answered by gpt-4o-mini"
    sent = [json.loads(gzip.decompress(r.body))["model"] for r in fake.received]
    assert sent == ["gpt-4o", "gpt-4o-mini"]
    assert all(r.headers.get("content-encoding") == "gzip" for r in fake.received)


def test_when_every_target_fails_each_attempt_is_one_row(tmp_path: Path) -> None:
    """Two targets both answer 500: two requests upstream, two rows. The client gets the last
    target's answer, and its call's row is that attempt, linked to the first."""
    with FakeUpstream() as fake:
        fake.routes["/v1/chat/completions"] = Reply.json({"error": {"message": "down"}}, 500)
        with proxy_with(tmp_path, fake, None, config=chain('"gpt-4o-mini"')) as proxy:
            with pytest.raises(openai.InternalServerError):
                ask(proxy)
            rows = proxy.rows(
                "SELECT call_id, status_code, request_model, routed_from_model, routing_arm, retry_of"
                " FROM llm_calls",
                wait_for=2,
            )
            time.sleep(1)  # no third row comes later
            assert len(proxy.rows("SELECT call_id FROM llm_calls")) == 2
    assert [json.loads(r.body)["model"] for r in fake.received] == ["gpt-4o", "gpt-4o-mini"]
    first = next(r for r in rows if r["request_model"] == "gpt-4o")
    last = next(r for r in rows if r is not first)
    assert first["routing_arm"] == last["routing_arm"] == "fallback" and first["retry_of"] is None
    assert last["retry_of"] == first["call_id"] and last["status_code"] == 500
    assert (last["request_model"], last["routed_from_model"]) == ("gpt-4o-mini", "gpt-4o")
