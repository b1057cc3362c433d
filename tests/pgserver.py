"""A private PostgreSQL server for the fleet tests: a fresh cluster in a temporary directory,
listening on 127.0.0.1 on a free port, removed afterwards.

initdb and pg_ctl refuse to run as root, so as root (CI) they run as the ``postgres`` user
(``runuser``), which owns the cluster's directory. Connections over TCP need a password
(scram-sha-256), so the tests that look for the password in logs, files and error messages
use a server that really takes it. The test role is :data:`ROLE`, with a random password
per session, and may create databases: one per test (:meth:`PgServer.create_database`).
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg

from tests.proxyproc import free_port

__all__ = ["ROLE", "PgServer", "pg_bin"]

ROLE = "llmtap_test"


def pg_bin(name: str) -> str:
    """A PostgreSQL server binary: Debian's (``/usr/lib/postgresql/N/bin``), else the PATH's."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if found:
        return found[-1]
    on_path = shutil.which(name)
    if on_path is None:
        raise RuntimeError(f"PostgreSQL's {name} is not installed (.ci/run installs Debian's postgresql)")
    return on_path


class PgServer:
    """One cluster. :meth:`start` creates it on first use; :meth:`remove` deletes everything."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="llmtap-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.password = "pw-" + secrets.token_hex(12)
        self._superpass = secrets.token_hex(16)
        self._as_postgres = os.geteuid() == 0
        self._databases = 0
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")

    def _run(self, *args: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if self._as_postgres else []
        result = subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed: {result.stdout}{result.stderr}")

    def init(self) -> PgServer:
        pwfile = self.root / "pwfile"
        pwfile.write_text(self._superpass + "\n")
        if self._as_postgres:
            shutil.chown(pwfile, "postgres", "postgres")
        pwfile.chmod(0o600)
        self._run(
            pg_bin("initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=scram-sha-256",
            f"--pwfile={pwfile}",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        )
        pwfile.unlink()
        self.start()
        with self.admin() as conn:
            conn.execute(f"CREATE ROLE {ROLE} LOGIN CREATEDB PASSWORD '{self.password}'")
        return self

    def start(self) -> None:
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.root} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._run(
            pg_bin("pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.root / "server.log"),
            "-o",
            options,
            "-w",
            "start",
        )

    def stop(self) -> None:
        """Stop at once (``-m fast``: open connections are cut, as when a server goes down)."""
        self._run(pg_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        """The server is stopped inside the block and started again after it."""
        self.stop()
        try:
            yield
        finally:
            self.start()

    def remove(self) -> None:
        with contextlib.suppress(RuntimeError):
            self._run(pg_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres", password: bool = True) -> str:
        """A URL for the test role, with its password (or without, for ``PGPASSWORD``)."""
        secret = f":{self.password}" if password else ""
        return f"postgresql://{ROLE}{secret}@127.0.0.1:{self.port}/{database}"

    def admin(self, database: str = "postgres") -> psycopg.Connection:
        """A superuser connection (autocommit)."""
        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user="postgres",
            password=self._superpass,
            dbname=database,
            autocommit=True,
        )

    def connect(self, database: str) -> psycopg.Connection:
        """A connection of the test role to ``database`` (autocommit)."""
        return psycopg.connect(self.url(database), autocommit=True)

    def create_database(self) -> str:
        """A new empty database owned by the test role; returns its name."""
        self._databases += 1
        name = f"fleet_{os.getpid()}_{self._databases}_{int(time.time() * 1000) % 100000}"
        with self.admin() as conn:
            conn.execute(f"CREATE DATABASE {name} OWNER {ROLE}")
        return name

    def log(self) -> str:
        """The server's own log."""
        return (self.root / "server.log").read_text(errors="replace")
