"""Calls llmtap makes itself: shadow copies, judge calls and retries.

They go through mitmproxy's own client replay (:class:`ReplayHandler`), so each passes
every stage of the pipeline exactly as an app's call does: the recorder captures it, the
stream-usage stage asks for usage, the upstream rewrite sends it to ``--upstream``, and its
row, span and cost come out the same way. What marks it as llmtap's own is set on the flow
before it is sent: its :class:`~collector.storage.schema.RoutingMarks` (the rule, the arm,
the call it serves), its original's metadata, and for a copy its :class:`CopyOrder`.
Budgets leave these calls alone; the router counts their cost towards the rule's daily cap.

This module is shared by the stages that send such calls (the router, the comparison); it
imports none of them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from mitmproxy import connection, ctx, http
from mitmproxy.addons.clientplayback import ReplayHandler

from collector.providers import Endpoint
from collector.providers.base import Output, OutputReader
from collector.proxy.call import CAPTURE_KEY, METADATA_KEY, ROUTING_KEY, Capture
from collector.storage.schema import CallMetadata, RoutingMarks
from collector.wire.bodies import json_or_none
from collector.wire.sse import SSEReader

__all__ = [
    "ORDER_KEY",
    "SEND_TIMEOUT_S",
    "CopyOrder",
    "answer_of",
    "ask_model",
    "new_flow",
    "output_of",
    "read_answer",
    "send",
]

log = logging.getLogger("llmtap.own_calls")

#: Most seconds llmtap waits for the answer to a call it made; past it the call is left to
#: finish on its own (it is still recorded when it does) and the sender moves on.
SEND_TIMEOUT_S = 120.0
ORDER_KEY = "llmtap.copy_order"


@dataclass(slots=True)
class CopyOrder:
    """What a shadow copy is for: set by the router, read by the router (to send it to its
    model) and by the comparison stage (to compare its answer with the original's)."""

    #: The model the copy asks for (its original's, for a noise-floor copy).
    model: str
    #: The original's answer, as its provider reads outputs; None when it has none to compare.
    incumbent: Output | None
    #: The original's request features (they choose the comparison method).
    features: list[str]
    #: The original's request: a judge call is made on its provider, path and credentials.
    original: http.Request
    endpoint: Endpoint
    #: The start of the original's request body, shown to a judge.
    question: str


def new_flow(request: http.Request, metadata: CallMetadata, marks: RoutingMarks) -> http.HTTPFlow:
    """A flow for a call llmtap makes itself, shaped as if a client had sent ``request``."""
    client = connection.Client(peername=("127.0.0.1", 0), sockname=("127.0.0.1", 0))
    flow = http.HTTPFlow(client, connection.Server(address=None))
    flow.request = request.copy()
    flow.request.timestamp_start = time.time()
    flow.metadata[METADATA_KEY] = metadata
    flow.metadata[ROUTING_KEY] = marks
    return flow


async def send(flow: http.HTTPFlow) -> None:
    """Send the flow through the proxy (every stage sees it, as a client's call) and wait
    for its answer: ``flow.response``, or ``flow.error`` when there is none. Runs on the
    proxy's event loop."""
    handler = ReplayHandler(flow, ctx.options)
    try:
        await asyncio.wait_for(handler.replay(), SEND_TIMEOUT_S)
    except TimeoutError:
        log.warning("a call llmtap made to %s got no answer in %.0f s", flow.request.host, SEND_TIMEOUT_S)


def answer_of(flow: http.HTTPFlow) -> Any:
    """The answer as JSON: the body, or a stream's event payloads in order (the recorder
    keeps a compared call's stream text, see :func:`collector.proxy.call.keeps_answer_text`)."""
    capture: Capture | None = flow.metadata.get(CAPTURE_KEY)
    if capture is None or flow.response is None:
        return None
    if capture.streamed:
        return None if capture.stream_body is None else read_answer(bytes(capture.stream_body), True)
    return read_answer(flow.response.get_content(strict=False), False)


def read_answer(body: bytes | None, streamed: bool) -> Any:
    """A response body as JSON: the body itself, or an event stream's payloads in order."""
    if not streamed:
        return json_or_none(body)
    reader = SSEReader()
    events = [*reader.feed(body or b""), *reader.close()]
    return [json_or_none(data.encode()) for _, data in events if data != "[DONE]"]


def output_of(endpoint: Endpoint, answer: Any) -> Output | None:
    """What the answer says, if the provider can read outputs and there is an answer."""
    read = getattr(endpoint.provider, "read_output", None)
    if read is None or answer is None:
        return None
    output: Output = read(endpoint.api, answer)
    return output


async def ask_model(
    original: http.Request,
    endpoint: Endpoint,
    model: str,
    prompt: str,
    metadata: CallMetadata,
    marks: RoutingMarks,
) -> str:
    """Ask ``model`` one plain prompt on ``original``'s provider, path and credentials (how the
    LLM judge is asked), as a call llmtap makes and records with ``marks``; its answer's text
    ("" when it gave none)."""
    provider: OutputReader = endpoint.provider  # type: ignore[assignment]
    path, body = provider.prompt_request(endpoint.api, original.path, model, prompt)
    request = original.copy()
    request.path, request.content = path, json.dumps(body).encode()
    flow = new_flow(request, metadata, marks)
    await send(flow)
    output = output_of(endpoint, answer_of(flow))
    return output.text if output is not None else ""
