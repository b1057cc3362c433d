"""`llmtap export`: the recorded llm_calls rows, as a file or on stdout."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

import click

from app.cli.options import data_dir_option, format_option, window_options
from collector.settings.paths import Paths, resolve_data_dir
from collector.storage.export import FORMATS, export_calls


@click.command("export")
@data_dir_option()
@format_option(sorted(FORMATS), "jsonl")
@window_options
@click.option("--out", metavar="FILE", help="output file (default: stdout)")
def export_command(
    data_dir: str | None, fmt: str, since: datetime | None, until: datetime | None, out: str | None
) -> int:
    """Write the recorded llm_calls rows.

    Safe while a proxy runs. Times without an offset are UTC; --since is inclusive, --until
    exclusive.

    \b
    Examples:
      llmtap export > calls.jsonl
      llmtap export --format parquet --since 2026-03-01 --out march.parquet
    """
    target = Path(out) if out else None
    count = export_calls(Paths(resolve_data_dir(data_dir)).db, fmt, since, until, target)
    if target is not None:
        print(f"llmtap: wrote {count} calls to {target}", file=sys.stderr)
    return 0
