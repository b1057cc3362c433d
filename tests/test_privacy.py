"""Privacy through the real proxy: secrets are never stored, bodies follow the capture mode.

For each capture mode one proxy runs (module-scoped) and receives, per secret carrier
(Authorization, x-api-key, api-key, Cookie, ``?key=``), one call whose key sits only in
the header/query and one whose key is also echoed in the request and response bodies,
plus calls with personal data in their bodies. Afterwards every byte of every file in
the data dir (and of every spool file seen while the proxy ran, and of the proxy's log)
is searched for the keys, and the stored rows are checked mode by mode.
"""

from __future__ import annotations

import json
import secrets
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import duckdb
import httpx
import pytest

from collector.trust import privacy
from tests.conftest import running_proxy
from tests.proxyproc import ProxyProcess
from tests.upstream import FakeUpstream, Reply

CARRIERS = ("authorization", "x-api-key", "api-key", "cookie", "query")
KINDS = ("header", "echo")  # key only in the header/query; key also in the bodies
OPENAI_URL = "https://api.openai.com/v1/chat/completions"
ANTHROPIC_URL = "https://api.anthropic.com/v1/messages"

# Personal data and a key-like string, as a user might paste them into a prompt.
EMAIL = "jane.doe@example.com"
PHONE = "+1 415 555 0132"
CARD = "4111 1111 1111 1111"  # Luhn-valid test Visa
KEYLIKE = "sk-live9f8e7d6c5b4a3f2e1d0c"
PII = (EMAIL, PHONE, CARD, KEYLIKE)
PII_PROMPT = f"Contact me at {EMAIL} or {PHONE}; pay with card {CARD}; my key is {KEYLIKE}. Thanks, bye"
PII_ANSWER = f"Noted: mail {EMAIL}, phone {PHONE}, card {CARD}, key {KEYLIKE}. Have a nice day"


@dataclass
class Call:
    tag: str  # unique text in the request body, to find the call's stored body
    key: str | None
    request: bytes
    response: bytes


@dataclass
class Run:
    mode: str
    proxy: ProxyProcess
    calls: dict[str, Call]
    received: list
    rows: list[dict]
    bodies: list[dict]
    files: dict[str, bytes]
    spool_seen: dict[str, bytes]
    db_dump: str
    log: str
    keys: dict[tuple[str, str], str] = field(default_factory=dict)

    def body_for(self, tag: str) -> dict:
        (body,) = [b for b in self.bodies if tag in (b["request_body"] or "")]
        return body


def _new_key() -> str:
    return f"ltk-{secrets.token_hex(16)}"


def _distinctive(key: str) -> str:
    return key[8:24]  # 16 random hex digits


class SpoolWatcher(threading.Thread):
    """Copies every spool file it sees: spool files are deleted once ingested."""

    def __init__(self, directory: Path) -> None:
        super().__init__(daemon=True)
        self.directory = directory
        self.seen: dict[str, bytes] = {}
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            for path in self.directory.glob("*") if self.directory.exists() else ():
                try:
                    data = path.read_bytes()
                except OSError:
                    continue
                if len(data) > len(self.seen.get(path.name, b"")):
                    self.seen[path.name] = data
            self.halt.wait(0.005)


def _dump_db(db: Path) -> str:
    """Every value of every table, as text (DuckDB may compress strings on disk)."""
    parts = []
    with duckdb.connect(str(db), read_only=True) as con:
        tables = [t for (t,) in con.execute("SELECT table_name FROM information_schema.tables").fetchall()]
        for table in tables:
            for row in con.execute(f'SELECT * FROM "{table}"').fetchall():
                parts.append(f"{table}: {row!r}")
    return "\n".join(parts)


def _secret_request(carrier: str, key: str, tag: str, echo: bool) -> tuple[str, dict[str, str], dict]:
    url, headers = OPENAI_URL, {"content-type": "application/json"}
    model = "gpt-4o-mini"
    if carrier == "authorization":
        headers["authorization"] = f"Bearer {key}"
    elif carrier == "x-api-key":
        url, model = ANTHROPIC_URL, "claude-3-5-haiku-latest"
        headers["x-api-key"] = key
        headers["anthropic-version"] = "2023-06-01"
    elif carrier == "api-key":
        headers["api-key"] = key
    elif carrier == "cookie":
        headers["cookie"] = f"session={key}"
    elif carrier == "query":
        url += f"?api-version=2024-06-01&key={key}"
    text = f"{tag}: my key is {key}" if echo else f"{tag}: hello"
    body = {"model": model, "messages": [{"role": "user", "content": text}]}
    if carrier == "x-api-key":
        body["max_tokens"] = 16
    return url, headers, body


def _reply_for(carrier: str, text: str) -> Reply:
    if carrier == "x-api-key":
        return Reply.json(
            {
                "id": "msg_1",
                "type": "message",
                "model": "claude-3-5-haiku-20241022",
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn",
                "usage": {"input_tokens": 11, "output_tokens": 4},
            }
        )
    return Reply.json(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 11, "completion_tokens": 4},
        }
    )


def _run(mode: str, base: Path) -> Run:
    config = base / "llmtap.toml"
    config.write_text(f'capture = "{mode}"\n')
    with FakeUpstream() as upstream:
        proxy = ProxyProcess(
            base / "data",
            {"api.openai.com": upstream.url, "api.anthropic.com": upstream.url},
            extra_args=["--config", str(config), "-v"],
        ).start()
        watcher = SpoolWatcher(proxy.data_dir / "spool")
        watcher.start()
        calls: dict[str, Call] = {}
        keys: dict[tuple[str, str], str] = {}
        ctx = ssl.create_default_context(cafile=str(proxy.data_dir / "ca-bundle.pem"))
        try:
            with httpx.Client(proxy=proxy.url, verify=ctx, timeout=20) as client:
                for carrier in CARRIERS:
                    for kind in KINDS:
                        key = keys[carrier, kind] = _new_key()
                        tag = f"call-{carrier}-{kind}"
                        echo = kind == "echo"
                        url, headers, body = _secret_request(carrier, key, tag, echo)
                        reply = _reply_for(carrier, f"you sent {key}" if echo else "hi there")
                        upstream.routes[urlsplit(url).path] = reply
                        content = json.dumps(body).encode()
                        resp = client.post(url, content=content, headers=headers)
                        assert resp.status_code == 200, resp.text
                        assert resp.content == reply.body  # passed through unchanged
                        calls[tag] = Call(tag, key, content, reply.body)

                # Personal data in a plain and in a streamed call.
                tag = "call-pii-plain"
                reply = _reply_for("authorization", PII_ANSWER)
                upstream.routes["/v1/chat/completions"] = reply
                content = json.dumps(
                    {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"{tag} {PII_PROMPT}"}]}
                ).encode()
                resp = client.post(OPENAI_URL, content=content, headers={"content-type": "application/json"})
                assert resp.content == reply.body
                calls[tag] = Call(tag, None, content, reply.body)

                tag = "call-pii-stream"
                # each value whole inside one event (redaction works on the stored event text)
                pieces = PII_ANSWER.split(", ")
                events: list = [
                    {"id": "s1", "model": "gpt-4o-mini", "choices": [{"index": 0, "delta": {"content": p}}]}
                    for p in pieces
                ]
                events += [
                    {
                        "id": "s1",
                        "model": "gpt-4o-mini",
                        "choices": [],
                        "usage": {"prompt_tokens": 30, "completion_tokens": 20},
                    },
                    "[DONE]",
                ]
                reply = Reply.sse(events)
                upstream.routes["/v1/chat/completions"] = reply
                content = json.dumps(
                    {
                        "model": "gpt-4o-mini",
                        "stream": True,
                        "stream_options": {"include_usage": True},
                        "messages": [{"role": "user", "content": f"{tag} {PII_PROMPT}"}],
                    }
                ).encode()
                resp = client.post(OPENAI_URL, content=content, headers={"content-type": "application/json"})
                assert resp.content == b"".join(reply.chunks or [])
                calls[tag] = Call(tag, None, content, resp.content)

            rows = proxy.rows(wait_for=len(calls))
            bodies = proxy.rows("SELECT * FROM call_bodies", wait_for=0 if mode == "metadata" else len(calls))
        finally:
            code = proxy.stop()
            watcher.halt.set()
            watcher.join()
        assert code == 0, proxy.log.read_text()
        received = list(upstream.received)

    files = {str(p): p.read_bytes() for p in sorted(proxy.data_dir.rglob("*")) if p.is_file()}
    return Run(
        mode=mode,
        proxy=proxy,
        calls=calls,
        received=received,
        rows=rows,
        bodies=bodies,
        files=files,
        spool_seen=watcher.seen,
        db_dump=_dump_db(proxy.db),
        log=proxy.log.read_text(),
        keys=keys,
    )


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Run:
    return _run("full", tmp_path_factory.mktemp("full"))


@pytest.fixture(scope="module")
def redacted_run(tmp_path_factory) -> Run:
    return _run("redacted", tmp_path_factory.mktemp("redacted"))


@pytest.fixture(scope="module")
def metadata_run(tmp_path_factory) -> Run:
    return _run("metadata", tmp_path_factory.mktemp("metadata"))


@pytest.fixture(params=["full", "redacted", "metadata"])
def run(request) -> Run:
    return request.getfixturevalue(f"{request.param}_run")


def _where(run: Run, needle: str) -> list[str]:
    """Every place that holds ``needle``: files (bytes), spool copies, the tables, the log."""
    raw = needle.encode()
    found = [path for path, data in run.files.items() if raw in data]
    found += [f"spool/{name}" for name, data in run.spool_seen.items() if raw in data]
    if needle in run.db_dump:
        found.append("a table: " + next(line for line in run.db_dump.splitlines() if needle in line)[:300])
    if needle in run.log:
        found.append(str(run.proxy.log))
    return found


# -- every mode: secrets -----------------------------------------------------------------------


def test_every_call_recorded_and_secrets_reached_upstream(run):
    assert len(run.rows) == len(run.calls)
    # The proxy is transparent: the provider still gets the credentials.
    by_tag = {}
    for rec in run.received:
        for tag in run.calls:
            if tag.encode() + b":" in rec.body or tag.encode() + b" " in rec.body:
                by_tag[tag] = rec
    for carrier in CARRIERS:
        for kind in KINDS:
            rec = by_tag[f"call-{carrier}-{kind}"]
            key = run.keys[carrier, kind]
            expected = {
                "authorization": ("authorization", f"Bearer {key}"),
                "x-api-key": ("x-api-key", key),
                "api-key": ("api-key", key),
                "cookie": ("cookie", f"session={key}"),
            }.get(carrier)
            if expected:
                assert rec.headers.get(expected[0]) == expected[1]
            else:
                assert f"key={key}" in rec.path


def test_search_sees_what_is_stored(run):
    """Control: the searches below would find a value that is stored."""
    assert any(b'"call_id"' in data for data in run.spool_seen.values()), "no spool file was seen"
    assert any(name.endswith("llmtap.duckdb") for name in run.files)
    assert _where(run, "/v1/chat/completions?api-version=2024-06-01")
    if run.mode != "metadata":
        for call in run.calls.values():
            assert _where(run, call.tag), call.tag


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("carrier", CARRIERS)
def test_secret_stored_nowhere(run, carrier, kind):
    key = run.keys[carrier, kind]
    for needle in (key, _distinctive(key)):
        assert _where(run, needle) == [], f"{carrier} secret ({kind}) found in the {run.mode} store"


def test_stored_path_has_no_key(run):
    paths = [row["path"] for row in run.rows]
    assert all("key=" not in p.lower() for p in paths), paths
    assert "/v1/chat/completions?api-version=2024-06-01" in paths


def test_log_has_no_secret(run):
    assert "llmtap" in run.log  # the log was written
    for key in run.keys.values():
        assert key not in run.log and _distinctive(key) not in run.log


# -- bodies by mode ---------------------------------------------------------------------------


@pytest.mark.parametrize("carrier", CARRIERS)
@pytest.mark.parametrize("mode", ["full", "redacted"])
def test_echoed_secret_masked_in_bodies(request, mode, carrier):
    run: Run = request.getfixturevalue(f"{mode}_run")
    tag = f"call-{carrier}-echo"
    body = run.body_for(tag)
    assert body["capture_mode"] == mode
    assert f"{tag}: my key is {privacy.MASK}" in body["request_body"]
    assert f"you sent {privacy.MASK}" in body["response_body"]


def test_full_mode_stores_bodies_verbatim(full_run):
    for tag in ("call-pii-plain", "call-pii-stream", "call-authorization-header", "call-x-api-key-header"):
        call = full_run.calls[tag]
        body = full_run.body_for(tag)
        assert body["capture_mode"] == "full"
        assert body["request_body"] == call.request.decode()
        assert body["response_body"] == call.response.decode()


def test_redacted_mode_masks_personal_data(redacted_run):
    for tag in ("call-pii-plain", "call-pii-stream"):
        body = redacted_run.body_for(tag)
        assert body["capture_mode"] == "redacted"
        for text in (body["request_body"], body["response_body"]):
            for value in PII:
                assert value not in text, (value, text)
            assert "5550132" not in text.replace(" ", "")
            assert "4111111111111111" not in text.replace(" ", "")
            assert text.count(privacy.MASK) >= len(PII)
        # the rest of the text is kept
        assert "Thanks, bye" in body["request_body"]
        assert "Have" in body["response_body"] and "nice" in body["response_body"]
    for value in PII:
        assert _where(redacted_run, value) == [], value


def test_metadata_mode_stores_no_bodies(metadata_run):
    assert metadata_run.bodies == []
    assert "call_bodies" not in metadata_run.db_dump
    assert len(metadata_run.rows) == len(metadata_run.calls)
    for value in (*PII, "Thanks, bye"):
        assert _where(metadata_run, value) == [], value


# -- unit tests of collector.trust.privacy ------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v1beta/models/g:generateContent?key=AIzaSecret", "/v1beta/models/g:generateContent"),
        (
            "/v1beta/models/g:streamGenerateContent?alt=sse&key=AIzaSecret",
            "/v1beta/models/g:streamGenerateContent?alt=sse",
        ),
        ("/v1/x?KEY=a&api_key=b&apikey=c&api-key=d&access_token=e&token=f&sig=g&n=1", "/v1/x?n=1"),
        ("/v1/chat/completions", "/v1/chat/completions"),
        ("/v1/chat/completions?api-version=2024-06-01", "/v1/chat/completions?api-version=2024-06-01"),
        ("/v1/x?key=", "/v1/x"),
    ],
)
def test_clean_path(path, expected):
    assert privacy.clean_path(path) == expected


def test_secret_values():
    headers = [
        (b"Authorization", b"Bearer tok-abcdefgh1234"),
        (b"X-Api-Key", b"xkey-123456"),
        (b"api-key", b"azure-987654"),
        (b"x-goog-api-key", b"AIzaGoog"),
        (b"Content-Type", b"application/json"),
        (b"X-Llmtap-App", b"billing"),
    ]
    found = privacy.secret_values(headers, "/v1/x?alt=sse&key=qkey-5555&token=ab")
    assert set(found) == {
        "Bearer tok-abcdefgh1234",
        "tok-abcdefgh1234",
        "xkey-123456",
        "azure-987654",
        "AIzaGoog",
        "qkey-5555",
    }
    # longest first, so a value containing another is cut out whole
    assert [len(v) for v in found] == sorted((len(v) for v in found), reverse=True)
    assert privacy.secret_values([(b"accept", b"x")], "/v1/x") == []


def test_secret_values_cover_cookie_values():
    found = privacy.secret_values([(b"Cookie", b"session=ck-abcdef123456")], "/v1/x")
    text = privacy.stored_body(b"cookie was ck-abcdef123456", "full", found)
    assert "ck-abcdef123456" not in (text or "")


@pytest.mark.parametrize(
    "secret",
    [
        "sk-proj-abcdefghijklmnop1234",
        "sk-ant-api03-abcdefghijklmnop",
        "AIzaSyA1234567890abcdefghijklmnopqrs",
        "AKIAABCDEFGHIJKLMNOP",
        "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
        "Bearer abcdefghijklmnop1234",
        "jane.doe@example.com",
        "+1 415 555 0132",
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "5555555555554444",
    ],
)
def test_redact_masks(secret):
    out = privacy.redact(f"before {secret} after")
    assert secret not in out
    assert out.startswith("before ") and out.endswith(" after")
    assert privacy.MASK in out


@pytest.mark.parametrize("text", ["order 12345 qty 3", "year 2024 and pi 3.14159", "hello world", "sk-short"])
def test_redact_keeps_ordinary_text(text):
    assert privacy.redact(text) == text


def test_stored_body_by_mode():
    raw = b'{"q": "mail jane@example.com with tok-secret-123"}'
    assert privacy.stored_body(raw, "metadata", ["tok-secret-123"]) is None
    assert privacy.stored_body(None, "full", []) is None
    full = privacy.stored_body(raw, "full", ["tok-secret-123"])
    assert full == '{"q": "mail jane@example.com with [REDACTED]"}'
    redacted = privacy.stored_body(raw, "redacted", ["tok-secret-123"])
    assert redacted == '{"q": "mail [REDACTED] with [REDACTED]"}'


def test_repeated_secret_headers_are_all_cut(tmp_path):
    """A header sent twice (two Cookie lines): the second value, echoed in the body, is not stored."""
    second = "second-secret-" + secrets.token_hex(8)
    with FakeUpstream() as upstream, running_proxy(tmp_path / "data", upstream) as proxy:
        upstream.routes["/v1/chat/completions"] = Reply.json({"id": "r", "model": "m", "echo": second})
        ctx = ssl.create_default_context(cafile=str(proxy.data_dir / "ca-bundle.pem"))
        with httpx.Client(proxy=proxy.url, verify=ctx) as client:
            headers = [("cookie", "a=first-secret-123456"), ("cookie", f"b={second}")]
            client.post("https://api.openai.com/v1/chat/completions", json={"model": "m"}, headers=headers)
        (row,) = proxy.rows("SELECT response_body FROM call_bodies", wait_for=1)
    assert second not in row["response_body"] and "[REDACTED]" in row["response_body"]
