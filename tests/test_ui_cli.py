"""``llmtap ui``: serves the dashboard on the given port with the data dir passed along, and
says clearly when the port is busy."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ui_serves_the_dashboard_and_prints_its_url(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "ui", "--data-dir", str(tmp_path), "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith(f"llmtap dashboard on http://127.0.0.1:{port} (store: {tmp_path.resolve()})")
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as response:
                    assert response.read() == b"ok"
                    break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, (
                    proc.stderr.read() if proc.stderr else ""
                )
                time.sleep(0.3)
    finally:
        proc.terminate()
        proc.wait(30)


def test_ui_on_a_busy_port_says_so(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "app.cli", "ui", "--data-dir", str(tmp_path), "--port", str(port)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "--port" in result.stderr


def test_ui_with_a_bad_config_stops_before_starting(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('[budgets."x"]\nlimit_usd = -1\nperiod = "day"\n')
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "ui", "--data-dir", str(tmp_path), "--config", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "llmtap: error:" in result.stderr
