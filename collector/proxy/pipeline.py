"""llmtap's addons, installed in mitmproxy as one.

mitmproxy dispatches every event of every connection and flow (a dozen or so per call) to
every addon in its chain, and each visit costs a context manager, a coroutine and a
generator: 3-4 us, whether or not the addon has a hook for the event. With six addons that
was ~100 us per call, a third of all llmtap added on the event loop. Here each addon keeps
its own class and hooks; :class:`Pipeline` is the one addon mitmproxy sees. It answers only
the events some stage has a hook for, and calls those stages in order.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from mitmproxy import hooks

Hook = Callable[..., Any]


class Pipeline:
    """Stages in order; for each mitmproxy event, the stages' hooks for it called in turn.

    A stage's hook may return an awaitable (an ``async def`` hook, or a plain one that only
    sometimes has waiting to do): the stages after it then run once it is done, as they would
    after it in mitmproxy's own chain.
    """

    def __init__(self, *stages: object) -> None:
        self.stages = stages
        for name in hooks.all_hooks:
            methods = [method for stage in stages if callable(method := getattr(stage, name, None))]
            if methods:
                setattr(self, name, _in_turn(methods))


def _in_turn(methods: Sequence[Hook]) -> Hook:
    if len(methods) == 1:
        return methods[0]

    def dispatch(*args: Any) -> Awaitable[None] | None:
        for i, method in enumerate(methods):
            result = method(*args)
            if result is not None and inspect.isawaitable(result):
                return _then(result, methods[i + 1 :], args)
        return None

    return dispatch


async def _then(pending: Awaitable[Any], methods: Sequence[Hook], args: tuple[Any, ...]) -> None:
    await pending
    for method in methods:
        result = method(*args)
        if result is not None and inspect.isawaitable(result):
            await result
