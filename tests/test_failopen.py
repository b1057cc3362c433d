"""fail_open keeps an addon hook's exception away from traffic, for plain and coroutine hooks."""

from __future__ import annotations

import asyncio
import inspect

from collector.trust.failopen import fail_open, failures


class Addon:
    @fail_open
    def request(self, flow: object) -> None:
        raise KeyError("plain")

    @fail_open
    async def response(self, flow: object) -> str:
        await asyncio.sleep(0)
        if flow is None:
            raise KeyError("async")
        return "answered"


def test_a_plain_hook_error_is_counted_and_dropped() -> None:
    before = failures["Addon.request"]
    assert Addon().request(None) is None
    assert failures["Addon.request"] == before + 1


def test_a_coroutine_hook_stays_a_coroutine_and_its_error_is_counted_and_dropped() -> None:
    addon = Addon()
    assert inspect.iscoroutinefunction(addon.response)  # mitmproxy awaits it
    before = failures["Addon.response"]
    assert asyncio.run(addon.response(object())) == "answered"
    assert asyncio.run(addon.response(None)) is None
    assert failures["Addon.response"] == before + 1
