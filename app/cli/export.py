"""`llmtap export`: the recorded llm_calls rows, as a file or on stdout."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

import click

from app.cli.options import data_dir_option, format_option, node_option, store_option, window_options
from collector.settings.paths import Paths, resolve_data_dir
from collector.storage.export import FORMATS


@click.command("export")
@data_dir_option()
@store_option()
@format_option(sorted(FORMATS), "jsonl")
@window_options
@node_option
@click.option("--out", metavar="FILE", help="output file (default: stdout)")
def export_command(
    data_dir: str | None,
    store: str | None,
    fmt: str,
    since: datetime | None,
    until: datetime | None,
    nodes: tuple[str, ...],
    out: str | None,
) -> int:
    """Write the recorded llm_calls rows.

    Safe while a proxy runs. Times without an offset are UTC; --since is inclusive, --until
    exclusive. From a fleet store (--store postgresql://...) each row also has its node.

    \b
    Examples:
      llmtap export > calls.jsonl
      llmtap export --format parquet --since 2026-03-01 --out march.parquet
      llmtap export --store postgresql://llmtap@db.internal/llmtap --node web-1 --format csv
    """
    from analytics.engines import Window, reader

    target = Path(out) if out else None
    source = reader(store or Paths(resolve_data_dir(data_dir)).db)
    count = source.export(fmt, Window(since, until, nodes), target)
    if target is not None:
        print(f"llmtap: wrote {count} calls to {target}", file=sys.stderr)
    return 0
