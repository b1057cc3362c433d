"""The routing addon: applies the rules file (:mod:`collector.routing.rules`) to live calls.

It runs after the recorder (it needs the call's ``Capture``) and the budgets (a call a
budget blocked or downgraded is left alone), and before the addons that prepare the
request for upstream. For each call the first matching rule acts, by its mode:

* ``enforce``: the call goes to the rule's model (``routing_arm`` "enforce").
* ``canary``: callers whose sticky key hashes below ``fraction`` go to the rule's model
  ("canary"), the others keep theirs ("control"). The key is the ``sticky`` field's value
  and falls back along session -> user -> app (a call without a session id is sticky per
  user, then per app); a call with none of them is placed on its own.
* ``shadow``: a ``fraction`` sample of the calls ("live") is copied after the client has
  its answer: the copy goes to the rule's model through the same upstream with the live
  call's credentials (held in memory for the copy only; the recorder strips secrets from
  what it stores), and is recorded as its own row ("shadow", ``shadow_of`` = the live
  call) with the comparison method and whether the two answers agree. With
  ``noise_floor_fraction`` set, some live calls also get a copy to their own model
  ("noise_floor"), which measures how often the incumbent disagrees with itself. Judge
  calls (free-text comparisons) are rows too ("judge"). Copies stop for the UTC day once
  a rule's copies and judge calls have cost ``shadow_spend_cap_usd`` (what they cost earlier
  that day is read from the store at start-up, so a restart does not reset the cap). Copies
  get the same injected stream usage as live calls (:mod:`collector.proxy.addons.stream_usage`), and a
  copied stream keeps its text for the comparison in every capture mode. ``llmtap evaluate``
  (app/evaluate.py) sends the same copies offline, for stored calls, through
  :meth:`Router.shadow_stored`.

A rewritten call (canary or enforce) that the new model answers with an HTTP error is
retried once with the client's model; the client gets the retry's answer, and both are
rows (the retry's ``retry_of`` is the failed call). A retried stream reaches the client
in one piece once the retry has finished. A transport failure (no HTTP answer) is not
retried: mitmproxy 12 answers the client with a 502 itself right after the ``error`` hook,
whatever the hook sets (``HttpStream.handle_protocol_error``).

Signed requests (AWS SigV4) are never rewritten nor copied. The rules file is checked for
changes at most once a second; a file that does not parse keeps the previous rules (the
error is logged). Everything fails open, and a call no rule matches costs one dictionary
lookup and a clock read.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from mitmproxy import connection, http
from mitmproxy.flow import Error

from collector.calls.rows import CHARS_PER_TOKEN, json_or_none
from collector.providers.base import Output, OutputReader
from collector.proxy.addons.budget_guard import SEED_TIMEOUT_S, rewrite_model
from collector.proxy.addons.metadata import METADATA_KEY, CallMetadata
from collector.proxy.addons.recorder import CAPTURE_KEY, Capture, Recorder
from collector.proxy.addons.stream_usage import StreamUsage, is_signed
from collector.proxy.addons.upstream import UpstreamRewrite
from collector.proxy.failopen import fail_open, failures
from collector.routing import compare
from collector.routing.rules import EVALUATION_ARMS, Rule, RulesError, first_match, load_rules
from collector.settings.config import Upstream
from collector.storage.database import read_connection
from collector.wire.sse import SSEReader

log = logging.getLogger("llmtap.routing")

#: Seconds between checks of the rules file for changes.
RELOAD_INTERVAL_S = 1.0
#: Most seconds a copy, retry or judge call may take.
SEND_TIMEOUT_S = 120.0
#: Most characters of the request shown to the judge.
JUDGE_REQUEST_CHARS = 8000
#: Headers not copied onto a request llmtap sends itself (hop-by-hop, or recomputed).
_DROPPED_HEADERS = ("content-length", "transfer-encoding", "connection", "proxy-connection", "keep-alive")
#: Where a canary's sticky key is looked for, in order, per ``sticky`` value.
STICKY_KEYS: dict[str, tuple[str, ...]] = {
    "session": ("session_id", "user_id", "app"),
    "user": ("user_id", "app"),
    "app": ("app",),
}
_PLAN_KEY = "llmtap.routing"
#: The arms of calls llmtap makes to evaluate a model, whose cost counts towards a rule's cap.
#: Today's spend per rule on those calls, as stored.
_STORED_SPEND = """
SELECT routing_rule, sum(cost_usd) FROM llm_calls
WHERE started_at >= ? AND routing_arm IN (SELECT unnest(?)) AND routing_rule IS NOT NULL
  AND cost_usd IS NOT NULL
GROUP BY routing_rule
"""


def canary_share(rule_id: str, key: str) -> float:
    """Where a caller falls in [0, 1) for a rule: stable across calls, restarts and machines."""
    digest = hashlib.blake2b(f"{rule_id}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest) / 2**64


def sticky_key(rule: Rule, capture: Capture) -> str:
    """The caller a canary keeps in one arm (see the module docstring for the fallbacks)."""
    named = ((name, getattr(capture.metadata, name)) for name in STICKY_KEYS[rule.sticky])
    return next((f"{name}:{value}" for name, value in named if value), capture.call_id)


@dataclass(slots=True)
class Plan:
    """What the router does with one call after its answer, kept in ``flow.metadata``."""

    rule: Rule
    #: The request as the client sent it (model, host and path as the client wrote them).
    request: http.Request
    #: shadow: copies to send after the answer, as (model, arm).
    copies: tuple[tuple[str, str], ...] = ()
    #: canary/enforce: the call was rewritten, so an error answer is retried.
    retry: bool = False


class RulesFile:
    """The rules file, re-read when its modification time or size changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rules: list[Rule] = []
        self._version: tuple[int, int] | None = None
        self._next_check = 0.0

    def current(self) -> list[Rule]:
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + RELOAD_INTERVAL_S
            self._reload()
        return self.rules

    def _reload(self) -> None:
        try:
            stat = self.path.stat()
            version = (stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            version = None
        except OSError as exc:
            log.warning("routing rules %s: cannot read (%s); keeping the previous rules", self.path, exc)
            return
        if version == self._version:
            return
        self._version = version
        try:
            rules = load_rules(self.path)
        except RulesError as exc:  # a warning: an error at start-up would make mitmproxy exit
            log.warning("routing rules not reloaded, keeping the previous %d: %s", len(self.rules), exc)
            return
        self.rules = rules
        log.info("routing: %d rule(s) from %s", len(rules), self.path)


class ShadowSpend:
    """Each rule's spend on copies and judge calls in the current UTC day."""

    def __init__(self) -> None:
        self.day = ""
        self.spent: dict[str, Decimal] = {}

    def _today(self) -> dict[str, Decimal]:
        day = datetime.now(UTC).date().isoformat()
        if day != self.day:
            self.day, self.spent = day, {}
        return self.spent

    def resume(self, db: Path) -> None:
        """Seed today's spend from the store. A store that cannot be read in time (missing,
        locked, broken) leaves every rule at zero, logged: start-up never waits on it."""
        spent = self._today()
        midnight = datetime.fromisoformat(self.day).replace(tzinfo=UTC)
        try:
            with read_connection(db, SEED_TIMEOUT_S) as con:
                stored = con.execute(_STORED_SPEND, [midnight, list(EVALUATION_ARMS)]).fetchall()
        except Exception as exc:
            # A warning: mitmproxy stops if an error is logged while it starts.
            log.warning("shadow spend caps start from zero: cannot read today's spend from %s (%s)", db, exc)
            return
        spent.update(stored)

    def over(self, rule: Rule) -> bool:
        cap = rule.shadow_spend_cap_usd
        return cap is not None and self._today().get(rule.id, Decimal(0)) >= Decimal(str(cap))

    def add(self, rule: Rule, cost: Decimal | None) -> None:
        if cost:
            spent = self._today()
            spent[rule.id] = spent.get(rule.id, Decimal(0)) + cost


class Router:
    def __init__(
        self,
        rules_path: Path,
        recorder: Recorder,
        upstreams: Mapping[str, Upstream],
        judge_model: str | None = None,
        noise_floor_fraction: float = 0.0,
        stream_usage: StreamUsage | None = None,
    ) -> None:
        self.rules = RulesFile(rules_path)
        self.recorder = recorder
        self.upstream = UpstreamRewrite(upstreams)
        #: The live calls' stream-usage injection, applied to copies too (they are copied
        #: from the client's request, before it acts).
        self.stream_usage = stream_usage or StreamUsage()
        self.judge_model = judge_model
        self.noise_floor_fraction = noise_floor_fraction
        self.spend = ShadowSpend()
        self._client: httpx.AsyncClient | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        #: (rule, reason) pairs already logged, so a steady stream of such calls logs once.
        self._logged: set[tuple[str, str]] = set()

    # -- hooks ---------------------------------------------------------------------------

    def running(self) -> None:
        self.rules.current()  # report the rules (or what is wrong with them) at start

    @fail_open
    def request(self, flow: http.HTTPFlow) -> None:
        capture: Capture | None = flow.metadata.get(CAPTURE_KEY)
        if capture is None:
            return
        rules = self.rules.current()
        if rules and flow.response is None and capture.routed_from_model is None:
            self._route(flow, capture, rules)

    @fail_open
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """A sampled live stream keeps its text for the comparison even when the capture mode
        keeps no bodies (the recorder's tee fills ``stream_body``; it is never stored then)."""
        plan: Plan | None = flow.metadata.get(_PLAN_KEY)
        capture: Capture | None = flow.metadata.get(CAPTURE_KEY)
        if plan and plan.copies and capture:
            _keep_stream_text(flow, capture)

    @fail_open
    def response(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """A plain hook that returns a coroutine only for a call a rule acted on: the calls
        no rule touches (most) then cost mitmproxy no coroutine to run and await."""
        plan: Plan | None = flow.metadata.get(_PLAN_KEY)
        capture: Capture | None = flow.metadata.get(CAPTURE_KEY)
        if plan is None or capture is None or flow.response is None:
            return None
        return self._after_response(flow, capture, plan)

    @fail_open
    async def _after_response(self, flow: http.HTTPFlow, capture: Capture, plan: Plan) -> None:
        assert flow.response is not None
        if plan.retry and flow.response.status_code >= 400 and not capture.streamed:
            await self._retry(flow, capture, plan)
        elif plan.copies and flow.response.status_code < 400 and capture.response.error is None:
            incumbent = _output(capture, _answer(flow, capture))
            task = asyncio.get_running_loop().create_task(self._send_copies(capture, plan, incumbent))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def done(self) -> None:
        """Let copies in flight finish (each has its own timeout), then close the client."""
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=SEND_TIMEOUT_S)
        if self._client is not None:
            await self._client.aclose()

    # -- deciding ------------------------------------------------------------------------

    def _route(self, flow: http.HTTPFlow, capture: Capture, rules: list[Rule]) -> None:
        rule = rule_for(rules, capture)
        if rule is None:
            return
        if is_signed(flow.request.headers):
            self._log_once(rule, "signed", "AWS SigV4-signed calls are never rewritten nor copied")
            return
        MODES[rule.mode](self, flow, capture, rule)

    def _enforce(self, flow: http.HTTPFlow, capture: Capture, rule: Rule) -> None:
        self._rewrite(flow, capture, rule, "enforce")

    def _canary(self, flow: http.HTTPFlow, capture: Capture, rule: Rule) -> None:
        if canary_share(rule.id, sticky_key(rule, capture)) < rule.fraction:
            self._rewrite(flow, capture, rule, "canary")
        else:
            capture.routing_rule, capture.routing_arm = rule.id, "control"

    def _shadow(self, flow: http.HTTPFlow, capture: Capture, rule: Rule) -> None:
        if random.random() >= rule.fraction or self.spend.over(rule):
            return
        capture.routing_rule, capture.routing_arm = rule.id, "live"
        flow.metadata[_PLAN_KEY] = Plan(rule, flow.request.copy(), copies=self._copies(capture, rule))

    def _copies(self, capture: Capture, rule: Rule) -> tuple[tuple[str, str], ...]:
        """A shadowed call's copies: to the rule's model, and sometimes to its own (noise floor)."""
        if random.random() < self.noise_floor_fraction and capture.request.model is not None:
            return ((rule.to, "shadow"), (capture.request.model, "noise_floor"))
        return ((rule.to, "shadow"),)

    def _rewrite(self, flow: http.HTTPFlow, capture: Capture, rule: Rule, arm: str) -> None:
        original = flow.request.copy()
        why_not = rewrite_model(flow.request, capture, rule.to)
        if why_not is not None:
            self._log_once(
                rule, "rewrite", f"a {capture.endpoint.provider.name} call is not rewritten: {why_not}"
            )
            return
        capture.routing_rule, capture.routing_arm = rule.id, arm
        flow.metadata[_PLAN_KEY] = Plan(rule, original, retry=True)

    def _log_once(self, rule: Rule, kind: str, message: str) -> None:
        if (rule.id, kind) not in self._logged:
            self._logged.add((rule.id, kind))
            log.warning("routing rule %s: %s (logged once)", rule.id, message)

    # -- acting after the answer ---------------------------------------------------------

    async def shadow_stored(self, live: Capture, request: http.Request, rule: Rule, answer: Any) -> None:
        """``llmtap evaluate``: a stored call's copies, sent, compared and recorded as the
        proxy does after a live answer. ``live`` is the stored call as the recorder reads
        it, with the stored ``call_id``; ``request`` is its stored request with credentials
        added; ``answer`` is its stored answer (see :func:`read_answer`)."""
        plan = Plan(rule, request, copies=self._copies(live, rule))
        await self._send_copies(live, plan, _output(live, answer))

    async def _retry(self, flow: http.HTTPFlow, capture: Capture, plan: Plan) -> None:
        retry = _new_flow(plan.request, capture.metadata)
        retry_capture = self._record_start(retry, plan.rule, "retry")
        if retry_capture is None:
            return
        retry_capture.retry_of = capture.call_id
        await self._send(retry)
        self._record_end(retry)
        if retry.response is not None:
            answer = retry.response
            headers = [(k, v) for k, v in answer.headers.fields if k.lower() not in (b"content-length",)]
            flow.response = http.Response.make(answer.status_code, answer.content or b"", headers)

    async def _send_copies(self, live: Capture, plan: Plan, incumbent: Output | None) -> None:
        try:
            for model, arm in plan.copies:
                if self.spend.over(plan.rule):
                    return
                await self._copy(live, plan, model, arm, incumbent)
        except Exception:
            failures["Router.shadow"] += 1
            log.exception("llmtap internal error sending a shadow copy; traffic unaffected")

    async def _copy(self, live: Capture, plan: Plan, model: str, arm: str, incumbent: Output | None) -> None:
        copy = _new_flow(plan.request, live.metadata)
        capture = self._record_start(copy, plan.rule, arm)
        if capture is None:
            return
        capture.shadow_of = live.call_id
        if model != live.request.model and rewrite_model(copy.request, capture, model) is not None:
            return
        self.stream_usage.request(copy)
        await self._send(copy)
        candidate = _output(capture, _answer(copy, capture)) if copy.response is not None else None
        if incumbent is not None and candidate is not None and capture.response.error is None:
            capture.comparison = compare.choose_method(live.request.features, incumbent)
            capture.agreement = await self._agree(capture.comparison, live, plan, incumbent, candidate)
        self._record_end(copy)
        self.spend.add(plan.rule, capture.cost_usd)

    async def _agree(
        self, method: str, live: Capture, plan: Plan, incumbent: Output, candidate: Output
    ) -> bool | None:
        if method != compare.JUDGE:
            return compare.METHODS[method](incumbent, candidate)
        if self.judge_model is None:
            self._log_once(
                plan.rule, "judge", "free-text answers are not compared: set [routing] judge_model"
            )
            return None
        question = live.request_body[:JUDGE_REQUEST_CHARS].decode("utf-8", "replace")
        return await compare.judge_agrees(
            question, incumbent, candidate, functools.partial(self._ask, live, plan)
        )

    async def _ask(self, live: Capture, plan: Plan, prompt: str) -> str:
        """One judge call: a plain prompt to the judge model, on the live call's provider with
        its credentials, recorded as a row of its own."""
        provider: OutputReader = live.endpoint.provider  # type: ignore[assignment]
        assert self.judge_model is not None
        path, body = provider.prompt_request(live.endpoint.api, plan.request.path, self.judge_model, prompt)
        request = plan.request.copy()
        request.path, request.content = path, json.dumps(body).encode()
        ask = _new_flow(request, live.metadata)
        capture = self._record_start(ask, plan.rule, "judge")
        if capture is None:
            return ""
        capture.shadow_of = live.call_id
        await self._send(ask)
        self._record_end(ask)
        self.spend.add(plan.rule, capture.cost_usd)
        output = _output(capture, _answer(ask, capture)) if ask.response is not None else None
        return output.text if output is not None else ""

    # -- sending and recording a call llmtap makes itself --------------------------------

    def stored_call(self, call_id: str, request: http.Request, metadata: CallMetadata) -> Capture | None:
        """A stored call as the recorder reads its request, under its stored ``call_id``
        (``llmtap evaluate``); None when the recorder sees no LLM call in it. Nothing is recorded."""
        flow = _new_flow(request, metadata)
        self.recorder.request(flow)
        capture: Capture | None = flow.metadata.get(CAPTURE_KEY)
        if capture is not None:
            capture.call_id = call_id
        return capture

    def _record_start(self, flow: http.HTTPFlow, rule: Rule, arm: str) -> Capture | None:
        self.recorder.request(flow)
        capture: Capture | None = flow.metadata.get(CAPTURE_KEY)
        if capture is not None:
            capture.routing_rule, capture.routing_arm = rule.id, arm
        return capture

    def _record_end(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            self.recorder.response(flow)
        else:
            self.recorder.error(flow)

    async def _send(self, flow: http.HTTPFlow) -> None:
        """Send the flow's request through the configured upstream, feeding the answer to the
        recorder's stream hooks as it arrives (a stream keeps its text, to be compared or
        read, whatever the capture mode); on failure set ``flow.error``."""
        wire = _new_flow(flow.request, CallMetadata())
        self.upstream.request(wire)
        request = wire.request
        headers = [(k, v) for k, v in request.headers.items(multi=True) if k.lower() not in _DROPPED_HEADERS]
        headers = [(k, v) for k, v in headers if k.lower() != "accept-encoding"] + [
            ("accept-encoding", "identity")
        ]
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=SEND_TIMEOUT_S)
        try:
            async with self._client.stream(
                request.method, request.url, headers=headers, content=request.content or b""
            ) as answer:
                response = http.Response.make(
                    answer.status_code,
                    b"",
                    [(k, v) for k, v in answer.headers.raw if k.decode().lower() not in _DROPPED_HEADERS],
                )
                response.timestamp_start = time.time()
                flow.response = response
                self.recorder.responseheaders(flow)
                if (capture := flow.metadata.get(CAPTURE_KEY)) is not None:
                    _keep_stream_text(flow, capture)
                tee = response.stream if callable(response.stream) else None
                body = bytearray()
                async for chunk in answer.aiter_raw():
                    body += tee(chunk) if tee is not None else chunk
                if tee is not None:
                    tee(b"")
                response.stream = False
                response.content = bytes(body)
                response.timestamp_end = time.time()
        except httpx.HTTPError as exc:
            flow.response = None
            flow.error = Error(f"{type(exc).__name__}: {exc}")


#: What each rule mode does to a matching call, when its request arrives.
MODES: dict[str, Callable[[Router, http.HTTPFlow, Capture, Rule], None]] = {
    "enforce": Router._enforce,
    "canary": Router._canary,
    "shadow": Router._shadow,
}


def rule_for(rules: Sequence[Rule], capture: Capture) -> Rule | None:
    """The rule that acts on a call: the first whose match covers it."""
    return first_match(
        rules,
        model=capture.request.model,
        app=capture.metadata.app,
        provider=capture.endpoint.provider.name,
        prompt_tokens=capture.request.prompt_chars // CHARS_PER_TOKEN,
        features=capture.request.features,
    )


def _new_flow(request: http.Request, metadata: CallMetadata) -> http.HTTPFlow:
    """A flow for a call llmtap makes itself, shaped as if a client had sent ``request``."""
    client = connection.Client(peername=("127.0.0.1", 0), sockname=("127.0.0.1", 0))
    flow = http.HTTPFlow(client, connection.Server(address=None))
    flow.request = request.copy()
    flow.request.timestamp_start = time.time()
    flow.metadata[METADATA_KEY] = metadata
    return flow


def _keep_stream_text(flow: http.HTTPFlow, capture: Capture) -> None:
    """Have the recorder's stream tee keep an event stream's text (up to the recorder's
    ``BODY_LIMIT``) when the capture mode keeps no bodies: the comparison needs it, and the
    recorder never stores it in that mode."""
    response = flow.response
    if response is None or not capture.streamed or capture.stream_body is not None:
        return
    is_sse = response.headers.get("content-type", "").startswith("text/event-stream")
    if is_sse and callable(response.stream):
        capture.stream_body = bytearray()


def _answer(flow: http.HTTPFlow, capture: Capture) -> Any:
    """The answer as JSON: the body, or a stream's event payloads in order."""
    if capture.streamed:
        return None if capture.stream_body is None else read_answer(bytes(capture.stream_body), True)
    assert flow.response is not None
    return read_answer(flow.response.get_content(strict=False), False)


def read_answer(body: bytes | None, streamed: bool) -> Any:
    """A response body as JSON: the body itself, or an event stream's payloads in order."""
    if not streamed:
        return json_or_none(body)
    reader = SSEReader()
    events = [*reader.feed(body or b""), *reader.close()]
    return [json_or_none(data.encode()) for _, data in events if data != "[DONE]"]


def _output(capture: Capture, answer: Any) -> Output | None:
    """What the answer says, if the provider can read outputs and there is an answer."""
    read = getattr(capture.endpoint.provider, "read_output", None)
    if read is None or answer is None:
        return None
    return read(capture.endpoint.api, answer)
