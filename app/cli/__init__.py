"""The ``llmtap`` command line: a click group, one module per command.

Each command module only parses and wires: the work is in the modules it calls
(``app.terminal.spend_report``, ``collector.proxy``, ...). The options several commands share are declared
once, in :mod:`app.cli.options`.
"""

from __future__ import annotations

import os
import sys

import click

from app.cli.demo import demo_command
from app.cli.env import env_command
from app.cli.evaluate import evaluate_command
from app.cli.export import export_command
from app.cli.feedback import feedback_command
from app.cli.proxy import proxy_command
from app.cli.recommend import recommend_command
from app.cli.report import report_command
from app.cli.reprice import reprice_command
from app.cli.run import run_command
from app.cli.ui import ui_command
from collector.settings.config import ConfigError
from collector.trust import logs
from collector.trust.private import PRIVATE_UMASK

__all__ = ["cli", "main"]


class _InOrder(click.Group):
    """Lists its commands in the order they were added (the order one meets them in), not
    alphabetically."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


@click.group(
    cls=_InOrder,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    options_metavar="",
    subcommand_metavar="COMMAND [ARGS]...",
)
@click.pass_context
def cli(ctx: click.Context) -> None:
    """llmtap records every LLM API call an app makes (model, tokens, latency, cost) through a
    local intercepting proxy, with no change to the app. Records go to DATA_DIR/llmtap.duckdb.

    \b
    quick start:
      llmtap demo                          # see it work: fake provider, real proxy, dashboard
      llmtap proxy &                       # start the proxy on 127.0.0.1:8080
      eval "$(llmtap env)"                 # point this shell's apps at it
      llmtap run -- python my_app.py       # or run one command through its own proxy
      llmtap report                        # what was called, and what it cost
      llmtap ui                            # the dashboard
      llmtap recommend                     # cheaper models the traffic proves safe
    """
    logs.setup()  # -v raises it to DEBUG as the command's options are read
    # What llmtap writes (the store, the spool, exports) holds prompts: readable by this user
    # only. The user's own umask is the context's obj: `llmtap run` gives it back to its command.
    ctx.obj = os.umask(PRIVATE_UMASK)


for command in (
    proxy_command,
    run_command,
    env_command,
    export_command,
    report_command,
    reprice_command,
    recommend_command,
    evaluate_command,
    feedback_command,
    ui_command,
    demo_command,
):
    cli.add_command(command)


def main(argv: list[str] | None = None) -> int:
    """Run one llmtap command (``argv``, default: the process's arguments); its exit code.

    Usage errors are click's (a message and a hint, exit 2); a bad config or value is
    ``llmtap: error: ...``, exit 2, never a traceback."""
    try:
        return cli.main(argv, prog_name="llmtap", standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort:  # Ctrl-C
        return 130
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        print(f"llmtap: error: {exc}", file=sys.stderr)
        return 2
