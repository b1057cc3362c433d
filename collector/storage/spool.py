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
import functools
import logging
import os
import threading
import time
from collections import deque
from pathlib import Path

from collector.trust.private import private_dir

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
        private_dir(self.directory)
        self._seq += 1
        name = f"active-{os.getpid()}-{time.time_ns()}-{self._seq}.jsonl"
        self._active = self.directory / name
        # Readable too: if the file is deleted under us, its lines are read back (see below).
        self._fd = os.open(self._active, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        self._offset = 0

    def _close_active(self) -> Path | None:
        fd, path, size = self._fd, self._active, self._offset
        self._fd, self._active, self._offset = None, None, 0
        if fd is None or path is None:
            return None
        try:
            if size and os.fstat(fd).st_nlink == 0:
                self._rescue(_read_all(fd, size), path.name)
                return None
        finally:
            os.close(fd)
        if size == 0:
            path.unlink(missing_ok=True)
            return None
        sealed = path.with_name("sealed-" + path.name.removeprefix("active-"))
        os.rename(path, sealed)
        return sealed

    def _rescue(self, data: bytes, name: str) -> None:
        """The active file was deleted (its directory removed by hand, say) while the spool held
        it open: its lines go to the backlog, written anew with the next append or seal."""
        log.error(
            "spool file %s was deleted while in use (the spool directory removed?); its %d "
            "call(s) are kept in memory and written again to %s; sealed files that were deleted "
            "before the loader had them are lost",
            name,
            data.count(b"\n"),
            self.directory,
        )
        for line in data.splitlines(keepends=True):
            self._keep(line)

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


def _read_all(fd: int, size: int) -> bytes:
    chunks, offset = [], 0
    while offset < size:
        chunk = os.pread(fd, size - offset, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


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
    # A killed proxy whose parent has not reaped it yet is a zombie: it answers signal 0 but
    # will never write again, and its calls must not wait for the next start.
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] == b"Z"


def _repair_tail(path: Path) -> None:
    """Drop an unterminated last line: its call never reached the client in full."""
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            f.truncate(cut)
            log.warning("dropped an unfinished spool line in %s", path.name)


class Quarantine:
    """Spool lines the loader could not load, set aside so that the rest of their file loads.

    One bad line (a corrupt file, a bug, a value DuckDB refuses) once stopped the loader at
    its file for good. Now it is appended, as it was, to a file of the same name under
    ``SPOOL/quarantine/`` (mode 0600: a line may hold a prompt), the log says how many lines
    of which file and why, and ``llmtap report`` counts them.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def set_aside(self, source: str, lines: list[tuple[bytes, str]]) -> None:
        """Keep ``lines`` (each with the reason it could not be loaded) of spool file ``source``."""
        if not lines:
            return
        private_dir(self.directory)
        target = self.directory / source
        with os.fdopen(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as out:
            for line, _ in lines:
                out.write(line if line.endswith(b"\n") else line + b"\n")
        reasons = sorted({reason for _, reason in lines})
        log.error(
            "set aside %d spool line(s) of %s that could not be loaded, in %s (%s); the rest loads",
            len(lines),
            source,
            target,
            "; ".join(reasons[:3]) + ("; ..." if len(reasons) > 3 else ""),
        )

    def count(self) -> int:
        """Lines set aside so far."""
        if not self.directory.is_dir():
            return 0
        total = 0
        for path in self.directory.iterdir():
            with contextlib.suppress(OSError), open(path, "rb") as f:
                total += sum(chunk.count(b"\n") for chunk in iter(functools.partial(f.read, 1 << 20), b""))
        return total
