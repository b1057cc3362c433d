"""The Pipeline addon: llmtap's stages as one mitmproxy addon, called in order."""

from __future__ import annotations

import asyncio

from mitmproxy import hooks
from mitmproxy.test import taddons, tflow

from collector.proxy.pipeline import Pipeline


class Stage:
    def __init__(self, name: str, seen: list[str]) -> None:
        self.name = name
        self.seen = seen

    def request(self, flow) -> None:
        self.seen.append(f"{self.name}.request")


class Waiting(Stage):
    """A stage whose response hook sometimes has waiting to do (as the router's)."""

    def response(self, flow):
        if not flow.metadata.get("wait"):
            self.seen.append(f"{self.name}.response")
            return None
        return self._later()

    async def _later(self) -> None:
        await asyncio.sleep(0.01)
        self.seen.append(f"{self.name}.response (after waiting)")


class Last(Stage):
    def response(self, flow) -> None:
        self.seen.append(f"{self.name}.response")


def test_answers_only_the_events_its_stages_handle():
    seen: list[str] = []
    pipeline = Pipeline(Stage("a", seen), Last("b", seen))
    assert callable(pipeline.request) and callable(pipeline.response)
    for name in hooks.all_hooks:
        if name not in ("request", "response"):
            assert not hasattr(pipeline, name), name


def test_stages_run_in_order_and_wait_for_an_awaitable():
    seen: list[str] = []

    async def run() -> None:
        with taddons.context() as tctx:
            pipeline = Pipeline(Waiting("a", seen), Last("b", seen))
            tctx.master.addons.add(pipeline)
            flow = tflow.tflow(resp=True)
            await tctx.master.addons.trigger_event(hooks.all_hooks["request"](flow))  # type: ignore[call-arg]
            await tctx.master.addons.trigger_event(hooks.all_hooks["response"](flow))  # type: ignore[call-arg]
            flow.metadata["wait"] = True
            await tctx.master.addons.trigger_event(hooks.all_hooks["response"](flow))  # type: ignore[call-arg]

    asyncio.run(run())
    assert seen == [
        "a.request",
        "b.request",
        "a.response",
        "b.response",
        "a.response (after waiting)",  # b waits for a's coroutine, as in mitmproxy's own chain
        "b.response",
    ]


def test_is_one_entry_in_mitmproxys_chain():
    with taddons.context() as tctx:
        before = len(tctx.master.addons.chain)
        tctx.master.addons.add(Pipeline(Stage("a", []), Last("b", []), Last("c", [])))
        assert len(tctx.master.addons.chain) == before + 1
