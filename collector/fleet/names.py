"""How a store is named, for every command and API that reads one: a ``postgresql://`` URL
is the fleet store, anything else a local store (a data directory or its ``llmtap.duckdb``);
no name means ``$LLMTAP_STORE``, else the local store of the data directory.

Kept free of drivers so that the command line can tell the two apart without loading them.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from collector.settings.config import FLEET_SCHEMES

__all__ = ["STORE_ENV", "is_fleet_url"]

#: The environment variable naming the store to read when none is given.
STORE_ENV = "LLMTAP_STORE"


def is_fleet_url(store: str | Path | None) -> bool:
    """Whether ``store`` names a fleet store (a ``postgresql://`` URL) rather than a local one."""
    return isinstance(store, str) and urlsplit(store).scheme in FLEET_SCHEMES
