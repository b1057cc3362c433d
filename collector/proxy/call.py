"""The state of one call in flight, shared by the pipeline's stages through ``flow.metadata``.

Each stage writes only its own part, under its own key, and may read the others':

* :data:`METADATA_KEY`: the caller's metadata (:class:`~collector.storage.schema.CallMetadata`),
  written by the metadata stage;
* :data:`CAPTURE_KEY`: what the recorder knows of the call (:class:`Capture`): its provider
  and API, the bodies, the facts read from them, and its cost once finished;
* :data:`REWRITE_KEY`: the client's model when the call was sent to another one
  (:class:`~collector.storage.schema.ModelRewrite`), written by
  :func:`collector.proxy.model_rewrite.rewrite_model` for whichever stage rewrites;
* :data:`ROUTING_KEY`: what a routing rule did (:class:`~collector.storage.schema.RoutingMarks`),
  written by the router, which also sets it on the calls it makes itself before sending them;
* :data:`COMPARISON_KEY`: a shadow copy's answer compared with its original's
  (:class:`~collector.storage.schema.Comparison`), written by the comparison stage;
* :data:`REFERENCE_KEY`: the reference answer the caller sent (``X-Llmtap-Reference``), for
  graders, written by the metadata stage;
* :data:`GRADING_KEY`: the graders that will score the call's answer, written by the grading
  stage at ``request`` (so the recorder keeps a streamed answer's text);
* :data:`CACHE_DIRECTIVES_KEY`: what the caller asked of the response cache (``X-Llmtap-Cache``,
  ``X-Llmtap-Cache-Ttl``: :class:`CacheDirectives`), written by the metadata stage;
* :data:`CACHE_KEY`: what the response cache did (:class:`~collector.storage.schema.CacheMarks`),
  written by the cache stage;
* :data:`CACHED_USAGE_KEY`: for an answer served from the cache, the usage the provider reported
  when it was fetched (:class:`~collector.providers.ResponseFacts`), written by the cache stage
  for the recorder: a replayed stream lacks it when its client did not ask for it.

The parts other than the capture are declared in :mod:`collector.storage.schema` as their
columns; the recorder puts them in the call's row as they are when the call ends.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from decimal import Decimal

from mitmproxy import http

from collector.providers import Endpoint, RequestFacts, ResponseFacts
from collector.routing.rules import COMPARED_ARMS, OWN_CALL_ARMS
from collector.storage.schema import CallMetadata, RoutingMarks
from collector.wire.bodies import json_or_none

__all__ = [
    "CACHED_USAGE_KEY",
    "CACHE_DIRECTIVES_KEY",
    "CACHE_KEY",
    "CAPTURE_KEY",
    "COMPARISON_KEY",
    "GRADING_KEY",
    "METADATA_KEY",
    "REFERENCE_KEY",
    "REWRITE_KEY",
    "ROUTING_KEY",
    "CacheDirectives",
    "Capture",
    "keeps_answer_text",
    "made_by_llmtap",
    "metadata_of",
]

CAPTURE_KEY = "llmtap.capture"
METADATA_KEY = "llmtap.metadata"
REWRITE_KEY = "llmtap.rewrite"
ROUTING_KEY = "llmtap.routing"
COMPARISON_KEY = "llmtap.comparison"
REFERENCE_KEY = "llmtap.reference"
GRADING_KEY = "llmtap.grading"
CACHE_DIRECTIVES_KEY = "llmtap.cache_directives"
CACHE_KEY = "llmtap.cache"
CACHED_USAGE_KEY = "llmtap.cached_usage"


@dataclass(slots=True)
class Capture:
    """The recorder's part: everything it knows about one call while it is in flight."""

    endpoint: Endpoint
    method: str
    host: str
    path: str
    started: float
    traceparent: str | None
    secrets: list[str]
    #: The capture mode keeps bodies and the request is not one whose bodies are withheld
    #: (more secret values than privacy.MAX_SECRET_VALUES).
    keep_bodies: bool
    #: The body as the client sent it (stages may change what goes upstream).
    request_body: bytes = b""
    #: Read from the body when first asked for (:attr:`request`); most calls are never asked.
    parsed_request: RequestFacts | None = None
    response: ResponseFacts = field(default_factory=ResponseFacts)
    streamed: bool = False
    first_byte: float | None = None
    stream_body: bytearray | None = None
    completed_at: float | None = None
    done: bool = False
    #: Set when the call is finished, for stages that act on spend (budgets, spend caps).
    cost_usd: Decimal | None = None
    #: Known from the start so that other calls (shadow copies, retries) can refer to it.
    call_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def request(self) -> RequestFacts:
        """What the client asked for. Read on first use: routing rules, budgets and the
        stream-usage option ask in flight; for other calls the spool loader reads it."""
        if self.parsed_request is None:
            endpoint, body = self.endpoint, json_or_none(self.request_body)
            self.parsed_request = endpoint.provider.read_request(endpoint.api, self.path, body)
        return self.parsed_request


@dataclass(slots=True)
class CacheDirectives:
    """What the caller's headers ask of the response cache: ``X-Llmtap-Cache: off`` bypasses it;
    ``X-Llmtap-Cache-Ttl: SECONDS`` accepts only answers younger than that, and keeps a new one
    no longer (the config's ``ttl_s`` still bounds both)."""

    off: bool = False
    ttl_s: float | None = None


def metadata_of(flow: http.HTTPFlow) -> CallMetadata:
    """The caller's metadata (empty for a flow the metadata stage has not seen)."""
    return flow.metadata.get(METADATA_KEY) or CallMetadata()


def made_by_llmtap(flow: http.HTTPFlow) -> bool:
    """A call llmtap sends itself (a shadow copy, judge call or retry), not the app's."""
    marks: RoutingMarks | None = flow.metadata.get(ROUTING_KEY)
    return marks is not None and marks.routing_arm in OWN_CALL_ARMS


def keeps_answer_text(flow: http.HTTPFlow) -> bool:
    """The answer's text is needed in flight (to compare or grade it, or read a judge's verdict),
    whatever the capture mode: the recorder keeps a stream's text for these calls (never
    storing it when the mode keeps no bodies)."""
    if GRADING_KEY in flow.metadata:
        return True
    marks: RoutingMarks | None = flow.metadata.get(ROUTING_KEY)
    return marks is not None and marks.routing_arm in COMPARED_ARMS
