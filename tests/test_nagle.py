"""A streamed request reaches the upstream as soon as the proxy has it, whatever the client's Nagle setting.

urllib3 (so ``requests``) turns Nagle's algorithm back on for connections to a proxy and
writes a request's head and body separately, so the body waits in the client's kernel for
the proxy's ACK of the head; Linux delays that ACK by 40 ms or more on a connection that
has carried a request already. Every such call reached the upstream ~44 ms after its
``started_at`` until llmtap acknowledged request heads at once (``collector.proxy.addons.upstream.QuickAck``).

Each call is a streamed JSON POST through the real proxy, with ``requests`` and with the
official ``anthropic`` SDK on kept-alive connections; the local upstream notes when each
full request arrived, and that is compared with the call's ``started_at`` (when its first
byte reached the proxy). A functional check with a wide margin, not a benchmark: 20 ms is
several times the usual figure (2-5 ms) and half the smallest delayed ACK. The stall hit
every call; a busy 2-core machine (other test runs beside this one) delays the odd call by
a scheduling slice or two, so a quarter of the calls of each client may be late.
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Callable

import anthropic
import requests

from tests.proxyproc import ProxyProcess
from tests.upstream import FakeUpstream, Received, Reply

ANTHROPIC = "https://api.anthropic.com"
CALLS = 12  # per client, after one warm-up call that opens its connections
LATE_MS = 20.0
MESSAGES = [{"role": "user", "content": "Say hello. " * 20}]
EVENTS: list[str | tuple[str, object]] = [
    (
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": "msg_nagle",
                "type": "message",
                "role": "assistant",
                "model": "claude-x",
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 50, "output_tokens": 1},
            },
        },
    ),
    (
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    ),
    (
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hello"}},
    ),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": 2},
        },
    ),
    ("message_stop", {"type": "message_stop"}),
]


def timestamping(arrivals: dict[str, float]) -> Callable[[Received], Reply]:
    """A route noting when each full request (head and body) arrived, by its ``case``."""

    def reply(received: Received) -> Reply:
        arrivals[received.path.rsplit("case=", 1)[1]] = time.time()
        return Reply.sse(EVENTS)

    return reply


def requests_calls(proxy: ProxyProcess, cases: list[str]) -> None:
    ca = str(proxy.data_dir / "ca-bundle.pem")
    body = {"model": "claude-x", "max_tokens": 100, "stream": True, "messages": MESSAGES}
    with requests.Session() as session:
        session.proxies = {"https": proxy.url}
        for case in cases:
            # verify per request: a session's is overridden by $REQUESTS_CA_BUNDLE
            with session.post(
                f"{ANTHROPIC}/v1/messages?case={case}",
                json=body,
                headers={"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"},
                stream=True,
                verify=ca,
                timeout=30,
            ) as response:
                assert response.status_code == 200
                for _ in response.iter_content(None):
                    pass


def sdk_calls(proxy: ProxyProcess, cases: list[str]) -> None:
    trust = ssl.create_default_context(cafile=str(proxy.data_dir / "ca-bundle.pem"))
    http_client = anthropic.DefaultHttpxClient(proxy=proxy.url, verify=trust, trust_env=False)
    with anthropic.Anthropic(api_key="sk-ant-test", http_client=http_client, max_retries=0) as client:
        for case in cases:
            with client.messages.stream(
                model="claude-x", max_tokens=100, messages=MESSAGES, extra_query={"case": case}
            ) as stream:
                assert stream.get_final_text() == "hello"


def test_streamed_requests_reach_upstream_without_delay(proxy: ProxyProcess, upstream: FakeUpstream):
    arrivals: dict[str, float] = {}
    upstream.routes["/v1/messages"] = timestamping(arrivals)
    measured = []
    for client, calls in (("requests", requests_calls), ("sdk", sdk_calls)):
        cases = [f"{client}-{i}" for i in range(CALLS + 1)]
        calls(proxy, cases)
        measured += cases[1:]  # the warm-up call also opened the connections

    rows = proxy.rows("SELECT path, started_at FROM llm_calls", wait_for=2 * (CALLS + 1))
    started = {row["path"].rsplit("case=", 1)[1]: row["started_at"].timestamp() for row in rows}
    delays = {case: round((arrivals[case] - started[case]) * 1000, 1) for case in measured}
    print("ms from started_at to the full request at the upstream:", json.dumps(delays))  # for -s
    assert all(ms >= 0 for ms in delays.values()), delays
    for client in ("requests", "sdk"):
        late = {case: ms for case, ms in delays.items() if case.startswith(client) and ms > LATE_MS}
        assert len(late) <= CALLS // 4, f"{client}: over {LATE_MS} ms after started_at: {late}; all: {delays}"
