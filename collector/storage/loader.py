"""Loads the spool into DuckDB from a child process, so that the store's work never holds the
proxy's GIL.

A DuckDB batch (open, load, checkpoint, close) takes 50-80 ms of CPU; in a thread of the
proxy it held the GIL in stretches of 8-12 ms, which the event loop felt as latency on
every call in flight. Here the proxy only seals the active spool file every 0.5 s (2 s
while traffic is heavy; a close and a rename, on a small thread) and writes one byte down
a pipe; the child (``python -m collector.storage.loader``) loads every sealed file when the
byte arrives (the pipe's first line is the child's settings, :class:`LoaderSettings`). Nudges
that pile up while a batch loads are read at once, so batches grow with load instead of
queueing.

With ``[fleet]`` in the config the child also ships what it stores to the fleet store, from a
thread of its own (:mod:`collector.fleet.shipper`): the proxy never waits on that database, and
a database that hangs delays only the shipping, never the loading.

Durability does not change: a call is durable once its spool line is written (by the
recorder, before the client has the last byte), and a sealed file is loaded exactly once
whichever process loads it (see :func:`collector.storage.database.ingest_file`). When the pipe closes
(the proxy stops, or dies) the child loads everything left and exits; :meth:`IngestWorker.stop`
then loads in-process whatever the child could not, so a stopped proxy leaves every record
written as before.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import select
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_serializer

from collector.pricing.rates import Rates
from collector.settings.config import FleetSettings
from collector.storage.database import MAX_RETRY_S, Ingester
from collector.storage.spool import Spool
from collector.trust import logs

if TYPE_CHECKING:
    from collector.fleet.shipper import Shipper

log = logging.getLogger("llmtap.ingest")

#: Seconds between seals of the active spool file: how stale the store may be.
INTERVAL_S = 0.5
#: Seconds between seals while traffic is heavy (the last sealed file held this many bytes,
#: ~80 calls with capture=full). Each load costs the child ~40-80 ms of CPU however few
#: rows it holds (open, load, checkpoint on close), so bigger batches make it cheap per call.
BUSY_INTERVAL_S = 2.0
BUSY_BATCH_BYTES = 256 * 1024
#: The child exits (with RECYCLE_EXIT) after a batch that left it this much larger than its
#: first batch did, and the proxy starts a fresh one: DuckDB's and the allocator's working set grows
#: with batch size and is not handed back, so a long-lived loader would keep its peak.
RECYCLE_GROWTH_BYTES = 24 * 1024 * 1024
RECYCLE_EXIT = 3
#: The loader's scheduling priority relative to the proxy (``nice``).
NICENESS = 10
#: How long a loader that is told to stop keeps shipping what it stored (a stopping proxy's
#: last calls); what is left then is shipped at the next start.
SHIP_GRACE_S = 5.0


class LoaderSettings(BaseModel):
    """What the proxy tells its loader child: the first line of the child's stdin, as JSON.

    Not the command line, which every user of the machine can read in ``ps``; not a pickle,
    which runs whatever code its bytes name. The child validates it before loading anything."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    spool: Path
    db: Path
    #: The proxy's price overrides (from its config), so the child prices rows as it would.
    price_overrides: dict[str, Rates] = Field(default_factory=dict)
    #: The config's ``[fleet]``: the child ships what it stores there. None: it does not.
    fleet: FleetSettings | None = None

    @field_serializer("fleet", when_used="json")
    def _fleet_with_its_url(self, fleet: FleetSettings | None) -> dict | None:
        """The URL goes whole (a secret string shows as ``**********`` otherwise): the pipe is
        private to the two processes, unlike the command line or a file."""
        if fleet is None:
            return None
        return {**fleet.model_dump(mode="json"), "url": fleet.url.get_secret_value()}


class IngestWorker:
    """The proxy's side: seals the spool on a timer and keeps the loading child running."""

    def __init__(
        self,
        spool: Spool,
        db_path: Path,
        price_overrides: Mapping[str, Rates] | None = None,
        fleet: FleetSettings | None = None,
    ) -> None:
        self.spool = spool
        self.db_path = db_path
        self.fleet = fleet
        self.ingester = Ingester(spool, db_path, price_overrides, ships=fleet is not None)
        self._child: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="llmtap-spool-sealer", daemon=True)

    def run_once(self) -> bool:
        """Load what is pending now, in this process (before the proxy serves traffic)."""
        return self.ingester.run_once()

    def start(self) -> None:
        self._spawn()
        self._thread.start()

    def _spawn(self) -> None:
        cmd = [sys.executable, "-m", "collector.storage.loader"]
        settings = LoaderSettings(
            spool=self.spool.directory,
            db=self.db_path,
            price_overrides=self.ingester.price_overrides,
            fleet=self.fleet,
        )
        # Its own session: a terminal's Ctrl-C goes to the proxy, which then closes the pipe.
        child = subprocess.Popen(cmd, stdin=subprocess.PIPE, start_new_session=True, env=_child_env())
        assert child.stdin is not None
        with contextlib.suppress(BrokenPipeError):  # it died at once; the next tick starts another
            child.stdin.write(settings.model_dump_json().encode() + b"\n")
            child.stdin.flush()
        self._child = child

    def _run(self) -> None:
        delay = INTERVAL_S
        while not self._stop.wait(delay):
            sealed = self.spool.seal()
            if sealed is None:
                delay = INTERVAL_S
                child = self._child
                if child is not None and child.poll() is not None:
                    # A loader that exited (recycled, or died) is replaced without waiting for
                    # traffic: its successor ships what it left in the fleet outbox.
                    self._nudge()
                continue
            # Sized before the nudge: the child deletes the file once it is loaded.
            delay = BUSY_INTERVAL_S if sealed.stat().st_size >= BUSY_BATCH_BYTES else INTERVAL_S
            self._nudge()

    def _nudge(self) -> None:
        child = self._child
        if child is None or child.poll() is not None:
            if child is not None and child.returncode != RECYCLE_EXIT:
                log.error("the spool loader exited (code %s); starting a new one", child.returncode)
            self._spawn()
            child = self._child
        assert child is not None and child.stdin is not None
        try:
            child.stdin.write(b".")
            child.stdin.flush()
        except BrokenPipeError:
            pass  # it just died; the next tick starts a new one and it loads what is sealed

    def stop(self, timeout: float = 15.0) -> bool:
        """Seal, let the child load everything and exit; False if something is still unsaved."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.spool.seal()
        child = self._child
        if child is not None:
            assert child.stdin is not None
            with contextlib.suppress(BrokenPipeError):  # it died; the drain below does its work
                child.stdin.close()  # end of input: the child loads what is left and exits
            try:
                child.wait(timeout)
            except subprocess.TimeoutExpired:
                log.error("the spool loader did not finish in %.0f s; stopping it", timeout)
                child.kill()
                child.wait()
        # Whatever the child could not load (or a backlog the disk refused) gets more tries here.
        return self.ingester.drain(timeout)


def _child_env() -> dict[str, str]:
    """The proxy's environment, with this package importable however the proxy was started."""
    root = str(Path(__file__).resolve().parent.parent)
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else "")}


def serve(ingester: Ingester, nudges: int) -> int:
    """Load on every nudge read from the file descriptor ``nudges`` until it closes, then load
    what is left (exit code 0, or 1 if something is still unsaved). While the store fails,
    retry on a growing delay as well. After a batch that left this process much larger than
    after its first one (DuckDB's fixed cost included), return RECYCLE_EXIT so that the proxy
    starts a fresh loader."""
    baseline: int | None = None
    ingester.warm()
    delay: float | None = None if ingester.run_once() else 0.5
    while True:
        readable, _, _ = select.select([nudges], [], [], delay)
        if readable and not os.read(nudges, 65536):
            break  # the proxy stopped (or died)
        delay = None if ingester.run_once() else min((delay or 0.25) * 2, MAX_RETRY_S)
        if delay is None:
            resident = _resident_bytes()
            baseline = resident if baseline is None else baseline
            if resident - baseline > RECYCLE_GROWTH_BYTES:
                return RECYCLE_EXIT
    return 0 if ingester.drain(timeout=10.0) else 1


def _resident_bytes() -> int:
    """This process's resident memory (Linux); 0 where /proc is missing, so no recycling."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m collector.storage.loader",
        description="Load llmtap's sealed spool files into its DuckDB store each time a byte "
        "arrives on stdin, after a first line of settings (JSON: spool, db, price_overrides); "
        "load everything left and exit when stdin closes. Started by the proxy.",
    )
    parser.parse_args(argv)
    logs.setup()
    try:
        settings = read_settings(sys.stdin.fileno())
    except ValidationError as exc:
        # Without the values: the fleet store's URL may hold its password.
        errors = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_input=False)
        )
        log.error("the spool loader's settings are not valid: %s", errors)
        return 2
    # What it creates (the store, DuckDB's write-ahead log and temporary files) holds prompts.
    os.umask(0o077)
    # Background work: when the CPU is contended the proxy (and the app) go first; the spool
    # keeps every call meanwhile.
    os.nice(NICENESS)
    ingester = Ingester(
        Spool(settings.spool), settings.db, settings.price_overrides, settings.fleet is not None
    )
    shipper = _shipper(ingester, settings.fleet) if settings.fleet is not None else None
    code = serve(ingester, sys.stdin.fileno())
    if shipper is not None:
        # A recycled loader's successor ships at once; a stopping proxy's loader ships its last calls.
        shipper.stop(grace=0.0 if code == RECYCLE_EXIT else SHIP_GRACE_S)
    return code


def _shipper(ingester: Ingester, fleet: FleetSettings) -> Shipper:
    """The thread that ships what ``ingester`` stores (imported here: only fleets need psycopg)."""
    from collector.fleet.postgres import FleetAddress, PostgresSink
    from collector.fleet.shipper import Shipper

    shipper = Shipper(ingester.outbox, PostgresSink(FleetAddress(fleet.url.get_secret_value())), fleet.node)
    ingester.on_staged = shipper.nudge
    return shipper.start()


def read_settings(fd: int) -> LoaderSettings:
    """The settings line at the start of ``fd``. Nudges read along with it are dropped: the
    first batch of :func:`serve` loads every sealed file anyway."""
    data = b""
    while b"\n" not in data and (chunk := os.read(fd, 65536)):
        data += chunk
    return LoaderSettings.model_validate_json(data.partition(b"\n")[0])


if __name__ == "__main__":
    sys.exit(main())
