"""Budgets' limits: which calls a budget covers, its running totals per period, its standing.

The state of one budget (:class:`Budget`): its :class:`Scope` (the calls it covers, and the
key its own totals are kept under), its :class:`Tally` of spend in the current UTC period,
seeded from the store at start (:func:`stored_spend`). The proxy stage that acts on them is
:mod:`collector.proxy.addons.budget_guard`; the dashboard reads the same scopes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from collector.budgets.periods import Window, period_window
from collector.settings.config import BudgetSpec
from collector.storage.database import START_READ_WAIT_S, read_connection
from collector.storage.schema import CallMetadata

log = logging.getLogger("llmtap.budgets")

_PERIOD_ADJECTIVES = {"hour": "hourly", "day": "daily", "month": "monthly"}


def retry_after(window: Window, now: float) -> int:
    """Whole seconds until the period resets, rounded up and at least 1: a Retry-After value."""
    return max(1, math.ceil(window.end - now))


class Scope:
    """Which calls a budget covers, and which of its running totals each one counts towards,
    both for a call in flight (its metadata) and for the calls in the store (SQL)."""

    def __init__(self, spec: BudgetSpec) -> None:
        self.app = spec.app
        self.user = spec.user
        self.properties = tuple(spec.properties.items())
        self.per = spec.per
        self.per_property = (
            spec.per.removeprefix("property:") if spec.per not in (None, "app", "user") else None
        )

    def key(self, meta: CallMetadata) -> str | None:
        """The call's total ("" when the budget has a single one), or None if not covered."""
        if (self.app is not None and meta.app != self.app) or (
            self.user is not None and meta.user_id != self.user
        ):
            return None
        for name, value in self.properties:
            if meta.properties.get(name) != value:
                return None
        if self.per is None:
            return ""
        if self.per == "app":
            return meta.app or None
        if self.per == "user":
            return meta.user_id or None
        return meta.properties.get(self.per_property) or None if self.per_property else None

    def describe(self, key: str) -> str:
        """The calls one total covers, in words: "app 'checkout'", "all calls", ..."""
        parts = [f"app {self.app!r}"] if self.app is not None else []
        if self.user is not None:
            parts.append(f"user {self.user!r}")
        parts += [f"property {name}={value!r}" for name, value in self.properties]
        if self.per in ("app", "user"):
            parts.append(f"{self.per} {key!r}")
        elif self.per is not None:
            parts.append(f"property {self.per_property}={key!r}")
        return ", ".join(parts) or "all calls"

    def spend_query(
        self, window: Window, dialect: Literal["duckdb", "postgres"] = "duckdb", other_than: str | None = None
    ) -> tuple[str, list[Any]]:
        """SQL summing the stored cost of the covered calls started in ``window``, per total:
        for the local store (DuckDB), or for the fleet store (PostgreSQL), there leaving out the
        rows of node ``other_than`` (a sidecar counts its own calls itself)."""
        mark = "?" if dialect == "duckdb" else "%s"

        def prop(name: str | None) -> tuple[str, Any]:
            if dialect == "duckdb":
                return f"json_extract_string(properties, {mark})", _json_path(name)
            return f"(properties::json ->> {mark})", name

        key_params: list[Any] = []
        if self.per is None:
            key = "''"
        elif self.per == "app":
            key = "NULLIF(app, '')"
        elif self.per == "user":
            key = "NULLIF(user_id, '')"
        else:
            extract, param = prop(self.per_property)
            key = f"NULLIF({extract}, '')"
            key_params.append(param)
        conditions = [f"started_at >= {mark}", f"started_at < {mark}", "cost_usd IS NOT NULL"]
        params: list[Any] = [
            datetime.fromtimestamp(window.start, UTC),
            datetime.fromtimestamp(window.end, UTC),
        ]
        if other_than is not None:
            conditions.append(f"node <> {mark}")
            params.append(other_than)
        if self.app is not None:
            conditions.append(f"app = {mark}")
            params.append(self.app)
        if self.user is not None:
            conditions.append(f"user_id = {mark}")
            params.append(self.user)
        for name, value in self.properties:
            extract, param = prop(name)
            conditions.append(f"{extract} = {mark}")
            params += [param, value]
        sql = f"SELECT {key}, sum(cost_usd) FROM llm_calls WHERE {' AND '.join(conditions)} GROUP BY 1"
        return sql, key_params + params


def _json_path(name: str | None) -> str:
    """A JSON path to a property (names are header tokens: they never hold a quote)."""
    return f'$."{name}"'


class Tally:
    """One budget's spend in its current period, per scope value, and the highest alert level
    each total has been reported at (1 is the limit).

    ``spent`` is this sidecar's own spend; ``others`` (fleet budgets only) the rest of the
    fleet's, as last read from the fleet store (:mod:`collector.budgets.fleet`). A total is
    their sum."""

    def __init__(self, period: str, limit: Decimal, alerts: Sequence[float], now: float) -> None:
        self.period = period
        self.limit = limit
        #: (fraction of the limit, amount), ascending, ending with the limit itself.
        self.levels = tuple(
            (level, level * limit) for level in (*(Decimal(str(a)) for a in alerts), Decimal(1))
        )
        self.window = period_window(period, now)
        self.spent: dict[str, Decimal] = {}
        self.others: dict[str, Decimal] = {}
        self.reported: dict[str, Decimal] = {}

    def current(self, now: float) -> Window:
        """The period holding ``now``; a new period starts every total from zero."""
        if now >= self.window.end:
            self.window = period_window(self.period, now)
            self.spent.clear()
            self.others.clear()
            self.reported.clear()
        return self.window

    def total(self, key: str) -> Decimal | None:
        """The total's spend in the current period (None: nothing counted yet)."""
        own, others = self.spent.get(key), self.others.get(key)
        if own is None and others is None:
            return None
        return (own or Decimal(0)) + (others or Decimal(0))

    def over(self, key: str, now: float) -> bool:
        """The total has reached the limit in the current period."""
        self.current(now)
        total = self.total(key)
        return total is not None and total >= self.limit

    def add(self, key: str, cost: Decimal, started: float, now: float) -> Decimal | None:
        """Count a finished call's cost if it started in the current period (as the start-up
        query does); returns the alert level its total newly reached, if any."""
        window = self.current(now)
        if not window.start <= started < window.end:
            return None
        return self.seed(key, cost)

    def seed(self, key: str, spent: Decimal) -> Decimal | None:
        """Add spend of the current period; returns the alert level newly reached, if any."""
        self.spent[key] = self.spent.get(key, Decimal(0)) + spent
        return self._reached(key)

    def set_others(self, window: Window, others: dict[str, Decimal]) -> list[tuple[str, Decimal]]:
        """The rest of the fleet's spend in ``window``, as read from the fleet store; ignored
        when the period has changed since. Returns the totals that newly reached an alert level."""
        if window != self.window:
            return []
        self.others = others
        return [(key, level) for key in others if (level := self._reached(key)) is not None]

    def _reached(self, key: str) -> Decimal | None:
        total = self.total(key) or Decimal(0)
        reached = None
        for level, amount in self.levels:
            if total >= amount:
                reached = level
        if reached is None or reached <= self.reported.get(key, Decimal(0)):
            return None
        self.reported[key] = reached
        return reached


class Budget:
    """One configured budget: its settings, the calls it covers and its running totals."""

    def __init__(self, spec: BudgetSpec, now: float) -> None:
        self.spec = spec
        self.name = spec.name
        self.scope = Scope(spec)
        self.tally = Tally(spec.period, spec.limit_usd, spec.alerts, now)

    def downgrade_target(self, model: str | None) -> str | None:
        """The cheaper model for a call to ``model``, or None when there is nothing to change."""
        target = self.spec.downgrade_to
        if isinstance(target, dict):
            target = target.get(model) if model is not None else None
        return None if model is None or target == model else target

    def standing(self, key: str) -> str:
        """What the total has spent against what limit: "app 'x' spent $0.06 of its $0.05 daily limit"."""
        spent = _usd(self.tally.total(key) or Decimal(0))
        limit = f"{_usd(self.spec.limit_usd)} {_PERIOD_ADJECTIVES[self.spec.period]} limit"
        return f"{self.scope.describe(key)} spent {spent} of its {limit}"


def stored_spend(db: Path, budgets: Sequence[Budget], now: float) -> list[tuple[Budget, str, Decimal]]:
    """Each budget's spend so far in its current period, per total, from the store; nothing
    (logged) when the store cannot be read in time, so start-up never hangs on it. A fleet
    budget takes its own sidecar's spend from here too (the fleet store's figures leave it out)."""
    found = []
    try:
        with read_connection(db, START_READ_WAIT_S) as con:
            for budget in budgets:
                sql, params = budget.scope.spend_query(budget.tally.current(now))
                found += [
                    (budget, key, spent)
                    for key, spent in con.execute(sql, params).fetchall()
                    if key is not None
                ]
    except Exception as exc:  # a missing, locked or broken store must not stop the proxy
        log.error("budgets start from zero: cannot read this period's spend from %s (%s)", db, exc)
        return []
    return found


def _usd(amount: Decimal) -> str:
    """Dollars with at least two decimals and no trailing zeros past them: $5.00, $0.0513."""
    whole, _, cents = f"{amount:.6f}".rstrip("0").partition(".")
    return f"${whole}.{cents.ljust(2, '0')}"
