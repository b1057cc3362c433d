"""``llmtap evaluate``: the proxy's shadow evaluation, run offline on stored calls.

Shadow mode gathers evidence only as fast as live traffic arrives, while stored bodies
(capture mode ``full`` or ``redacted``) already hold requests and their answers. Each
stored call that a shadow rule matches (or the one rule named by ``--rule``, whatever its
mode) and that has no shadow copy to that rule's model yet is sent again with the rule's
model to the same provider, through the configured upstreams, and its answer compared with
the stored one. The proxy's own :class:`~collector.proxy.addons.router.Router` rebuilds the call, sends,
compares, caps spend and records (:meth:`~collector.proxy.addons.router.Router.shadow_stored`), so an
offline copy is the same row as a live one: ``routing_arm`` "shadow", ``shadow_of`` the
stored call, ``routing_rule``, ``comparison``, ``agreement``, cost.

Stored requests carry no credentials (secrets are never stored), so each provider's key
comes from the environment (:data:`API_KEYS`); it is sent upstream and cut out of anything
stored, as a client's key through the proxy is. A provider without a key in the environment
(or one whose requests are signed, such as Bedrock or Vertex) is skipped, with a message
naming what is missing.

Copies go one at a time, so that a rule's ``shadow_spend_cap_usd`` (per UTC day, counting
what the proxy's copies already spent that day) is checked with every earlier copy's cost
known.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
from mitmproxy import http
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from analytics.metrics import SHADOW_ARMS
from analytics.store import load
from collector.calls.rows import json_or_none
from collector.calls.spans import SpanRecorder
from collector.pricing.book import PriceBook
from collector.providers import ProviderRegistry
from collector.proxy.addons.metadata import CallMetadata
from collector.proxy.addons.recorder import Capture, Recorder
from collector.proxy.addons.router import Router, read_answer, rule_for
from collector.proxy.addons.stream_usage import StreamUsage
from collector.routing.rules import RULES_FILE, Rule, load_rules
from collector.settings.config import Settings
from collector.storage.database import Ingester, read_connection
from collector.storage.spool import Spool

#: Seconds allowed for the copies' rows to reach the store at the end.
DRAIN_TIMEOUT_S = 30.0


class EvaluateError(ValueError):
    """Nothing can be evaluated as asked; the message says why and what to change."""


@dataclass(frozen=True, slots=True)
class ApiKey:
    """Where a provider's API key comes from, and how a request carries it."""

    variable: str
    header: str
    scheme: str = ""
    #: Headers the provider requires besides the key (a stored request keeps no header).
    required: tuple[tuple[str, str], ...] = ()

    def headers(self, key: str) -> dict[str, str]:
        return {self.header: self.scheme + key, **dict(self.required)}


def _bearer(variable: str) -> ApiKey:
    return ApiKey(variable, "authorization", "Bearer ")


#: Per provider name: the environment variable holding its key (the one its official SDK
#: reads). Providers not listed (bedrock, vertex: signed or OAuth requests) are skipped.
API_KEYS: dict[str, ApiKey] = {
    "openai": _bearer("OPENAI_API_KEY"),
    "azure_openai": ApiKey("AZURE_OPENAI_API_KEY", "api-key"),
    "anthropic": ApiKey("ANTHROPIC_API_KEY", "x-api-key", required=(("anthropic-version", "2023-06-01"),)),
    "gemini": ApiKey("GEMINI_API_KEY", "x-goog-api-key"),
    "openrouter": _bearer("OPENROUTER_API_KEY"),
    "mistral": _bearer("MISTRAL_API_KEY"),
    "groq": _bearer("GROQ_API_KEY"),
    "deepseek": _bearer("DEEPSEEK_API_KEY"),
    "together": _bearer("TOGETHER_API_KEY"),
    "cerebras": _bearer("CEREBRAS_API_KEY"),
    "cohere": _bearer("CO_API_KEY"),
    "huggingface": _bearer("HF_TOKEN"),
    "zai": _bearer("ZAI_API_KEY"),
}

#: Stored calls that served an app and got an answer, with their bodies and the models they
#: were already shadowed to. Copies, retries and rewritten calls are not originals.
_STORED_CALLS = """
SELECT c.call_id, c.method, c.host, c.path, c.provider, c.stream, c.app, c.user_id, c.session_id,
       c.properties::VARCHAR AS properties, b.request_body, b.response_body,
       coalesce(s.shadowed_to, []) AS shadowed_to
FROM llm_calls c
JOIN call_bodies b ON b.call_id = c.call_id
LEFT JOIN (
    SELECT shadow_of, list(request_model) AS shadowed_to FROM llm_calls
    WHERE routing_arm = 'shadow' AND shadow_of IS NOT NULL GROUP BY shadow_of
) s ON s.shadow_of = c.call_id
WHERE b.request_body IS NOT NULL AND b.response_body IS NOT NULL
  AND c.shadow_of IS NULL AND c.retry_of IS NULL AND c.routed_from_model IS NULL
  AND c.status_code < 400 AND c.error IS NULL
"""


@dataclass(slots=True)
class Work:
    """One stored call to copy, rebuilt as the recorder reads it."""

    live: Capture
    request: http.Request
    rule: Rule
    answer: Any


@dataclass(slots=True)
class Triage:
    """What the stored calls came to before anything is sent."""

    work: list[Work] = field(default_factory=list)
    matched: int = 0
    already: int = 0
    #: Calls skipped for want of a key, per provider.
    keyless: Counter[str] = field(default_factory=Counter)


def evaluate(
    settings: Settings,
    rule_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int | None = None,
) -> int:
    """Copy, compare and record; show progress (stderr), then a summary (stdout).

    Returns the exit code: 1 when keys were missing for every call there was to copy, or
    the copies' rows could not be stored. Raises :class:`EvaluateError` when nothing can be
    evaluated as asked (no such rule, no stored bodies, no stored call a rule matches)."""
    if limit is not None and limit < 1:
        raise EvaluateError(f"--limit must be a positive number of calls, got {limit}")
    out = Console(width=None if sys.stdout.isatty() else 10_000, highlight=False, markup=False)
    err = Console(stderr=True, highlight=False, markup=False)
    rules_path = settings.routing.rules or settings.data_dir / RULES_FILE
    rules = _rules(rules_path, rule_id)
    stored, calls = _stored_calls(settings.paths.db, rules, since, until)

    spool, spans = Spool(settings.paths.spool), SpanRecorder(settings.otlp_endpoint)
    registry = ProviderRegistry(extra_hosts=settings.extra_hosts)
    recorder = Recorder(registry, spool, spans, PriceBook(settings.prices), settings.capture)
    routing = settings.routing
    router = Router(
        rules_path,
        recorder,
        settings.upstreams,
        routing.judge_model,
        routing.noise_floor_fraction,
        StreamUsage(settings.stream_usage),
    )

    triage = _triage(router, rules, calls, os.environ)
    for provider, count in sorted(triage.keyless.items()):
        err.print(f"llmtap: skipped {count} stored {provider} call(s): {_missing_key(provider)}")
    if not triage.matched:
        names = ", ".join(f"{rule.id} (model {rule.match.model})" for rule in rules)
        raise EvaluateError(
            f"none of the {stored} stored calls with bodies{_window(since, until)} "
            f"matches the rule(s) {names}"
        )
    if not triage.work:
        if triage.keyless:
            return 1
        err.print(f"llmtap: nothing to evaluate: all {triage.already} matching calls have a shadow copy")
        return 0

    router.spend.resume(settings.paths.db)
    work = triage.work[:limit]
    started = datetime.now(UTC)
    capped = asyncio.run(_send(router, work, err))
    spans.shutdown()
    if not Ingester(spool, settings.paths.db, settings.prices).drain(DRAIN_TIMEOUT_S):
        err.print(
            f"llmtap: error: the copies could not be written to {settings.paths.db} yet; they stay "
            f"in {settings.paths.spool} and are loaded by the next proxy or evaluate"
        )
        return 1
    summary = _summary(settings.data_dir, started, [item.live.call_id for item in work])
    _print_summary(out, summary, capped, triage)
    return 0


def _rules(path: Path, rule_id: str | None) -> list[Rule]:
    """The shadow rules of the file, or the one rule ``rule_id`` whatever its mode."""
    rules = load_rules(path)
    if rule_id is not None:
        named = [rule for rule in rules if rule.id == rule_id]
        if not named:
            known = ", ".join(rule.id for rule in rules) or "none"
            raise EvaluateError(f"no rule {rule_id!r} in {path} (rules there: {known})")
        return named
    shadow = [rule for rule in rules if rule.mode == "shadow"]
    if not shadow:
        raise EvaluateError(
            f"no shadow rule in {path}: draft some with `llmtap recommend --write-rules`, "
            "or name any rule with --rule ID"
        )
    return shadow


def _stored_calls(
    db: Path, rules: list[Rule], since: datetime | None, until: datetime | None
) -> tuple[int, pl.DataFrame]:
    """How many calls in the window have stored bodies, and those of them that served an
    app asking for a model some rule matches, oldest first."""
    bounds = [("c.started_at >= ?", since), ("c.started_at < ?", until)]
    where = "".join(f" AND {clause}" for clause, bound in bounds if bound is not None)
    params = [bound for _, bound in bounds if bound is not None]
    models = sorted({rule.match.model for rule in rules})
    with read_connection(db) as con:
        [(bodies,)] = con.sql(
            "SELECT count(*) FROM llm_calls c JOIN call_bodies b ON b.call_id = c.call_id "
            f"WHERE b.request_body IS NOT NULL{where}",
            params=params,
        ).fetchall()
        calls = con.sql(
            f"{_STORED_CALLS}{where} AND c.request_model IN (SELECT unnest(?)) ORDER BY c.started_at",
            params=[*params, models],
        ).pl()
    if not bodies:
        raise EvaluateError(
            f"no stored request bodies in {db}{_window(since, until)}: the calls were recorded with "
            'capture = "metadata", which keeps none. Record with capture = "full" or "redacted" '
            "in the config to evaluate offline, or let the proxy gather evidence in shadow mode"
        )
    return bodies, calls


def _triage(router: Router, rules: list[Rule], calls: pl.DataFrame, environ: Mapping[str, str]) -> Triage:
    """Rebuild each stored call as the recorder reads it, find the rule that acts on it,
    and keep those with no copy to that rule's model yet and a key to send them with."""
    triage = Triage()
    for row in calls.iter_rows(named=True):  # one rebuilt request per stored call
        request = http.Request.make(
            row["method"],
            f"https://{row['host']}{row['path']}",
            row["request_body"].encode(),
            {"content-type": "application/json"},
        )
        live = router.stored_call(row["call_id"], request, _metadata(row))
        rule = rule_for(rules, live) if live is not None else None
        if live is None or rule is None:
            continue
        triage.matched += 1
        if rule.to in row["shadowed_to"]:
            triage.already += 1
            continue
        key = API_KEYS.get(row["provider"])
        if key is None or not environ.get(key.variable):
            triage.keyless[row["provider"]] += 1
            continue
        request.headers.update(key.headers(environ[key.variable]))
        answer = read_answer(row["response_body"].encode(), bool(row["stream"]))
        triage.work.append(Work(live, request, rule, answer))
    return triage


def _metadata(row: dict[str, Any]) -> CallMetadata:
    properties = json_or_none((row["properties"] or "").encode())
    return CallMetadata(row["app"], row["user_id"], row["session_id"], properties or {})


def _missing_key(provider: str) -> str:
    key = API_KEYS.get(provider)
    if key is None:
        return f"llmtap evaluate has no API-key scheme for {provider} (its requests are signed or use OAuth)"
    return f"set {key.variable} to evaluate them (stored requests carry no key: secrets are never stored)"


async def _send(router: Router, work: list[Work], err: Console) -> Counter[str]:
    """Send every call's copies in turn, with a progress bar; returns, per rule, the calls
    left unsent because the rule's daily spend cap was reached."""
    capped: Counter[str] = Counter()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        with Progress(*columns, console=err) as progress:
            task = progress.add_task("shadow copies", total=len(work))
            for item in work:
                if router.spend.over(item.rule):
                    capped[item.rule.id] += 1
                else:
                    await router.shadow_stored(item.live, item.request, item.rule, item.answer)
                progress.advance(task)
    finally:
        await router.done()
    return capped


def _summary(data_dir: Path, started: datetime, originals: list[str]) -> pl.DataFrame:
    """Per rule and arm, the copies this run recorded: how many were compared, agreed,
    failed, and what they cost."""
    return (
        load(data_dir, since=started)
        .filter(pl.col("routing_arm").is_in(SHADOW_ARMS) & pl.col("shadow_of").is_in(originals))
        .group_by("routing_rule", "routing_arm", pl.col("request_model").alias("model"))
        .agg(
            copies=pl.len(),
            compared=pl.col("agreement").is_not_null().sum(),
            agreed=pl.col("agreement").fill_null(False).sum(),
            failed=pl.col("error").is_not_null().sum(),
            spend_usd=pl.col("cost_usd").cast(pl.Float64).sum(),
        )
        .with_columns(agreement=pl.col("agreed") / pl.col("compared"))
        .sort("routing_rule", "routing_arm")
        .collect()
    )


def _print_summary(out: Console, summary: pl.DataFrame, capped: Counter[str], triage: Triage) -> None:
    table = Table(title="llmtap evaluate: shadow copies of stored calls")
    for name in ("rule", "arm", "model", "copies", "compared", "agreed", "agreement", "failed", "spend USD"):
        table.add_column(name, justify="left" if name in ("rule", "arm", "model") else "right")
    for row in summary.iter_rows(named=True):
        agreement = "-" if row["agreement"] is None else f"{row['agreement']:.1%}"
        table.add_row(
            row["routing_rule"],
            row["routing_arm"],
            row["model"],
            *(str(row[name]) for name in ("copies", "compared", "agreed")),
            agreement,
            str(row["failed"]),
            f"{row['spend_usd']:.6f}",
        )
    out.print(table)
    out.print(f"{summary['copies'].sum()} copies sent, shadow spend ${summary['spend_usd'].sum():.6f}")
    if triage.already:
        out.print(f"{triage.already} matching calls already had a shadow copy and were left alone")
    for rule, count in sorted(capped.items()):
        out.print(f"rule {rule}: {count} call(s) not copied: its shadow_spend_cap_usd for today is reached")


def _window(since: datetime | None, until: datetime | None) -> str:
    if since is None and until is None:
        return ""
    return f" from {since.isoformat() if since else 'the start'} to {until.isoformat() if until else 'now'}"
