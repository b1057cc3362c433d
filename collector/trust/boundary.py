"""The one boundary between bytes from outside and what llmtap keeps, logs, exports or puts in a span.

Every value llmtap stores comes from someone else: header values (decoded with
``surrogateescape``, so a non-UTF-8 byte becomes a lone surrogate), JSON bodies (whose
``\\ud800`` escapes decode to lone surrogates, and whose numbers may be ``NaN`` or 400
digits long), stream events, upstream error messages, files on disk. One such value once
made DuckDB's JSON reader reject a whole spool file, and the loader stopped for good. So
each value crosses here, once, on its way to a row, a span or a spool line, and comes out:

* **valid**: text is UTF-8-encodable (bad bytes and lone surrogates become U+FFFD); numbers
  are finite and fit their column's type, or are NULL;
* **bounded**: text fields are cut at :data:`TEXT_LIMIT` characters, bodies at
  :data:`BODY_LIMIT`; JSON values at :data:`JSON_ITEMS` items a level and
  :data:`JSON_DEPTH` levels;
* **secret-free**: the call's own secret values (its ``Authorization``, ``x-api-key``,
  cookies, ``key=`` query parameters; see :func:`collector.trust.privacy.secret_values`) are cut
  out wherever they appear, and so is anything shaped like a key (``sk-...``, ``AIza...``,
  bearer tokens), in every capture mode: an upstream that echoes a key back in its error,
  its response id or a stream's error event does not get it stored.

Control characters are kept in storage (they are data) and escaped only on display
(:func:`printable`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal, InvalidOperation
from itertools import islice
from typing import Any

from collector.trust.privacy import KEYLIKE, MASK, SECRET_HEADERS, SECRET_QUERY_KEYS

__all__ = [
    "BODY_LIMIT",
    "CONTROL",
    "JSON_DEPTH",
    "JSON_ITEMS",
    "TEXT_LIMIT",
    "TRUNCATED",
    "column_values",
    "json_value",
    "log_line",
    "printable",
    "text",
]

#: Longest text field kept (errors, ids, models, metadata values), in characters.
TEXT_LIMIT = 4096
#: Most of one body kept in the ``full``/``redacted`` capture modes (bytes as received,
#: so at most as many characters once decoded); the rest is cut.
BODY_LIMIT = 8 * 1024 * 1024
#: Items kept per JSON object or array level, and levels kept (usage_raw, properties, span
#: attributes): a hostile upstream's million-key usage object stays small.
JSON_ITEMS = 256
JSON_DEPTH = 8
#: Marks text that was cut at its limit.
TRUNCATED = "…[truncated]"

_INT_RANGES = {"BIGINT": (-(2**63), 2**63 - 1), "INTEGER": (-(2**31), 2**31 - 1)}
#: DECIMAL(18,9) holds 9 digits before the point.
_DECIMAL_BOUND = Decimal(10) ** 9
_NANO = Decimal("0.000000001")
#: The shortest text :data:`collector.trust.privacy.KEYLIKE` matches (``xoxb-`` and 10 more).
_SHORTEST_KEY = 15
_SURROGATE = re.compile("[\ud800-\udfff]")
#: What :func:`printable` escapes: C0 controls but tab and newline, DEL, C1 controls, and the
#: bidirectional overrides and isolates, which make text display in another order than stored.
CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
#: A secret header's value as libraries print it: ``authorization: Bearer ...``,
#: ``(b'authorization', b'Bearer ...')`` (hpack), ``'x-api-key': '...'`` (a dict's repr).
_HEADER_IN_LOG = re.compile(
    r"(?i)(\b(?:" + "|".join(map(re.escape, sorted(SECRET_HEADERS))) + r")\b"
    r"['\"]?\s*(?:[:=]|,\s*b?)\s*b?['\"]?)[^'\"\n]+"
)
_QUERY_IN_LOG = re.compile(
    r"(?i)([?&;](?:" + "|".join(map(re.escape, sorted(SECRET_QUERY_KEYS))) + r")=)[^&\s'\"#]+"
)
#: Longest log line written (a traceback included).
LOG_LIMIT = 65536


def text(value: str, secrets: Sequence[str] = (), limit: int = TEXT_LIMIT, mask_keys: bool = True) -> str:
    """``value`` valid, with ``secrets`` and (unless ``mask_keys`` is false: bodies, whose
    capture mode decides) key-like strings masked, and at most ``limit`` characters (plus
    the :data:`TRUNCATED` mark)."""
    if not value.isascii():  # a flag on the str object: free for the usual ASCII value
        value = _SURROGATE.sub("\ufffd", value)  # a bad byte (surrogateescape) or a lone \ud800
    if len(value) > limit:
        # Keep enough that a secret straddling the limit is still seen whole and masked.
        value = value[: limit + max(map(len, secrets), default=0)]
        cut = True
    else:
        cut = False
    for secret in secrets:
        if secret in value:
            value = value.replace(secret, MASK)
    # Most values (methods, hosts, app names) are too short to hold a key: no regex scan.
    if mask_keys and len(value) >= _SHORTEST_KEY and KEYLIKE.search(value):
        value = KEYLIKE.sub(MASK, value)
    if cut or len(value) > limit:
        value = value[:limit] + TRUNCATED
    return value


def json_value(value: Any, secrets: Sequence[str] = (), depth: int = 0) -> Any:
    """A JSON-ready value (or a slotted dataclass of them, cleaned in place) made valid,
    bounded and secret-free: strings through :func:`text`, non-finite floats to None,
    containers cut at :data:`JSON_ITEMS` items and :data:`JSON_DEPTH` levels."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return _integer(value, *_INT_RANGES["BIGINT"])
    if isinstance(value, str):
        return text(value, secrets)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Decimal):
        return value if value.is_finite() else None
    if depth >= JSON_DEPTH:
        return None
    if isinstance(value, Mapping):
        return {
            text(str(key), secrets): json_value(item, secrets, depth + 1)
            for key, item in islice(value.items(), JSON_ITEMS)
        }
    if isinstance(value, list | tuple):
        return [json_value(item, secrets, depth + 1) for item in islice(value, JSON_ITEMS)]
    slots = getattr(type(value), "__slots__", None)
    if slots is not None:  # the providers' facts (RequestFacts, ResponseFacts, Usage)
        for name in slots:
            setattr(value, name, json_value(getattr(value, name), secrets, depth + 1))
        return value
    return text(str(value), secrets)


def column_values(
    row: Mapping[str, Any],
    columns: Mapping[str, str],
    secrets: Sequence[str] = (),
    limit: int = TEXT_LIMIT,
    mask_keys: bool = True,
) -> dict[str, Any]:
    """The ``columns`` (name to DuckDB type, from :mod:`collector.storage.schema`) of ``row``, each
    made a valid value of its type or None; keys outside ``columns`` are left out. ``limit``
    and ``mask_keys`` apply to VARCHAR columns, as in :func:`text`."""
    return {name: _typed(row.get(name), kind, secrets, limit, mask_keys) for name, kind in columns.items()}


def _typed(value: Any, kind: str, secrets: Sequence[str], limit: int, mask_keys: bool) -> Any:
    if value is None:
        return None
    if kind == "VARCHAR":
        return text(value if isinstance(value, str) else str(value), secrets, limit, mask_keys)
    if kind in _INT_RANGES:
        return _integer(value, *_INT_RANGES[kind])
    if kind == "DOUBLE":
        return _double(value)
    if kind == "BOOLEAN":
        return value if isinstance(value, bool) else None
    if kind == "TIMESTAMPTZ":
        return value if isinstance(value, str) and _is_instant(value) else None
    if kind.startswith("DECIMAL"):
        return _decimal(value)
    if kind == "VARCHAR[]":
        if not isinstance(value, list):
            return None
        return [text(str(item), secrets) for item in islice(value, JSON_ITEMS) if item is not None]
    if kind == "JSON":
        return json_value(value, secrets)
    raise ValueError(f"no boundary for column type {kind}")


def _integer(value: Any, low: int, high: int) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        if not (math.isfinite(value) and value.is_integer()):
            return None
        value = int(value)
    return value if isinstance(value, int) and low <= value <= high else None


def _double(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int beyond any float
        return None
    return number if math.isfinite(number) else None


def _decimal(value: Any) -> Decimal | None:
    """At 9 places (DECIMAL(18,9)), or None if it does not fit."""
    if isinstance(value, bool):
        return None
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        return None
    if not number.is_finite() or abs(number) >= _DECIMAL_BOUND:
        return None
    return number.quantize(_NANO)


def _is_instant(value: str) -> bool:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return False
    return moment.tzinfo is not None


def printable(value: str) -> str:
    """``value`` for a terminal or a page: control characters shown as escapes (ESC as
    ``\\x1b``, U+202E as ``\\u202e``) instead of acting or vanishing; tab and newline kept
    (a CRLF line end stays a line end)."""
    return CONTROL.sub(_escaped, value.replace("\r\n", "\n"))


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def log_line(line: str) -> str:
    """A formatted log line (message and traceback) as it may be written: secret header values,
    secret query parameters and key-like strings masked, control characters escaped, bounded.
    The call's own secret values are not known here; the shapes they are logged in are."""
    line = _HEADER_IN_LOG.sub(lambda m: m.group(1) + MASK, line)
    line = _QUERY_IN_LOG.sub(lambda m: m.group(1) + MASK, line)
    return printable(text(line, limit=LOG_LIMIT))
