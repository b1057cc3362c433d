"""What llmtap keeps of a request: secrets never, bodies according to the capture mode.

* ``full``: request and response bodies as sent (any secret value seen in the request's
  headers or query is still cut out of them);
* ``redacted``: bodies with e-mail addresses, phone and card numbers and key-like
  strings masked;
* ``metadata``: no bodies at all.

Headers are never stored. Secret query parameters (Gemini's ``key=`` and friends) are
dropped from the stored path.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import parse_qsl, urlencode

SECRET_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "x-api-key",
        "api-key",
        "x-goog-api-key",
        "cookie",
        "set-cookie",
        "x-amz-security-token",
    }
)
_SECRET_HEADER_NAMES = frozenset(name.encode() for name in SECRET_HEADERS)
SECRET_QUERY_KEYS = frozenset({"key", "api_key", "apikey", "api-key", "access_token", "token", "sig"})
MASK = "[REDACTED]"
#: Shorter values are not cut out of bodies: they would match ordinary text.
MIN_SECRET_LENGTH = 8
#: Most secret values for which a call's bodies are kept: each costs a scan of every body
#: (up to 8 MiB). A request carrying more (thousands of cookies, say) is recorded without its
#: bodies (see :class:`collector.proxy.addons.recorder.Recorder`); its other fields, bounded in size, are
#: still scanned for every value, so its work grows with the request, not its square.
MAX_SECRET_VALUES = 64

KEYLIKE = re.compile(
    r"\b(?:sk-[A-Za-z0-9_\-]{16,}|sk-ant-[A-Za-z0-9_\-]{16,}|AIza[0-9A-Za-z_\-]{30,}"
    r"|AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{30,}|xox[abpr]-[A-Za-z0-9\-]{10,}"
    r"|(?:Bearer|Basic)\s+[A-Za-z0-9._~+/\-]{16,}=*)"
)
_EMAIL = re.compile(r"\b[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}\b")
_CARD = re.compile(r"\b(?:\d[ \-]?){12,18}\d\b")
# International (+CC ...) or grouped national numbers; a bare run of digits (ids,
# timestamps, token counts) is not a phone number.
_PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .\-]?(?:\(?\d{1,4}\)?[ .\-]?){1,4}\d{2,4}"
    r"|\(?\d{3}\)?[ .\-]\d{3}[ .\-]\d{4})(?![\w])"
)


def clean_path(path: str) -> str:
    """The request path with secret query parameters removed."""
    base, sep, query = path.partition("?")
    if not sep:
        return path
    kept = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k.lower() not in SECRET_QUERY_KEYS]
    return f"{base}?{urlencode(kept)}" if kept else base


def secret_values(fields: Iterable[tuple[bytes, bytes]], path: str) -> list[str]:
    """Every secret value a request carries, to be cut out of anything stored. ``fields`` are
    the raw ``(name, value)`` header pairs (``request.data.headers.fields``): every call
    goes through here, and only the few secret headers are worth decoding."""
    found: list[str] = []
    for name, raw in fields:
        if not raw or name.lower() not in _SECRET_HEADER_NAMES:
            continue
        value = raw.decode("utf-8", "surrogateescape")
        found.append(value)
        _, _, token = value.partition(" ")  # "Bearer <key>", "Basic <b64>"
        found.append(token)
        for pair in value.split(";"):  # "a=<secret>; b=<secret>" in cookies
            found.append(pair.partition("=")[2].strip())
    _, query_sep, query = path.partition("?")
    if query_sep:
        for key, value in parse_qsl(query):
            if key.lower() in SECRET_QUERY_KEYS:
                found.append(value)
    return sorted({v for v in found if len(v) >= MIN_SECRET_LENGTH}, key=len, reverse=True)


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _mask_card(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group())
    return MASK if _luhn_ok(digits) else match.group()


def redact(text: str) -> str:
    """Mask personal data and key-like strings (the ``redacted`` capture mode)."""
    text = KEYLIKE.sub(MASK, text)
    text = _EMAIL.sub(MASK, text)
    text = _CARD.sub(_mask_card, text)
    return _PHONE.sub(MASK, text)


def stored_body(raw: bytes | None, mode: str, secrets: list[str]) -> str | None:
    """The body text to keep under ``mode``, or None."""
    if mode == "metadata" or raw is None:
        return None
    text = raw.decode("utf-8", errors="replace")
    for secret in secrets:
        text = text.replace(secret, MASK)
    return redact(text) if mode == "redacted" else text
