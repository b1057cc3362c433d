"""`llmtap ui`: the dashboard on the recorded calls."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from app.cli.exposure import UI_EXPOSURE, warn_if_exposed
from app.cli.options import config_option, data_dir_option, host_option, port_option, store_option
from collector.settings.config import load_settings


@click.command("ui")
@data_dir_option()
@store_option()
@config_option("TOML config file, for its budgets (see README)")
@host_option()
@port_option(8501)
def ui_command(data_dir: str | None, store: str | None, config: str | None, host: str, port: int) -> int:
    """Start the dashboard (Streamlit) on the recorded calls.

    Serve the dashboard (overview, costs, latency, calls, budgets, recommendations) on the
    store, headless; open the printed URL in a browser. It stays live while a proxy
    records: new calls appear within seconds.

    \b
    Examples:
      llmtap ui
      llmtap ui --config llmtap.toml --port 8600
      llmtap ui --store postgresql://llmtap@db.internal/llmtap   # the whole fleet, by node
    """
    from analytics.engines import Window, reader
    from app.ui.launch import serve

    settings = load_settings(data_dir=data_dir, config_file=config)  # a bad config stops here
    label = None
    if store is not None:
        source = reader(store)
        source.check(Window())  # an unreachable fleet store stops here, in one line
        label = source.label
    warn_if_exposed(host, port, UI_EXPOSURE)
    try:
        return serve(settings.data_dir, Path(config) if config else None, host, port, store, label)
    except OSError as exc:
        print(f"llmtap: error: {exc}", file=sys.stderr)
        return 1
