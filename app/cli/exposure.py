"""Listening beyond loopback, said out loud: neither the proxy nor the dashboard has any
authentication, so whoever reaches their port gets what they give."""

from __future__ import annotations

import ipaddress
import socket
import sys

from app.cli.addresses import host_port

PROXY_EXPOSURE = "can send traffic through it to any host and their LLM calls are recorded"
UI_EXPOSURE = "can read every recorded call, prompts included; it has no authentication"


def is_loopback(host: str) -> bool:
    """Whether listening on ``host`` is reachable from this machine only: 127.0.0.0/8, ::1,
    or a name resolving to nothing else. ``""`` and 0.0.0.0 / ``::`` mean every interface."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except (OSError, UnicodeError):
        return False  # listening on it fails anyway
    return bool(addresses) and all(ipaddress.ip_address(str(a).split("%")[0]).is_loopback for a in addresses)


def warn_if_exposed(host: str, port: int, exposure: str) -> None:
    """Say on stderr, before listening, what anyone on the network gets when ``host`` is not
    loopback (``exposure``)."""
    if is_loopback(host):
        return
    where = host_port(host, port) if port else f"{host} on the port it picks"
    print(
        f"llmtap: warning: listening on {host or 'every interface'}, not loopback only: anyone who can "
        f"reach {where} {exposure}. Use --host 127.0.0.1 unless that is what you want.",
        file=sys.stderr,
        flush=True,
    )
