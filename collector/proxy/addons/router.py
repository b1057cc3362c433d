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
  are sent through the proxy itself (:mod:`collector.proxy.own_calls`), so every stage sees
  them as it sees an app's calls (they get the same injected stream usage, rows and spans),
  and a copied stream keeps its text for the comparison in every capture mode. The
  comparison itself is its own stage (:mod:`collector.proxy.addons.comparison`).
  ``llmtap evaluate`` sends the same copies for stored calls, through :meth:`Router.shadow`.

A rewritten call (canary or enforce) that the new model answers with an HTTP error is
retried once with the client's model; the client gets the retry's answer, and both are
rows (the retry's ``retry_of`` is the failed call). A retried stream reaches the client
in one piece once the retry has finished. A transport failure (no HTTP answer) is not
retried: mitmproxy 12 answers the client with a 502 itself right after the ``error`` hook,
whatever the hook sets (``HttpStream.handle_protocol_error``).

Signed requests (AWS SigV4) are never rewritten nor copied. The rules (a file, or the fleet
store's rules: a :class:`~collector.routing.rules.RulesSource`) are checked for changes at
most once a second; a document that does not parse keeps the previous rules (the error is
logged). Everything fails open, and a call no rule matches costs one dictionary
lookup and a clock read.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from mitmproxy import http

from collector.calls.rows import CHARS_PER_TOKEN
from collector.providers import Endpoint, RequestFacts
from collector.providers.base import Output
from collector.proxy.call import CAPTURE_KEY, REWRITE_KEY, ROUTING_KEY, Capture, made_by_llmtap, metadata_of
from collector.proxy.model_rewrite import is_signed, rewrite_model, with_model
from collector.proxy.own_calls import (
    ORDER_KEY,
    SEND_TIMEOUT_S,
    CopyOrder,
    answer_of,
    new_flow,
    output_of,
    send,
)
from collector.routing.rules import EVALUATION_ARMS, Rule, RulesError, RulesSource, first_match, parse_rules
from collector.storage.database import START_READ_WAIT_S, read_connection
from collector.storage.schema import CallMetadata, RoutingMarks
from collector.trust.failopen import fail_open, failures
from collector.wire.streams import StreamFn, joined

log = logging.getLogger("llmtap.routing")

#: Seconds between checks of the rules for changes.
RELOAD_INTERVAL_S = 1.0
#: Where a canary's sticky key is looked for, in order, per ``sticky`` value.
STICKY_KEYS: dict[str, tuple[str, ...]] = {
    "session": ("session_id", "user_id", "app"),
    "user": ("user_id", "app"),
    "app": ("app",),
}
#: Most characters of the original request shown to a judge.
JUDGE_REQUEST_CHARS = 8000
_PLAN_KEY = "llmtap.routing_plan"
#: Today's spend per rule on the calls llmtap makes to evaluate a model, as stored.
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


def sticky_key(rule: Rule, metadata: CallMetadata, call_id: str) -> str:
    """The caller a canary keeps in one arm (see the module docstring for the fallbacks)."""
    named = ((name, getattr(metadata, name)) for name in STICKY_KEYS[rule.sticky])
    return next((f"{name}:{value}" for name, value in named if value), call_id)


@dataclass(frozen=True, slots=True)
class Original:
    """The call a rule's copies serve: a live call after its answer, or a stored one
    (``llmtap evaluate``)."""

    call_id: str
    endpoint: Endpoint
    #: The request as the client sent it, credentials included.
    request: http.Request
    facts: RequestFacts
    metadata: CallMetadata
    #: Its answer as its provider reads outputs, None when it has none to compare.
    incumbent: Output | None

    @classmethod
    def of(cls, flow: http.HTTPFlow, capture: Capture, request: http.Request) -> Original:
        incumbent = output_of(capture.endpoint, answer_of(flow))
        return cls(capture.call_id, capture.endpoint, request, capture.request, metadata_of(flow), incumbent)


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


class RulesWatch:
    """The rules of a source, re-read when its version changes (a file's modification time or
    size; the fleet store's rules version, which its source polls off the event loop)."""

    def __init__(self, source: RulesSource) -> None:
        self.source = source
        self.rules: list[Rule] = []
        self._version: Hashable = None
        self._next_check = 0.0

    def current(self) -> list[Rule]:
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + RELOAD_INTERVAL_S
            self._reload()
        return self.rules

    def _reload(self) -> None:
        try:
            version = self.source.version()
            if version == self._version:
                return
            self._version = version
            text = self.source.text()
            rules = [] if text is None else parse_rules(text, self.source.label)
        except RulesError as exc:  # a warning: an error at start-up would make mitmproxy exit
            log.warning("routing rules not reloaded, keeping the previous %d: %s", len(self.rules), exc)
            return
        self.rules = rules
        log.info("routing: %d rule(s) from %s", len(rules), self.source.label)


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
            with read_connection(db, START_READ_WAIT_S) as con:
                stored = con.execute(_STORED_SPEND, [midnight, list(EVALUATION_ARMS)]).fetchall()
        except Exception as exc:
            # A warning: mitmproxy stops if an error is logged while it starts.
            log.warning("shadow spend caps start from zero: cannot read today's spend from %s (%s)", db, exc)
            return
        spent.update(stored)

    def over(self, rule: Rule) -> bool:
        cap = rule.shadow_spend_cap_usd
        return cap is not None and self._today().get(rule.id, Decimal(0)) >= Decimal(str(cap))

    def add(self, rule_id: str, cost: Decimal | None) -> None:
        if cost:
            spent = self._today()
            spent[rule_id] = spent.get(rule_id, Decimal(0)) + cost


class Router:
    def __init__(self, rules: RulesSource, noise_floor_fraction: float = 0.0) -> None:
        self.rules = RulesWatch(rules)
        self.noise_floor_fraction = noise_floor_fraction
        self.spend = ShadowSpend()
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
        order: CopyOrder | None = flow.metadata.get(ORDER_KEY)
        if order is not None:  # a copy this router sends: to its model (checked before sending)
            if order.model != capture.request.model:
                rewrite_model(flow, capture, order.model)
            return
        if made_by_llmtap(flow):
            return  # a retry or judge call goes as it is
        rules = self.rules.current()
        if rules and flow.response is None and REWRITE_KEY not in flow.metadata:
            self._route(flow, capture, rules)

    @fail_open
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """A retry's answer goes to the client in one piece: a streamed one is kept whole
        (the recorder's tee still sees every chunk)."""
        marks: RoutingMarks | None = flow.metadata.get(ROUTING_KEY)
        response = flow.response
        is_retry = marks is not None and marks.routing_arm == "retry"
        if is_retry and response is not None and callable(response.stream):
            response.stream = _Collect(response.stream)

    @fail_open
    def response(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """A plain hook that returns a coroutine only for a call a rule acted on: the calls
        no rule touches (most) then cost mitmproxy no coroutine to run and await."""
        marks: RoutingMarks | None = flow.metadata.get(ROUTING_KEY)
        if marks is None:
            return None
        if made_by_llmtap(flow):
            self._count_spend(flow, marks)
            return None
        plan: Plan | None = flow.metadata.get(_PLAN_KEY)
        capture: Capture | None = flow.metadata.get(CAPTURE_KEY)
        if plan is None or capture is None or flow.response is None:
            return None
        return self._after_response(flow, capture, plan)

    @fail_open
    def error(self, flow: http.HTTPFlow) -> None:
        marks: RoutingMarks | None = flow.metadata.get(ROUTING_KEY)
        if marks is not None and made_by_llmtap(flow):
            self._count_spend(flow, marks)

    @fail_open
    async def _after_response(self, flow: http.HTTPFlow, capture: Capture, plan: Plan) -> None:
        assert flow.response is not None
        if plan.retry and flow.response.status_code >= 400 and not capture.streamed:
            await self._retry(flow, capture, plan)
        elif plan.copies and flow.response.status_code < 400 and capture.response.error is None:
            original = Original.of(flow, capture, plan.request)
            task = asyncio.get_running_loop().create_task(self._send_copies(original, plan.rule, plan.copies))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def done(self) -> None:
        """Let copies in flight finish (each has its own timeout)."""
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=SEND_TIMEOUT_S)

    # -- deciding ------------------------------------------------------------------------

    def _route(self, flow: http.HTTPFlow, capture: Capture, rules: list[Rule]) -> None:
        rule = rule_for(rules, capture.request, metadata_of(flow), capture.endpoint.provider.name)
        if rule is None:
            return
        if is_signed(flow.request.headers):
            self._log_once(rule, "signed", "AWS SigV4-signed calls are never rewritten nor copied")
            return
        MODES[rule.mode](self, flow, capture, rule)

    def _enforce(self, flow: http.HTTPFlow, capture: Capture, rule: Rule) -> None:
        self._rewrite(flow, capture, rule, "enforce")

    def _canary(self, flow: http.HTTPFlow, capture: Capture, rule: Rule) -> None:
        if canary_share(rule.id, sticky_key(rule, metadata_of(flow), capture.call_id)) < rule.fraction:
            self._rewrite(flow, capture, rule, "canary")
        else:
            flow.metadata[ROUTING_KEY] = RoutingMarks(rule.id, "control")

    def _shadow(self, flow: http.HTTPFlow, capture: Capture, rule: Rule) -> None:
        if random.random() >= rule.fraction or self.spend.over(rule):
            return
        flow.metadata[ROUTING_KEY] = RoutingMarks(rule.id, "live")
        flow.metadata[_PLAN_KEY] = Plan(rule, flow.request.copy(), copies=self._copies(capture.request, rule))

    def _copies(self, facts: RequestFacts, rule: Rule) -> tuple[tuple[str, str], ...]:
        """A shadowed call's copies: to the rule's model, and sometimes to its own (noise floor)."""
        if random.random() < self.noise_floor_fraction and facts.model is not None:
            return ((rule.to, "shadow"), (facts.model, "noise_floor"))
        return ((rule.to, "shadow"),)

    def _rewrite(self, flow: http.HTTPFlow, capture: Capture, rule: Rule, arm: str) -> None:
        original = flow.request.copy()
        why_not = rewrite_model(flow, capture, rule.to)
        if why_not is not None:
            self._log_once(
                rule, "rewrite", f"a {capture.endpoint.provider.name} call is not rewritten: {why_not}"
            )
            return
        flow.metadata[ROUTING_KEY] = RoutingMarks(rule.id, arm)
        flow.metadata[_PLAN_KEY] = Plan(rule, original, retry=True)

    def _log_once(self, rule: Rule, kind: str, message: str) -> None:
        if (rule.id, kind) not in self._logged:
            self._logged.add((rule.id, kind))
            log.warning("routing rule %s: %s (logged once)", rule.id, message)

    # -- acting after the answer ---------------------------------------------------------

    async def shadow(self, original: Original, rule: Rule) -> None:
        """Send ``original``'s copies for ``rule`` one after another, each once the spend cap
        allows; each is compared with the original's answer and recorded. Runs on the
        proxy's event loop (``llmtap evaluate`` submits stored calls there)."""
        await self._send_copies(original, rule, self._copies(original.facts, rule))

    async def _retry(self, flow: http.HTTPFlow, capture: Capture, plan: Plan) -> None:
        marks = RoutingMarks(plan.rule.id, "retry", retry_of=capture.call_id)
        retry = new_flow(plan.request, metadata_of(flow), marks)
        await send(retry)
        answer = retry.response
        if answer is not None:
            body = answer.stream.body if isinstance(answer.stream, _Collect) else answer.content
            headers = [(k, v) for k, v in answer.headers.fields if k.lower() != b"content-length"]
            flow.response = http.Response.make(answer.status_code, bytes(body or b""), headers)

    async def _send_copies(self, original: Original, rule: Rule, copies: Sequence[tuple[str, str]]) -> None:
        try:
            for model, arm in copies:
                if self.spend.over(rule):
                    return
                await self._copy(original, rule, model, arm)
        except Exception:
            failures["Router.shadow"] += 1
            log.exception("llmtap internal error sending a shadow copy; traffic unaffected")

    async def _copy(self, original: Original, rule: Rule, model: str, arm: str) -> None:
        if model != original.facts.model:
            why_not = with_model(original.request.copy(), original.facts.model, model)
            if why_not is not None:
                self._log_once(
                    rule, "copy", f"a {original.endpoint.provider.name} call is not copied: {why_not}"
                )
                return
        copy = new_flow(
            original.request, original.metadata, RoutingMarks(rule.id, arm, shadow_of=original.call_id)
        )
        question = (original.request.content or b"")[:JUDGE_REQUEST_CHARS].decode("utf-8", "replace")
        copy.metadata[ORDER_KEY] = CopyOrder(
            model, original.incumbent, original.facts.features, original.request, original.endpoint, question
        )
        await send(copy)

    def _count_spend(self, flow: http.HTTPFlow, marks: RoutingMarks) -> None:
        """A copy's or judge call's cost counts towards its rule's daily cap."""
        capture: Capture | None = flow.metadata.get(CAPTURE_KEY)
        if capture is not None and marks.routing_rule and marks.routing_arm in EVALUATION_ARMS:
            self.spend.add(marks.routing_rule, capture.cost_usd)


class _Collect:
    """A response's ``stream`` callable that keeps every chunk it passes on."""

    def __init__(self, inner: StreamFn) -> None:
        self.inner = inner
        self.body = bytearray()

    def __call__(self, chunk: bytes) -> bytes:
        out = joined(self.inner(chunk))
        self.body += out
        return out


#: What each rule mode does to a matching call, when its request arrives.
MODES: dict[str, Callable[[Router, http.HTTPFlow, Capture, Rule], None]] = {
    "enforce": Router._enforce,
    "canary": Router._canary,
    "shadow": Router._shadow,
}


def rule_for(
    rules: Sequence[Rule], facts: RequestFacts, metadata: CallMetadata, provider: str
) -> Rule | None:
    """The rule that acts on a call: the first whose match covers it."""
    return first_match(
        rules,
        model=facts.model,
        app=metadata.app,
        provider=provider,
        prompt_tokens=facts.prompt_chars // CHARS_PER_TOKEN,
        features=facts.features,
    )
