"""The options several commands share, each declared once as a click decorator.

A factory takes what differs between commands (a default, a help text, the choices) so
that one flag reads and behaves the same wherever it appears.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import click

from app.cli.addresses import DEFAULT_HOST
from collector.fleet.names import STORE_ENV
from collector.settings.config import Settings, load_settings
from collector.storage.export import parse_instant
from collector.trust import logs

FC = TypeVar("FC", bound=Callable[..., Any])


def _all[F: Callable[..., Any]](*decorators: Callable[[F], F]) -> Callable[[F], F]:
    """One decorator applying ``decorators`` in the order written (so --help lists them so)."""

    def apply(function: F) -> F:
        for decorator in reversed(decorators):
            function = decorator(function)
        return function

    return apply


class Instant(click.ParamType):
    """An ISO 8601 date or date-time, as a datetime (one without an offset is UTC).

    A bad value raises :func:`parse_instant`'s ValueError as it is, not click's usage error,
    so that it reads like every other value llmtap refuses: ``llmtap: error: not an ISO 8601
    date or time: 'yesterday' (...)``, exit 2 (see :func:`app.cli.main`)."""

    name = "ISO"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        return value if isinstance(value, datetime) else parse_instant(value)


def data_dir_option(
    help: str = "data directory (default: $LLMTAP_DATA_DIR, else ~/.llmtap)",
) -> Callable[[FC], FC]:
    return click.option("--data-dir", metavar="DIR", help=help)


def store_option(
    help: str = "the store to read: a fleet store's postgresql://USER@HOST[:PORT]/DB URL (password in "
    "it or in PGPASSWORD; never printed) or a data directory (default: $LLMTAP_STORE, else the "
    "--data-dir's store)",
) -> Callable[[FC], FC]:
    return click.option("--store", metavar="URL", envvar=STORE_ENV, help=help)


#: ``--node``: only the calls some fleet nodes recorded (a fleet store's ``node`` column).
node_option = click.option(
    "--node",
    "nodes",
    multiple=True,
    metavar="NAME",
    help="only the calls this fleet node recorded (repeatable; needs a fleet --store)",
)


def config_option(help: str = "TOML config file (see README)") -> Callable[[FC], FC]:
    return click.option("--config", metavar="FILE", help=help)


def format_option(choices: Sequence[str], default: str) -> Callable[[FC], FC]:
    return click.option(
        "--format", "fmt", type=click.Choice(list(choices)), default=default, show_default=True
    )


since_option = click.option("--since", type=Instant(), help="only calls started at or after this time")
until_option = click.option("--until", type=Instant(), help="only calls started before this time")
#: ``--since`` and ``--until``: the window of calls a command looks at.
window_options = _all(since_option, until_option)


def host_option(help: str = "address to listen on") -> Callable[[FC], FC]:
    return click.option("--host", default=DEFAULT_HOST, show_default=True, help=help)


def port_option(
    default: int | None, help: str = "port to listen on", show_default: bool | str = True
) -> Callable[[FC], FC]:
    return click.option("--port", type=int, default=default, show_default=show_default, help=help)


def upstream_option(help: str) -> Callable[[FC], FC]:
    return click.option("--upstream", "upstreams", multiple=True, metavar="HOST=URL", help=help)


def rules_option(help: str = "rules file (default: DATA_DIR/rules.yaml)") -> Callable[[FC], FC]:
    return click.option("--rules", metavar="FILE", help=help)


def _verbose(ctx: click.Context, param: click.Parameter, verbose: bool) -> None:
    """Logging is set up for every command (at INFO) before its options are read; -v only
    raises it to DEBUG."""
    if verbose:
        logs.setup(verbose=True)


def proxy_settings(
    host: str,
    port: int | None,
    data_dir: str | None,
    upstreams: tuple[str, ...],
    config: str | None,
    rules: str | None,
    metrics_port: int | None = None,
) -> Settings:
    """The settings :func:`proxy_options` give a command (the config file's, then the flags')."""
    return load_settings(
        data_dir=data_dir,
        config_file=config,
        listen_host=host,
        listen_port=port,
        upstream_flags=list(upstreams),
        rules_file=rules,
        metrics_port=metrics_port,
    )


#: ``--metrics-port``: `llmtap proxy` serves Prometheus metrics (see collector.metrics).
metrics_port_option = click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    metavar="PORT",
    help="also serve Prometheus metrics at http://127.0.0.1:PORT/metrics (default: off)",
)


def proxy_options(default_port: int | None) -> Callable[[FC], FC]:
    """What a recording proxy is started with (`proxy`, `run`): the command gets ``host``,
    ``port``, ``data_dir``, ``upstreams``, ``config`` and ``rules``."""
    return _all(
        host_option(),
        port_option(default_port, show_default="a free port" if default_port is None else True),
        data_dir_option(),
        upstream_option(
            "send traffic meant for HOST to URL instead, keeping Host header, path and query "
            "(repeatable), e.g. api.openai.com=http://127.0.0.1:9000"
        ),
        config_option(),
        rules_option("routing rules file (YAML; default: DATA_DIR/rules.yaml); reloaded when it changes"),
        click.option(
            "-v", "--verbose", is_flag=True, expose_value=False, callback=_verbose, help="log debug detail"
        ),
    )
