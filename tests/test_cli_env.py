"""`llmtap env` and the proxy's banner agree on the CA, `env` changes nothing on disk, and
`env` and `run` say when Node's fetch will not go through the proxy or nothing was recorded."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from collector.proxy.certs import ensure_ca
from collector.settings.paths import Paths
from tests.proxyproc import free_port

ROOT = Path(__file__).resolve().parent.parent
LLMTAP = [sys.executable, "-m", "app.cli"]
OLD_NODE = "fetch ignores HTTPS_PROXY"
NOTHING_RECORDED = "no LLM calls were recorded"


def llmtap(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*LLMTAP, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def exports(stdout: str) -> dict[str, str]:
    """``export NAME=VALUE`` lines as a dict (every line must be one)."""
    pairs = [shlex.split(line.removeprefix("export "))[0] for line in stdout.splitlines()]
    assert all(line.startswith("export ") for line in stdout.splitlines()), stdout
    return dict(pair.split("=", 1) for pair in pairs)


@pytest.fixture
def fake_node(tmp_path):
    """Put a ``node`` on the PATH that reports ``version``; returns the environment to use."""

    def make(version: str) -> dict[str, str]:
        bin_dir = tmp_path / f"bin-{version}"
        bin_dir.mkdir()
        node = bin_dir / "node"
        node.write_text(f"#!/bin/sh\necho {version}\n")
        node.chmod(0o755)
        return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}

    return make


# --- the banner ----------------------------------------------------------------------------


def test_banner_env_line_names_this_proxys_data_dir_and_host(tmp_path):
    """Following the banner's advice, in a real shell, points SSL_CERT_FILE at this proxy's CA."""
    data = tmp_path / "my data $HOME"
    port = free_port()
    proc = subprocess.Popen(
        [*LLMTAP, "proxy", "--data-dir", str(data), "--host", "127.0.0.2", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(4)]
    finally:
        proc.terminate()
        proc.wait(30)
    (advice,) = [line for line in lines if "eval" in line]
    suggested = advice[advice.index("eval ") :].strip()
    shell = f'llmtap() {{ "{sys.executable}" -m app.cli "$@"; }}; {suggested}; '
    shell += 'printf "%s\\n" "$SSL_CERT_FILE" "$HTTPS_PROXY"'
    out = subprocess.run(["bash", "-c", shell], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [str(data / "ca-bundle.pem"), f"http://127.0.0.2:{port}"]


# --- env is read-only -----------------------------------------------------------------------


def test_env_on_a_fresh_data_dir_creates_nothing_and_says_to_start_the_proxy(tmp_path):
    fresh = tmp_path / "fresh"
    result = llmtap("env", "--data-dir", str(fresh))
    assert result.returncode == 0, result.stderr
    assert exports(result.stdout)["SSL_CERT_FILE"] == str(fresh / "ca-bundle.pem")
    assert f"no CA bundle in {fresh} yet; `llmtap proxy --data-dir {fresh}` creates it" in result.stderr
    assert not fresh.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert llmtap("env", "--data-dir", str(empty)).returncode == 0
    assert list(empty.iterdir()) == []


def test_env_on_a_data_dir_with_a_ca_says_nothing_and_changes_nothing(tmp_path):
    bundle = ensure_ca(Paths(tmp_path))
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    result = llmtap("env", "--data-dir", str(tmp_path))
    assert result.returncode == 0
    assert exports(result.stdout)["SSL_CERT_FILE"] == str(bundle)
    assert "no CA bundle" not in result.stderr
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before


# --- Node ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "honours"),
    [
        ("v20.20.2", False),
        ("v22.20.0", False),
        ("v22.21.0", True),
        ("v22.23.3", True),
        ("v23.11.1", False),
        ("v24.0.0", True),
        ("v25.2.1", True),
        ("garbage", True),  # unknown: no warning rather than a wrong one
    ],
)
def test_node_versions_whose_fetch_honours_https_proxy(version, honours):
    from app.cli.node import node_honours_env_proxy

    assert node_honours_env_proxy(version) is honours


def test_env_warns_about_an_old_node_on_stderr_only(tmp_path, fake_node):
    old = llmtap("env", "--data-dir", str(tmp_path), env=fake_node("v20.20.2"))
    assert old.returncode == 0
    assert OLD_NODE in old.stderr and "v20.20.2" in old.stderr
    assert exports(old.stdout)["NODE_USE_ENV_PROXY"] == "1"  # stdout stays eval-able
    new = llmtap("env", "--data-dir", str(tmp_path), env=fake_node("v22.21.0"))
    assert new.returncode == 0 and OLD_NODE not in new.stderr


def test_run_of_node_with_an_old_node_warns(tmp_path, fake_node):
    result = llmtap(
        "run", "--data-dir", str(tmp_path / "d"), "--", "node", "-e", "", env=fake_node("v20.20.2")
    )
    assert result.returncode == 0, result.stderr
    assert OLD_NODE in result.stderr and "v20.20.2" in result.stderr
    assert "llmtap: 0 LLM calls recorded" in result.stderr and NOTHING_RECORDED in result.stderr
    assert result.stderr.count(OLD_NODE) == 1


def test_run_with_a_recent_node_only_hints_when_nothing_was_recorded(tmp_path, fake_node):
    result = llmtap(
        "run", "--data-dir", str(tmp_path / "d"), "--", "node", "-e", "", env=fake_node("v22.21.0")
    )
    assert result.returncode == 0, result.stderr
    assert OLD_NODE not in result.stderr
    assert "llmtap: 0 LLM calls recorded" in result.stderr
    for hint in (NOTHING_RECORDED, "HTTPS_PROXY", "NODE_USE_ENV_PROXY=1", "22.21", "curl"):
        assert hint in result.stderr, hint


def test_run_of_a_non_node_command_recording_nothing_names_an_old_node(tmp_path, fake_node):
    """`sh -c ...` may well start node; with nothing recorded, an old node is worth naming."""
    result = llmtap(
        "run", "--data-dir", str(tmp_path / "d"), "--", "sh", "-c", "exit 3", env=fake_node("v20.20.2")
    )
    assert result.returncode == 3
    assert NOTHING_RECORDED in result.stderr and OLD_NODE in result.stderr
