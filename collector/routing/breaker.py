"""Circuit breakers per upstream: which upstreams a fallback chain skips for now, and why.

An upstream is a place and a model (``https://api.openai.com:443 gpt-4o``): providers limit
and fail per model as often as per host, and a chain's next model on the same host must not
be skipped for the first one's trouble.

An upstream that failed ``failures`` times within ``window_s`` is skipped for ``cooldown_s``
(open); after the cool-down one call may try it again (half-open): success closes the
breaker, failure opens it for another cool-down. An upstream that answered 429 or 503 with
``Retry-After`` is skipped until then, however few its failures. Time is passed in (a
monotonic clock), so the state machine is tested without sleeping.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

__all__ = ["Breaker", "BreakerSettings", "retry_after_s"]


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    failures: int = 5
    window_s: float = 60.0
    cooldown_s: float = 30.0


@dataclass(slots=True)
class _Upstream:
    failures: deque[float] = field(default_factory=deque)
    open_until: float = 0.0
    #: Half-open: the one trial call after a cool-down is out.
    trial: bool = False
    not_before: float = 0.0


class Breaker:
    """The state of every upstream a fallback chain has used, by its name (host or URL)."""

    def __init__(self, settings: BreakerSettings) -> None:
        self.settings = settings
        self._upstreams: dict[str, _Upstream] = {}

    def allows(self, upstream: str, now: float) -> bool:
        """Whether a call may go to ``upstream`` now (taking the half-open trial if it is due)."""
        state = self._upstreams.get(upstream)
        if state is None:
            return True
        if now < state.not_before:
            return False
        if state.open_until == 0.0:
            return True
        if now < state.open_until or state.trial:
            return False
        state.trial = True  # half-open: this call is the trial
        return True

    def succeeded(self, upstream: str) -> None:
        state = self._upstreams.get(upstream)
        if state is not None:
            state.failures.clear()
            state.open_until, state.trial = 0.0, False

    def failed(self, upstream: str, now: float, retry_after_s: float | None = None) -> None:
        state = self._upstreams.setdefault(upstream, _Upstream())
        if retry_after_s is not None:
            state.not_before = max(state.not_before, now + retry_after_s)
        if state.trial:  # the half-open trial failed: open again
            state.trial = False
            state.open_until = now + self.settings.cooldown_s
            return
        state.failures.append(now)
        while state.failures and state.failures[0] < now - self.settings.window_s:
            state.failures.popleft()
        if len(state.failures) >= self.settings.failures:
            state.failures.clear()
            state.open_until = now + self.settings.cooldown_s

    def is_open(self, upstream: str, now: float) -> bool:
        """Open (skipped) now, without taking a half-open trial: for reports and metrics."""
        state = self._upstreams.get(upstream)
        return state is not None and (now < state.open_until or now < state.not_before)


def retry_after_s(value: str | None, now_epoch: float) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (a number, or an HTTP date); None when
    absent or unreadable; never negative."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now_epoch)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
