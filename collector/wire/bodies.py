"""Message bodies as JSON, for every stage that reads one."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["json_or_none"]


def json_or_none(raw: bytes | str | None) -> Any:
    """A body decoded as JSON, or None when it is not JSON (bad input is never an error)."""
    if not raw:
        return None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
