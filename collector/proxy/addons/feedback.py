"""The feedback endpoint: the app scores a recorded call's answer, whenever it knows.

Every response of a recorded call carries ``X-Llmtap-Call-Id`` (the recorder sets it). The
app posts ``{"call_id": ..., "name": ..., "value": ...}`` (value from 0 to 1) to
``http://127.0.0.1:PORT/llmtap/feedback``, the proxy's own address and port (``llmtap run``
and ``llmtap env`` put 127.0.0.1 in ``NO_PROXY``, so the post comes straight to the proxy;
one sent through the proxy is answered the same). The proxy answers it itself, nothing goes
upstream:

* 202: stored (a spool line, loaded into ``scores`` with the calls, ``source`` "feedback");
* 400: not JSON, or not a valid score (the body says which key and why);
* 404: no call with that id was recorded;
* 405: not a POST; 413: a body over :data:`BODY_LIMIT`;
* 503: the store could not be asked about an older call id just now (retry).

A call id is known when this proxy gave it to a client (the last :data:`KNOWN_IDS` of them are kept
in memory) or when the store holds it (read-only, off the event loop).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable
from pathlib import Path

from mitmproxy import http
from pydantic import ValidationError

from collector.calls.scores import Feedback
from collector.proxy.call import CAPTURE_KEY, Capture
from collector.storage.database import read_connection
from collector.storage.spool import Spool
from collector.trust import boundary
from collector.trust.failopen import fail_open, failures

__all__ = ["BODY_LIMIT", "FEEDBACK_PATH", "KNOWN_IDS", "FeedbackEndpoint"]

log = logging.getLogger("llmtap.feedback")

FEEDBACK_PATH = "/llmtap/feedback"
#: Largest feedback body read (a score is a few dozen bytes).
BODY_LIMIT = 16 * 1024
#: Call ids remembered in memory (~100 bytes each); older ones are looked up in the store.
KNOWN_IDS = 200_000
#: Longest wait for the store when looking up an older call id.
STORE_WAIT_S = 3.0
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


class FeedbackEndpoint:
    def __init__(self, spool: Spool, db: Path) -> None:
        self.spool = spool
        self.db = db
        #: Call ids given to clients, oldest first (a dict keeps insertion order).
        self._known: dict[str, None] = {}

    # -- the calls it knows ----------------------------------------------------------------

    @fail_open
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """The moment the client learns the call's id (the recorder's header), it may post."""
        capture: Capture | None = flow.metadata.get(CAPTURE_KEY)
        if capture is None:
            return
        known = self._known
        known[capture.call_id] = None
        if len(known) > KNOWN_IDS:
            del known[next(iter(known))]

    # -- the endpoint ----------------------------------------------------------------------

    def request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """A plain hook: a coroutine only for a feedback post. Not fail-open like the other
        stages: a post to the proxy's own address must never be forwarded (to itself), so an
        error here answers 500."""
        if not _is_feedback(flow):
            return None
        return self._answer(flow)

    async def _answer(self, flow: http.HTTPFlow) -> None:
        try:
            status, body = await self._handle(flow.request)
        except Exception:
            failures["FeedbackEndpoint"] += 1
            log.exception("llmtap internal error answering a feedback post")
            status, body = 500, {"error": "llmtap internal error; the feedback was not stored"}
        flow.response = http.Response.make(
            status, json.dumps(body).encode(), {"content-type": "application/json"}
        )

    async def _handle(self, request: http.Request) -> tuple[int, dict[str, object]]:
        if request.method != "POST":
            return 405, {"error": f"POST a JSON score to {FEEDBACK_PATH}"}
        content = request.raw_content or b""
        if len(content) > BODY_LIMIT:
            return 413, {"error": f"a feedback body is at most {BODY_LIMIT} bytes"}
        try:
            feedback = Feedback.model_validate_json(content)
        except ValidationError as exc:
            return 400, {"error": _reason(exc)}
        known = await self._is_known(feedback.call_id)
        if known is None:
            return 503, {"error": "the store could not be read just now; post again"}
        if not known:
            return 404, {"error": f"no recorded call has the id {feedback.call_id}"}
        self.spool.append(feedback.score().spool_line())
        return 202, {"stored": {"call_id": feedback.call_id, "name": feedback.name, "value": feedback.value}}

    async def _is_known(self, call_id: str) -> bool | None:
        """True or False; None when the store could not tell."""
        if call_id in self._known:
            return True
        try:
            return await asyncio.to_thread(self._in_store, call_id)
        except Exception as exc:
            log.warning(
                "could not look up call %s in %s: %s", call_id, self.db, boundary.text(str(exc), limit=200)
            )
            return None

    def _in_store(self, call_id: str) -> bool:
        if not self.db.exists():
            return False
        with read_connection(self.db, timeout=STORE_WAIT_S) as con:
            return (
                con.execute("SELECT 1 FROM llm_calls WHERE call_id = ? LIMIT 1", [call_id]).fetchone()
                is not None
            )


def _is_feedback(flow: http.HTTPFlow) -> bool:
    """A request to the proxy's own address (the socket the client reached) at the feedback path."""
    sockname = flow.client_conn.sockname
    request = flow.request
    if not sockname or request.port != sockname[1] or request.path.partition("?")[0] != FEEDBACK_PATH:
        return False
    return request.host in _LOOPBACK or request.host == sockname[0]


def _reason(exc: ValidationError) -> str:
    """Pydantic's errors as one line a person reads: ``KEY: MESSAGE; ...`` (values left out:
    they are the caller's own)."""
    parts = []
    for error in exc.errors(include_input=False, include_url=False)[:5]:
        key = ".".join(str(part) for part in error["loc"]) or "body"
        parts.append(f"{key}: {error['msg']}")
    return boundary.text("; ".join(parts), limit=500)
