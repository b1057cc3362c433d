"""The budget guard stage: spend limits enforced at the proxy, per UTC hour, day or month.

Each ``[budgets."NAME"]`` table of the config covers some calls (all of them, or those of
an app, a user, a property value) and may give each app, user or property value its own
total. The check before each call is a dictionary lookup: running totals live in memory
per (budget, scope value) for the current period and grow by each finished call's cost
(``Capture.cost_usd``, which the recorder sets). At start-up they are seeded from the
store, so a restart does not reset a budget; a new period starts them from zero.

Once a total reaches its limit, the budget's action applies to the next calls it covers:

* ``alert``: nothing beyond the alerts below;
* ``downgrade``: the call goes to a cheaper model (the row keeps the client's model in
  ``routed_from_model``);
* ``block``: llmtap answers 429 itself, in the provider's own error format, with
  ``Retry-After`` until the period resets; the upstream is never contacted.

Alerts (each configured fraction of the limit, and the limit itself, once per period) are
a log line at once, and from a background thread (off the request path) the state file
the dashboard reads and an optional webhook.

A budget with ``scope = "fleet"`` counts the whole fleet's spend: its totals add the other
sidecars' spend, read from the fleet store at start and every few seconds by a thread
(:mod:`collector.budgets.fleet`), whose figures this stage applies on the event loop.

Totals count finished calls, so calls in flight when a limit is reached may take the
spend past it. Calls llmtap makes itself (shadow copies, judge calls, retries) are neither
checked nor counted: a rule's own spend cap governs them. The limits themselves (scopes,
totals, alerts) are :mod:`collector.budgets`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

from mitmproxy import http

from collector.budgets.alerts import AlertSink
from collector.budgets.fleet import FleetTotals, Snapshot
from collector.budgets.limits import Budget, retry_after, stored_spend
from collector.budgets.periods import utc_second
from collector.proxy.call import CAPTURE_KEY, Capture, made_by_llmtap, metadata_of
from collector.proxy.model_rewrite import rewrite_model
from collector.settings.config import BudgetSpec, FleetSettings
from collector.trust.failopen import fail_open

log = logging.getLogger("llmtap.budgets")

#: Marks a flow whose cost is already counted (``response`` and ``error`` can both fire).
COUNTED_KEY = "llmtap.budget_counted"


def block_response(capture: Capture, budget: Budget, key: str, now: float) -> http.Response:
    """llmtap's own 429 for a call over a blocking budget, in the provider's error format.

    ``Retry-After`` says when the period resets; ``x-should-retry: false`` tells the openai
    and anthropic SDKs not to retry at once, which could not succeed before then."""
    wait = retry_after(budget.tally.window, now)
    message = (
        f"blocked by budget {budget.name}: {budget.standing(key)}; "
        f"it resets at {utc_second(budget.tally.window.end)} (in {wait} s)"
    )
    body = capture.endpoint.provider.limit_error(capture.endpoint.api, message)
    headers = {"content-type": "application/json", "retry-after": str(wait), "x-should-retry": "false"}
    return http.Response.make(429, json.dumps(body).encode(), headers)


class Budgets:
    """The addon. It runs after the recorder (it needs the call's Capture, and its cost once
    finished) and before the addons that prepare the request for upstream, so a blocked call
    never leaves and a downgraded one leaves with its new model."""

    def __init__(
        self, specs: Sequence[BudgetSpec], state_file: Path, fleet: FleetSettings | None = None
    ) -> None:
        now = time.time()
        self.budgets = [Budget(spec, now) for spec in specs]
        self.alerts = AlertSink(state_file)
        #: (budget, provider) pairs whose downgrade could not be applied, logged once each.
        self._skipped: set[tuple[str, str]] = set()
        #: The rest of the fleet's spend, for ``scope = "fleet"`` budgets (the config requires
        #: [fleet] for them); None when there are none.
        fleet_budgets = any(spec.scope == "fleet" for spec in specs)
        self.fleet = FleetTotals(self.budgets, fleet) if fleet is not None and fleet_budgets else None
        self._applied: Snapshot | None = None

    @fail_open  # a budget problem at start-up must not keep the proxy from starting
    def resume(self, db: Path) -> None:
        """Before traffic: take back this period's alerts, then seed the totals from the store."""
        self.alerts.restore(self.budgets)
        now = time.time()
        for budget, key, spent in stored_spend(db, self.budgets, now):
            if (level := budget.tally.seed(key, spent)) is not None:
                self.alerts.report(budget, key, level, now)
        if self.fleet is not None:
            self.fleet.start()
            self._apply_fleet(now)

    def _apply_fleet(self, now: float) -> None:
        """Take the fleet's latest figures into the fleet budgets' totals (on the event loop)."""
        snapshot = self.fleet.snapshot if self.fleet is not None else None
        if snapshot is None or snapshot is self._applied:
            return
        self._applied = snapshot
        for budget in self.budgets:
            if (read := snapshot.spend.get(budget.name)) is None:
                continue
            budget.tally.current(now)
            for key, level in budget.tally.set_others(*read):
                self.alerts.report(budget, key, level, now)

    @fail_open
    def request(self, flow: http.HTTPFlow) -> None:
        capture: Capture | None = flow.metadata.get(CAPTURE_KEY)
        if capture is None or made_by_llmtap(flow):
            return
        now = time.time()
        self._apply_fleet(now)
        downgrade: tuple[Budget, str] | None = None
        metadata = metadata_of(flow)
        for budget in self.budgets:
            key = budget.scope.key(metadata)
            if key is None or not budget.tally.over(key, now):
                continue
            action = budget.spec.action
            if action == "block":
                flow.response = block_response(capture, budget, key, now)
                return
            target = budget.downgrade_target(capture.request.model) if action == "downgrade" else None
            if target is not None and downgrade is None:
                downgrade = (budget, target)
        if downgrade is not None:
            self._downgrade(flow, capture, *downgrade)

    def _downgrade(self, flow: http.HTTPFlow, capture: Capture, budget: Budget, target: str) -> None:
        why_not = rewrite_model(flow, capture, target)
        provider = capture.endpoint.provider.name
        if why_not is not None and (budget.name, provider) not in self._skipped:
            self._skipped.add((budget.name, provider))
            log.warning(
                "budget %s: a %s call is not downgraded to %s: %s (logged once)",
                budget.name,
                provider,
                target,
                why_not,
            )

    @fail_open
    def response(self, flow: http.HTTPFlow) -> None:
        self._count(flow)

    @fail_open
    def error(self, flow: http.HTTPFlow) -> None:
        self._count(flow)

    def done(self) -> None:
        if self.fleet is not None:
            self.fleet.stop()
        self.alerts.close()

    def _count(self, flow: http.HTTPFlow) -> None:
        """Add a finished call's cost to the totals it counts towards (once)."""
        capture: Capture | None = flow.metadata.get(CAPTURE_KEY)
        if capture is None or not capture.done or not capture.cost_usd or COUNTED_KEY in flow.metadata:
            return
        if made_by_llmtap(flow):
            return  # copies and judge calls count towards their rule's shadow spend cap instead
        flow.metadata[COUNTED_KEY] = True
        now = time.time()
        metadata = metadata_of(flow)
        for budget in self.budgets:
            key = budget.scope.key(metadata)
            if key is None:
                continue
            if (level := budget.tally.add(key, capture.cost_usd, capture.started, now)) is not None:
                self.alerts.report(budget, key, level, now)
