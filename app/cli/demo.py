"""`llmtap demo`: made-up traffic through a real proxy, and the dashboard on it."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from app.cli.options import data_dir_option, port_option


@click.command("demo")
@data_dir_option("a new directory for the demo's store (default: ~/.llmtap-demo)")
@click.option("--calls", type=int, default=400, show_default=True, help="how many calls to make")
@click.option("--concurrency", type=int, default=40, show_default=True, help="calls in flight at once")
@port_option(8501, "dashboard port")
@click.option("--no-ui", is_flag=True, help="only record; do not start the dashboard")
def demo_command(data_dir: str | None, calls: int, concurrency: int, port: int, no_ui: bool) -> int:
    """Record made-up traffic through a real proxy, then show it.

    No API key needed: start a local fake OpenAI/Anthropic server and an llmtap proxy, send
    a few minutes' worth of calls from four made-up apps through it with the official openai
    and anthropic SDKs (streams, cache hits, errors, budgets that block and downgrade), then
    start the dashboard on that data. Uses ~/.llmtap-demo (emptied first) unless --data-dir.

    \b
    Examples:
      llmtap demo
      llmtap demo --calls 50 --no-ui --data-dir /tmp/llmtap-demo
    """
    from app.demo.tour import run_demo
    from collector.proxy.server import ProxyStartError

    try:
        return run_demo(Path(data_dir) if data_dir else None, calls, concurrency, port, not no_ui)
    except (OSError, ProxyStartError) as exc:
        print(f"llmtap: error: {exc}", file=sys.stderr)
        return 1
