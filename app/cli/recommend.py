"""`llmtap recommend`: per route, the cheaper setups the recorded traffic proves safe."""

from __future__ import annotations

import sys
from datetime import datetime

import click

from app.cli.options import (
    config_option,
    data_dir_option,
    format_option,
    rules_option,
    store_option,
    window_options,
)
from collector.settings.config import load_settings


@click.command("recommend")
@data_dir_option()
@store_option()
@config_option("TOML config file ([recommend], [prices]; see README)")
@window_options
@format_option(("table", "json"), "table")
@click.option(
    "--write-rules",
    "draft",
    is_flag=True,
    help="draft rules into the rules file, merged by rule id with the rules already there",
)
@click.option(
    "--mode",
    type=click.Choice(("shadow", "canary", "enforce")),
    default="shadow",
    show_default=True,
    help="drafted rules' mode: shadow (for swaps needing evidence), canary or enforce (for "
    "recommended swaps)",
)
@rules_option(
    "rules file to write (default: the fleet store's rules with a fleet --store or [fleet], else "
    "DATA_DIR/rules.yaml)"
)
def recommend_command(
    data_dir: str | None,
    store: str | None,
    config: str | None,
    since: datetime | None,
    until: datetime | None,
    fmt: str,
    draft: bool,
    mode: str,
    rules: str | None,
) -> int:
    """Cheaper models, caching, batch APIs per route, with evidence.

    Recommend, per route (app + provider + model), what the recorded traffic proves safe: a
    cheaper model whose answers are no worse, provider prompt caching, or a batch API. Where
    answers are scored (graders, feedback), a swap needs the lower confidence bound of its
    quality difference above -[recommend] max_quality_loss; elsewhere, its shadow answers'
    agreement with the incumbent's (Wilson lower bound at least min_agreement), both over at
    least min_samples. Each record has its costs per 1k requests, projected monthly savings
    (low/mid/high), latency change and risks; then what canary rules realised.
    --write-rules drafts routing rules for review: into the rules file, or across a fleet
    (a fleet --store, or [fleet] in the config) into the fleet store, whose rules every
    sidecar's proxy follows.

    \b
    Examples:
      llmtap recommend
      llmtap recommend --since 2026-03-01 --format json
      llmtap recommend --write-rules --mode canary
      llmtap recommend --store postgresql://llmtap@db.internal/llmtap --write-rules
    """
    from analytics import load, realised_savings
    from analytics.engines import reader
    from analytics.recommender import draft_rules, recommend
    from app.terminal.recommendations import draft_header, write
    from collector.pricing.book import PriceBook
    from collector.routing.location import rules_target
    from collector.routing.rules import write_rules

    settings = load_settings(data_dir=data_dir, config_file=config, rules_file=rules)
    source = store or str(settings.paths.db)
    print(f"llmtap: analysing the calls in {reader(source).label} ...", file=sys.stderr)
    recs = recommend(source, since, until, settings.recommend, book=PriceBook(settings.prices))
    window = f"{since.isoformat() if since else 'start'} to {until.isoformat() if until else 'now'}"
    realised = realised_savings(load(source, since, until))
    write(recs, fmt, f"llmtap recommend, {window} (UTC)", realised=realised)
    if draft:
        target = rules_target(settings, store)
        drafted = draft_rules(recs, mode)
        total = len(write_rules(target, drafted, draft_header()))
        print(
            f"llmtap: drafted {len(drafted)} {mode} rules into {target.label} ({total} rules in all); "
            "review them",
            file=sys.stderr,
        )
    return 0
