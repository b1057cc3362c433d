"""The response cache stage: a request identical to an earlier one gets the earlier answer, and
the provider is not asked (``[cache]`` in the config; without it this stage is not installed).

Hooks, in the order mitmproxy calls them:

* ``request``: for a call the cache applies to (below), look its key up
  (:mod:`collector.cache.keys`). On a hit, ``flow.response`` becomes the stored answer with
  ``X-Llmtap-Cache: hit``: mitmproxy then sends it to the client in one piece without contacting
  the upstream, and still runs the ``responseheaders`` and ``response`` hooks, so the recorder
  records the hit as a call of its own (``cache_hit`` true, ``cache_of`` the call that fetched the
  answer; its cost 0 and what it saved are priced with the row, see :mod:`collector.calls.rows`).
  On a miss the key is kept for later.
* ``responseheaders`` (a miss): ``X-Llmtap-Cache: miss``; for an event stream, the outermost
  ``stream`` callable is wrapped to keep a copy of exactly the bytes the client is sent (after the
  stream-usage stage took out what it added, which is why this stage comes after that one).
* ``response`` (a miss; or ``error`` after a stream's terminal event, when the client hung up
  having had the whole answer): a successful (2xx), complete answer is stored: a stream whose
  terminal event came and carried no error, or a whole body the provider's reader finds no error
  in (and, for a background response, not one still ``queued`` or ``in_progress``), that the
  model and host asked for gave (not a fallback's: a later stage may still send the call to
  another model or host, and says so in the call's state by the time the answer comes). The stored
  bytes are what the client received, so a hit replays them byte for byte (a stream as the same
  events); the stream's usage as the proxy read it from the upstream is kept beside them, for the
  hit's row when the client's stream does not carry it. The copies of the streams in flight
  share a bound (:data:`MAX_RECORDING_BYTES`): a stream past it is passed on, not stored.

The cache applies to a call the recorder recognised as an LLM call, made by the app (not one of
llmtap's own copies, judge calls or retries), not signed over its body (AWS SigV4: the signature
is the credential and changes with every request, so it could never hit), not already answered
(a budget's block) nor sent to another model (a budget's downgrade or a routing rule: the answer
is not the client's model's), not a Responses API turn of a conversation the provider keeps
(``previous_response_id``, ``conversation``), that the config's filters admit and whose request
does not bypass
it: ``Cache-Control: no-cache`` (or ``no-store``), ``X-Llmtap-Cache: off``, a non-positive
``X-Llmtap-Cache-Ttl``. Requests that bypass it go upstream as if there were no cache, and their
response carries no ``X-Llmtap-Cache``.

Replayed headers are the upstream's, less the hop-by-hop ones, ``Date``, ``Set-Cookie`` and
llmtap's own (a hit gets a call id of its own), plus ``Age``; a compressed answer is decoded for a
client that does not accept its encoding.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from mitmproxy import http
from mitmproxy.net import encoding
from mitmproxy.net.http.status_codes import RESPONSES

from collector.cache.keys import cache_key, credential_digest, shaping_headers
from collector.cache.store import MAX_ENTRY_BYTES, CacheStore, Entry
from collector.calls.rows import read_response
from collector.providers import ResponseFacts, Usage
from collector.proxy.call import (
    CACHE_DIRECTIVES_KEY,
    CACHE_KEY,
    CACHED_USAGE_KEY,
    CAPTURE_KEY,
    REWRITE_KEY,
    CacheDirectives,
    Capture,
    made_by_llmtap,
    metadata_of,
)
from collector.settings.config import CacheSettings
from collector.storage.schema import CacheMarks
from collector.trust.failopen import fail_open
from collector.wire.bodies import json_or_none
from collector.wire.headers import HOP_BY_HOP, decoded_body, signs_body
from collector.wire.streams import StreamFn

__all__ = ["BYTES_PER_MB", "CACHE_HEADER", "ResponseCache"]

log = logging.getLogger("llmtap.cache")

#: The response header saying what the cache did: ``hit`` or ``miss`` (absent: no cache applied).
CACHE_HEADER = "X-Llmtap-Cache"
#: ``max_mb`` is in megabytes of 10^6 bytes.
BYTES_PER_MB = 1_000_000
#: Response headers never replayed: hop by hop, recomputed (length), about the moment (date), a
#: session the provider gave one client (cookies).
_NOT_REPLAYED = HOP_BY_HOP | {b"content-length", b"date", b"age", b"set-cookie", b"set-cookie2"}
#: Most bytes the streams in flight may hold for the cache at once (each at most the store's
#: entry limit): past it, a stream is passed on but not stored.
MAX_RECORDING_BYTES = 64 * 1024 * 1024
_OWN_HEADERS = b"x-llmtap-"
#: Where this stage keeps a miss's key until its answer comes (its own, not shared).
_MISS_KEY = "llmtap.cache.miss"
#: A background response's states that are not an answer yet (OpenAI's responses API).
_UNFINISHED = ("queued", "in_progress")


class _Pool:
    """The bytes all recordings in flight hold, against :data:`MAX_RECORDING_BYTES`."""

    __slots__ = ("held", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def take(self, size: int) -> bool:
        if self.held + size > self.limit:
            return False
        self.held += size
        return True


class _Recording:
    """The outermost ``stream`` callable of a miss: passes on exactly what the stages inside it
    send the client, and keeps a copy, up to ``limit`` bytes and while ``pool`` has room, to
    store. :meth:`release` hands its bytes back to the pool once the call is over."""

    def __init__(self, inner: StreamFn, limit: int, pool: _Pool) -> None:
        self.inner = inner
        self.limit = limit
        self.pool = pool
        self.parts: list[bytes] = []
        self.size = 0
        self.over = False

    def release(self) -> None:
        self.pool.held -= self.size
        self.size = 0
        self.parts.clear()

    def __call__(self, chunk: bytes) -> bytes | Iterable[bytes]:
        out = self.inner(chunk)
        if self.over:
            return out
        if isinstance(out, bytes):
            self._keep(out)
            return out
        pieces = list(out)  # a generator would be spent by reading it here
        for piece in pieces:
            self._keep(piece)
        return pieces

    def _keep(self, piece: bytes) -> None:
        if self.size + len(piece) > self.limit or not self.pool.take(len(piece)):
            self.over = True
            self.release()
            return
        self.size += len(piece)
        self.parts.append(piece)


@dataclass(slots=True)
class _Miss:
    key: bytes
    ttl_s: float
    #: The host the call was for: an answer another host gave (a fallback) is not stored.
    host: str
    recording: _Recording | None = field(default=None)


class ResponseCache:
    """The stage. ``path`` is the cache file (:attr:`collector.settings.paths.Paths.cache`)."""

    def __init__(self, settings: CacheSettings, path: Path) -> None:
        self.settings = settings
        self.store = CacheStore(path, max_bytes=int(settings.max_mb * BYTES_PER_MB))
        self.entry_limit = min(self.store.max_bytes, MAX_ENTRY_BYTES)
        self.recordings = _Pool(MAX_RECORDING_BYTES)

    # -- hooks ---------------------------------------------------------------------------------

    @fail_open
    def request(self, flow: http.HTTPFlow) -> None:
        capture: Capture | None = flow.metadata.get(CAPTURE_KEY)
        if (
            capture is None
            or flow.response is not None
            or made_by_llmtap(flow)
            or REWRITE_KEY in flow.metadata
        ):
            return
        directives: CacheDirectives = flow.metadata.get(CACHE_DIRECTIVES_KEY) or CacheDirectives()
        request = flow.request
        fields = request.data.headers.fields
        if directives.off or _bypassed_or_signed(fields):
            return
        if capture.endpoint.api == "responses" and _continues_a_conversation(capture.request_body):
            return
        settings = self.settings
        model = capture.request.model if settings.models is not None else None  # parsed only if asked
        if not settings.applies(metadata_of(flow).app, model, capture.endpoint.provider.name):
            return
        key = cache_key(
            provider=capture.endpoint.provider.name,
            api=capture.endpoint.api,
            method=capture.method,
            host=capture.host,
            path=capture.path,
            shaping=shaping_headers(fields),
            credential=None if settings.share_across_keys else credential_digest(fields, request.path),
            body=capture.request_body,
        )
        now = time.time()
        entry = self.store.get(key, now, max_age=directives.ttl_s)
        response = _replayed(entry, fields, now) if entry is not None else None
        if entry is not None and response is not None:
            flow.response = response
            flow.metadata[CACHE_KEY] = CacheMarks(cache_hit=True, cache_of=entry.call_id)
            if entry.usage is not None and (usage := _usage_facts(entry.usage)) is not None:
                flow.metadata[CACHED_USAGE_KEY] = usage
            self.store.touch(key, now)
            return
        ttl = settings.ttl_s if directives.ttl_s is None else min(settings.ttl_s, directives.ttl_s)
        flow.metadata[CACHE_KEY] = CacheMarks(cache_hit=False)
        flow.metadata[_MISS_KEY] = _Miss(key, ttl, capture.host)

    @fail_open
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        miss: _Miss | None = flow.metadata.get(_MISS_KEY)
        response = flow.response
        if miss is None or response is None:
            return
        response.headers[CACHE_HEADER] = "miss"
        if 200 <= response.status_code < 300 and callable(response.stream):
            miss.recording = _Recording(response.stream, self.entry_limit, self.recordings)
            response.stream = miss.recording

    @fail_open
    def response(self, flow: http.HTTPFlow) -> None:
        self._store(flow)

    @fail_open
    def error(self, flow: http.HTTPFlow) -> None:
        """A client that hangs up once a stream's terminal event came (the OpenAI SDK closes right
        after ``[DONE]``) had the whole answer: mitmproxy then runs ``error``, not ``response``."""
        capture: Capture | None = flow.metadata.get(CAPTURE_KEY)
        if capture is not None and capture.streamed and capture.response.complete:
            self._store(flow)
        miss: _Miss | None = flow.metadata.pop(_MISS_KEY, None)
        if miss is not None and miss.recording is not None:
            miss.recording.release()

    def _store(self, flow: http.HTTPFlow) -> None:
        """Keep a miss's answer if it is a successful, complete one (see the module's docstring)."""
        miss: _Miss | None = flow.metadata.pop(_MISS_KEY, None)  # once, whichever hook comes
        if miss is None:
            return
        try:
            self._put(flow, miss)
        finally:
            if miss.recording is not None:
                miss.recording.release()

    def _put(self, flow: http.HTTPFlow, miss: _Miss) -> None:
        capture: Capture | None = flow.metadata.get(CAPTURE_KEY)
        response = flow.response
        if capture is None or response is None:
            return
        if not 200 <= response.status_code < 300:
            return
        if REWRITE_KEY in flow.metadata or capture.host != miss.host:
            return  # another model or host answered (a fallback): not the answer to this request
        usage = None
        body: bytes | None
        if capture.streamed:
            recording, facts = miss.recording, capture.response
            if recording is None or recording.over or not facts.complete or facts.error is not None:
                return
            body = b"".join(recording.parts)
            usage = _usage_json(facts)
        else:
            body = response.raw_content
            if body is None or len(body) > self.entry_limit or not _answered(capture, response):
                return
        assert body is not None
        now = time.time()
        headers = tuple(
            (name, value)
            for name, value in response.data.headers.fields
            if name.lower() not in _NOT_REPLAYED and not name.lower().startswith(_OWN_HEADERS)
        )
        entry = Entry(
            status=response.status_code,
            headers=headers,
            body=body,
            streamed=capture.streamed,
            call_id=capture.call_id,
            usage=usage,
            created_at=now,
            expires_at=now + miss.ttl_s,
        )
        self.store.put(miss.key, entry)

    def done(self) -> None:
        """Write the answers still queued, so the cache survives the restart."""
        self.store.close()


def _continues_a_conversation(body: bytes | None) -> bool:
    """A Responses API request that continues a conversation the provider keeps
    (``previous_response_id``, ``conversation``): answering it from the cache would leave that
    conversation without the turn, and the next call would continue from the wrong place."""
    value = json_or_none(body)
    return isinstance(value, dict) and bool(value.get("previous_response_id") or value.get("conversation"))


def _bypassed_or_signed(fields: Iterable[tuple[bytes, bytes]]) -> bool:
    """``Cache-Control: no-cache`` or ``no-store`` among the request's directives, or an AWS SigV4
    signature, in one pass over the raw header fields (each ``Headers`` lookup scans them all)."""
    for name, value in fields:
        lower = name.lower()
        if lower == b"cache-control":
            directives = {part.split(b"=")[0].strip().lower() for part in value.split(b",")}
            if directives & {b"no-cache", b"no-store"}:
                return True
        elif signs_body(lower, value):
            return True
    return False


def _accepted(fields: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    """The content codings the client accepts (``Accept-Encoding``, without those at q=0)."""
    accepted = set()
    for name, value in fields:
        if name.lower() == b"accept-encoding":
            for part in value.split(b","):
                coding, _, params = part.partition(b";")
                if params.replace(b" ", b"").lower() not in (b"q=0", b"q=0.0", b"q=0.00", b"q=0.000"):
                    accepted.add(coding.strip().lower())
    return accepted


def _replayed(
    entry: Entry, request_fields: Iterable[tuple[bytes, bytes]], now: float
) -> http.Response | None:
    """The stored answer as a response to this request; None if it cannot be (an encoding the
    client does not accept, and the body does not decode). Headers are built as raw fields:
    each ``Headers`` assignment scans them all again."""
    fields = entry.headers
    body = entry.body
    coding = next((value for name, value in fields if name.lower() == b"content-encoding"), b"identity")
    coding = coding.strip().lower()
    if coding != b"identity" and not ({coding, b"*"} & _accepted(request_fields)):
        try:
            decoded = encoding.decode(body, coding.decode("latin-1"))
        except ValueError:
            return None
        if not isinstance(decoded, bytes):
            return None
        body = decoded
        fields = tuple((name, value) for name, value in fields if name.lower() != b"content-encoding")
    fields += (
        (b"content-length", b"%d" % len(body)),
        (b"age", b"%d" % max(0, int(now - entry.created_at))),
        (CACHE_HEADER.encode(), b"hit"),
    )
    reason = RESPONSES.get(entry.status, "").encode()
    return http.Response(b"HTTP/1.1", entry.status, reason, http.Headers(fields), body, None, now, None)


def _answered(capture: Capture, response: http.Response) -> bool:
    """A whole (non-streamed) body is an answer to keep: JSON the provider's reader finds no
    error in, not a background response still on its way."""
    body = json_or_none(decoded_body(response))
    if not isinstance(body, dict | list):
        return False
    if isinstance(body, dict) and body.get("status") in _UNFINISHED:
        return False
    return read_response(capture.endpoint, response.status_code, body).error is None


def _usage_json(facts: ResponseFacts) -> str | None:
    """What of a stream's usage the hit's row needs, as JSON text (None when there is none)."""
    if facts.usage is None:
        return None
    return json.dumps(
        {
            "usage": dataclasses.asdict(facts.usage),
            "usage_raw": facts.usage_raw,
            "provider_cost_usd": facts.provider_cost_usd,
        }
    )


def _usage_facts(text: str) -> ResponseFacts | None:
    try:
        data = json.loads(text)
        return ResponseFacts(
            usage=Usage(**data["usage"]),
            usage_raw=data.get("usage_raw"),
            provider_cost_usd=data.get("provider_cost_usd"),
        )
    except (ValueError, TypeError, KeyError):
        log.warning("a cached answer's usage could not be read; its row estimates it")
        return None
