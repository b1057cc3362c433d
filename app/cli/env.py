"""`llmtap env`: the exports that point a shell's apps at a proxy."""

from __future__ import annotations

import shlex
import sys

import click

from app.cli.addresses import proxy_url
from app.cli.node import warn_if_old_node
from app.cli.options import data_dir_option, host_option, port_option
from collector.proxy.certs import client_env
from collector.settings.config import load_settings


@click.command("env")
@host_option("proxy address")
@port_option(8080, "proxy port")
@data_dir_option()
def env_command(host: str, port: int, data_dir: str | None) -> int:
    """Print export lines for the proxy environment.

    Prints `export NAME=VALUE` lines (HTTPS_PROXY, SSL_CERT_FILE, ...) for a shell to eval.

    Read-only: the CA and its bundle are the proxy's to create (else `env` would make a CA
    that no proxy uses). When the bundle is not there yet, the exports still name where the
    proxy will write it (so `llmtap proxy & eval "$(llmtap env)"` works on a first run) and
    stderr says to start the proxy with this data dir.

    \b
    Examples:
      eval "$(llmtap env)"
      eval "$(llmtap env --port 9000 --data-dir ./calls)"
    """
    settings = load_settings(data_dir=data_dir)
    bundle = settings.paths.ca_bundle
    for name, value in client_env(proxy_url(host, port), bundle).items():
        print(f"export {name}={shlex.quote(value)}")
    if not bundle.exists():
        start = shlex.join(["llmtap", "proxy", "--data-dir", str(settings.data_dir)])
        print(
            f"llmtap: note: no CA bundle in {settings.data_dir} yet; `{start}` creates it when it "
            "starts: start it before the apps, or their HTTPS calls fail",
            file=sys.stderr,
        )
    warn_if_old_node()
    return 0
