"""Fail open: an error in llmtap's own code is logged and counted, never passed to traffic."""

from __future__ import annotations

import functools
import inspect
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

log = logging.getLogger("llmtap")

#: Internal failures by hook name, for `llmtap` status output and tests.
failures: Counter[str] = Counter()


def fail_open[F: Callable[..., Any]](hook: F) -> F:
    """Wrap an addon hook (plain or coroutine) so that any exception it raises is logged and
    counted, then dropped."""

    def dropped() -> None:
        failures[hook.__qualname__] += 1
        log.exception("llmtap internal error in %s; traffic unaffected", hook.__qualname__)

    if inspect.iscoroutinefunction(hook):

        @functools.wraps(hook)
        async def guarded_async(*args: Any, **kwargs: Any) -> Any:
            try:
                return await hook(*args, **kwargs)
            except Exception:
                dropped()
                return None

        return guarded_async  # type: ignore[return-value]

    @functools.wraps(hook)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return hook(*args, **kwargs)
        except Exception:
            dropped()
            return None

    return guarded  # type: ignore[return-value]
