"""Where the response cache keeps answers: one SQLite file, ``DATA_DIR/cache.sqlite3`` (mode 0600).

SQLite (the standard library's) because the cache must survive restarts, be bounded, and be read
on the proxy's event loop in microseconds: a lookup is one primary-key read. In WAL mode readers
never wait for the writer, so every write (a new answer, when an answer was last used, evicting)
happens on one writer thread: a commit, a checkpoint's fsync or an eviction never holds up
traffic. An answer queued but not yet written is served from memory meanwhile, so the next
identical request hits at once.

What an entry holds: the key's digest (never the request or the credential, see
:mod:`collector.cache.keys`), the answer's status, the response headers to replay, its body
bytes exactly as the client received them, whether it was a stream, the call id of the call that
fetched it, the stream's usage as read in flight (an OpenAI-style stream's client may not have
asked for it, see :mod:`collector.proxy.addons.stream_usage`), when it was stored, when it
expires and when it was last used.

The bound: the entries' sizes (body, headers, usage, plus a fixed overhead per row) add up to at
most ``max_bytes``. After each batch of writes, expired entries go first, then the least recently
used until the total is under the bound. Pages freed by eviction are reused by new entries, so the
file stays near the bound.

Fail open: any SQLite error is logged (once per kind) and counts as a miss or a dropped write; a
file that is not a readable database (overwritten, corrupt) is replaced by an empty cache at
start, which loses nothing but answers that can be fetched again; an entry whose bytes do not
match the checksum stored with them (a damaged page: SQLite does not check) is a miss.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import sqlite3
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from collector.trust.failopen import failures

__all__ = ["ENTRY_OVERHEAD", "MAX_ENTRY_BYTES", "CacheStore", "Entry"]

log = logging.getLogger("llmtap.cache")

#: Bytes counted per entry beyond its body, headers and usage (the key, times, row headers).
ENTRY_OVERHEAD = 128
#: The largest answer kept (a bigger one is served but not stored); the proxy holds a stream's
#: bytes in memory until it ends, so this also bounds that.
MAX_ENTRY_BYTES = 16 * 1024 * 1024
#: Answers waiting for the writer beyond this many bytes are dropped (a disk too slow to keep up
#: must not grow the proxy's memory without bound).
MAX_PENDING_BYTES = 64 * 1024 * 1024
#: How long the writer gathers queued answers into one transaction, at most, and how many.
BATCH_S = 0.05
MAX_BATCH = 512
#: How often, at least, the writer records when answers were last served.
TOUCH_INTERVAL_S = 1.0
#: The file's format; a file of another version is emptied.
_FORMAT = 1
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS entries (
        key BLOB PRIMARY KEY,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        last_used REAL NOT NULL,
        size INTEGER NOT NULL,
        status INTEGER NOT NULL,
        streamed INTEGER NOT NULL,
        call_id TEXT NOT NULL,
        usage TEXT,
        headers TEXT NOT NULL,
        body BLOB NOT NULL,
        checksum INTEGER NOT NULL
    )""",
    # Least recently used first, with the sizes: eviction and the total read from the index alone.
    "CREATE INDEX IF NOT EXISTS entries_lru ON entries (last_used, size)",
    "CREATE INDEX IF NOT EXISTS entries_expiry ON entries (expires_at)",
)
_SELECT = (
    "SELECT status, headers, body, streamed, call_id, usage, created_at, expires_at, checksum "
    "FROM entries WHERE key = ?"
)
_INSERT = "INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_TOUCH = "UPDATE entries SET last_used = max(last_used, ?) WHERE key = ?"
_DELETE_EXPIRED = "DELETE FROM entries WHERE expires_at <= ? RETURNING size"
#: Errors that mean the file is not a database SQLite can read: replaced by an empty one.
_UNREADABLE = frozenset({"SQLITE_NOTADB", "SQLITE_CORRUPT"})


@dataclass(frozen=True, slots=True)
class Entry:
    """One stored answer."""

    status: int
    #: Response headers to replay, as raw ``(name, value)`` pairs.
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    streamed: bool
    #: The call that fetched the answer from the provider.
    call_id: str
    #: JSON text the proxy stage gives meaning to (a stream's usage); the store only keeps it.
    usage: str | None
    created_at: float
    expires_at: float

    @property
    def size(self) -> int:
        """What the entry counts towards the bound."""
        return len(self.body) + len(_headers_json(self.headers)) + len(self.usage or "") + ENTRY_OVERHEAD


def _headers_json(headers: tuple[tuple[bytes, bytes], ...]) -> str:
    # Latin-1 maps every byte to one character and back: any header value survives JSON.
    return json.dumps([[name.decode("latin-1"), value.decode("latin-1")] for name, value in headers])


def _checksum(headers: str, body: bytes, usage: str | None) -> int:
    """SQLite does not check what it reads back: a damaged page would replay damaged bytes."""
    return zlib.crc32(body, zlib.crc32((headers + "\0" + (usage or "")).encode()))


def _headers(text: str) -> tuple[tuple[bytes, bytes], ...]:
    return tuple((name.encode("latin-1"), value.encode("latin-1")) for name, value in json.loads(text))


class CacheStore:
    """The cache file: :meth:`get` on the event loop, :meth:`put` and :meth:`touch` queued for the
    writer thread; :meth:`close` writes what is queued and stops it."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        #: Answers queued for the writer, served from here until written.
        self._pending: dict[bytes, Entry] = {}
        self._pending_bytes = 0
        self._queue: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._logged: set[str] = set()
        #: Bytes stored, as the writer thread counts them.
        self._total = 0
        #: When answers were last served, by key, until the writer records it.
        self._touched: dict[bytes, float] = {}
        self._reader: sqlite3.Connection | None = None
        try:
            self._reader = self._open()
        except (sqlite3.Error, OSError) as exc:
            log.warning("response cache %s cannot be used (%s); every call goes to the provider", path, exc)
        self._thread: threading.Thread | None = None
        if self._reader is not None:
            self._thread = threading.Thread(target=self._write_loop, name="llmtap-cache-writer", daemon=True)
            self._thread.start()

    # -- the event loop's side -----------------------------------------------------------------

    def get(self, key: bytes, now: float, max_age: float | None = None) -> Entry | None:
        """The answer stored under ``key``, unless there is none, it has expired, or it is at
        least ``max_age`` seconds old."""
        with self._lock:
            entry = self._pending.get(key)
        if entry is None:
            if self._reader is None:
                return None
            try:
                row = self._reader.execute(_SELECT, (key,)).fetchone()
                if row is None:
                    return None
                status, headers, body, streamed, call_id, usage, created_at, expires_at, checksum = row
                if _checksum(headers, body, usage) != checksum:
                    raise ValueError("an entry's checksum does not match: the file is damaged")
                entry = Entry(
                    status, _headers(headers), body, bool(streamed), call_id, usage, created_at, expires_at
                )
            except (sqlite3.Error, ValueError, TypeError) as exc:  # a damaged row reads as a miss
                self._failed("read", exc)
                return None
        if entry.expires_at <= now or (max_age is not None and now - entry.created_at >= max_age):
            return None
        return entry

    def put(self, key: bytes, entry: Entry) -> bool:
        """Queue ``entry`` to be stored under ``key``; False if it is not kept (too large, or the
        writer is too far behind)."""
        size = entry.size
        if self._thread is None or size > min(self.max_bytes, MAX_ENTRY_BYTES):
            return False
        with self._lock:
            if self._pending_bytes + size > MAX_PENDING_BYTES:
                self._failed(
                    "backlog", RuntimeError(f"more than {MAX_PENDING_BYTES} bytes wait to be written")
                )
                return False
            self._pending[key] = entry
            self._pending_bytes += size
        self._queue.put(("put", key, entry))
        return True

    def touch(self, key: bytes, now: float) -> None:
        """Record that the answer under ``key`` was used (for least-recently-used eviction). Kept
        in memory and written with the next batch (within :data:`TOUCH_INTERVAL_S`): waking the
        writer for each hit would cost every hit a transaction's worth of the GIL."""
        if self._thread is not None:
            with self._lock:
                self._touched[key] = now

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued so far is written (or given up on)."""
        if self._thread is None or not self._thread.is_alive():
            return True
        done = threading.Event()
        self._queue.put(("flush", done))
        return done.wait(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, then stop the writer and close the file."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None
        if self._reader is not None:
            with contextlib.suppress(sqlite3.Error):
                self._reader.close()
            self._reader = None

    def totals(self) -> tuple[int, int]:
        """(entries, bytes counted towards the bound) as stored now (for tests and the log)."""
        assert self._reader is not None
        count, size = self._reader.execute("SELECT count(*), coalesce(sum(size), 0) FROM entries").fetchone()
        return int(count), int(size)

    # -- the file ------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        # Autocommit (isolation_level None): the writer opens its transactions itself, and each
        # read sees the latest commit. The reader waits at most 20 ms for a lock, then misses.
        con = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=0.02)
        con.execute("PRAGMA journal_mode = WAL")
        con.execute("PRAGMA synchronous = NORMAL")  # WAL: durable at checkpoints, never corrupt
        con.execute("PRAGMA journal_size_limit = 4194304")  # the WAL file is cut back to 4 MiB
        return con

    def _open(self) -> sqlite3.Connection:
        """The reader's connection to a ready file: created private, or replaced by an empty one
        if it cannot be read as a cache."""
        try:
            return self._prepared()
        except sqlite3.DatabaseError as exc:
            if getattr(exc, "sqlite_errorname", None) not in _UNREADABLE:
                raise
            log.warning("response cache %s is unreadable (%s); starting with an empty cache", self.path, exc)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        return self._prepared()

    def _prepared(self) -> sqlite3.Connection:
        # Created 0600 before SQLite opens it: its -wal and -shm files take the same mode.
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        os.chmod(self.path, 0o600)
        con = self._connect()
        try:
            (version,) = con.execute("PRAGMA user_version").fetchone()
            if version not in (0, _FORMAT):
                con.execute("DROP TABLE IF EXISTS entries")
            for statement in _SCHEMA:
                con.execute(statement)
            con.execute(f"PRAGMA user_version = {_FORMAT}")
            con.execute("SELECT count(*) FROM entries INDEXED BY entries_lru").fetchone()
        except BaseException:
            con.close()
            raise
        return con

    def _failed(self, what: str, exc: BaseException) -> None:
        failures[f"cache.{what}"] += 1
        if what not in self._logged:
            self._logged.add(what)
            log.warning("response cache %s failed (%s); it acts as a miss (logged once)", what, exc)

    # -- the writer thread ---------------------------------------------------------------------

    def _write_loop(self) -> None:
        try:
            con = self._connect()
            con.execute("PRAGMA busy_timeout = 1000")
            (total,) = con.execute(
                "SELECT coalesce(sum(size), 0) FROM entries INDEXED BY entries_lru"
            ).fetchone()
        except sqlite3.Error as exc:
            self._failed("write", exc)
            self._drain_without_writing()
            return
        self._total = int(total)
        stopping = False
        while not stopping:
            batch = self._next_batch()
            stopping = None in batch
            items = [item for item in batch if item is not None]
            self._write(con, [item for item in items if item[0] != "flush"])
            for item in items:
                if item[0] == "flush":
                    item[1].set()
        with contextlib.suppress(sqlite3.Error):
            con.close()

    def _next_batch(self) -> list[tuple[Any, ...] | None]:
        """What to write in the next transaction: what is queued within :data:`BATCH_S` of the
        first item (at once for a flush or the stop), or nothing after :data:`TOUCH_INTERVAL_S`
        (then only the hits' times are written). One transaction per batch, not per answer:
        under traffic the writer costs the event loop's thread less of the GIL."""
        try:
            batch = [self._queue.get(timeout=TOUCH_INTERVAL_S)]
        except queue.Empty:
            return []
        deadline = time.monotonic() + BATCH_S
        while len(batch) < MAX_BATCH and (last := batch[-1]) is not None and last[0] != "flush":
            try:
                batch.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
        return batch

    def _write(self, con: sqlite3.Connection, items: list[tuple[Any, ...]]) -> None:
        with self._lock:
            touched, self._touched = self._touched, {}
        if not items and not touched:
            return
        try:
            con.execute("BEGIN IMMEDIATE")
            con.executemany(_TOUCH, [(used, key) for key, used in touched.items()])
            self._evict_expired(con, time.time())
            for _, key, entry in items:
                # An answer served while it waited to be written was used then.
                self._insert(con, key, entry, max(entry.created_at, touched.get(key, 0.0)))
                # Within the transaction too: a batch of new answers never takes the file past
                # the bound, so freed pages are reused instead of the file growing.
                self._evict_least_recently_used(con)
            con.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                con.execute("ROLLBACK")
            self._failed("write", exc)
            with contextlib.suppress(sqlite3.Error):  # what the file holds after the failure
                (total,) = con.execute("SELECT coalesce(sum(size), 0) FROM entries").fetchone()
                self._total = int(total)
        finally:
            with self._lock:
                for _, key, entry in items:
                    self._pending_bytes -= entry.size
                    if self._pending.get(key) is entry:
                        del self._pending[key]

    def _insert(self, con: sqlite3.Connection, key: bytes, entry: Entry, last_used: float) -> None:
        if (old := con.execute("SELECT size FROM entries WHERE key = ?", (key,)).fetchone()) is not None:
            self._total -= old[0]
        size = entry.size
        headers = _headers_json(entry.headers)
        con.execute(
            _INSERT,
            (
                key,
                entry.created_at,
                entry.expires_at,
                last_used,
                size,
                entry.status,
                int(entry.streamed),
                entry.call_id,
                entry.usage,
                headers,
                entry.body,
                _checksum(headers, entry.body, entry.usage),
            ),
        )
        self._total += size

    def _evict_expired(self, con: sqlite3.Connection, now: float) -> None:
        """Expired entries go first, however recently used."""
        for (size,) in con.execute(_DELETE_EXPIRED, (now,)).fetchall():
            self._total -= size

    def _evict_least_recently_used(self, con: sqlite3.Connection) -> None:
        """The least recently used entries, until the total is within the bound."""
        while self._total > self.max_bytes:
            oldest = con.execute("SELECT key, size FROM entries ORDER BY last_used LIMIT 64").fetchall()
            if not oldest:
                self._total = 0
                break
            for key, size in oldest:
                if self._total <= self.max_bytes:
                    break
                con.execute("DELETE FROM entries WHERE key = ?", (key,))
                self._total -= size

    def _drain_without_writing(self) -> None:
        """The writer could not open the file: release whatever waits for it."""
        while True:
            item = self._queue.get()
            if item is None:
                return
            if item[0] == "flush":
                item[1].set()
            elif item[0] == "put":
                with self._lock:
                    self._pending_bytes -= item[2].size
                    self._pending.pop(item[1], None)
