"""Budgets: spend limits enforced at the proxy, per UTC hour, day or month.

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

Totals count finished calls, so calls in flight when a limit is reached may take the
spend past it.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import re
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote, unquote, urlsplit

from mitmproxy import http

from collector.calls.rows import json_or_none
from collector.proxy.addons.metadata import CallMetadata
from collector.proxy.addons.recorder import CAPTURE_KEY, Capture
from collector.proxy.addons.stream_usage import is_signed
from collector.proxy.failopen import fail_open
from collector.settings.config import BudgetSpec
from collector.storage.database import read_connection
from collector.trust.private import write_private

log = logging.getLogger("llmtap.budgets")

#: Marks a flow whose cost is already counted (``response`` and ``error`` can both fire).
COUNTED_KEY = "llmtap.budget_counted"
WEBHOOK_TIMEOUT_S = 5.0
#: Longest wait for the store at start-up; past it budgets start from zero (logged).
SEED_TIMEOUT_S = 5.0
#: The model segment of Gemini- and Vertex-style paths: ``.../models/{model}:generateContent``.
_PATH_MODEL = re.compile(r"/models/([^/:?]+):")
_PERIOD_ADJECTIVES = {"hour": "hourly", "day": "daily", "month": "monthly"}


class Window(NamedTuple):
    """One UTC period as Unix times: ``start <= t < end``."""

    start: float
    end: float


def period_window(period: str, t: float) -> Window:
    """The UTC hour, day or month holding the Unix time ``t``."""
    at = datetime.fromtimestamp(t, UTC)
    if period == "hour":
        start = at.replace(minute=0, second=0, microsecond=0)
        end = start + timedelta(hours=1)
    elif period == "day":
        start = at.replace(hour=0, minute=0, second=0, microsecond=0)
        end = start + timedelta(days=1)
    else:
        start = at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)
    return Window(start.timestamp(), end.timestamp())


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
        return meta.properties.get(self.per_property) or None

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

    def spend_query(self, window: Window) -> tuple[str, list[Any]]:
        """SQL summing the stored cost of the covered calls started in ``window``, per total."""
        key_params: list[Any] = []
        if self.per is None:
            key = "''"
        elif self.per == "app":
            key = "NULLIF(app, '')"
        elif self.per == "user":
            key = "NULLIF(user_id, '')"
        else:
            key = "NULLIF(json_extract_string(properties, ?), '')"
            key_params.append(_json_path(self.per_property))
        conditions = ["started_at >= ?", "started_at < ?", "cost_usd IS NOT NULL"]
        params: list[Any] = [
            datetime.fromtimestamp(window.start, UTC),
            datetime.fromtimestamp(window.end, UTC),
        ]
        if self.app is not None:
            conditions.append("app = ?")
            params.append(self.app)
        if self.user is not None:
            conditions.append("user_id = ?")
            params.append(self.user)
        for name, value in self.properties:
            conditions.append("json_extract_string(properties, ?) = ?")
            params += [_json_path(name), value]
        sql = f"SELECT {key}, sum(cost_usd) FROM llm_calls WHERE {' AND '.join(conditions)} GROUP BY 1"
        return sql, key_params + params


def _json_path(name: str | None) -> str:
    """A JSON path to a property (names are header tokens: they never hold a quote)."""
    return f'$."{name}"'


class Tally:
    """One budget's spend in its current period, per scope value, and the highest alert level
    each total has been reported at (1 is the limit)."""

    def __init__(self, period: str, limit: Decimal, alerts: Sequence[float], now: float) -> None:
        self.period = period
        self.limit = limit
        #: (fraction of the limit, amount), ascending, ending with the limit itself.
        self.levels = tuple(
            (level, level * limit) for level in (*(Decimal(str(a)) for a in alerts), Decimal(1))
        )
        self.window = period_window(period, now)
        self.spent: dict[str, Decimal] = {}
        self.reported: dict[str, Decimal] = {}

    def current(self, now: float) -> Window:
        """The period holding ``now``; a new period starts every total from zero."""
        if now >= self.window.end:
            self.window = period_window(self.period, now)
            self.spent.clear()
            self.reported.clear()
        return self.window

    def over(self, key: str, now: float) -> bool:
        """The total has reached the limit in the current period."""
        self.current(now)
        spent = self.spent.get(key)
        return spent is not None and spent >= self.limit

    def add(self, key: str, cost: Decimal, started: float, now: float) -> Decimal | None:
        """Count a finished call's cost if it started in the current period (as the start-up
        query does); returns the alert level its total newly reached, if any."""
        window = self.current(now)
        if not window.start <= started < window.end:
            return None
        return self.seed(key, cost)

    def seed(self, key: str, spent: Decimal) -> Decimal | None:
        """Add spend of the current period; returns the alert level newly reached, if any."""
        total = self.spent[key] = self.spent.get(key, Decimal(0)) + spent
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
        spent = _usd(self.tally.spent.get(key, Decimal(0)))
        limit = f"{_usd(self.spec.limit_usd)} {_PERIOD_ADJECTIVES[self.spec.period]} limit"
        return f"{self.scope.describe(key)} spent {spent} of its {limit}"


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
        until = _iso(window.end)
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
            "period_start": _iso(window.start),
            "period_end": _iso(window.end),
            "level": float(self.level),
            "exceeded": self.level >= 1,
            "spent_usd": float(budget.tally.spent.get(self.key, Decimal(0))),
            "limit_usd": float(budget.spec.limit_usd),
            "action": budget.spec.action,
            "at": _iso(self.at),
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
                if record["period_start"] != _iso(budget.tally.window.start):
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
        current = _iso(now)
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
            state = {"updated_at": _iso(time.time()), "alerts": records}
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


def stored_spend(db: Path, budgets: Sequence[Budget], now: float) -> list[tuple[Budget, str, Decimal]]:
    """Each budget's spend so far in its current period, per total, from the store; nothing
    (logged) when the store cannot be read in time, so start-up never hangs on it."""
    found = []
    try:
        with read_connection(db, SEED_TIMEOUT_S) as con:
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


def block_response(capture: Capture, budget: Budget, key: str, now: float) -> http.Response:
    """llmtap's own 429 for a call over a blocking budget, in the provider's error format.

    ``Retry-After`` says when the period resets; ``x-should-retry: false`` tells the openai
    and anthropic SDKs not to retry at once, which could not succeed before then."""
    wait = retry_after(budget.tally.window, now)
    message = (
        f"blocked by budget {budget.name}: {budget.standing(key)}; "
        f"it resets at {_iso(budget.tally.window.end)} (in {wait} s)"
    )
    body = capture.endpoint.provider.limit_error(capture.endpoint.api, message)
    headers = {"content-type": "application/json", "retry-after": str(wait), "x-should-retry": "false"}
    return http.Response.make(429, json.dumps(body).encode(), headers)


def rewrite_model(request: http.Request, capture: Capture, target: str) -> str | None:
    """Send the call to ``target`` instead: the JSON body's ``model``, else the model segment of
    a ``/models/{model}:method`` path (Gemini, Vertex). Returns why not when that is not simple."""
    if is_signed(request.headers):
        return "the request is signed over its body (AWS SigV4)"
    path, sep, query = request.path.partition("?")
    found = _PATH_MODEL.search(path)
    body = json_or_none(request.content)
    if isinstance(body, dict) and isinstance(body.get("model"), str):
        body["model"] = target
        request.content = json.dumps(body, separators=(",", ":")).encode()
    elif found is not None and unquote(found.group(1)) == capture.request.model:
        new_path = path[: found.start(1)] + quote(target, safe="") + path[found.end(1) :]
        request.path = new_path + sep + query
    else:
        return "its model is neither in the JSON body nor in a /models/NAME: path"
    capture.routed_from_model = capture.request.model
    capture.request.model = target
    return None


class Budgets:
    """The addon. It runs after the recorder (it needs the call's Capture, and its cost once
    finished) and before the addons that prepare the request for upstream, so a blocked call
    never leaves and a downgraded one leaves with its new model."""

    def __init__(self, specs: Sequence[BudgetSpec], state_file: Path) -> None:
        now = time.time()
        self.budgets = [Budget(spec, now) for spec in specs]
        self.alerts = AlertSink(state_file)
        #: (budget, provider) pairs whose downgrade could not be applied, logged once each.
        self._skipped: set[tuple[str, str]] = set()

    @fail_open  # a budget problem at start-up must not keep the proxy from starting
    def resume(self, db: Path) -> None:
        """Before traffic: take back this period's alerts, then seed the totals from the store."""
        self.alerts.restore(self.budgets)
        now = time.time()
        for budget, key, spent in stored_spend(db, self.budgets, now):
            if (level := budget.tally.seed(key, spent)) is not None:
                self.alerts.report(budget, key, level, now)

    @fail_open
    def request(self, flow: http.HTTPFlow) -> None:
        capture: Capture | None = flow.metadata.get(CAPTURE_KEY)
        if capture is None:
            return
        now = time.time()
        downgrade: tuple[Budget, str] | None = None
        for budget in self.budgets:
            key = budget.scope.key(capture.metadata)
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
        why_not = rewrite_model(flow.request, capture, target)
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
        self.alerts.close()

    def _count(self, flow: http.HTTPFlow) -> None:
        """Add a finished call's cost to the totals it counts towards (once)."""
        capture: Capture | None = flow.metadata.get(CAPTURE_KEY)
        if capture is None or not capture.done or not capture.cost_usd or COUNTED_KEY in flow.metadata:
            return
        flow.metadata[COUNTED_KEY] = True
        now = time.time()
        for budget in self.budgets:
            key = budget.scope.key(capture.metadata)
            if key is None:
                continue
            if (level := budget.tally.add(key, capture.cost_usd, capture.started, now)) is not None:
                self.alerts.report(budget, key, level, now)


def _usd(amount: Decimal) -> str:
    """Dollars with at least two decimals and no trailing zeros past them: $5.00, $0.0513."""
    whole, _, cents = f"{amount:.6f}".rstrip("0").partition(".")
    return f"${whole}.{cents.ljust(2, '0')}"


def _iso(t: float) -> str:
    """A UTC time to the second; these strings sort in time order."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
