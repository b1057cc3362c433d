"""The response cache's key: when two requests are the same request.

Two requests share an answer when they name the same provider, API, method, host and path (its
secret query parameters left out: they are the credential), carry the same answer-shaping
headers (:data:`SHAPING_HEADERS`: the API version and beta features change what comes back),
the same credential (unless the config shares answers across keys) and bodies that are equal
as JSON: key order and whitespace do not matter, anything else does (a number written ``1.0``
is not ``1``, which some APIs read differently).

The credential is the request's API key headers (:data:`CREDENTIAL_HEADERS`) and secret query
parameters. Cookies are not part of it: an SDK's HTTP client keeps whatever cookies the
provider's edge sets (``__cf_bm``) and changes them every few minutes, which would make every
call a miss, and a cookie grants no access to the API. ``Proxy-Authorization`` is for the proxy,
not the provider.

The key is a SHA-256 digest of all this, with the credential entering as its own SHA-256: the
cache file holds the digest only, so neither the credential nor the request can be read from it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from urllib.parse import parse_qsl

from collector.trust.privacy import SECRET_HEADERS, SECRET_QUERY_KEYS

__all__ = [
    "CANONICAL_LIMIT",
    "CREDENTIAL_HEADERS",
    "SHAPING_HEADERS",
    "cache_key",
    "canonical_body",
    "credential_digest",
    "shaping_headers",
]

#: Request headers that carry the caller's credential for the provider (lower case): the secret
#: headers less cookies, which name a browser session, not who pays.
CREDENTIAL_HEADERS = frozenset(
    name.encode() for name in SECRET_HEADERS - {"cookie", "set-cookie", "proxy-authorization"}
)
#: Request headers that change the answer for the same body (lower case).
SHAPING_HEADERS = frozenset({b"anthropic-version", b"anthropic-beta", b"openai-beta"})
#: Bodies up to this size are compared as JSON; larger ones (inline images, long documents) byte
#: for byte: rewriting JSON costs ~10 us a kilobyte on the event loop, and a client sends the same
#: large request as the same bytes anyway.
CANONICAL_LIMIT = 256 * 1024
#: Bumped when what goes into a key changes, so old entries are never served for new keys.
_VERSION = b"llmtap-cache/1\0"


def canonical_body(body: bytes) -> bytes:
    """The body as JSON with sorted keys and no whitespace; a body that is not JSON, or larger
    than :data:`CANONICAL_LIMIT`, as it is (prefixed differently, so it never equals a JSON
    body's form)."""
    if len(body) > CANONICAL_LIMIT:
        return b"raw\0" + body
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):  # not JSON (UnicodeDecodeError is a ValueError); too deep
        return b"raw\0" + body
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return b"json\0" + text.encode("utf-8", "surrogatepass")


def credential_digest(fields: Iterable[tuple[bytes, bytes]], path: str) -> bytes:
    """SHA-256 of the request's credential: its :data:`CREDENTIAL_HEADERS` (raw ``(name, value)``
    header pairs) and its secret query parameters, in a fixed order."""
    parts = sorted(
        name.lower() + b"=" + value for name, value in fields if name.lower() in CREDENTIAL_HEADERS
    )
    _, sep, query = path.partition("?")
    if sep:
        parts += sorted(
            f"?{key.lower()}={value}".encode("utf-8", "surrogateescape")
            for key, value in parse_qsl(query, keep_blank_values=True)
            if key.lower() in SECRET_QUERY_KEYS
        )
    return hashlib.sha256(b"\n".join(parts)).digest()


def shaping_headers(fields: Iterable[tuple[bytes, bytes]]) -> bytes:
    """The request's :data:`SHAPING_HEADERS`, in a fixed order."""
    return b"\n".join(
        sorted(name.lower() + b"=" + value for name, value in fields if name.lower() in SHAPING_HEADERS)
    )


def cache_key(
    *,
    provider: str,
    api: str,
    method: str,
    host: str,
    path: str,
    shaping: bytes,
    credential: bytes | None,
    body: bytes,
) -> bytes:
    """The key of a request: ``path`` without secret query parameters, ``credential`` from
    :func:`credential_digest` (None: shared across keys), ``shaping`` from :func:`shaping_headers`,
    ``body`` as the client sent it."""
    digest = hashlib.sha256(_VERSION)
    for part in (provider, api, method, host, path):
        digest.update(part.encode("utf-8", "surrogateescape") + b"\0")
    digest.update(shaping + b"\0")
    digest.update(b"shared\0" if credential is None else b"key\0" + credential)
    digest.update(canonical_body(body))
    return digest.digest()
