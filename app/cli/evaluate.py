"""`llmtap evaluate`: shadow mode, offline, from the stored calls."""

from __future__ import annotations

from datetime import datetime

import click

from app.cli.options import (
    config_option,
    data_dir_option,
    rules_option,
    store_option,
    upstream_option,
    window_options,
)
from collector.fleet.names import is_fleet_url
from collector.settings.config import load_settings


@click.command("evaluate")
@data_dir_option()
@store_option(
    "the local store whose calls to copy: a data directory (default: $LLMTAP_STORE, else --data-dir); "
    "not a fleet store, which keeps no request bodies"
)
@config_option("TOML config file ([routing], [prices], upstreams)")
@rules_option()
@click.option("--rule", metavar="ID", help="evaluate this one rule, whatever its mode")
@window_options
@click.option("--limit", type=int, metavar="N", help="copy at most N stored calls")
@upstream_option("send copies meant for HOST to URL instead (repeatable), as the proxy's --upstream")
def evaluate_command(
    data_dir: str | None,
    store: str | None,
    config: str | None,
    rules: str | None,
    rule: str | None,
    since: datetime | None,
    until: datetime | None,
    limit: int | None,
    upstreams: tuple[str, ...],
) -> int:
    """Shadow-evaluate stored calls offline: resend, compare, record.

    Every stored call (capture mode full or redacted) that a shadow rule matches and that
    has no copy to the rule's model yet is sent again with the rule's model to the same
    provider (through --upstream and the config's upstreams), its answer compared with the
    stored one, and recorded as the proxy records shadow copies (routing_arm shadow,
    shadow_of, comparison, agreement, cost), for `llmtap recommend`. Stored requests carry
    no key: each provider's key is read from the environment (OPENAI_API_KEY,
    ANTHROPIC_API_KEY, OPENROUTER_API_KEY, GEMINI_API_KEY, MISTRAL_API_KEY, GROQ_API_KEY,
    ...); calls of a provider without one are skipped. Each rule's shadow_spend_cap_usd per
    UTC day holds, counting what the proxy's copies spent today.

    \b
    Examples:
      OPENAI_API_KEY=sk-... llmtap evaluate
      llmtap evaluate --rule cheaper-summaries --since 2026-03-01 --limit 200
    """
    from analytics.engines.local import LocalStore
    from app.terminal.evaluation import evaluate

    if is_fleet_url(store):
        raise click.UsageError(
            "evaluate resends stored request bodies, which stay on the sidecar that recorded them: "
            "run it on a sidecar (--data-dir), not on the fleet store"
        )
    if store is not None:
        data_dir = str(LocalStore.of(store).db.parent)
    settings = load_settings(
        data_dir=data_dir, config_file=config, upstream_flags=list(upstreams), rules_file=rules
    )
    return evaluate(settings, rule, since, until, limit)
