"""Fail open: an error in llmtap's own code is logged and counted, never passed to traffic."""

from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

log = logging.getLogger("llmtap")

#: Internal failures by hook name, for `llmtap` status output and tests.
failures: Counter[str] = Counter()


def fail_open[F: Callable[..., Any]](hook: F) -> F:
    """Wrap an addon hook so that any exception it raises is logged and counted, then dropped."""

    @functools.wraps(hook)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return hook(*args, **kwargs)
        except Exception:
            failures[hook.__qualname__] += 1
            log.exception("llmtap internal error in %s; traffic unaffected", hook.__qualname__)
            return None

    return guarded  # type: ignore[return-value]
