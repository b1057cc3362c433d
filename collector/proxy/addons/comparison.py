"""The comparison stage: a shadow copy's answer compared with its original's.

It runs before the recorder, so the verdict is in the copy's own row (``comparison``,
``agreement``). The method follows from the original's request and answer
(:func:`collector.routing.compare.choose_method`); free text goes to a judge model when
``[routing] judge_model`` is set: one plain prompt on the original's provider and
credentials, itself a call llmtap makes (recorded, arm ``judge``, and counted towards the
rule's spend cap like the copies). Only copies the router marked with a
:class:`~collector.proxy.own_calls.CopyOrder` are compared; every other call costs one
dictionary lookup.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable

from mitmproxy import http

from collector.providers.base import Output
from collector.proxy.call import CAPTURE_KEY, COMPARISON_KEY, ROUTING_KEY, Capture, metadata_of
from collector.proxy.own_calls import ORDER_KEY, CopyOrder, answer_of, ask_model, output_of
from collector.routing import compare
from collector.storage.schema import Comparison, RoutingMarks
from collector.trust.failopen import fail_open

log = logging.getLogger("llmtap.comparison")


class CopyComparison:
    def __init__(self, judge_model: str | None = None) -> None:
        self.judge_model = judge_model
        #: Rules whose free-text copies went uncompared for want of a judge, logged once each.
        self._logged: set[str] = set()

    @fail_open
    def response(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """A plain hook: a coroutine only when a judge must be asked."""
        order: CopyOrder | None = flow.metadata.get(ORDER_KEY)
        capture: Capture | None = flow.metadata.get(CAPTURE_KEY)
        if order is None or order.incumbent is None or capture is None or capture.response.error is not None:
            return None
        candidate = output_of(capture.endpoint, answer_of(flow))
        if candidate is None:
            return None
        method = compare.choose_method(order.features, order.incumbent)
        if method != compare.JUDGE:
            flow.metadata[COMPARISON_KEY] = Comparison(
                method, compare.METHODS[method](order.incumbent, candidate)
            )
            return None
        if self.judge_model is None:
            rule = flow.metadata[ROUTING_KEY].routing_rule or ""
            if rule not in self._logged:
                self._logged.add(rule)
                log.warning(
                    "routing rule %s: free-text answers are not compared: "
                    "set [routing] judge_model (logged once)",
                    rule,
                )
            flow.metadata[COMPARISON_KEY] = Comparison(method, None)
            return None
        return self._judge(flow, order, order.incumbent, candidate)

    @fail_open
    async def _judge(
        self, flow: http.HTTPFlow, order: CopyOrder, incumbent: Output, candidate: Output
    ) -> None:
        ask = functools.partial(self._ask, flow, order)
        agreement = await compare.judge_agrees(order.question, incumbent, candidate, ask)
        flow.metadata[COMPARISON_KEY] = Comparison(compare.JUDGE, agreement)

    async def _ask(self, copy: http.HTTPFlow, order: CopyOrder, prompt: str) -> str:
        """One judge call, sent and recorded as a call llmtap makes; its answer's text."""
        assert self.judge_model is not None
        marks: RoutingMarks = copy.metadata[ROUTING_KEY]
        judge = RoutingMarks(marks.routing_rule, "judge", shadow_of=marks.shadow_of)
        return await ask_model(
            order.original, order.endpoint, self.judge_model, prompt, metadata_of(copy), judge
        )
