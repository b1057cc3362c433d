"""Numbers as people read them on the dashboard: dollars, thousands separators, ms or s.

One place for every figure's spelling, so a metric reads the same on every page and tests
can parse it back (see tests/test_ui_pages.py).
"""

from __future__ import annotations

from decimal import Decimal

MISSING = "n/a"


def usd(amount: float | Decimal | None) -> str:
    """Dollars with cents (``$1,234.56``); four places below a dollar (``$0.0123``), where
    single calls' costs live. None (no priced call) is :data:`MISSING`, never $0."""
    if amount is None:
        return MISSING
    value = float(amount)
    places = 2 if abs(value) >= 1 or value == 0 else 4
    sign = "-" if value < 0 else ""
    return f"{sign}${abs(value):,.{places}f}"


def count(n: int | None) -> str:
    """An integer with thousands separators (``1,234,567``)."""
    return MISSING if n is None else f"{int(n):,}"


def duration_ms(ms: float | None) -> str:
    """``850 ms`` below a second, ``1.23 s`` from a second up."""
    if ms is None:
        return MISSING
    return f"{ms:,.0f} ms" if ms < 1000 else f"{ms / 1000:,.2f} s"


def percent(share: float | None) -> str:
    """A share (0..1) as a percentage with one decimal (``3.1%``)."""
    return MISSING if share is None else f"{share * 100:.1f}%"
