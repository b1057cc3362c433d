"""The fallback stage: calls whose route has a fallback chain go through the relay.

Last on the request (after the upstream rewrite, so the first target is where the call was
going): a call a ``[fallbacks."NAME"]`` chain matches is given a ticket (its targets in order)
and pointed at the relay (:mod:`collector.proxy.fallback_relay`), which sends it and falls
back. Each failed attempt becomes a row of its own (``routing_arm`` "fallback", the later ones
with ``retry_of`` = the first attempt); the call the client gets its answer from is the
stage's flow, recorded by the recorder as usual, linked to the first attempt and, when
another model answered, with the client's model in ``routed_from_model``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

from mitmproxy import http

from collector.calls.rows import Observed, RowBuilder, row_line
from collector.providers import RequestFacts
from collector.proxy.call import CAPTURE_KEY, REWRITE_KEY, ROUTING_KEY, Capture, made_by_llmtap, metadata_of
from collector.proxy.fallback_relay import TICKET_HEADER, Attempt, Relay, Target, Ticket
from collector.proxy.model_rewrite import is_signed, with_model
from collector.routing.breaker import Breaker, Upstreams
from collector.routing.fallbacks import FallbackTable, HostTarget
from collector.routing.rules import FALLBACK_ARM
from collector.storage.schema import CallMetadata, ModelRewrite, RoutingMarks
from collector.storage.spool import Spool
from collector.trust.failopen import fail_open
from collector.trust.privacy import SECRET_HEADERS, clean_path
from collector.wire.target import send_to

__all__ = ["Fallbacks"]

log = logging.getLogger("llmtap.fallback")

_KEY = "llmtap.fallback"
#: Request headers not copied to an attempt: the relay's own, framing, and the credentials a
#: target on another host must not get.
_NOT_SENT = {b"content-length", b"transfer-encoding", b"connection", TICKET_HEADER.encode()}
_CREDENTIALS = frozenset(name.encode() for name in SECRET_HEADERS)


@dataclass(frozen=True, slots=True)
class _Call:
    """What a failed attempt's row needs of the call (kept on its ticket)."""

    chain: str
    provider: str
    api: str
    metadata: CallMetadata
    facts: RequestFacts


class Fallbacks:
    def __init__(self, chains: Mapping[str, FallbackTable], spool: Spool, rows: RowBuilder) -> None:
        self.chains = dict(chains)
        self.spool = spool
        self.rows = rows
        upstreams: Upstreams = {}  # one state per upstream and model, whichever chains use it
        self.breakers = {
            name: Breaker(chain.breaker.settings(), upstreams) for name, chain in self.chains.items()
        }
        self.relays: dict[str, Relay] = {}

    async def running(self) -> None:
        for name, breaker in self.breakers.items():
            relay = Relay(breaker, self._attempt_failed)
            await relay.start()
            self.relays[name] = relay

    async def done(self) -> None:
        for relay in self.relays.values():
            await relay.close()

    @fail_open
    def request(self, flow: http.HTTPFlow) -> None:
        capture: Capture | None = flow.metadata.get(CAPTURE_KEY)
        if capture is None or flow.response is not None or made_by_llmtap(flow):
            return
        app, provider = metadata_of(flow).app, capture.endpoint.provider.name
        model = capture.request.model
        name = next((n for n, c in self.chains.items() if c.match.covers(model, app, provider)), None)
        relay = self.relays.get(name) if name is not None else None
        if name is None or relay is None or relay.port is None or is_signed(flow.request.headers):
            return
        chain = self.chains[name]
        targets = [
            self._here(flow, model),
            *(t for t in (self._target(flow, model, to) for to in chain.to) if t),
        ]
        ticket = Ticket(
            flow.request.method,
            targets,
            frozenset(chain.on_status),
            chain.first_byte_timeout_s,
            chain.max_retry_after_s,
            owner=_Call(name, provider, capture.endpoint.api, metadata_of(flow), capture.request),
        )
        ticket_id = relay.open_ticket(ticket)
        flow.request.headers[TICKET_HEADER] = ticket_id
        send_to(flow.request, "http", "127.0.0.1", relay.port)
        flow.metadata[_KEY] = (name, ticket, ticket_id)

    @fail_open
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """The call's row is the attempt whose outcome the client got (the target that
        answered, or the last that failed): it says which model and host that was and links it
        to the first attempt."""
        entry = flow.metadata.get(_KEY)
        capture: Capture | None = flow.metadata.get(CAPTURE_KEY)
        if entry is None or capture is None:
            return
        name, ticket, _ = entry
        # The failed attempts that have rows of their own: all of them, or, when none answered,
        # all but the last (this row).
        rows = ticket.attempts if ticket.served is not None else ticket.attempts[:-1]
        served = ticket.served or (ticket.attempts[-1].target if ticket.attempts else None)
        if served is ticket.targets[0] and not rows:
            return  # the first target answered at once, or failed with nothing else tried: ordinary
        if served is not None:
            self._answered_by(flow, capture, ticket, served)
        # Linked to the first failed attempt; with none (every target before was skipped, or
        # all were: a 503), the row still names the chain.
        first = rows[0].call_id if rows else None
        marks: RoutingMarks | None = flow.metadata.get(ROUTING_KEY)
        if marks is None:
            flow.metadata[ROUTING_KEY] = RoutingMarks(f"fallback:{name}", FALLBACK_ARM, retry_of=first)
        else:
            marks.retry_of = marks.retry_of or first

    @fail_open
    def error(self, flow: http.HTTPFlow) -> None:
        """A call that failed before reaching the relay: its ticket (a copy of the request) goes."""
        entry = flow.metadata.get(_KEY)
        relay = self.relays.get(entry[0]) if entry is not None else None
        if entry is not None and relay is not None:
            relay.discard(entry[2])

    def _answered_by(self, flow: http.HTTPFlow, capture: Capture, ticket: Ticket, served: Target) -> None:
        if served.model != capture.request.model:
            # A budget or a routing rule may have rewritten the model already: the client's
            # own model is the one the row keeps.
            earlier: ModelRewrite | None = flow.metadata.get(REWRITE_KEY)
            client_model = earlier.routed_from_model if earlier is not None else capture.request.model
            flow.metadata[REWRITE_KEY] = ModelRewrite(routed_from_model=client_model)
            capture.request.model = served.model
        if urlsplit(served.url).netloc != urlsplit(ticket.targets[0].url).netloc:
            capture.host = urlsplit(served.url).hostname or capture.host  # another host answered

    # -- targets ----------------------------------------------------------------------------

    def _here(self, flow: http.HTTPFlow, model: str | None) -> Target:
        return _same_host(
            flow.request, model, f"{flow.request.scheme}://{flow.request.host}:{flow.request.port}"
        )

    def _target(self, flow: http.HTTPFlow, model: str | None, to: str | HostTarget) -> Target | None:
        request = flow.request.copy()
        if isinstance(to, str):
            if with_model(request, model, to) is not None:
                return None
            return _same_host(request, to, f"{request.scheme}://{request.host}:{request.port}")
        key = os.environ.get(to.api_key_env)
        if not key:
            log.warning("fallback to %s skipped: %s is not set", to.upstream, to.api_key_env)
            return None
        if with_model(request, model, to.model) is not None:
            return None
        base = urlsplit(to.url)
        # The client's secret query parameters (Gemini's key=) stay with the client's host.
        path, _, query = clean_path(request.path).partition("?")
        query = "&".join(q for q in (base.query, query) if q)
        url = f"{base.scheme}://{base.netloc}{base.path.rstrip('/')}{_api_path(path)}" + (
            f"?{query}" if query else ""
        )
        headers = [(k, v) for k, v in _headers(request, keep_credentials=False) if k.lower() != b"host"]
        headers.append(to.credential(key))
        return Target(f"{to.upstream} {to.model}", url, tuple(headers), request.raw_content or b"", to.model)

    # -- failed attempts --------------------------------------------------------------------

    def _attempt_failed(self, ticket: Ticket, attempt: Attempt) -> None:
        """A row for a failed attempt (its own call id; the later ones link to the first)."""
        try:
            self._record(ticket, attempt)
        except Exception:
            log.exception("llmtap internal error recording a failed fallback attempt")

    def _record(self, ticket: Ticket, attempt: Attempt) -> None:
        call: _Call = ticket.owner
        first = ticket.attempts[0]
        target = attempt.target
        seen = Observed(
            call_id=attempt.call_id,
            started=attempt.started,
            ended=attempt.ended,
            first_byte=None,
            provider=call.provider,
            api=call.api,
            method=ticket.method,
            host=urlsplit(target.url).hostname or "",
            path=urlsplit(target.url).path,
            status_code=attempt.status,
            streamed=False,
            traceparent=None,
            error=attempt.error,
            capture_mode="metadata",
            metadata=call.metadata,
            routing=RoutingMarks(
                f"fallback:{call.chain}", FALLBACK_ARM, retry_of=None if attempt is first else first.call_id
            ),
        )
        seen.request = replace(call.facts, model=target.model)
        seen.clean()
        self.spool.append(row_line(self.rows.row(seen)))


def _same_host(request: http.Request, model: str | None, upstream: str) -> Target:
    """The request as it is (its credentials included) to its own host, asking for ``model``;
    the body as its headers describe it (still content-encoded, if it was)."""
    headers = _headers(request, keep_credentials=True)
    return Target(f"{upstream} {model}", request.url, headers, request.raw_content or b"", model)


def _headers(request: http.Request, keep_credentials: bool) -> tuple[tuple[bytes, bytes], ...]:
    skip = _NOT_SENT if keep_credentials else _NOT_SENT | _CREDENTIALS
    return tuple((k, v) for k, v in request.headers.fields if k.lower() not in skip)


#: An API's version segment: ``v1``, ``v1beta``, ``v2alpha1``.
_VERSION = re.compile(r"v\d+(?:(?:alpha|beta)\d*)?")


def _api_path(path: str) -> str:
    """The call's path below its API base: ``/v1/chat/completions`` -> ``/chat/completions``;
    Azure OpenAI's ``/openai/deployments/NAME/chat/completions`` -> ``/chat/completions``."""
    parts = path.split("/")
    for i, part in enumerate(parts):
        if _VERSION.fullmatch(part):
            return "/" + "/".join(parts[i + 1 :])
        if part == "deployments" and i + 2 < len(parts):
            return "/" + "/".join(parts[i + 2 :])
    return path
