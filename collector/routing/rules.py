"""The routing rules file: which calls the proxy sends to another model, and how.

A person reviews this file; ``llmtap recommend --write-rules`` drafts it and the proxy
reloads it when it changes. It is YAML::

    version: 1
    rules:
      - id: marketing-to-mixtral            # unique; recorded on every call it acts on
        match:
          model: openai/gpt-4-1106-preview  # required: the model the client asks for
          app: marketing                    # optional: only this app (X-Llmtap-App)
          provider: openrouter              # optional: only this provider
          max_prompt_tokens: 8000           # optional: only prompts estimated at most this big
          without: [tools, images]          # optional: never requests that use these features
        to: mistralai/mixtral-8x7b-instruct
        mode: shadow                        # shadow | canary | enforce
        fraction: 0.1                       # shadow: share of calls copied; canary: share of callers
        sticky: session                     # canary: session | user | app keeps a caller in one arm
        shadow_spend_cap_usd: 5             # shadow: most spent on copies per UTC day
        evidence: {agreement: 0.97, ...}    # free-form, for the reviewer; the proxy ignores it

The first rule that matches a call is the one that acts on it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from collector.providers.base import FEATURES

MODES = ("shadow", "canary", "enforce")
#: ``routing_arm`` values of the calls llmtap itself makes to evaluate a model (shadow copies,
#: copies to the incumbent for the noise floor, judge calls): shadow spend, not the app's.
EVALUATION_ARMS = ("shadow", "noise_floor", "judge")
STICKY = ("session", "user", "app")
RULES_FILE = "rules.yaml"


class RulesError(ValueError):
    """A rules file that cannot be used; the message says which rule and what is wrong."""


@dataclass(frozen=True, slots=True)
class Match:
    """Which calls a rule covers. Unset fields match anything."""

    model: str
    app: str | None = None
    provider: str | None = None
    max_prompt_tokens: int | None = None
    without: tuple[str, ...] = ()

    def covers(
        self,
        *,
        model: str | None,
        app: str | None,
        provider: str,
        prompt_tokens: int,
        features: Iterable[str],
    ) -> bool:
        return (
            model == self.model
            and (self.app is None or app == self.app)
            and (self.provider is None or provider == self.provider)
            and (self.max_prompt_tokens is None or prompt_tokens <= self.max_prompt_tokens)
            and not set(self.without).intersection(features)
        )


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    match: Match
    to: str
    mode: str = "shadow"
    fraction: float = 0.1
    sticky: str = "session"
    shadow_spend_cap_usd: float | None = None
    evidence: dict[str, Any] = field(default_factory=dict)


def load_rules(path: Path) -> list[Rule]:
    """The rules in ``path``; an absent file means no rules. Raises RulesError when the file
    is not valid, naming the rule and the field."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise RulesError(f"{path}: cannot read ({exc.strerror})") from exc
    return parse_rules(text, str(path))


def parse_rules(text: str, source: str = "rules") -> list[Rule]:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RulesError(f"{source}: not valid YAML: {exc}") from exc
    if doc is None:
        return []
    if not isinstance(doc, dict) or not isinstance(doc.get("rules", []), list):
        raise RulesError(f"{source}: expected a mapping with a 'rules' list")
    if doc.get("version", 1) != 1:
        raise RulesError(f"{source}: unsupported version {doc.get('version')!r} (this llmtap reads 1)")
    rules = [_rule(f"{source}: rules[{i}]", entry) for i, entry in enumerate(doc.get("rules") or [])]
    seen: set[str] = set()
    for rule in rules:
        if rule.id in seen:
            raise RulesError(f"{source}: rule id {rule.id!r} is used twice")
        seen.add(rule.id)
    return rules


def dump_rules(rules: Sequence[Rule], comment: str = "") -> str:
    """YAML text for ``rules`` that :func:`parse_rules` reads back to equal rules.

    ``comment`` (any number of lines) is written at the top as ``#`` comments."""
    header = "".join(f"# {line}\n".replace("# \n", "#\n") for line in comment.splitlines())
    body = {"version": 1, "rules": [_rule_dict(rule) for rule in rules]}
    return header + yaml.safe_dump(body, sort_keys=False, allow_unicode=True)


def first_match(rules: Sequence[Rule], **call: Any) -> Rule | None:
    """The first rule whose match covers the call (keywords as in :meth:`Match.covers`)."""
    return next((rule for rule in rules if rule.match.covers(**call)), None)


def _rule_dict(rule: Rule) -> dict[str, Any]:
    match: dict[str, Any] = {"model": rule.match.model}
    for key in ("app", "provider", "max_prompt_tokens"):
        if (value := getattr(rule.match, key)) is not None:
            match[key] = value
    if rule.match.without:
        match["without"] = list(rule.match.without)
    out: dict[str, Any] = {"id": rule.id, "match": match, "to": rule.to, "mode": rule.mode}
    out["fraction"] = rule.fraction
    if rule.mode == "canary":
        out["sticky"] = rule.sticky
    if rule.shadow_spend_cap_usd is not None:
        out["shadow_spend_cap_usd"] = rule.shadow_spend_cap_usd
    if rule.evidence:
        out["evidence"] = rule.evidence
    return out


_RULE_KEYS = ("id", "match", "to", "mode", "fraction", "sticky", "shadow_spend_cap_usd", "evidence")
_MATCH_KEYS = ("model", "app", "provider", "max_prompt_tokens", "without")


def _rule(where: str, entry: Any) -> Rule:
    if not isinstance(entry, dict):
        raise RulesError(f"{where}: expected a mapping")
    _known(where, entry, _RULE_KEYS)
    rule_id = _text(f"{where}.id", entry.get("id"))
    where = f"{where} ({rule_id})"
    mode = entry.get("mode", "shadow")
    if mode not in MODES:
        raise RulesError(f"{where}.mode: expected one of {', '.join(MODES)}, got {mode!r}")
    sticky = entry.get("sticky", "session")
    if sticky not in STICKY:
        raise RulesError(f"{where}.sticky: expected one of {', '.join(STICKY)}, got {sticky!r}")
    fraction = entry.get("fraction", 0.1)
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 <= fraction <= 1:
        raise RulesError(f"{where}.fraction: expected a number from 0 to 1, got {fraction!r}")
    cap = entry.get("shadow_spend_cap_usd")
    if cap is not None and (
        isinstance(cap, bool) or not isinstance(cap, int | float) or not math.isfinite(cap) or cap < 0
    ):
        raise RulesError(f"{where}.shadow_spend_cap_usd: expected a non-negative number, got {cap!r}")
    evidence = entry.get("evidence") or {}
    if not isinstance(evidence, dict):
        raise RulesError(f"{where}.evidence: expected a mapping")
    return Rule(
        id=rule_id,
        match=_match(f"{where}.match", entry.get("match")),
        to=_text(f"{where}.to", entry.get("to")),
        mode=mode,
        fraction=float(fraction),
        sticky=sticky,
        shadow_spend_cap_usd=None if cap is None else float(cap),
        evidence=evidence,
    )


def _match(where: str, entry: Any) -> Match:
    if not isinstance(entry, dict):
        raise RulesError(f"{where}: expected a mapping with at least 'model'")
    _known(where, entry, _MATCH_KEYS)
    limit = entry.get("max_prompt_tokens")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise RulesError(f"{where}.max_prompt_tokens: expected a positive whole number, got {limit!r}")
    without = entry.get("without") or []
    if not isinstance(without, list) or any(f not in FEATURES for f in without):
        raise RulesError(
            f"{where}.without: expected a list drawn from {', '.join(FEATURES)}, got {without!r}"
        )
    return Match(
        model=_text(f"{where}.model", entry.get("model")),
        app=_optional_text(f"{where}.app", entry.get("app")),
        provider=_optional_text(f"{where}.provider", entry.get("provider")),
        max_prompt_tokens=limit,
        without=tuple(without),
    )


def _known(where: str, entry: dict, allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(entry) - set(allowed))
    if unknown:
        raise RulesError(
            f"{where}: unknown key(s) {', '.join(map(str, unknown))}; allowed: {', '.join(allowed)}"
        )


def _text(where: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise RulesError(f"{where}: expected a non-empty string, got {value!r}")
    return value


def _optional_text(where: str, value: Any) -> str | None:
    return None if value is None else _text(where, value)
