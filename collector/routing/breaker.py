"""Circuit breakers per upstream: which upstreams a fallback chain skips for now, and why.

An upstream is a place and a model (``https://api.openai.com:443 gpt-4o``): providers limit
and fail per model as often as per host, and a chain's next model on the same host must not
be skipped for the first one's trouble. What an upstream did is a fact about it, not about a
chain: the breakers of every chain share one :class:`Upstreams` registry, so an upstream in
two chains is counted once; each chain's :class:`BreakerSettings` apply to its own calls.

An upstream that failed ``failures`` times within ``window_s`` is skipped for ``cooldown_s``
(open); after the cool-down one call may try it again (half-open): success closes the
breaker, failure opens it for another cool-down, and a trial that ends with neither (the
client went, or an error of llmtap's) is given back, so the next call tries. An upstream that
answered 429 or 503 with ``Retry-After`` is skipped until then, however few its failures, but
for at most ``max(cooldown_s, MAX_RETRY_AFTER_SKIP_S)``: a wrong or hostile header (``1e999``,
a day) must not take an upstream out of a chain for longer than its breaker would. Time is
passed in (a monotonic clock), so the state machine is tested without sleeping.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

__all__ = [
    "MAX_RETRY_AFTER_SKIP_S",
    "Breaker",
    "BreakerSettings",
    "Permit",
    "UpstreamState",
    "Upstreams",
    "retry_after_s",
]

#: The longest an upstream's ``Retry-After`` makes calls skip it (unless the breaker's own
#: cool-down is longer): long enough for a rate limit's minute, short enough that a bad
#: header does not lose an upstream for the day.
MAX_RETRY_AFTER_SKIP_S = 300.0


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    failures: int = 5
    window_s: float = 60.0
    cooldown_s: float = 30.0


@dataclass(slots=True)
class UpstreamState:
    failures: deque[float] = field(default_factory=deque)
    open_until: float = 0.0
    #: Half-open: the one trial call after a cool-down is out.
    trial: bool = False
    not_before: float = 0.0


#: Every upstream's state, by its name: one registry shared by the breakers of every chain.
Upstreams = dict[str, UpstreamState]


class Permit(enum.Enum):
    """What :meth:`Breaker.allows` answers; true when the call may go."""

    REFUSED = "refused"
    GRANTED = "granted"
    #: Granted as the half-open trial: the caller must end it with succeeded(), failed() or
    #: released(), or the upstream stays refused.
    TRIAL = "trial"

    def __bool__(self) -> bool:
        return self is not Permit.REFUSED


class Breaker:
    """A chain's breaker: its settings over the shared state of every upstream."""

    def __init__(self, settings: BreakerSettings, upstreams: Upstreams | None = None) -> None:
        self.settings = settings
        self._upstreams: Upstreams = {} if upstreams is None else upstreams

    def allows(self, upstream: str, now: float) -> Permit:
        """Whether a call may go to ``upstream`` now (taking the half-open trial if it is due)."""
        state = self._upstreams.get(upstream)
        if state is None:
            return Permit.GRANTED
        if self._refuses(state, now):
            return Permit.REFUSED
        if state.open_until == 0.0:
            return Permit.GRANTED
        state.trial = True  # half-open: this call is the trial
        return Permit.TRIAL

    def succeeded(self, upstream: str) -> None:
        state = self._upstreams.get(upstream)
        if state is not None:
            state.failures.clear()
            state.open_until, state.trial = 0.0, False

    def failed(self, upstream: str, now: float, retry_after_s: float | None = None) -> None:
        state = self._upstreams.setdefault(upstream, UpstreamState())
        if retry_after_s is not None:
            skip = min(retry_after_s, max(self.settings.cooldown_s, MAX_RETRY_AFTER_SKIP_S))
            state.not_before = max(state.not_before, now + skip)
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

    def released(self, upstream: str) -> None:
        """The half-open trial ended with no verdict on the upstream (the call was cancelled,
        or failed in llmtap): the next call may be the trial."""
        state = self._upstreams.get(upstream)
        if state is not None:
            state.trial = False

    def is_open(self, upstream: str, now: float) -> bool:
        """Skipped now, without taking a half-open trial: for choosing and reporting."""
        state = self._upstreams.get(upstream)
        return state is not None and self._refuses(state, now)

    def wait_s(self, upstream: str, now: float) -> float:
        """How long until ``upstream`` is tried again (0 when it is not skipped, or when its
        half-open trial is out and may close the breaker any moment)."""
        state = self._upstreams.get(upstream)
        return 0.0 if state is None else max(0.0, state.open_until - now, state.not_before - now)

    @staticmethod
    def _refuses(state: UpstreamState, now: float) -> bool:
        return now < state.not_before or (state.open_until != 0.0 and (now < state.open_until or state.trial))


def retry_after_s(value: str | None, now_epoch: float) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (a number, or an HTTP date); None when
    absent, unreadable or not finite (``1e999`` is no wait anyone can honour); never
    negative. How long an upstream is skipped for it is capped by :class:`Breaker`."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - now_epoch
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    return max(0.0, seconds) if math.isfinite(seconds) else None
