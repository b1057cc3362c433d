"""The routing rules file: parsing, clear errors, matching (capability guards, prompt size)."""

from __future__ import annotations

import pytest

from collector.routing.rules import Match, Rule, RulesError, dump_rules, first_match, load_rules, parse_rules

FILE = """
version: 1
rules:
  - id: small-prompts
    match: {model: gpt-4o, app: support, max_prompt_tokens: 2000, without: [tools, images]}
    to: gpt-4o-mini
    mode: canary
    fraction: 0.2
    sticky: user
  - id: everything-else
    match: {model: gpt-4o}
    to: gpt-4o-mini
    mode: shadow
    shadow_spend_cap_usd: 5
"""


def call(**over):
    return {
        "model": "gpt-4o",
        "app": "support",
        "provider": "openai",
        "prompt_tokens": 500,
        "features": [],
    } | over


def test_parse_reads_every_field_and_round_trips():
    rules = parse_rules(FILE)
    assert rules[0] == Rule(
        id="small-prompts",
        match=Match(model="gpt-4o", app="support", max_prompt_tokens=2000, without=("tools", "images")),
        to="gpt-4o-mini",
        mode="canary",
        fraction=0.2,
        sticky="user",
    )
    assert (rules[1].mode, rules[1].fraction, rules[1].shadow_spend_cap_usd) == ("shadow", 0.1, 5.0)
    assert parse_rules(dump_rules(rules, "drafted by llmtap recommend")) == rules


@pytest.mark.parametrize(
    ("overrides", "rule_id"),
    [
        ({}, "small-prompts"),
        ({"features": ["tools"]}, "everything-else"),  # capability guard
        ({"features": ["structured_output"]}, "small-prompts"),
        ({"prompt_tokens": 2000}, "small-prompts"),
        ({"prompt_tokens": 2001}, "everything-else"),  # prompt-size bound
        ({"app": "billing"}, "everything-else"),
        ({"model": "gpt-4.1"}, None),
        ({"model": None}, None),
    ],
)
def test_first_match(overrides, rule_id):
    rule = first_match(parse_rules(FILE), **call(**overrides))
    assert (rule.id if rule else None) == rule_id


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rules: [oops", "not valid YAML"),
        ("- just a list", "rules file must be a mapping with a 'rules' list"),
        ("version: 2\nrules: []", "version must be 1 (the only version this llmtap reads), got 2"),
        ("rules: [{id: a, to: m}]", "rules[0] (a).match must be a mapping with at least 'model'"),
        (
            "rules: [{id: a, match: {model: x}, to: m, mode: fast}]",
            "rules[0] (a).mode must be one of shadow, canary, enforce, got 'fast'",
        ),
        (
            "rules: [{id: a, match: {model: x}, to: m, fraction: 1.5}]",
            "rules[0] (a).fraction must be a number from 0 to 1, got 1.5",
        ),
        (
            "rules: [{id: a, match: {model: x, without: [wings]}}]",
            "match.without[0] must be one of tools, structured_output, images, audio, got 'wings'",
        ),
        (
            "rules: [{id: a, match: {model: x, max_prompt_tokens: 0}, to: m}]",
            "match.max_prompt_tokens must be a positive whole number, got 0",
        ),
        (
            "rules: [{id: a, match: {model: x}, to: m, colour: red}]",
            "rules[0] (a): unknown keys colour (allowed: id, match, to,",
        ),
        (
            "rules: [{id: a, match: {model: x}, to: m}, {id: a, match: {model: y}, to: m}]",
            "rules: rule id 'a' is used twice",
        ),
        ("rules: [{match: {model: x}, to: m}]", "rules[0].id must be a non-empty string, got None"),
    ],
)
def test_errors_name_the_rule_and_field(text, message):
    with pytest.raises(RulesError) as err:
        parse_rules(text, "rules.yaml")
    assert message in str(err.value)
    assert str(err.value).startswith("rules.yaml: ")


def test_absent_file_means_no_rules(tmp_path):
    assert load_rules(tmp_path / "rules.yaml") == []
    (tmp_path / "rules.yaml").write_text("")
    assert load_rules(tmp_path / "rules.yaml") == []
