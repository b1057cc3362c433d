"""The UTC hour, day, week or month that holds a moment: the one definition of a period.

The proxy enforces budgets per period (:mod:`collector.proxy.addons.budget_guard`) and the
analyses report spend per period (:func:`analytics.burn`, the dashboard's budgets); both
ask this module, so a budget the proxy blocks on and the figure the dashboard shows for
it always cover the same calls. Weeks start on Monday, as Polars' ``1w`` truncation
(``analytics.dimensions.TIME_BUCKETS``) has them.

Standard library only: the proxy calls it on the request path (when a period rolls over)
and the analytics import it without mitmproxy.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import NamedTuple

PERIODS = ("hour", "day", "week", "month")


class Window(NamedTuple):
    """One UTC period as Unix times: ``start <= t < end``."""

    start: float
    end: float

    def bounds(self) -> tuple[datetime, datetime]:
        """``[start, end)`` as UTC datetimes, for filtering the store."""
        return datetime.fromtimestamp(self.start, UTC), datetime.fromtimestamp(self.end, UTC)


def period_window(period: str, t: float) -> Window:
    """The UTC ``period`` (one of :data:`PERIODS`) holding the Unix time ``t``."""
    at = datetime.fromtimestamp(t, UTC)
    day = at.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "hour":
        start = at.replace(minute=0, second=0, microsecond=0)
        end = start + timedelta(hours=1)
    elif period == "day":
        start, end = day, day + timedelta(days=1)
    elif period == "week":
        start = day - timedelta(days=day.weekday())
        end = start + timedelta(weeks=1)
    elif period == "month":
        start = day.replace(day=1)
        end = start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)
    else:
        raise ValueError(f"period must be one of {', '.join(PERIODS)}, got {period!r}")
    return Window(start.timestamp(), end.timestamp())


def utc_second(t: float) -> str:
    """A UTC time to the second, as budgets' messages and alert state show it; these strings
    sort in time order."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
