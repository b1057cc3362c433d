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

The document lives in a file (:class:`RulesFile`) or, across a fleet, in the fleet store's
``routing_rules`` table (:mod:`collector.fleet.rules`); both are a :class:`RulesSource` the
proxy watches the same way, and a :class:`RulesTarget` that :func:`write_rules` merges into
(:mod:`collector.routing.location` says which one a command uses).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol, get_args

import yaml
from pydantic import Field, Strict, ValidationError, field_validator

from collector.providers.base import FEATURES
from collector.settings.validation import Table, Text, explain
from collector.trust.private import write_private

Mode = Literal["shadow", "canary", "enforce"]
MODES: tuple[str, ...] = get_args(Mode)
Sticky = Literal["session", "user", "app"]
#: A request feature a rule can refuse to route (``match.without``).
Feature = Literal[FEATURES]  # type: ignore[valid-type]
#: ``routing_arm`` values of the calls llmtap itself makes to evaluate a model (shadow copies,
#: copies to the incumbent for the noise floor, judge calls): shadow spend, not the app's.
EVALUATION_ARMS = ("shadow", "noise_floor", "judge")
#: ``routing_arm`` values of every call llmtap makes itself: the evaluation calls and retries.
OWN_CALL_ARMS = (*EVALUATION_ARMS, "retry")
#: ``routing_arm`` of a fallback chain's failed attempts and of the call a later target answered
#: (:mod:`collector.proxy.addons.fallback`): production calls, the client's own.
FALLBACK_ARM = "fallback"
#: ``routing_arm`` values of the calls whose answers are read in flight: a sampled live call
#: (its answer is the incumbent) and the evaluation calls.
COMPARED_ARMS = ("live", *EVALUATION_ARMS)


class RulesError(ValueError):
    """A rules file that cannot be used; the message says which rule and what is wrong."""


class Match(Table):
    """Which calls a rule covers. Unset fields match anything."""

    model: Text
    app: Text | None = None
    provider: Text | None = None
    max_prompt_tokens: Annotated[int, Strict(), Field(ge=1, description="a positive whole number")] | None = (
        None
    )
    without: tuple[Feature, ...] = ()

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


class Rule(Table):
    id: Text
    match: Match = Field(description="a mapping with at least 'model'")
    to: Text
    mode: Mode = "shadow"
    fraction: Annotated[float, Strict(), Field(ge=0, le=1, description="a number from 0 to 1")] = 0.1
    sticky: Sticky = "session"
    shadow_spend_cap_usd: (
        Annotated[float, Strict(), Field(ge=0, allow_inf_nan=False, description="a non-negative number")]
        | None
    ) = None
    evidence: dict[str, Any] = Field(default_factory=dict, description="a mapping")


class RulesDocument(Table):
    """The file as written."""

    version: Literal[1] = Field(default=1, description="1 (the only version this llmtap reads)")
    rules: list[Rule] = Field(default_factory=list, description="a list of rules")

    @field_validator("rules")
    @classmethod
    def _unique_ids(cls, rules: list[Rule]) -> list[Rule]:
        seen: set[str] = set()
        for rule in rules:
            if rule.id in seen:
                raise ValueError(f"rule id {rule.id!r} is used twice")
            seen.add(rule.id)
        return rules


#: What :func:`explain` validates a rules file as.
_DOCUMENT = Annotated[RulesDocument, Field(description="a mapping with a 'rules' list")]


class RulesSource(Protocol):
    """Where a rules document is read from."""

    @property
    def label(self) -> str:
        """The source as messages name it (a path; a URL with its password hidden)."""
        ...

    def version(self) -> Hashable:
        """A value that changes when the document does; cheap, and never waits on a network
        (the proxy asks on its event loop, at most once a second)."""
        ...

    def text(self) -> str | None:
        """The document; None when there is none (no rules). RulesError when it cannot be read."""
        ...


class RulesTarget(RulesSource, Protocol):
    """A source that rules can also be written to."""

    def write(self, text: str) -> None:
        """Replace the document with ``text`` at once (a reader never sees half of it)."""


@dataclass(frozen=True, slots=True)
class RulesFile:
    """The rules file at ``path`` (absent: no rules)."""

    path: Path

    @property
    def label(self) -> str:
        return str(self.path)

    def version(self) -> Hashable:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise RulesError(f"{self.path}: cannot read ({exc.strerror})") from exc
        return (stat.st_mtime_ns, stat.st_size)

    def text(self) -> str | None:
        try:
            return self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise RulesError(f"{self.path}: cannot read ({exc.strerror})") from exc

    def write(self, text: str) -> None:
        """Replaced atomically, keeping the mode a person gave the file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_private(self.path, text, keep_mode=True)


def read_rules(source: RulesSource) -> list[Rule]:
    """The rules of ``source``; no document means no rules. Raises RulesError when it is not
    valid, naming the rule and the field."""
    text = source.text()
    return [] if text is None else parse_rules(text, source.label)


def load_rules(path: Path) -> list[Rule]:
    """The rules in the file ``path`` (see :func:`read_rules`)."""
    return read_rules(RulesFile(path))


def parse_rules(text: str, source: str = "rules") -> list[Rule]:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RulesError(f"{source}: not valid YAML: {exc}") from exc
    if document is None:
        return []
    try:
        return RulesDocument.model_validate(document).rules
    except ValidationError as exc:
        message = explain(exc, source=source, root=_DOCUMENT, document=document, noun="rules file")
        raise RulesError(message) from None


def dump_rules(rules: Sequence[Rule], comment: str = "") -> str:
    """YAML text for ``rules`` that :func:`parse_rules` reads back to equal rules.

    ``comment`` (any number of lines) is written at the top as ``#`` comments."""
    header = "".join(f"# {line}\n".replace("# \n", "#\n") for line in comment.splitlines())
    body = {"version": 1, "rules": [_rule_dict(rule) for rule in rules]}
    return header + yaml.safe_dump(body, sort_keys=False, allow_unicode=True)


def merge_rules(existing: Sequence[Rule], drafted: Sequence[Rule]) -> list[Rule]:
    """``existing`` with each drafted rule replacing the one of the same id in place, and
    drafted rules with new ids appended: a redraft replaces the rule of the same swap, and
    rules a person wrote or kept stay as they are, in their order."""
    by_id = {rule.id: rule for rule in drafted}
    merged = [by_id.pop(rule.id, rule) for rule in existing]
    return merged + [rule for rule in drafted if rule.id in by_id]


def write_rules(target: RulesTarget, drafted: Sequence[Rule], comment: str) -> list[Rule]:
    """Merge ``drafted`` into the rules of ``target`` (see :func:`merge_rules`) with
    ``comment`` as its header; the rules now there.

    The proxy acts on these rules and reloads them when they change, so the document is
    replaced at once (never read half-written), and not touched at all when the present one
    is not valid rules (RulesError)."""
    merged = merge_rules(read_rules(target), drafted)
    target.write(dump_rules(merged, comment))
    return merged


def first_match(rules: Sequence[Rule], **call: Any) -> Rule | None:
    """The first rule whose match covers the call (keywords as in :meth:`Match.covers`)."""
    return next((rule for rule in rules if rule.match.covers(**call)), None)


def _rule_dict(rule: Rule) -> dict[str, Any]:
    """The rule as the reviewer should read it: no unset filters, no stickiness on a rule
    that is not a canary (it would mean nothing there)."""
    out = rule.model_dump(
        mode="json", exclude_none=True, exclude={"sticky"} if rule.mode != "canary" else None
    )
    if not rule.match.without:
        del out["match"]["without"]
    if not rule.evidence:
        del out["evidence"]
    return out
