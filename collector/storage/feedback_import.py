"""Feedback from a file: scores the app collected on its side, imported into the store.

A CSV with a header row ``call_id,name,value`` or JSON Lines of ``{"call_id": ..., "name":
..., "value": ...}`` (by the file's suffix: ``.csv``, else JSON Lines). Each line is
validated as the proxy's feedback endpoint validates a post (:class:`Feedback`); lines that
are not valid, or name a call the store does not hold, are refused with their line number
and reason, and the rest is stored. The scores go through the spool like every other
record, so an import beside a running proxy is safe (its loader or this import loads them,
exactly once).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from collector.calls.scores import Feedback
from collector.settings.paths import Paths
from collector.storage.database import Ingester, read_connection
from collector.storage.spool import Spool

__all__ = ["Imported", "import_feedback"]

#: Call ids looked up in the store per query.
_LOOKUP_BATCH = 10_000


@dataclass
class Imported:
    """What an import did: scores stored, and each refused line (number, reason)."""

    stored: int = 0
    refused: list[tuple[int, str]] = field(default_factory=list)
    #: False when the store could not load them yet: they wait in the spool for the next load.
    loaded: bool = True


def import_feedback(source: Path, paths: Paths) -> Imported:
    """Store the scores of ``source`` (CSV or JSON Lines, see the module docstring)."""
    result = Imported()
    valid: list[tuple[int, Feedback]] = []
    for number, fields in _lines(source):
        if isinstance(fields, str):
            result.refused.append((number, fields))
            continue
        try:
            valid.append((number, Feedback.model_validate(fields)))
        except ValidationError as exc:
            reasons = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'line'}: {e['msg']}" for e in exc.errors())
            result.refused.append((number, reasons))
    known = _known_ids({feedback.call_id for _, feedback in valid}, paths.db)
    spool = Spool(paths.spool)
    for number, feedback in valid:
        if feedback.call_id not in known:
            result.refused.append((number, f"no recorded call has the id {feedback.call_id}"))
            continue
        spool.append(feedback.score().spool_line())
        result.stored += 1
    if result.stored:
        # Each pass creates what the store lacks and waits out readers; what cannot be loaded
        # now stays in the spool for the next load (the proxy's, or the next import's).
        result.loaded = Ingester(spool, paths.db).drain(timeout=30)
    result.refused.sort()
    return result


def _lines(source: Path) -> Iterator[tuple[int, dict[str, object] | str]]:
    """(line number, fields) per record; fields is the reason when the line cannot be read."""
    # utf-8-sig: a spreadsheet's "CSV UTF-8" starts with a byte-order mark.
    with source.open(encoding="utf-8-sig", newline="") as f:
        if source.suffix.lower() == ".csv":
            reader = csv.DictReader(f)
            if reader.fieldnames is None or not {"call_id", "name", "value"} <= set(reader.fieldnames):
                yield 1, "the header row must name the columns call_id, name and value"
                return
            for row in reader:
                yield reader.line_num, _csv_fields(row)
            return
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                yield number, f"not JSON ({exc.msg})"
                continue
            yield number, data if isinstance(data, dict) else "not a JSON object"


def _csv_fields(row: dict[str | None, object]) -> dict[str, object] | str:
    if None in row:  # csv.DictReader's key for fields beyond the header's
        return "more fields than the header names (a decimal comma?)"
    raw = str(row.get("value") or "").strip()
    try:
        value: object = float(raw)
    except ValueError:
        return f"value: must be a number from 0 to 1, got {raw[:40]!r}"
    return {"call_id": row.get("call_id") or "", "name": row.get("name") or "", "value": value}


def _known_ids(call_ids: set[str], db: Path) -> set[str]:
    if not call_ids or not db.exists():
        return set()
    ids = sorted(call_ids)
    known: set[str] = set()
    with read_connection(db) as con:
        for start in range(0, len(ids), _LOOKUP_BATCH):
            batch = ids[start : start + _LOOKUP_BATCH]
            rows = con.execute(
                "SELECT DISTINCT call_id FROM llm_calls WHERE call_id IN (SELECT unnest(?))", [batch]
            ).fetchall()
            known.update(row[0] for row in rows)
    return known
