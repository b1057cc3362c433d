"""Shadow evaluation of stored calls (``llmtap evaluate``): the proxy's copies, offline.

Shadow mode gathers evidence only as fast as live traffic arrives, while stored bodies
(capture mode ``full`` or ``redacted``) already hold requests and their answers. Each
stored call that a shadow rule matches (or the one rule named by ``--rule``, whatever its
mode) and that has no shadow copy to that rule's model yet is sent again with the rule's
model to the same provider, and its answer compared with the stored one. The copies go
through a proxy started in this process, by the router's own :meth:`Router.shadow
<collector.proxy.addons.router.Router.shadow>`, so an offline copy passes the same stages
and is the same row as a live one: ``routing_arm`` "shadow", ``shadow_of`` the stored
call, ``routing_rule``, ``comparison``, ``agreement``, cost.

Stored requests carry no credentials (secrets are never stored), so each provider's key
comes from the environment variable its provider module names
(:attr:`~collector.providers.base.Provider.api_key`); it is sent upstream and cut out of
anything stored, as a client's key through the proxy is. A provider without a key in the
environment (or one whose requests are signed, such as Bedrock or Vertex) is skipped.

Copies go one at a time, so that a rule's ``shadow_spend_cap_usd`` (per UTC day, counting
what the proxy's copies already spent that day) is checked with every earlier copy's cost
known.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl
from mitmproxy import http

from collector.providers import ProviderRegistry
from collector.proxy.addons.router import Original, rule_for
from collector.proxy.own_calls import output_of, read_answer
from collector.proxy.server import serving_in_background
from collector.routing.location import rules_target
from collector.routing.rules import Rule, RulesSource, read_rules
from collector.settings.config import Settings
from collector.storage.database import read_connection
from collector.storage.schema import CallMetadata
from collector.wire.bodies import json_or_none

__all__ = ["EvaluateError", "Triage", "Work", "missing_key", "send_copies", "triage"]

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


class EvaluateError(ValueError):
    """Nothing can be evaluated as asked; the message says why and what to change."""


@dataclass(frozen=True, slots=True)
class Work:
    """One stored call to copy, and the rule whose model it is copied to."""

    original: Original
    rule: Rule


@dataclass(slots=True)
class Triage:
    """What the stored calls came to before anything is sent."""

    work: list[Work] = field(default_factory=list)
    matched: int = 0
    already: int = 0
    #: Calls skipped for want of a key, per provider.
    keyless: Counter[str] = field(default_factory=Counter)


def triage(
    settings: Settings,
    environ: Mapping[str, str],
    rule_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Triage:
    """Rebuild each stored call as the recorder reads it, find the rule that acts on it, and
    keep those with no copy to that rule's model yet and a key to send them with.

    Raises :class:`EvaluateError` when nothing can be evaluated as asked (no such rule, no
    stored bodies, no stored call a rule matches)."""
    rules = _rules(rules_target(settings), rule_id)
    stored, calls = _stored_calls(settings.paths.db, rules, since, until)
    registry = ProviderRegistry(extra_hosts=settings.extra_hosts)
    found = Triage()
    for row in calls.iter_rows(named=True):  # one rebuilt request per stored call
        endpoint = registry.match(row["host"], row["path"], row["method"])
        if endpoint is None:
            continue
        body = row["request_body"].encode()
        facts = endpoint.provider.read_request(endpoint.api, row["path"], json_or_none(body))
        metadata = _metadata(row)
        rule = rule_for(rules, facts, metadata, endpoint.provider.name)
        if rule is None:
            continue
        found.matched += 1
        if rule.to in row["shadowed_to"]:
            found.already += 1
            continue
        key = endpoint.provider.api_key
        if key is None or not environ.get(key.variable):
            found.keyless[endpoint.provider.name] += 1
            continue
        wanted = {"content-type": "application/json", **key.headers(environ[key.variable])}
        headers = [(name.encode(), value.encode()) for name, value in wanted.items()]
        request = http.Request.make(row["method"], f"https://{row['host']}{row['path']}", body, headers)
        incumbent = output_of(endpoint, read_answer(row["response_body"].encode(), bool(row["stream"])))
        original = Original(row["call_id"], endpoint, request, facts, metadata, incumbent)
        found.work.append(Work(original, rule))
    if not found.matched:
        names = ", ".join(f"{rule.id} (model {rule.match.model})" for rule in rules)
        raise EvaluateError(
            f"none of the {stored} stored calls with bodies{window(since, until)} matches the rule(s) {names}"
        )
    return found


def missing_key(provider: str, settings: Settings) -> str:
    """Why a provider's stored calls were skipped, and what to set."""
    providers = {p.name: p for p in ProviderRegistry(extra_hosts=settings.extra_hosts).providers}
    key = providers[provider].api_key if provider in providers else None
    if key is None:
        return f"llmtap evaluate has no API-key scheme for {provider} (its requests are signed or use OAuth)"
    return f"set {key.variable} to evaluate them (stored requests carry no key: secrets are never stored)"


def send_copies(
    settings: Settings, work: list[Work], advance: Callable[[], None]
) -> tuple[Counter[str], bool]:
    """Send every call's copies in turn through a proxy of this process (on a free port),
    calling ``advance`` after each call. Returns, per rule, the calls left unsent because the
    rule's daily spend cap was reached, and whether every copy's row reached the store (those
    that did not stay in the spool for the next proxy or evaluate)."""
    capped: Counter[str] = Counter()
    with serving_in_background(settings.model_copy(update={"listen_port": 0})) as proxy:
        assert proxy.loop is not None
        for item in work:
            if proxy.router.spend.over(item.rule):
                capped[item.rule.id] += 1
            else:
                asyncio.run_coroutine_threadsafe(
                    proxy.router.shadow(item.original, item.rule), proxy.loop
                ).result()
            advance()
    return capped, bool(proxy.stored_all)


def window(since: datetime | None, until: datetime | None) -> str:
    """`` from A to B`` for messages about a time window, or nothing without one."""
    if since is None and until is None:
        return ""
    return f" from {since.isoformat() if since else 'the start'} to {until.isoformat() if until else 'now'}"


def _rules(source: RulesSource, rule_id: str | None) -> list[Rule]:
    """The shadow rules the proxy follows (a file, or the fleet's), or the one rule ``rule_id``
    whatever its mode."""
    rules = read_rules(source)
    path = source.label
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
            f"no stored request bodies in {db}{window(since, until)}: the calls were recorded with "
            'capture = "metadata", which keeps none. Record with capture = "full" or "redacted" '
            "in the config to evaluate offline, or let the proxy gather evidence in shadow mode"
        )
    return bodies, calls


def _metadata(row: dict[str, Any]) -> CallMetadata:
    properties = json_or_none((row["properties"] or "").encode())
    return CallMetadata(row["app"], row["user_id"], row["session_id"], properties or {})
