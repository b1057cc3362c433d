"""Where shipped rows go: the small interface a fleet store implements.

The shipper (:mod:`collector.fleet.shipper`) reads batches from the outbox and hands them to a
:class:`Sink`; it knows nothing of the engine behind it. PostgreSQL is the one implementation
(:class:`collector.fleet.postgres.PostgresSink`); a ClickHouse sink would be a second (the
README's "Fleet" section says how it would map).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["Batch", "Rows", "Sink", "SinkRefused", "SinkUnavailable"]


@dataclass(slots=True)
class Rows:
    """Rows of one table: column names and values (Python values, as DuckDB returns them)."""

    columns: tuple[str, ...]
    values: list[tuple[Any, ...]] = field(default_factory=list)


@dataclass(slots=True)
class Batch:
    """Rows of the fleet tables (``llm_calls``, ``spans``, ``scores``) recorded by ``node``."""

    node: str
    tables: dict[str, Rows]

    def __len__(self) -> int:
        return sum(len(rows.values) for rows in self.tables.values())

    def single_rows(self) -> list[Batch]:
        """One batch per row: how the shipper isolates a row the store refuses."""
        return [
            Batch(self.node, {table: Rows(rows.columns, [value])})
            for table, rows in self.tables.items()
            for value in rows.values
        ]


class SinkUnavailable(Exception):
    """The store cannot be reached (down, unreachable, timing out): try again later. The
    message is safe to log (it names the store by its redacted address)."""


class SinkRefused(Exception):
    """The store was reached and refused the batch's data. Safe to log, as above."""


class Sink(Protocol):
    """A fleet store."""

    #: The store as it may be logged (a URL with its password masked).
    where: str

    def ensure_schema(self) -> None:
        """Create or upgrade the store's tables (idempotent, safe from many sidecars at once)."""

    def write(self, batch: Batch) -> None:
        """Store the batch's rows in one transaction, skipping rows the store already has (by
        their keys): writing a batch twice stores it once. Raises SinkUnavailable or
        SinkRefused; nothing is stored then."""

    def close(self) -> None:
        """Let go of the connection."""
