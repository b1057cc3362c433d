"""The engines a store is read from, behind one small interface: :class:`Reader`.

A store is named by a string or path: a ``postgresql://`` URL is the fleet store (every
sidecar's calls, with the ``node`` that recorded each; :mod:`analytics.engines.fleet`), anything
else the local DuckDB store of a data directory (:mod:`analytics.engines.local`). No name
means ``$LLMTAP_STORE`` when set, else the default data directory. Everything above this
package (:func:`analytics.load`, the dashboard, the CLI) asks a :class:`Reader` and never
looks at which engine it is; each engine module holds its own SQL.

A reader is cheap to make and holds no connection: each method opens the store, runs one
query and closes it (the local store's writer must get it back within a second, and a
PostgreSQL connection per idle notebook is a leak).
"""

from __future__ import annotations

import os
from pathlib import Path

from analytics.engines.base import CALL_SCORES, DERIVED, FleetStoreError, Reader, StoredCall, Window
from analytics.engines.local import LocalStore
from collector.fleet.names import STORE_ENV, is_fleet_url

__all__ = [
    "CALL_SCORES",
    "DERIVED",
    "STORE_ENV",
    "FleetStoreError",
    "Reader",
    "StoredCall",
    "Window",
    "is_fleet_url",
    "reader",
]


def reader(store: str | Path | None = None) -> Reader:
    """The reader of ``store``: a ``postgresql://`` URL, a data directory or its
    ``llmtap.duckdb`` (None: ``$LLMTAP_STORE``, else ``$LLMTAP_DATA_DIR``, else ``~/.llmtap``)."""
    named = store if store is not None else (os.environ.get(STORE_ENV) or None)
    if is_fleet_url(named):
        assert isinstance(named, str)
        from analytics.engines.fleet import FleetStore  # psycopg and connectorx: only for a fleet

        return FleetStore(named)
    return LocalStore.of(named)
