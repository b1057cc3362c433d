"""One OpenTelemetry span per call, stored in DuckDB and exported over OTLP.

The stored spans come from one module-scoped proxy; each test tags its call with a
``?case=`` query parameter to find its row. The OTLP test runs its own proxy pointed (by
``OTEL_EXPORTER_OTLP_ENDPOINT``) at a small local collector that decodes what it gets.
"""

from __future__ import annotations

import gzip
import json
import re
import secrets
import ssl
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.conftest import LLM_HOSTS, running_proxy
from tests.proxyproc import ProxyProcess
from tests.upstream import FakeUpstream, Reply

OPENAI = "https://api.openai.com/v1/chat/completions"
ANTHROPIC = "https://api.anthropic.com/v1/messages"


OPENAI_REPLY = {
    "id": "chatcmpl-span1",
    "object": "chat.completion",
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
    "usage": {
        "prompt_tokens": 120,
        "completion_tokens": 30,
        "prompt_tokens_details": {"cached_tokens": 100},
        "completion_tokens_details": {"reasoning_tokens": 10},
    },
}


def traceparent() -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as server:
        yield server


@pytest.fixture(scope="module")
def proxy(tmp_path_factory, upstream) -> Iterator[ProxyProcess]:
    with running_proxy(tmp_path_factory.mktemp("spans") / "data", upstream) as proc:
        yield proc


def make_client(proxy: ProxyProcess) -> httpx.Client:
    ctx = ssl.create_default_context(cafile=str(proxy.data_dir / "ca-bundle.pem"))
    return httpx.Client(proxy=proxy.url, verify=ctx, timeout=30)


@pytest.fixture
def client(proxy) -> Iterator[httpx.Client]:
    with make_client(proxy) as c:
        yield c


def call_and_span(proxy: ProxyProcess, case: str) -> tuple[dict, dict]:
    (call,) = proxy.rows(f"SELECT * FROM llm_calls WHERE path LIKE '%case={case}'", wait_for=1)
    (span,) = proxy.rows(f"SELECT * FROM spans WHERE call_id = '{call['call_id']}'", wait_for=1)
    span["attributes"] = json.loads(span["attributes"])
    return call, span


def assert_ids(call: dict, span: dict) -> None:
    assert re.fullmatch(r"[0-9a-f]{32}", span["trace_id"]) and span["trace_id"] != "0" * 32
    assert re.fullmatch(r"[0-9a-f]{16}", span["span_id"]) and span["span_id"] != "0" * 16
    assert (span["trace_id"], span["span_id"]) == (call["trace_id"], call["span_id"])


def test_openai_call_span(proxy, upstream, client):
    upstream.routes["/v1/chat/completions"] = Reply.json(OPENAI_REPLY)
    resp = client.post(f"{OPENAI}?case=openai", json={"model": "gpt-4o-mini", "messages": []})
    assert resp.status_code == 200
    call, span = call_and_span(proxy, "openai")
    assert_ids(call, span)
    assert span["kind"] == "CLIENT"
    assert span["name"] == "chat gpt-4o-mini"
    assert span["parent_span_id"] is None
    assert span["status"] != "ERROR"
    attrs = span["attributes"]
    expected = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
        "gen_ai.response.id": "chatcmpl-span1",
        "gen_ai.usage.input_tokens": 120,
        "gen_ai.usage.output_tokens": 30,
        "gen_ai.usage.cache_read.input_tokens": 100,
        "gen_ai.usage.reasoning.output_tokens": 10,
        "gen_ai.response.finish_reasons": ["stop"],
        "server.address": "api.openai.com",
    }
    assert {k: attrs.get(k) for k in expected} == expected
    assert "error.type" not in attrs
    assert "gen_ai.usage.cache_creation.input_tokens" not in attrs  # not reported, not invented
    assert "gen_ai.request.stream" not in attrs  # unset means not streamed, in the GenAI conventions
    # the span covers the call
    slack = timedelta(milliseconds=2)
    assert abs(span["start_time"] - call["started_at"]) <= slack
    assert abs(span["end_time"] - call["ended_at"]) <= slack
    assert span["end_time"] >= span["start_time"]


def test_anthropic_stream_span(proxy, upstream, client):
    start = {
        "type": "message_start",
        "message": {
            "id": "msg_span",
            "model": "claude-sonnet-4-20250514",
            "usage": {
                "input_tokens": 10,
                "cache_read_input_tokens": 200,
                "cache_creation_input_tokens": 50,
                "output_tokens": 1,
            },
        },
    }
    delta = {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 42}}
    upstream.routes["/v1/messages"] = Reply.sse(
        [("message_start", start), ("message_delta", delta), ("message_stop", {"type": "message_stop"})]
    )
    body = {"model": "claude-sonnet-4", "stream": True, "max_tokens": 100, "messages": []}
    assert client.post(f"{ANTHROPIC}?case=anthropic", json=body).status_code == 200
    call, span = call_and_span(proxy, "anthropic")
    assert_ids(call, span)
    assert (span["kind"], span["name"]) == ("CLIENT", "chat claude-sonnet-4")
    attrs = span["attributes"]
    expected = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "anthropic",
        "gen_ai.request.model": "claude-sonnet-4",
        "gen_ai.response.model": "claude-sonnet-4-20250514",
        "gen_ai.usage.input_tokens": 260,  # 10 uncached + 200 read + 50 written
        "gen_ai.usage.output_tokens": 42,
        "gen_ai.usage.cache_read.input_tokens": 200,
        "gen_ai.usage.cache_creation.input_tokens": 50,
        "gen_ai.response.finish_reasons": ["end_turn"],
        "server.address": "api.anthropic.com",
        "gen_ai.request.stream": True,
    }
    assert {k: attrs.get(k) for k in expected} == expected
    assert call["stream"] is True
    assert "error.type" not in attrs


def test_http_error_span(proxy, upstream, client):
    err = {"error": {"message": "Rate limit reached", "type": "tokens", "code": "rate_limit_exceeded"}}
    upstream.routes["/v1/chat/completions"] = Reply.json(err, status=429)
    resp = client.post(f"{OPENAI}?case=http429", json={"model": "gpt-4o", "messages": []})
    assert resp.status_code == 429
    call, span = call_and_span(proxy, "http429")
    assert_ids(call, span)
    assert call["error"]
    assert span["name"] == "chat gpt-4o"
    assert span["status"] == "ERROR"
    assert span["attributes"]["error.type"] == "429"
    assert span["attributes"]["gen_ai.provider.name"] == "openai"


def test_in_band_stream_error_span(proxy, upstream, client):
    start = {
        "type": "message_start",
        "message": {"model": "claude-x-1", "usage": {"input_tokens": 9, "output_tokens": 1}},
    }
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    upstream.routes["/v1/messages"] = Reply.sse([("message_start", start), ("error", error)])
    body = {"model": "claude-x", "stream": True, "max_tokens": 10, "messages": []}
    assert client.post(f"{ANTHROPIC}?case=stream-error", json=body).status_code == 200
    call, span = call_and_span(proxy, "stream-error")
    assert_ids(call, span)
    assert span["status"] == "ERROR"
    assert span["attributes"]["error.type"] == "overloaded_error"
    assert span["attributes"]["gen_ai.usage.input_tokens"] == 9


def test_traceparent_makes_child_span_and_is_forwarded(proxy, upstream, client):
    header, trace_id, parent_id = traceparent()
    upstream.routes["/v1/chat/completions"] = Reply.json(OPENAI_REPLY)
    resp = client.post(
        f"{OPENAI}?case=traceparent",
        json={"model": "gpt-4o-mini", "messages": []},
        headers={"traceparent": header, "tracestate": "vendor=abc"},
    )
    assert resp.status_code == 200
    forwarded = [r for r in upstream.received if "case=traceparent" in r.path]
    assert forwarded[-1].headers.get("traceparent") == header  # unchanged
    assert forwarded[-1].headers.get("tracestate") == "vendor=abc"
    call, span = call_and_span(proxy, "traceparent")
    assert_ids(call, span)
    assert span["trace_id"] == trace_id == call["trace_id"]
    assert span["parent_span_id"] == parent_id
    assert span["span_id"] != parent_id


def test_invalid_traceparent_ignored(proxy, upstream, client):
    upstream.routes["/v1/chat/completions"] = Reply.json(OPENAI_REPLY)
    bad = "00-" + "0" * 32 + "-" + "0" * 16 + "-01"  # all-zero ids are invalid
    resp = client.post(
        f"{OPENAI}?case=bad-traceparent", json={"model": "gpt-4o-mini"}, headers={"traceparent": bad}
    )
    assert resp.status_code == 200
    call, span = call_and_span(proxy, "bad-traceparent")
    assert_ids(call, span)
    assert span["parent_span_id"] is None


def test_every_call_has_one_span(proxy, upstream, client):
    upstream.routes["/v1/chat/completions"] = Reply.json(OPENAI_REPLY)
    client.post(f"{OPENAI}?case=every-1", json={"model": "gpt-4o-mini"})
    client.post(f"{OPENAI}?case=every-2", content=b"not json")  # no model known
    upstream.routes["/v1/chat/completions"] = Reply(status=502, body=b"bad gateway")
    client.post(f"{OPENAI}?case=every-3", json={"model": "gpt-4o"})
    rows = proxy.rows(
        "SELECT c.call_id, c.trace_id AS ct, c.span_id AS cs, s.trace_id AS st, s.span_id AS ss, "
        "s.name, s.kind FROM llm_calls c LEFT JOIN spans s USING (call_id) "
        "WHERE c.path LIKE '%case=every-%' ORDER BY c.path",
        wait_for=3,
    )
    assert len(rows) == 3
    for row in rows:
        assert row["ss"] is not None, row
        assert (row["ct"], row["cs"]) == (row["st"], row["ss"])
        assert row["kind"] == "CLIENT"
    assert [r["name"] for r in rows] == ["chat gpt-4o-mini", "chat", "chat gpt-4o"]
    # no stray spans, and span ids are unique
    (counts,) = proxy.rows(
        "SELECT (SELECT count(*) FROM llm_calls) AS calls, (SELECT count(*) FROM spans) AS spans, "
        "(SELECT count(DISTINCT span_id) FROM spans) AS ids"
    )
    assert counts["calls"] == counts["spans"] == counts["ids"]


# -- OTLP export ------------------------------------------------------------------------------


class OTLPCollector:
    """Accepts OTLP/HTTP protobuf trace exports on POST ``path`` (default /v1/traces), and
    metrics exports on /v1/metrics (kept as they came: the proxy pushes its metrics to the same
    OTLP endpoint)."""

    def __init__(self, path: str = "/v1/traces") -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.metrics: list[bytes] = []
        self.paths: list[str] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                collector.paths.append(self.path)
                if self.path == path:
                    collector.requests.append(ExportTraceServiceRequest.FromString(body))
                    status, reply = 200, ExportTraceServiceResponse().SerializeToString()
                elif self.path == "/v1/metrics":
                    collector.metrics.append(body)
                    status, reply = 200, b""
                else:
                    status, reply = 404, b""
                self.send_response(status)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> OTLPCollector:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    def spans(self) -> list[tuple[dict[str, Any], Span]]:
        """(resource attributes, span) for every span received."""
        out = []
        for req in self.requests:
            for rs in req.resource_spans:
                resource = attributes(rs.resource.attributes)
                for ss in rs.scope_spans:
                    out += [(resource, span) for span in ss.spans]
        return out


def any_value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


def attributes(kvs) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in kvs}


def test_spans_exported_over_otlp(tmp_path, upstream):
    header, trace_id, parent_id = traceparent()
    upstream.routes["/v1/chat/completions"] = Reply.json(OPENAI_REPLY)
    with OTLPCollector() as collector:
        proxy = ProxyProcess(
            tmp_path / "data",
            {h: upstream.url for h in LLM_HOSTS},
            env={"OTEL_EXPORTER_OTLP_ENDPOINT": collector.url},
        ).start()
        try:
            with make_client(proxy) as client:
                resp = client.post(
                    f"{OPENAI}?case=otlp",
                    json={"model": "gpt-4o-mini", "messages": []},
                    headers={"traceparent": header},
                )
                assert resp.status_code == 200
            (call,) = proxy.rows(wait_for=1)
        finally:
            code = proxy.stop()  # SIGTERM: the batch processor flushes on shutdown
        assert code == 0, proxy.log.read_text()
        # The shared endpoint gets the spans and, at /v1/metrics, the metrics (at least the
        # export as the proxy stopped).
        assert set(collector.paths) == {"/v1/traces", "/v1/metrics"}, collector.paths
        received = collector.spans()

    matching = [(res, s) for res, s in received if s.span_id.hex() == call["span_id"]]
    assert len(matching) == 1, [s.span_id.hex() for _, s in received]
    resource, span = matching[0]
    assert resource.get("service.name") == "llmtap"
    assert span.trace_id.hex() == trace_id == call["trace_id"]
    assert span.parent_span_id.hex() == parent_id
    assert span.kind == Span.SpanKind.SPAN_KIND_CLIENT
    assert span.name == "chat gpt-4o-mini"
    attrs = attributes(span.attributes)
    expected = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
        "gen_ai.usage.input_tokens": 120,
        "gen_ai.usage.output_tokens": 30,
        "gen_ai.usage.cache_read.input_tokens": 100,
        "gen_ai.usage.reasoning.output_tokens": 10,
        "gen_ai.response.finish_reasons": ["stop"],
        "server.address": "api.openai.com",
    }
    assert {k: attrs.get(k) for k in expected} == expected
    assert "gen_ai.request.stream" not in attrs
    assert span.end_time_unix_nano >= span.start_time_unix_nano > 0
    # the exported span is the stored one
    (stored,) = proxy.rows(f"SELECT * FROM spans WHERE span_id = '{call['span_id']}'")
    assert json.loads(stored["attributes"])["gen_ai.usage.input_tokens"] == 120


def test_traces_endpoint_variable_is_the_full_url(tmp_path, upstream, monkeypatch):
    """``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` alone: spans go to exactly that URL (no
    ``/v1/traces`` added), here a path no OTLP default would produce; a stream's span says so."""
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)  # whatever this machine sets
    start = {"type": "message_start", "message": {"model": "claude-x-1", "usage": {"input_tokens": 7}}}
    delta = {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 3}}
    upstream.routes["/v1/messages"] = Reply.sse([("message_start", start), ("message_delta", delta)])
    with OTLPCollector(path="/otel/spans") as collector:
        proxy = ProxyProcess(
            tmp_path / "data",
            {h: upstream.url for h in LLM_HOSTS},
            env={"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": collector.url + "/otel/spans"},
        ).start()
        try:
            with make_client(proxy) as client:
                body = {"model": "claude-x", "stream": True, "max_tokens": 10, "messages": []}
                assert client.post(f"{ANTHROPIC}?case=traces-endpoint", json=body).status_code == 200
            (call,) = proxy.rows(wait_for=1)
        finally:
            code = proxy.stop()  # SIGTERM: the batch processor flushes on shutdown
        assert code == 0, proxy.log.read_text()
        assert collector.paths and set(collector.paths) == {"/otel/spans"}, collector.paths
        received = collector.spans()
    (span,) = [s for _, s in received if s.span_id.hex() == call["span_id"]]
    attrs = attributes(span.attributes)
    assert attrs["gen_ai.request.stream"] is True
    assert attrs["gen_ai.usage.output_tokens"] == 3
