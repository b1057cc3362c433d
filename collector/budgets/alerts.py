"""Budget alerts: a log line at once, then (off the request path) the state file and webhook.

Each configured fraction of a limit, and the limit itself, alerts once per period. The state
file (``DATA_DIR/budget_alerts.json``) is what the dashboard shows and what a restart reads
back, so an alert is not repeated within its period.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from collector.budgets.limits import Budget
from collector.budgets.periods import utc_second
from collector.trust.private import write_private

log = logging.getLogger("llmtap.budgets")

WEBHOOK_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class Alert:
    """A budget's total reaching an alert level (1 = the limit) in one period."""

    budget: Budget
    key: str
    level: Decimal
    at: float

    def message(self) -> str:
        budget, window = self.budget, self.budget.tally.window
        standing = f"budget {budget.name}: {budget.standing(self.key)}"
        if self.level < 1:
            return f"{standing} ({self.level:.0%} alert)"
        action = budget.spec.action
        until = utc_second(window.end)
        if action == "block":
            return f"{standing}: limit reached; its calls are blocked until {until}"
        if action == "downgrade":
            target = budget.spec.downgrade_to
            cheaper = target if isinstance(target, str) else "a cheaper model"
            return f"{standing}: limit reached; its calls go to {cheaper} until {until}"
        return f"{standing}: limit reached (action alert: calls continue)"

    def record(self) -> dict[str, Any]:
        """The alert as the state file and webhooks carry it."""
        budget, window = self.budget, self.budget.tally.window
        return {
            "budget": budget.name,
            "scope": budget.scope.describe(self.key),
            "scope_value": self.key or None,
            "period": budget.spec.period,
            "period_start": utc_second(window.start),
            "period_end": utc_second(window.end),
            "level": float(self.level),
            "exceeded": self.level >= 1,
            "spent_usd": float(budget.tally.spent.get(self.key, Decimal(0))),
            "limit_usd": float(budget.spec.limit_usd),
            "action": budget.spec.action,
            "at": utc_second(self.at),
            "message": self.message(),
        }


class AlertSink:
    """Where budget alerts go: a log line at once; the state file (for the dashboard) and the
    webhooks from one background thread, so that a slow webhook never delays a call.

    The state file keeps the latest alert of each total in its current period; read back at
    start-up, it keeps a restart from raising the same alerts again."""

    def __init__(self, state_file: Path) -> None:
        self.state_file = state_file
        self.records: dict[tuple[str, str], dict[str, Any]] = {}
        self._queue: queue.SimpleQueue[tuple[list[dict[str, Any]], dict[str, Any], str | None] | None] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None

    def restore(self, budgets: Sequence[Budget]) -> None:
        """Take back the alerts already raised in the budgets' current periods."""
        try:
            saved = json.loads(self.state_file.read_text())["alerts"]
            by_name = {budget.name: budget for budget in budgets}
            for record in saved:
                budget = by_name.get(record["budget"])
                if budget is None or record["period"] != budget.spec.period:
                    continue
                if record["period_start"] != utc_second(budget.tally.window.start):
                    continue
                key = record["scope_value"] or ""
                budget.tally.reported[key] = Decimal(str(record["level"]))
                self.records[(budget.name, key)] = record
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError, ArithmeticError) as exc:
            log.warning("budget alert state %s unreadable (%s); alerts start afresh", self.state_file, exc)

    def report(self, budget: Budget, key: str, level: Decimal, now: float) -> None:
        alert = Alert(budget, key, level, now)
        record = alert.record()
        log.warning("%s", record["message"])
        self.records[(budget.name, key)] = record
        current = utc_second(now)
        self.records = {k: r for k, r in self.records.items() if r["period_end"] > current}
        self._queue.put((list(self.records.values()), record, budget.spec.webhook))
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="llmtap-budget-alerts", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Let pending alerts go out (each webhook has its own timeout)."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(WEBHOOK_TIMEOUT_S * 2)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            records, record, webhook = item
            self._write(records)
            if webhook is not None:
                self._post(webhook, record)

    def _write(self, records: list[dict[str, Any]]) -> None:
        """Replace the state file atomically, so the dashboard never reads half of it."""
        try:
            state = {"updated_at": utc_second(time.time()), "alerts": records}
            write_private(self.state_file, json.dumps(state, indent=1))
        except OSError as exc:
            log.error("cannot write the budget alert state %s: %s", self.state_file, exc)

    @staticmethod
    def _post(url: str, record: dict[str, Any]) -> None:
        # "text" makes the body a valid Slack (and compatible) incoming-webhook message.
        body = json.dumps({"event": "llmtap.budget_alert", "text": record["message"], **record}).encode()
        request = urllib.request.Request(
            url,
            data=body,
            method="POST",
            headers={"content-type": "application/json", "user-agent": "llmtap"},
        )
        try:
            with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT_S) as response:
                response.read()
        except Exception as exc:  # any failure is logged; the thread must live on for the next alert
            # Only the host: webhook URLs often carry a secret token in their path.
            log.error("budget %s: webhook to %s failed: %s", record["budget"], urlsplit(url).hostname, exc)
