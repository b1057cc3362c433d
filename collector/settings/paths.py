"""Where llmtap keeps things: the data directory and every file name inside it, spelled here once.

Only the standard library is imported: the spool, the CLI and the loader child all need
these names, and none of them should pay for DuckDB or mitmproxy to learn a file name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: The spool's sub-directory for lines the loader could not load (see
#: :class:`collector.storage.spool.Quarantine`).
QUARANTINE_DIR = "quarantine"
#: The rules file's name in the data directory, unless the config or ``--rules`` names another.
RULES_FILE = "rules.yaml"


def resolve_data_dir(flag: str | None) -> Path:
    """--data-dir, else $LLMTAP_DATA_DIR, else ~/.llmtap (the contract's order)."""
    raw = flag or os.environ.get("LLMTAP_DATA_DIR") or "~/.llmtap"
    return Path(raw).expanduser().resolve()


@dataclass(frozen=True, slots=True)
class Paths:
    """Where everything lives inside the data directory.

    ``rules_file`` is the rules file the config or ``--rules`` named, if any: the proxy,
    ``llmtap evaluate``, ``llmtap recommend`` and the dashboard must all read and write the
    same file, so :attr:`rules` is the one place that chooses it."""

    data_dir: Path
    rules_file: Path | None = None

    @property
    def db(self) -> Path:
        return self.data_dir / "llmtap.duckdb"

    @property
    def spool(self) -> Path:
        return self.data_dir / "spool"

    @property
    def quarantine(self) -> Path:
        """Spool lines the loader could not load (see :class:`collector.storage.spool.Quarantine`)."""
        return self.spool / QUARANTINE_DIR

    @property
    def rules(self) -> Path:
        return self.rules_file or self.data_dir / RULES_FILE

    @property
    def ca_dir(self) -> Path:
        return self.data_dir / "ca"

    @property
    def ca_bundle(self) -> Path:
        return self.data_dir / "ca-bundle.pem"

    @property
    def cache(self) -> Path:
        """The response cache's answers (SQLite; see :mod:`collector.cache.store`)."""
        return self.data_dir / "cache.sqlite3"

    @property
    def fleet_outbox(self) -> Path:
        """Batches stored here and not yet shipped to the fleet store (see :mod:`collector.fleet.outbox`)."""
        return self.data_dir / "fleet-outbox"

    @property
    def budget_alerts(self) -> Path:
        """The budget alerts of the current periods, for the dashboard (JSON, replaced atomically)."""
        return self.data_dir / "budget_alerts.json"
