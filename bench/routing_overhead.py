"""Per-call cost of the routing addon's request hook on calls no rule acts on.

Prints microseconds per call with no rules file and with a rules file whose only rule
does not match, for a recorded OpenAI chat call. Run: uv run python bench/routing_overhead.py
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from mitmproxy import connection, http

from collector.calls.spans import SpanRecorder
from collector.pricing.book import PriceBook
from collector.providers import ProviderRegistry
from collector.proxy.addons.recorder import Recorder
from collector.proxy.addons.router import Router
from collector.routing.rules import RulesFile
from collector.storage.spool import Spool

CALLS = 200_000
RULE = {"id": "other", "match": {"model": "gpt-4.1"}, "to": "gpt-4.1-mini", "mode": "enforce"}


def per_call_us(router: Router, flow: http.HTTPFlow) -> float:
    router.request(flow)  # first call reads the rules file
    start = time.perf_counter()
    for _ in range(CALLS):
        router.request(flow)
    return (time.perf_counter() - start) / CALLS * 1e6


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        recorder = Recorder(ProviderRegistry(), Spool(data / "spool"), SpanRecorder(None), PriceBook({}))
        body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello " * 200}]}
        flow = http.HTTPFlow(
            connection.Client(peername=("127.0.0.1", 1), sockname=("127.0.0.1", 2)),
            connection.Server(address=None),
        )
        url = "https://api.openai.com/v1/chat/completions"
        flow.request = http.Request.make("POST", url, json.dumps(body), {"authorization": "Bearer x"})
        recorder.request(flow)
        rules = data / "rules.yaml"
        print(f"no rules file:         {per_call_us(Router(RulesFile(rules)), flow):.2f} us/call")
        rules.write_text(json.dumps({"version": 1, "rules": [RULE]}))
        print(f"one non-matching rule: {per_call_us(Router(RulesFile(rules)), flow):.2f} us/call")


if __name__ == "__main__":
    main()
