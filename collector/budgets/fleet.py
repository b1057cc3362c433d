"""Fleet budgets (``scope = "fleet"``): the whole fleet's spend, read from the fleet store.

A sidecar counts its own calls as any budget does (seeded from its local store, then each
finished call's cost, at once). The rest of the fleet's spend comes from the fleet store: the
sum per total of the rows of every *other* node in the current period, read once as the proxy
starts (before traffic; at most :data:`~collector.fleet.postgres.CONNECT_TIMEOUT_S` seconds)
and then every ``[fleet] budget_refresh_s`` seconds by a thread of its own. So a block or a
downgrade acts exactly as for a local budget, on own spend plus the others' last figures.

The thread only publishes a :class:`Snapshot` (one reference, replaced whole); the budget
stage applies it on the event loop at its next call, so totals and alerts are only ever
changed from one thread, and the check before a call stays a dictionary lookup.

**Lag**: another sidecar's call counts here once (1) it is shipped (its end to its row in the
fleet store: p95 2.7 s, max 3.6 s at 500 calls/s, see bench/fleet_ship.py) and (2) this
sidecar has refreshed (up to ``budget_refresh_s``, 5 s by default): about 9 s at worst with the
defaults. **Overshoot**: over that window the others' spend is unseen, so a fleet can pass its
limit by what the *other* sidecars spend in about 9 s (plus, as for any budget, calls in
flight when it is reached).
While the fleet store cannot be read, each sidecar counts its own calls on top of the last
figures it read (spend never falls within a period), logged once: then each sidecar may spend
up to what was left of the limit by itself, N sidecars N times that.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal

import psycopg

from collector.budgets.limits import Budget
from collector.budgets.periods import Window, period_window
from collector.fleet import schema
from collector.fleet.postgres import FleetAddress
from collector.fleet.sink import SinkUnavailable
from collector.settings.config import FleetSettings

__all__ = ["FleetTotals", "Snapshot"]

log = logging.getLogger("llmtap.budgets")


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The other nodes' spend per fleet budget (by name): the period it covers, per total."""

    spend: dict[str, tuple[Window, dict[str, Decimal]]] = field(default_factory=dict)


class FleetTotals:
    """Reads the rest of the fleet's spend for the fleet budgets (see the module docstring)."""

    def __init__(self, budgets: Sequence[Budget], fleet: FleetSettings) -> None:
        self.budgets = [budget for budget in budgets if budget.spec.scope == "fleet"]
        self.node = fleet.node
        self.interval = fleet.budget_refresh_s
        self.address = FleetAddress(fleet.url.get_secret_value())
        #: The latest figures read; replaced whole by the thread, applied by the budget stage.
        self.snapshot: Snapshot | None = None
        self._conn: psycopg.Connection | None = None
        self._failing = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="llmtap-fleet-budgets", daemon=True)

    def start(self) -> None:
        """Read the fleet's figures once now (start-up waits for them, briefly), then keep
        them fresh from a thread."""
        self.refresh()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)
        self._close()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.refresh()

    def refresh(self) -> None:
        """Read the figures; on failure keep the last ones, and say so once."""
        try:
            self.snapshot = self._read(time.time())
        except (SinkUnavailable, psycopg.Error) as exc:
            self._close()
            if not self._failing:
                message = self.address.describe(exc) if isinstance(exc, psycopg.Error) else str(exc)
                log.error(
                    "fleet budgets: cannot read the fleet's spend (%s); counting this sidecar's calls on "
                    "top of the last figures read until it can",
                    message,
                )
            self._failing = True
            return
        if self._failing:
            log.warning("fleet budgets: reading the fleet's spend from %s again", self.address.redacted)
            self._failing = False

    def _read(self, now: float) -> Snapshot:
        if self._conn is None or self._conn.closed:
            conn = self.address.connect("llmtap-budgets", autocommit=True)
            try:
                schema.ensure_schema(conn)  # a fleet whose first sidecar starts now has no tables yet
            except psycopg.Error:
                conn.close()
                raise
            self._conn = conn
        spend = {}
        for budget in self.budgets:
            # The period as of now (the tally's own moves on the event loop only).
            window = period_window(budget.spec.period, now)
            sql, params = budget.scope.spend_query(window, "postgres", other_than=self.node)
            rows = self._conn.execute(sql, params).fetchall()
            spend[budget.name] = (window, {key: total for key, total in rows if key is not None})
        return Snapshot(spend)

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except psycopg.Error as exc:  # a broken connection: nothing to save
                log.debug("fleet budgets: closing the connection: %s", self.address.describe(exc))
