"""`llmtap run`: one command, its traffic through a recording proxy of its own."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

import click

from app.cli.addresses import free_port, proxy_url
from app.cli.exposure import PROXY_EXPOSURE, warn_if_exposed
from app.cli.node import node_of, warn_if_old_node
from app.cli.options import proxy_options, proxy_settings
from collector.proxy.certs import client_env

NOTHING_RECORDED_HINTS = (
    "llmtap: warning: no LLM calls were recorded. Does the app honour HTTPS_PROXY? Python's "
    "requests and httpx (so the openai and anthropic SDKs) and curl do; Node's built-in fetch only "
    "from Node 22.21 (or 24) with NODE_USE_ENV_PROXY=1, which is set; other clients may need their "
    "own proxy setting. Calls to hosts llmtap does not know pass through unrecorded (add them under "
    "[hosts] in the config)."
)


def _say_recorded(count: int, node_warned: bool) -> None:
    """The last word of `llmtap run`: how many calls were recorded; when none, why that may be."""
    print(f"llmtap: {count} LLM calls recorded", file=sys.stderr)
    if count == 0:
        print(NOTHING_RECORDED_HINTS, file=sys.stderr)
        if not node_warned:
            warn_if_old_node()


def _call(cmd: list[str], env: dict[str, str], umask: int) -> int:
    """Run ``cmd`` to its end, with ``umask``; its exit code (127 when it does not exist, 130
    on Ctrl-C)."""
    try:
        return subprocess.call(cmd, env=env, umask=umask)
    except FileNotFoundError:
        print(f"llmtap: error: command not found: {shlex.join(cmd[:1])}", file=sys.stderr)
        return 127
    except KeyboardInterrupt:
        return 130


# Options stop at CMD (or at --): CMD's own flags are CMD's.
@click.command("run", context_settings={"allow_interspersed_args": False}, options_metavar="[PROXY OPTIONS]")
@proxy_options(default_port=None)
@click.argument("cmd", nargs=-1, type=click.UNPROCESSED, metavar="-- CMD [ARG]...")
@click.pass_obj
def run_command(
    user_umask: int,
    host: str,
    port: int | None,
    data_dir: str | None,
    upstreams: tuple[str, ...],
    config: str | None,
    rules: str | None,
    cmd: tuple[str, ...],
) -> int:
    """Run a command with its traffic going through a recording proxy.

    Start a proxy (on a free port unless --port), run CMD with the proxy environment set
    (and the user's own umask), and exit with CMD's exit code once all its calls are stored.

    \b
    Examples:
      llmtap run -- python my_app.py
      llmtap run --data-dir ./calls -- npm test
    """
    if not cmd:
        print(
            "llmtap: error: nothing to run; usage: llmtap run [options] -- CMD [ARG]...",
            file=sys.stderr,
        )
        return 2
    from collector.proxy.server import ProxyStartError, serving_in_background

    port = port if port is not None else free_port(host)
    settings = proxy_settings(host, port, data_dir, upstreams, config, rules)
    warn_if_exposed(settings.listen_host, port, PROXY_EXPOSURE)
    node = node_of(list(cmd))
    node_warned = node is not None and warn_if_old_node(node)
    try:
        with serving_in_background(settings) as proxy:
            assert proxy.listening is not None
            url = proxy_url(settings.listen_host, proxy.listening.port)
            env = {**os.environ, **client_env(url, proxy.ca_bundle)}
            code = _call(list(cmd), env, user_umask)
    except ProxyStartError as exc:
        print(f"llmtap: error: {exc}", file=sys.stderr)
        return 1
    if code != 127:
        _say_recorded(proxy.recorder.calls_recorded, node_warned)
    return code
