"""`llmtap feedback`: scores of recorded calls that the app collected, imported from a file."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from app.cli.options import data_dir_option
from collector.settings.paths import Paths, resolve_data_dir

#: Refused lines listed one by one; the rest are counted.
SHOWN_REFUSALS = 20


@click.group("feedback")
def feedback_command() -> None:
    """Scores of recorded calls from the app (what a user rated, whether a task succeeded).

    The app can also post each score to the proxy as it happens: POST
    {"call_id": ..., "name": ..., "value": ...} to http://127.0.0.1:PORT/llmtap/feedback,
    with the call id from the response's X-Llmtap-Call-Id header (see README, "Quality").
    """


@feedback_command.command("import")
@data_dir_option()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def import_command(data_dir: str | None, file: Path) -> int:
    """Import scores from FILE: a CSV with the columns call_id,name,value, or JSON Lines of
    {"call_id": ..., "name": ..., "value": ...} (value from 0 to 1).

    Lines that are not valid or name a call the store does not hold are listed and skipped;
    the rest is stored. Exit code 1 when a line was refused. Safe while a proxy runs.

    \b
    Examples:
      llmtap feedback import ratings.csv
      llmtap feedback import --data-dir /srv/llmtap thumbs.jsonl
    """
    from collector.storage.feedback_import import import_feedback

    result = import_feedback(file, Paths(resolve_data_dir(data_dir)))
    for number, reason in result.refused[:SHOWN_REFUSALS]:
        print(f"llmtap: {file}:{number}: {reason}", file=sys.stderr)
    if len(result.refused) > SHOWN_REFUSALS:
        print(f"llmtap: ... and {len(result.refused) - SHOWN_REFUSALS} more refused lines", file=sys.stderr)
    waiting = "" if result.loaded else " (they wait in the spool: the store could not be written yet)"
    print(f"llmtap: imported {result.stored} scores from {file}, refused {len(result.refused)}{waiting}")
    return 1 if result.refused else 0
