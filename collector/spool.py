"""Append-only spool: the write-ahead file that makes a finished call durable at once.

The proxy appends one JSON line per finished call *before* the client receives the
last byte of the response, with a single ``write`` to an ``O_APPEND`` file. The line
is then in the kernel's page cache, so it survives ``kill -9`` of the proxy (not a
power cut: llmtap does not fsync each call, which would cost milliseconds). A
background ingester later seals the active file and loads it into DuckDB in one
transaction.

If the disk is full or the directory unwritable, lines wait in a bounded in-memory
backlog and are retried on the next append or seal: traffic is never affected.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import time
from collections import deque
from pathlib import Path

log = logging.getLogger("llmtap.spool")

BACKLOG_LIMIT = 100_000


class Spool:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._active: Path | None = None
        self._offset = 0
        self._seq = 0
        self._backlog: deque[bytes] = deque()
        self.dropped = 0
        self._failing = False

    # -- writer side (proxy event loop) -------------------------------------------

    def append(self, line: bytes) -> None:
        """Append one complete line (ending in newline). Never raises."""
        with self._lock:
            if self._backlog:
                self._drain_backlog()
            if self._backlog or not self._write(line):
                self._keep(line)

    def _keep(self, line: bytes) -> None:
        if len(self._backlog) >= BACKLOG_LIMIT:
            self._backlog.popleft()
            self.dropped += 1
            log.error("spool backlog full: oldest unsaved call dropped (%d so far)", self.dropped)
        self._backlog.append(line)

    def _drain_backlog(self) -> None:
        while self._backlog and self._write(self._backlog[0]):
            self._backlog.popleft()
        if not self._backlog and self._failing:
            self._failing = False
            log.warning("spool writable again: saved the calls that were waiting")

    def _write(self, line: bytes) -> bool:
        try:
            if self._fd is None:
                self._open()
            assert self._fd is not None
            view = memoryview(line)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            self._offset += len(line)
            return True
        except OSError as exc:
            self._report(exc)
            self._undo_partial()
            return False

    def _undo_partial(self) -> None:
        """Cut a half-written line so the next line starts clean."""
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, self._offset)
        except OSError:
            self._close_active()

    def _report(self, exc: OSError) -> None:
        if not self._failing:
            self._failing = True
            reason = "disk full" if exc.errno == errno.ENOSPC else exc.strerror
            log.error(
                "cannot write to spool %s (%s): calls are kept in memory and saved when "
                "it is writable again; traffic continues",
                self.directory,
                reason,
            )

    def _open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._seq += 1
        name = f"active-{os.getpid()}-{time.time_ns()}-{self._seq}.jsonl"
        self._active = self.directory / name
        self._fd = os.open(self._active, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._offset = 0

    def _close_active(self) -> Path | None:
        fd, path, size = self._fd, self._active, self._offset
        self._fd, self._active, self._offset = None, None, 0
        if fd is not None:
            os.close(fd)
        if path is None:
            return None
        if size == 0:
            path.unlink(missing_ok=True)
            return None
        sealed = path.with_name("sealed-" + path.name.removeprefix("active-"))
        os.rename(path, sealed)
        return sealed

    # -- ingester side ------------------------------------------------------------

    def seal(self) -> Path | None:
        """Close the active file so the ingester can load it; the next append starts anew.
        Returns the sealed file, None when there was nothing to seal."""
        with self._lock:
            if self._backlog:
                self._drain_backlog()
            try:
                return self._close_active()
            except OSError as exc:
                self._report(exc)
                return None

    @property
    def backlog(self) -> int:
        return len(self._backlog)

    def sealed_files(self) -> list[Path]:
        """Sealed files oldest first, after sealing active files left by dead processes."""
        if not self.directory.exists():
            return []
        for path in self.directory.glob("active-*.jsonl"):
            if not _owner_alive(path):
                _repair_tail(path)
                with contextlib.suppress(FileNotFoundError):  # another process got it first
                    os.rename(path, path.with_name("sealed-" + path.name.removeprefix("active-")))
        return sorted(self.directory.glob("sealed-*.jsonl"), key=_spool_order)


def _spool_order(path: Path) -> tuple[int, int]:
    _, _pid, ns, seq = path.stem.split("-")
    return int(ns), int(seq)


def _owner_alive(path: Path) -> bool:
    pid = int(path.name.split("-")[1])
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _repair_tail(path: Path) -> None:
    """Drop an unterminated last line: its call never reached the client in full."""
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            f.truncate(cut)
            log.warning("dropped an unfinished spool line in %s", path.name)
