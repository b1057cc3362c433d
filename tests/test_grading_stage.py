"""The grading stage in process, with the real recorder and spool: which calls it grades, for
which model, and what it stores when it cannot grade (tests/test_quality.py drives it through
a real proxy)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import duckdb
import pytest
from mitmproxy import http
from mitmproxy.test import tflow

from collector.calls.spans import SpanRecorder
from collector.grading.graders import GraderTable, graders_from_table
from collector.pricing.book import PriceBook
from collector.providers import ProviderRegistry
from collector.proxy.addons import grading as grading_module
from collector.proxy.addons.grading import Grading
from collector.proxy.addons.metadata import MetadataHeaders
from collector.proxy.addons.recorder import Recorder
from collector.proxy.call import CAPTURE_KEY, GRADING_KEY, REWRITE_KEY, ROUTING_KEY
from collector.storage.database import Ingester, ensure_schema
from collector.storage.schema import ModelRewrite, RoutingMarks
from collector.storage.spool import Spool

CHAT = "https://api.openai.com/v1/chat/completions"
SECRET = "sk-grading-stage-secret-0123456789"


def reply(text: str) -> bytes:
    return json.dumps(
        {
            "id": "c1",
            "model": "gpt-4o",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
        }
    ).encode()


class Stages:
    """Metadata, recorder and grading as the proxy orders them, on a real spool and store."""

    def __init__(self, tmp_path: Path, graders: dict[str, dict], quote_graders: bool = True) -> None:
        self.spool, self.db = Spool(tmp_path / "spool"), tmp_path / "llmtap.duckdb"
        ensure_schema(self.db)
        self.recorder = Recorder(ProviderRegistry(), self.spool, SpanRecorder(None), PriceBook())
        specs = graders_from_table({name: GraderTable.model_validate(t) for name, t in graders.items()})
        self.grading = Grading(specs, self.spool, quote_graders=quote_graders)

    async def call(
        self,
        text: str = "The answer is (B).",
        status: int = 200,
        marks: RoutingMarks | None = None,
        rewrite: ModelRewrite | None = None,
        app: str | None = None,
    ) -> http.HTTPFlow:
        flow = tflow.tflow()
        body = {"model": "gpt-4o", "messages": [{"role": "user", "content": f"Which? {SECRET}"}]}
        headers = {"authorization": f"Bearer {SECRET}", **({"x-llmtap-app": app} if app else {})}
        flow.request = http.Request.make("POST", CHAT, json.dumps(body).encode(), headers)
        if marks is not None:
            flow.metadata[ROUTING_KEY] = marks
        if rewrite is not None:
            flow.metadata[REWRITE_KEY] = rewrite
        MetadataHeaders().requestheaders(flow)
        self.recorder.request(flow)
        self.grading.request(flow)
        flow.response = http.Response.make(status, reply(text))
        flow.response.timestamp_end = flow.request.timestamp_start + 0.1
        self.recorder.responseheaders(flow)
        self.recorder.response(flow)
        self.grading.response(flow)
        await self.grading.done()
        return flow

    def scores(self) -> list[tuple]:
        assert Ingester(self.spool, self.db).run_once()
        with duckdb.connect(str(self.db), read_only=True) as con:
            return con.execute(
                "SELECT call_id, name, value, source, error FROM scores ORDER BY name"
            ).fetchall()


def test_a_call_is_graded_after_its_row_and_its_copies_by_the_clients_model(tmp_path: Path) -> None:
    stages = Stages(tmp_path, {"says-b": {"kind": "regex", "pattern": "[(]B[)]", "models": ["gpt-4o"]}})

    async def run() -> list[http.HTTPFlow]:
        return [
            await stages.call(),
            # A shadow copy asking for the candidate is graded for the route's model.
            await stages.call(
                "A",
                marks=RoutingMarks("r", "shadow", shadow_of="x"),
                rewrite=ModelRewrite(routed_from_model="gpt-4o"),
            ),
            # Judge calls and noise-floor copies are not graded.
            await stages.call(marks=RoutingMarks("r", "judge", shadow_of="x")),
            await stages.call(marks=RoutingMarks("r", "noise_floor", shadow_of="x")),
            # An error answer has nothing to grade.
            await stages.call(status=500),
        ]

    live, copy, judge, noise, failed = asyncio.run(run())
    assert GRADING_KEY in live.metadata and GRADING_KEY in copy.metadata
    assert GRADING_KEY not in judge.metadata and GRADING_KEY not in noise.metadata
    ids = {flow.metadata[CAPTURE_KEY].call_id: name for flow, name in ((live, "live"), (copy, "copy"))}
    assert failed.metadata[CAPTURE_KEY].call_id not in ids
    scores = stages.scores()
    assert sorted((ids[c], v) for c, _, v, _, _ in scores) == [("copy", 0.0), ("live", 1.0)]
    assert all(source == "grader" and error is None for *_, source, error in scores)


def test_apps_filter_and_a_failing_graders_reason_without_secrets(tmp_path: Path) -> None:
    stages = Stages(
        tmp_path,
        {
            "quoting": {"kind": "python", "function": "tests.test_grading_stage:quotes_the_prompt"},
            "other-app": {"kind": "regex", "pattern": "B", "apps": ["billing"]},
        },
    )
    asyncio.run(stages.call(app="support"))
    ((_, name, value, _, error),) = stages.scores()
    assert (name, value) == ("quoting", None)
    assert error.startswith("python grader quoting: raised ValueError: Which? "), error
    assert SECRET not in error and SECRET[:12] not in error


def quotes_the_prompt(request: dict | None, answer: str) -> float:
    """A grader whose error quotes the prompt, where the app put its key by mistake."""
    assert request is not None
    raise ValueError(request["messages"][0]["content"])


def test_too_many_answers_waiting_are_stored_as_not_graded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(grading_module, "MAX_PENDING", 0)
    stages = Stages(tmp_path, {"says-b": {"kind": "regex", "pattern": "B"}})
    asyncio.run(stages.call())
    ((_, name, value, _, error),) = stages.scores()
    assert (name, value) == ("says-b", None) and "too many answers" in error


def test_without_prompts_kept_a_failing_graders_message_is_not_either(tmp_path: Path) -> None:
    """capture = "metadata" keeps no prompt text: not in a grader's error either."""
    graders = {"quoting": {"kind": "python", "function": "tests.test_grading_stage:quotes_the_prompt"}}
    stages = Stages(tmp_path, graders, quote_graders=False)
    asyncio.run(stages.call(app="support"))
    ((_, _, value, _, error),) = stages.scores()
    assert value is None and error == "python grader quoting: raised ValueError"
