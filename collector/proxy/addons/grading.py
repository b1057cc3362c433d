"""The grading stage: scores the answers of the routes that have graders, off the request path.

At ``request`` it picks the graders (``[graders]`` in the config) that apply to the call, by
its app and the model the client asked for (for a shadow copy or a rewritten call, the
client's model, so a route's graders follow its copies), and marks the call so that the
recorder keeps a streamed answer's text. At ``response``, for a complete 2xx answer, it
hands the answer to a background task and returns: the client already has its answer, and a
slow or failing grader only delays or loses that one score. A score that could not be had
is stored too, without a value and with the reason (``error``), so failures are counted.

Live answers, shadow copies and canary or control answers are graded alike, so a shadowed
prompt yields a paired outcome: both models' scores on the same prompt. Judge calls and
noise-floor copies (the incumbent against itself) are not graded. Scores are spool lines
(:mod:`collector.calls.scores`), loaded into the ``scores`` table with the calls.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from mitmproxy import http

from collector.calls.scores import Score
from collector.grading.graders import Answer, GraderSpec, GradingError, score
from collector.proxy.call import (
    CAPTURE_KEY,
    GRADING_KEY,
    REFERENCE_KEY,
    REWRITE_KEY,
    ROUTING_KEY,
    Capture,
    metadata_of,
)
from collector.proxy.own_calls import answer_of, ask_model, output_of
from collector.routing.compare import shown_text
from collector.storage.schema import ModelRewrite, RoutingMarks
from collector.storage.spool import Spool
from collector.trust import boundary
from collector.trust.failopen import fail_open, failures
from collector.wire.bodies import json_or_none

__all__ = ["MAX_PENDING", "UNGRADED_ARMS", "Grading"]

log = logging.getLogger("llmtap.grading")

#: Arms whose answers are not graded: the judge's verdicts, and the incumbent's copies to itself.
UNGRADED_ARMS = ("judge", "noise_floor")
#: Answers waiting for their graders; past it an answer's scores are stored as not had (the
#: reason says so) rather than holding more answers in memory.
MAX_PENDING = 1000
#: Graders running at once.
CONCURRENCY = 8
ERROR_LIMIT = 200
BACKLOG_FULL = "not graded: too many answers were waiting for graders"


@dataclass(frozen=True, slots=True)
class GradingOrder:
    """What the grading stage keeps on a graded call between ``request`` and ``response``."""

    graders: list[GraderSpec]
    #: The request before the upstream stages, when a judge grader will be asked on it.
    request: http.Request | None


class Grading:
    def __init__(
        self,
        graders: Sequence[GraderSpec],
        spool: Spool,
        judge_model: str | None = None,
        quote_graders: bool = True,
    ) -> None:
        self.graders = tuple(graders)
        self.spool = spool
        self.judge_model = judge_model
        #: Keep what a failing grader said (its exception's message may quote the prompt): not
        #: in the ``metadata`` capture mode, where no prompt text is kept.
        self.quote_graders = quote_graders
        self._tasks: set[asyncio.Task[None]] = set()
        self._running: asyncio.Semaphore | None = None

    @fail_open
    def request(self, flow: http.HTTPFlow) -> None:
        capture: Capture | None = flow.metadata.get(CAPTURE_KEY)
        if not self.graders or capture is None:
            return
        marks: RoutingMarks | None = flow.metadata.get(ROUTING_KEY)
        if marks is not None and marks.routing_arm in UNGRADED_ARMS:
            return
        rewrite: ModelRewrite | None = flow.metadata.get(REWRITE_KEY)
        model = rewrite.routed_from_model if rewrite is not None else capture.request.model
        app = metadata_of(flow).app
        graders = [grader for grader in self.graders if grader.applies(app, model)]
        if graders:
            # A judge is asked on the request as it is now, before the upstream stages change it.
            judged = self.judge_model is not None and any(g.kind == "judge" for g in graders)
            flow.metadata[GRADING_KEY] = GradingOrder(graders, flow.request.copy() if judged else None)

    @fail_open
    def response(self, flow: http.HTTPFlow) -> None:
        order: GradingOrder | None = flow.metadata.get(GRADING_KEY)
        capture: Capture | None = flow.metadata.get(CAPTURE_KEY)
        response = flow.response
        if order is None or capture is None or response is None or not 200 <= response.status_code < 300:
            return
        if capture.response.error is not None:
            return  # an in-band stream error: no answer to grade
        graders = order.graders
        if len(self._tasks) >= MAX_PENDING:
            for grader in graders:
                self._store(capture.call_id, grader.name, None, BACKLOG_FULL)
            return
        output = output_of(capture.endpoint, answer_of(flow))
        answer = Answer(
            call_id=capture.call_id,
            app=metadata_of(flow).app,
            model=capture.request.model,
            request=json_or_none(capture.request_body),
            text=shown_text(output) if output is not None else "",
            reference=flow.metadata.get(REFERENCE_KEY),
        )
        ask = functools.partial(self._ask_judge, order.request, flow) if order.request is not None else None
        task = asyncio.get_running_loop().create_task(self._grade(graders, answer, ask, capture.secrets))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def done(self) -> None:
        """Let the graders in flight finish (each has its own timeout)."""
        if self._tasks:
            longest = max(getattr(grader, "timeout_s", 0.0) for grader in self.graders)
            await asyncio.wait(self._tasks, timeout=longest + 5)

    async def _grade(
        self,
        graders: Sequence[GraderSpec],
        answer: Answer,
        ask: Callable[[str], Awaitable[str]] | None,
        secrets: Sequence[str],
    ) -> None:
        if self._running is None:
            self._running = asyncio.Semaphore(CONCURRENCY)
        async with self._running:
            for grader in graders:
                try:
                    value: float | None = await score(grader, answer, ask)
                    error = None
                except GradingError as exc:
                    value, error = None, str(exc) if self.quote_graders else exc.brief
                except Exception as exc:  # a bug of llmtap's: counted, logged, and the score says so
                    failures["Grading"] += 1
                    log.exception("llmtap internal error grading call %s (%s)", answer.call_id, grader.name)
                    value, error = None, f"llmtap internal error ({type(exc).__name__})"
                self._store(answer.call_id, grader.name, value, error, secrets)

    def _store(
        self, call_id: str, name: str, value: float | None, error: str | None, secrets: Sequence[str] = ()
    ) -> None:
        """A score line in the spool; the reason a grader failed passes the boundary with the
        call's secret values (a grader's message may quote what it was given)."""
        reason = boundary.text(error, secrets, limit=ERROR_LIMIT) if error is not None else None
        try:
            self.spool.append(Score(call_id, name, value, "grader", reason).spool_line())
        except ValueError:
            failures["Grading.store"] += 1
            log.exception("llmtap internal error: the score of call %s by %s was not valid", call_id, name)

    async def _ask_judge(self, request: http.Request, flow: http.HTTPFlow, prompt: str) -> str:
        """A judge grader's prompt to ``[routing] judge_model``, as a call llmtap makes (arm
        ``judge``, recorded with the graded call's id in ``shadow_of``)."""
        assert self.judge_model is not None
        capture: Capture = flow.metadata[CAPTURE_KEY]
        marks: RoutingMarks | None = flow.metadata.get(ROUTING_KEY)
        judge = RoutingMarks(marks.routing_rule if marks else None, "judge", shadow_of=capture.call_id)
        return await ask_model(request, capture.endpoint, self.judge_model, prompt, metadata_of(flow), judge)
