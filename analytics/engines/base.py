"""What every engine shares: the :class:`Reader` interface and the values it passes
(see :mod:`analytics.engines`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol

import polars as pl

__all__ = ["CALL_SCORES", "DERIVED", "FleetStoreError", "Reader", "StoredCall", "Window"]

#: Columns of the calls frame that are not ``llm_calls`` columns of the local store: the
#: model (response's, else requested, else ``(unknown)``), the request body's hash, and the
#: node that recorded the call (NULL in a local store: its calls belong to no fleet node).
DERIVED = ("model", "body_hash", "node")

#: A call's scores as the dashboard lists them (oldest first): ``value`` in [0, 1], NULL when a
#: grader failed (``error`` says why); ``source`` is ``grader`` or ``feedback``.
CALL_SCORES = pl.Schema(
    {
        "name": pl.String(),
        "value": pl.Float64(),
        "source": pl.String(),
        "created_at": pl.Datetime("us", "UTC"),
        "error": pl.String(),
    }
)


class FleetStoreError(ValueError):
    """The fleet store cannot be read (a bad URL, unreachable, refused, no llmtap tables); the
    message is one line and names the store with its password hidden."""


@dataclass(frozen=True, slots=True)
class Window:
    """Which calls a read covers: started in ``[since, until)`` (either open), recorded by one
    of ``nodes`` (empty: any node)."""

    since: datetime | None = None
    until: datetime | None = None
    nodes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class StoredCall:
    """One call: its row, its span (attributes decoded), its stored bodies (None when the store
    has none for it) and its scores (:data:`CALL_SCORES`)."""

    call: dict
    span: dict | None
    bodies: dict | None
    scores: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=CALL_SCORES))


class Reader(Protocol):
    """What the analyses and the dashboard read from a store."""

    @property
    def label(self) -> str:
        """The store as messages name it (a path, or the URL with its password hidden)."""
        ...

    def check(self, window: Window) -> None:
        """Raise now when the store cannot be read (FileNotFoundError, FleetStoreError) or
        ``window`` asks what it cannot answer (ValueError)."""

    def calls(self, columns: list[str], window: Window, limit: int | None) -> pl.DataFrame:
        """``columns`` of the calls frame (``llm_calls`` columns and :data:`DERIVED`) for the
        calls in ``window``, at most ``limit`` rows; types as the engine gives them (the
        caller casts to :data:`analytics.source.SCHEMA`)."""
        ...

    def scores(self, columns: list[str]) -> pl.DataFrame | None:
        """``columns`` of every score; None when the store has no scores table."""
        ...

    def prefix_hashes(self, window: Window, chars: int) -> pl.DataFrame | None:
        """(call_id, prefix_hash) of each call in ``window`` with a stored JSON request body:
        a hash of its prompt part's first ``chars`` characters, NULL when shorter (see
        :mod:`analytics.recommender.opportunities`); None when the store keeps no bodies."""
        ...

    def property_keys(self, since: datetime | None) -> list[str]:
        """The metadata property names of the calls started since ``since``, sorted."""
        ...

    def call(self, call_id: str) -> StoredCall | None:
        """The call ``call_id`` with its span, bodies and scores; None when there is none."""
        ...

    def state(self) -> tuple[int, ...]:
        """A value that changes when calls or scores are added; () when there is no store yet."""
        ...

    def export(self, fmt: str, window: Window, out: Path | None) -> int:
        """Write the calls in ``window`` (``llm_calls`` columns) as ``fmt`` to ``out`` (None:
        stdout), oldest first; how many."""
        ...
