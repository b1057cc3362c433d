"""collector.wire.headers gives what mitmproxy's own (slower) accessors give, on real requests."""

from __future__ import annotations

import pytest
from mitmproxy import http

from collector.wire.headers import first_header, intended_host


def request(
    host_header: bytes | None, http_version: str = "HTTP/1.1", authority: bytes = b""
) -> http.Request:
    headers = [(b"Accept", b"*/*"), (b"TraceParent", b"00-ab-cd-01"), (b"traceparent", b"second")]
    if host_header is not None:
        headers.insert(1, (b"Host", host_header))
    req = http.Request.make("POST", "https://10.0.0.7:8443/v1/chat/completions", b"{}", headers)
    req.http_version = http_version
    req.authority = authority
    return req


@pytest.mark.parametrize(
    "host_header",
    [b"api.openai.com", b"API.OpenAI.com:443", b"[::1]:8080", b"[::1]", b"127.0.0.1:9", b"localhost", None],
)
def test_intended_host_is_pretty_host(host_header):
    req = request(host_header)
    assert intended_host(req) == req.pretty_host.lower()


def test_http2_authority_wins_over_host_header():
    req = request(b"other.example", http_version="HTTP/2.0", authority=b"api.anthropic.com:443")
    assert intended_host(req) == req.pretty_host.lower() == "api.anthropic.com"


def test_first_header_is_case_insensitive_and_takes_the_first_value():
    req = request(b"api.openai.com")
    assert first_header(req, b"traceparent") == "00-ab-cd-01" == req.headers.get_all("traceparent")[0]
    assert first_header(req, b"x-missing") is None
