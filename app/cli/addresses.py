"""Where clients on this machine reach a proxy, and the `llmtap env` line that says so."""

from __future__ import annotations

import shlex
import socket

from collector.settings.config import Settings

DEFAULT_HOST = "127.0.0.1"


def host_port(host: str, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets (as in a URL)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def client_host(host: str) -> str:
    """Where clients on this machine reach a proxy listening on ``host``: a wildcard address
    (every interface) is reached on loopback."""
    return {"": DEFAULT_HOST, "0.0.0.0": DEFAULT_HOST, "::": "::1"}.get(host, host)


def proxy_url(host: str, port: int) -> str:
    """The proxy URL clients on this machine use for a proxy listening on ``host``."""
    return f"http://{host_port(client_host(host), port)}"


def free_port(host: str) -> int:
    """A port free on ``host`` now (an IPv6 address needs an IPv6 socket)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def env_command(settings: Settings, port: int) -> str:
    """The `llmtap env` command that points a shell at this proxy: its port and data dir
    (whose CA bundle clients must trust; another data dir has another CA and TLS fails),
    and its host unless the default, shell-quoted."""
    command = ["llmtap", "env"]
    host = client_host(settings.listen_host)
    if host != DEFAULT_HOST:
        command += ["--host", host]
    command += ["--port", str(port), "--data-dir", str(settings.data_dir)]
    return shlex.join(command)
