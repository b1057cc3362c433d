"""Fuzzing what comes from outside: metadata headers, request bodies, SSE and AWS event-stream
bytes, upstream error bodies, spool lines (Hypothesis).

Properties, for every input:

* the client receives exactly what the upstream sent (status and bytes);
* every call becomes one stored row (or, for a spool line, is stored or set aside, never
  stops the loader);
* no secret the request carried (``Authorization``, ``x-api-key``, cookies, ``key=``),
  wherever the upstream echoes it, appears in the spool, the store, an export, a span or a
  log line.

``LLMTAP_FUZZ_EXAMPLES`` sets the examples per property (default 25: fast in CI; e.g. 2000
for a long run).
"""

from __future__ import annotations

import io
import json
import logging
import os
import ssl
from collections.abc import Iterator

import duckdb
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mitmproxy import http
from mitmproxy.test import tflow

from collector.calls.scores import NAME_LIMIT, SOURCES
from collector.calls.spans import SpanRecorder
from collector.pricing.book import PriceBook
from collector.providers import ProviderRegistry
from collector.proxy.addons.metadata import MetadataHeaders
from collector.proxy.addons.recorder import Recorder
from collector.settings.paths import QUARANTINE_DIR
from collector.storage.database import Ingester, ensure_schema
from collector.storage.export import export_calls
from collector.storage.spool import Quarantine, Spool
from collector.trust import boundary
from collector.trust.logs import MaskingFormatter
from tests.conftest import running_proxy
from tests.test_providers_google_bedrock_cohere import _frame as aws_frame
from tests.upstream import FakeUpstream, Reply

EXAMPLES = int(os.environ.get("LLMTAP_FUZZ_EXAMPLES", "25"))
#: A long run takes longer than the suite's per-test timeout (pyproject.toml).
pytestmark = pytest.mark.timeout(max(120, EXAMPLES))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
        HealthCheck.data_too_large,
    ],
)

#: (host, path template, how the response streams): one endpoint per framing and key style.
ENDPOINTS = [
    ("api.openai.com", "/v1/chat/completions", "sse"),
    ("api.anthropic.com", "/v1/messages", "sse"),
    ("generativelanguage.googleapis.com", "/v1beta/models/gemini-2.5-flash:streamGenerateContent", "sse"),
    ("bedrock-runtime.us-east-1.amazonaws.com", "/model/m/converse-stream", "eventstream"),
]

# -- strategies ----------------------------------------------------------------------------------

#: A secret: long enough to be cut out (privacy.MIN_SECRET_LENGTH), and shaped so that only
#: the exact cut, not the key-like pattern, can find it.
secrets_ = st.text("ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789", min_size=12, max_size=40).map(
    lambda s: "Zq" + s
)
#: Header bytes as a client may send them (no CR, LF or NUL: HTTP itself forbids those).
header_bytes = st.binary(max_size=48).map(
    lambda b: b.replace(b"\r", b"").replace(b"\n", b"").replace(b"\0", b"")
)
metadata_names = st.sampled_from(["app", "user", "session"]) | st.text(
    "abcxyz-_0", min_size=1, max_size=8
).map(lambda s: f"property-{s}")
#: Text that providers' JSON may carry: anything, lone surrogates and control characters included.
wild_text = st.text(st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF), max_size=40)
numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.just(10**400),
)


@st.composite
def hostile_json(draw: st.DrawFn, secret: str) -> bytes:
    """A provider-shaped JSON body with hostile values, the secret echoed somewhere."""
    echo = draw(st.sampled_from(["id", "model", "message", "usage", "none"]))
    value = lambda where: f"{draw(wild_text)} {secret}" if echo == where else draw(wild_text)  # noqa: E731
    obj = {
        "id": value("id"),
        "model": value("model"),
        "error": {"message": value("message"), "type": draw(wild_text)},
        "usage": {
            "prompt_tokens": draw(numbers),
            "completion_tokens": draw(numbers),
            "input_tokens": draw(numbers),
            "output_tokens": draw(numbers),
            "note": value("usage"),
            "cost": draw(numbers),
        },
        "choices": [{"finish_reason": draw(wild_text), "message": {"content": draw(wild_text)}}],
    }
    text = json.dumps(obj, allow_nan=True)  # NaN, Infinity and lone surrogates, as Python writes them
    return text.encode("utf-8", "surrogatepass")


@st.composite
def bodies(draw: st.DrawFn, secret: str) -> bytes:
    return draw(st.one_of(hostile_json(secret), st.binary(max_size=200), st.just(secret.encode())))


def sse(payloads: list[bytes], events: list[str]) -> list[bytes]:
    return [
        (f"event: {name}\n".encode() if name else b"") + b"data: " + payload.replace(b"\n", b" ") + b"\n\n"
        for name, payload in zip(events, payloads, strict=False)
    ]


@st.composite
def calls(draw: st.DrawFn) -> dict:
    """One call: request headers, metadata, body, and what the upstream answers."""
    secret = draw(secrets_)
    host, path, framing = draw(st.sampled_from(ENDPOINTS))
    streamed = draw(st.booleans())
    status = draw(st.sampled_from([200, 200, 400, 401, 429, 500, 503]))
    if streamed and framing == "sse":
        payloads = draw(
            st.lists(st.one_of(hostile_json(secret), st.binary(max_size=60)), min_size=1, max_size=4)
        )
        names = draw(
            st.lists(st.sampled_from(["", "error", "message_delta", "\x1b[2J"]), min_size=4, max_size=4)
        )
        chunks = sse(payloads, names)
        chunks = draw(st.sampled_from([chunks, [b"".join(chunks)[i : i + 7] for i in range(0, 400, 7)]]))
        content_type = "text/event-stream"
    elif streamed:
        payloads = draw(st.lists(hostile_json(secret), min_size=1, max_size=3))
        chunks = [aws_frame({":event-type": "metadata", ":message-type": "event"}, p) for p in payloads]
        chunks += draw(st.lists(st.binary(max_size=40), max_size=2))  # and some garbage frames
        content_type = "application/vnd.amazon.eventstream"
    else:
        chunks = [draw(bodies(secret))]
        content_type = draw(
            st.sampled_from(["application/json", "text/plain", "application/json; charset=x"])
        )
    metadata = draw(st.lists(st.tuples(metadata_names, header_bytes), max_size=6))
    # An empty chunk ends a chunked body: the upstream cannot send one in the middle.
    chunks = [chunk for chunk in chunks if chunk] or [b""]
    return {
        "secret": secret,
        "host": host,
        "path": path + f"?alt=sse&key={secret}k",
        "headers": [
            (b"authorization", f"Bearer {secret}".encode()),
            (b"x-api-key", f"{secret}x".encode()),
            (b"cookie", f"session={secret}c; other=1".encode()),
            *((f"x-llmtap-{name}".encode(), value) for name, value in metadata),
        ],
        "body": draw(st.one_of(bodies(secret), hostile_json(secret))),
        "status": status,
        "content_type": content_type,
        "chunks": chunks,
    }


def secrets_of(call: dict) -> list[str]:
    s = call["secret"]
    return [s, f"{s}x", f"{s}c", f"{s}k"]


# -- in-process: the recorder's hooks, the spool, the loader, the store ---------------------------


@pytest.fixture(scope="module")
def prices() -> PriceBook:
    return PriceBook()


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """Every log line as llmtap writes it (through its masking formatter), at DEBUG."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(MaskingFormatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield out
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)


def through_recorder(recorder: Recorder, call: dict, start: float) -> tuple[int, bytes]:
    """``call`` through the hooks as mitmproxy calls them; what the client would receive."""
    flow = tflow.tflow()
    flow.request = http.Request.make("POST", f"https://{call['host']}{call['path']}", call["body"])
    flow.request.headers.fields = tuple(call["headers"])
    flow.request.timestamp_start = start
    MetadataHeaders().requestheaders(flow)
    recorder.request(flow)
    flow.response = http.Response.make(call["status"], b"", {"content-type": call["content_type"]})
    flow.response.timestamp_start = start + 0.1
    recorder.responseheaders(flow)
    received = b""
    if callable(flow.response.stream):
        for chunk in [*call["chunks"], b""]:
            received += flow.response.stream(chunk)
    else:
        flow.response.content = b"".join(call["chunks"])
        received = flow.response.content
    flow.response.timestamp_end = start + 0.2
    recorder.response(flow)
    return flow.response.status_code, received


@FUZZ
@given(
    batch=st.lists(calls(), min_size=1, max_size=4),
    mode=st.sampled_from(["full", "redacted", "metadata"]),
    in_flight=st.booleans(),
)
def test_hostile_calls_are_relayed_unchanged_stored_once_and_keep_no_secret(
    tmp_path_factory, prices, log_lines, batch, mode, in_flight
):
    tmp = tmp_path_factory.mktemp("fuzz")
    spool, db = Spool(tmp / "spool"), tmp / "llmtap.duckdb"
    ensure_schema(db)
    recorder = Recorder(ProviderRegistry(), spool, SpanRecorder(None), prices, mode, rows_in_flight=in_flight)
    for i, call in enumerate(batch):
        status, received = through_recorder(recorder, call, 1_700_000_000.0 + i)
        assert (status, received) == (call["status"], b"".join(call["chunks"]))
    spool_bytes = b"".join(p.read_bytes() for p in (tmp / "spool").glob("*.jsonl"))
    assert Ingester(spool, db).run_once()
    assert Quarantine(tmp / "spool" / QUARANTINE_DIR).count() == 0
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM llm_calls").fetchone() == (len(batch),)
        stored = str(
            [con.execute(f"SELECT * FROM {t}").fetchall() for t in ("llm_calls", "call_bodies", "spans")]
        )
    exported = io.BytesIO()
    assert export_calls(db, "jsonl", stdout=exported) == len(batch)
    for call in batch:
        for secret in secrets_of(call):
            for where, content in (
                ("spool", spool_bytes.decode("utf-8", "replace")),
                ("store", stored),
                ("export", exported.getvalue().decode("utf-8", "replace")),
                ("log", log_lines.getvalue()),
            ):
                assert secret not in content, f"{secret!r} in the {where}"


@FUZZ
@given(
    lines=st.lists(
        st.one_of(
            st.binary(max_size=80),
            st.dictionaries(
                st.sampled_from(
                    [
                        "call_id",
                        "started_at",
                        "app",
                        "input_tokens",
                        "cost_usd",
                        "properties",
                        "finish_reasons",
                        "stream",
                        "latency_ms",
                        "status_code",
                        "body",
                        "span",
                        "observed",
                        "usage_raw",
                        "ended_at",
                        "score",
                    ]
                ),
                st.one_of(
                    wild_text,
                    numbers,
                    st.booleans(),
                    st.none(),
                    st.lists(wild_text, max_size=3),
                    st.dictionaries(wild_text, wild_text, max_size=3),
                ),
                max_size=8,
            ).map(lambda d: json.dumps(d, allow_nan=True).encode("utf-8", "surrogatepass")),
            st.builds(
                lambda call_id, app: json.dumps(
                    {"call_id": call_id, "started_at": "2026-01-01T00:00:00+00:00", "app": app}
                ).encode(),
                st.text(min_size=1, max_size=10),
                wild_text,
            ),
            st.builds(
                lambda score: json.dumps({"score": score}, allow_nan=True).encode("utf-8", "surrogatepass"),
                st.fixed_dictionaries(
                    {},
                    optional={
                        "call_id": wild_text,
                        "name": wild_text,
                        "value": numbers | st.booleans() | wild_text,
                        "source": st.sampled_from(["grader", "feedback", "other"]) | wild_text,
                        "created_at": st.just("2026-01-01T00:00:00+00:00") | wild_text,
                        "error": wild_text | st.none(),
                    },
                ),
            ),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_every_spool_line_is_stored_or_set_aside_and_the_loader_never_stops(tmp_path_factory, lines):
    tmp = tmp_path_factory.mktemp("spool-fuzz")
    spool_dir, db = tmp / "spool", tmp / "llmtap.duckdb"
    ensure_schema(db)
    spool_dir.mkdir()
    content = b"".join(line.replace(b"\n", b" ") + b"\n" for line in lines)
    (spool_dir / "sealed-1-1-1.jsonl").write_bytes(content)
    nonblank = sum(1 for line in content.splitlines() if line.strip())
    assert Ingester(Spool(spool_dir), db).run_once()  # never stuck on a line
    assert not list(spool_dir.glob("*.jsonl"))
    with duckdb.connect(str(db), read_only=True) as con:
        (calls,) = con.execute("SELECT count(*) FROM llm_calls").fetchone()
        scores = con.execute("SELECT name, value, source FROM scores").fetchall()
    assert calls + len(scores) + Quarantine(spool_dir / QUARANTINE_DIR).count() == nonblank
    for name, value, source in scores:  # a stored score is a valid one
        assert 0 < len(name) <= NAME_LIMIT and source in SOURCES
        assert value is None or 0 <= value <= 1


@FUZZ
@given(value=wild_text | st.text(max_size=5000), secret=secrets_, limit=st.integers(1, 300))
def test_boundary_text_is_valid_bounded_and_secret_free(value, secret, limit):
    dirty = f"{value}{secret}{value}"
    clean = boundary.text(dirty, [secret], limit)
    clean.encode("utf-8")  # no lone surrogate left
    assert len(clean) <= limit + len(boundary.TRUNCATED)
    assert secret not in clean
    assert "\x1b" not in boundary.printable(clean) or "\x1b" in clean


# -- through the real proxy ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_proxy(tmp_path_factory) -> Iterator[tuple]:
    """One real proxy (stream-usage injection off, so the client must get the upstream's
    bytes exactly) in front of one scriptable upstream, for all examples."""
    tmp = tmp_path_factory.mktemp("proxy-fuzz")
    config = tmp / "llmtap.toml"
    config.write_text("[stream_usage]\nopenai = false\n")
    with FakeUpstream() as upstream:
        hosts = sorted({host for host, _, _ in ENDPOINTS})
        with running_proxy(
            tmp / "data", upstream, hosts, extra_args=["--config", str(config), "-v"]
        ) as proxy:
            ctx = ssl.create_default_context(cafile=str(proxy.data_dir / "ca-bundle.pem"))
            with httpx.Client(proxy=proxy.url, verify=ctx, timeout=30) as client:
                sent: list[dict] = []
                yield proxy, upstream, client, sent
            rows = proxy.rows(wait_for=len(sent))
            assert len(rows) == len(sent), (len(rows), len(sent))
        with duckdb.connect(str(proxy.db), read_only=True) as con:
            tables = ("llm_calls", "call_bodies", "spans")
            stored = str([con.execute(f"SELECT * FROM {t}").fetchall() for t in tables])
        log = proxy.log.read_text(errors="replace")
        for call in sent:
            for secret in secrets_of(call):
                assert secret not in stored, f"{secret!r} stored"
                assert secret not in log, f"{secret!r} logged"


def sendable(value: bytes) -> bool:
    """A header value HTTP/1.1 can carry as is (no controls, no surrounding whitespace)."""
    return value == value.strip(b" \t") and not any((b < 0x20 and b != 0x09) or b == 0x7F for b in value)


@FUZZ
@given(call=calls())
def test_through_the_proxy_the_client_gets_exactly_what_the_upstream_sent(fuzz_proxy, call):
    _, upstream, client, sent = fuzz_proxy
    path = call["path"].split("?")[0]
    upstream.routes[path] = Reply(
        status=call["status"],
        chunks=call["chunks"],
        headers={"content-type": call["content_type"]},
    )
    headers = [(k, v) for k, v in call["headers"] if sendable(v)]
    response = client.post(f"https://{call['host']}{call['path']}", content=call["body"], headers=headers)
    sent.append(call)
    assert response.status_code == call["status"]
    assert response.content == b"".join(call["chunks"])


@FUZZ
@given(
    body=st.one_of(
        st.binary(max_size=200),
        st.fixed_dictionaries(
            {},
            optional={
                "call_id": wild_text | numbers | st.none(),
                "name": wild_text | numbers,
                "value": numbers | st.booleans() | wild_text | st.none(),
                "extra": wild_text,
            },
        ).map(lambda d: json.dumps(d, allow_nan=True).encode("utf-8", "surrogatepass")),
    )
)
def test_feedback_posts_are_answered_and_never_store_an_invalid_score(fuzz_proxy, body):
    """Whatever an app posts to the feedback endpoint: a 4xx that says why (or 202 for a valid
    score of a known call), never a 5xx, never forwarded, never an invalid stored score."""
    proxy = fuzz_proxy[0]
    response = httpx.post(f"{proxy.url}/llmtap/feedback", content=body, timeout=30)
    assert response.status_code in (202, 400, 404, 413), (response.status_code, response.text)
    if response.status_code != 202:
        assert response.json()["error"]
    invalid = proxy.rows(
        "SELECT * FROM scores WHERE value < 0 OR value > 1 OR source <> 'feedback' "
        f"OR length(name) > {NAME_LIMIT}"
    )
    assert invalid == []
