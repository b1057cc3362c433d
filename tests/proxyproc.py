"""Runs the real ``llmtap proxy`` command as a subprocess for tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import duckdb

from collector.proxy.certs import client_env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ProxyProcess:
    def __init__(
        self,
        data_dir: Path,
        upstreams: dict[str, str],
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        """``env``: variables added to (or overriding) this process's environment for the proxy."""
        self.data_dir = data_dir
        self.extra_env = dict(env or {})
        self.port = free_port()
        self.args = [
            sys.executable,
            "-m",
            "app.cli",
            "proxy",
            "--data-dir",
            str(data_dir),
            "--port",
            str(self.port),
        ]
        for host, url in upstreams.items():
            self.args += ["--upstream", f"{host}={url}"]
        self.args += extra_args or []
        self.proc: subprocess.Popen[str] | None = None
        self.log = data_dir.parent / f"proxy-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def db(self) -> Path:
        return self.data_dir / "llmtap.duckdb"

    @property
    def env(self) -> dict[str, str]:
        """The client environment, exactly as `llmtap env` prints it."""
        return client_env(self.url, self.data_dir / "ca-bundle.pem")

    def start(self, timeout: float = 30.0) -> ProxyProcess:
        self._log_file = open(self.log, "a")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.args,
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            text=True,
            cwd=Path(__file__).parent.parent,
            env={**os.environ, **self.extra_env} if self.extra_env else None,
        )
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if "listening on" in line:
                return self
            if not line and self.proc.poll() is not None:
                break
        raise RuntimeError(f"proxy did not start; log:\n{self.log.read_text()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self._log_file.close()
        return code

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self._log_file.close()

    def rows(self, sql: str = "SELECT * FROM llm_calls ORDER BY started_at", wait_for: int = 0) -> list[dict]:
        """Query the store read-only, waiting (up to 10 s) until at least ``wait_for`` rows exist."""
        from collector.storage.database import read_connection

        deadline = time.monotonic() + 10
        while True:
            try:
                with read_connection(self.db) as con:
                    cur = con.execute(sql)
                    cols = [d[0] for d in cur.description]
                    result = [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
            except (FileNotFoundError, duckdb.CatalogException):
                result = []
            if len(result) >= wait_for or time.monotonic() > deadline:
                return result
            time.sleep(0.1)
