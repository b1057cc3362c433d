"""Listening beyond loopback is said out loud: `proxy`, `run` and `ui` warn on stderr, naming
what becomes reachable, when --host is not a loopback address.

Each command is pointed at a port already taken on 127.0.0.1, so it prints its warning (which
comes before binding) and then fails to listen: nothing in the test is ever reachable from
outside this machine.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROXY_WARNING = "can send traffic through it to any host and their LLM calls are recorded"
UI_WARNING = "can read every recorded call, prompts included; it has no authentication"


@contextmanager
def busy_loopback_port() -> Iterator[int]:
    """A port held by a listening socket on 127.0.0.1: binding it on 0.0.0.0 or 127.0.0.1 fails."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        yield busy.getsockname()[1]


def llmtap(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.20", False),
        ("", False),
    ],
)
def test_loopback_addresses(host, loopback):
    from app.cli.exposure import is_loopback

    assert is_loopback(host) is loopback


@pytest.mark.parametrize("command", [["proxy"], ["run"]])
def test_proxy_on_every_interface_warns(tmp_path, command):
    with busy_loopback_port() as port:
        args = [*command, "--data-dir", str(tmp_path), "--host", "0.0.0.0", "--port", str(port)]
        result = llmtap(*args, *(["--", "true"] if command == ["run"] else []))
    assert result.returncode == 1, result.stderr  # the port is busy: it never listened
    assert f"anyone who can reach 0.0.0.0:{port} {PROXY_WARNING}" in result.stderr
    assert "warning" in result.stderr.split(PROXY_WARNING)[0]


@pytest.mark.parametrize("command", [["proxy"], ["run"]])
def test_proxy_on_loopback_does_not_warn(tmp_path, command):
    with busy_loopback_port() as port:
        args = [*command, "--data-dir", str(tmp_path), "--host", "127.0.0.1", "--port", str(port)]
        result = llmtap(*args, *(["--", "true"] if command == ["run"] else []))
    assert result.returncode == 1, result.stderr
    assert "in use" in result.stderr
    assert PROXY_WARNING not in result.stderr and "reach" not in result.stderr


def test_ui_on_every_interface_warns(tmp_path):
    with busy_loopback_port() as port:
        result = llmtap("ui", "--data-dir", str(tmp_path), "--host", "0.0.0.0", "--port", str(port))
    assert result.returncode == 1
    assert UI_WARNING in result.stderr and f"0.0.0.0:{port}" in result.stderr
    assert f"cannot listen on 0.0.0.0:{port}" in result.stderr


def test_ui_on_loopback_does_not_warn(tmp_path):
    with busy_loopback_port() as port:
        result = llmtap("ui", "--data-dir", str(tmp_path), "--host", "127.0.0.1", "--port", str(port))
    assert result.returncode == 1
    assert "cannot listen on 127.0.0.1" in result.stderr
    assert UI_WARNING not in result.stderr and "reach" not in result.stderr
