"""Bedrock's converse-stream (AWS binary event stream, not SSE) through the real proxy: frames
reach the client as they arrive and unchanged, and the row gets the usage; the SigV4-signed
request goes upstream byte for byte."""

from __future__ import annotations

import json
import ssl
import time

import httpx

from tests.conftest import running_proxy
from tests.test_providers_google_bedrock_cohere import CONVERSE_FRAMES
from tests.upstream import FakeUpstream, Reply

HOST = "bedrock-runtime.us-east-1.amazonaws.com"
PATH = "/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/converse-stream"


def test_converse_stream_through_proxy(tmp_path):
    with FakeUpstream() as upstream:
        upstream.routes[PATH] = Reply(
            chunks=CONVERSE_FRAMES, delay=0.05, headers={"content-type": "application/vnd.amazon.eventstream"}
        )
        with running_proxy(tmp_path / "data", upstream, upstream_hosts=[HOST]) as proxy:
            body = json.dumps({"messages": [{"role": "user", "content": [{"text": "Hi"}]}]}).encode()
            headers = {
                "content-type": "application/json",
                "authorization": "AWS4-HMAC-SHA256 Credential=AKIAEXAMPLE/20261123/us-east-1/bedrock",
                "x-amz-content-sha256": "0" * 64,
            }
            ctx = ssl.create_default_context(cafile=str(proxy.data_dir / "ca-bundle.pem"))
            arrivals, received = [], b""
            started = time.monotonic()
            with (
                httpx.Client(proxy=proxy.url, verify=ctx) as client,
                client.stream("POST", f"https://{HOST}{PATH}", content=body, headers=headers) as resp,
            ):
                for piece in resp.iter_raw():
                    arrivals.append(time.monotonic() - started)
                    received += piece
            (row,) = proxy.rows(wait_for=1)
    assert received == b"".join(CONVERSE_FRAMES)
    assert arrivals[0] < arrivals[-1] - 0.15, "frames were buffered, not streamed"
    assert upstream.received[0].body == body
    assert (row["provider"], row["api"], row["stream"]) == ("bedrock", "converse", True)
    assert row["request_model"] == "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
    assert (row["input_tokens"], row["output_tokens"], row["cache_read_tokens"]) == (107, 3, 100)
    assert row["finish_reasons"] == ["end_turn"] and row["error"] is None
