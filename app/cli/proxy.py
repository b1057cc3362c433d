"""`llmtap proxy`: the recording proxy, in the foreground."""

from __future__ import annotations

import asyncio
import sys

import click

from app.cli.addresses import env_command
from app.cli.exposure import PROXY_EXPOSURE, warn_if_exposed
from app.cli.options import metrics_port_option, proxy_options, proxy_settings


@click.command("proxy")
@proxy_options(default_port=8080)
@metrics_port_option
def proxy_command(
    host: str,
    port: int,
    data_dir: str | None,
    upstreams: tuple[str, ...],
    config: str | None,
    rules: str | None,
    metrics_port: int | None,
) -> int:
    """Run the recording proxy in the foreground.

    Prints its URL, CA bundle, store and the `eval "$(llmtap env ...)"` line that points a
    shell at it; Ctrl-C (or SIGTERM) stores every pending call and stops.

    \b
    Examples:
      llmtap proxy
      llmtap proxy --port 9000 --upstream api.openai.com=http://127.0.0.1:9001
      llmtap proxy --metrics-port 9464
    """
    from collector.metrics import MetricsPortError
    from collector.proxy.server import LlmtapProxy

    settings = proxy_settings(host, port, data_dir, upstreams, config, rules, metrics_port)
    warn_if_exposed(settings.listen_host, settings.listen_port, PROXY_EXPOSURE)
    proxy = LlmtapProxy(settings)

    def announce(listening) -> None:
        print(f"llmtap proxy listening on {listening.url}", flush=True)
        print(f"CA bundle: {listening.ca_bundle}", flush=True)
        print(f"store: {proxy.settings.paths.db}", flush=True)
        print(f'point apps at it with: eval "$({env_command(settings, listening.port)})"', flush=True)
        if proxy.metrics is not None:
            print(f"metrics: {proxy.metrics.url}", flush=True)

    try:
        asyncio.run(proxy.serve(announce))
    except MetricsPortError as exc:
        print(f"llmtap: error: {exc.strerror}", file=sys.stderr)
        proxy.close()
        return 1
    except OSError as exc:
        print(f"llmtap: error: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        proxy.close()
        return 1
    saved = proxy.close()
    print(f"llmtap: stopped; {proxy.recorder.calls_recorded} calls recorded", file=sys.stderr)
    return 0 if saved else 1
