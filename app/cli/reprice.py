"""`llmtap reprice`: stored calls' costs, recomputed after prices or overrides change."""

from __future__ import annotations

from datetime import datetime

import click

from app.cli.options import config_option, data_dir_option, since_option
from collector.settings.config import load_settings


@click.command("reprice")
@data_dir_option()
@config_option("TOML config file with [prices] overrides (see README)")
@since_option
def reprice_command(data_dir: str | None, config: str | None, since: datetime | None) -> int:
    """Recompute stored calls' costs after prices or overrides change.

    Recompute cost_usd, input_cost_usd, output_cost_usd and price_ref of stored calls from
    their stored usage, with the bundled genai-prices catalogue and the config's [prices]
    overrides. Nothing else changes; safe while a proxy runs.

    \b
    Examples:
      llmtap reprice --config llmtap.toml
      llmtap reprice --config llmtap.toml --since 2026-03-01
    """
    from collector.pricing.book import PriceBook
    from collector.pricing.reprice import reprice
    from collector.providers import builtin_providers

    settings = load_settings(data_dir=data_dir, config_file=config)
    prices_ids = {p.name: p.prices_id for p in builtin_providers()}
    result = reprice(settings.paths.db, PriceBook(settings.prices), prices_ids, since)
    window = f" started since {since.isoformat()}" if since else ""
    print(
        f"llmtap: repriced {result.calls} calls{window}: {result.changed} changed, "
        f"{result.unpriced} with usage but no price (listed by `llmtap report`)"
    )
    return 0
