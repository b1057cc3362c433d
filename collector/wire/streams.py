"""mitmproxy's response ``stream`` callables, as stages that wrap one another's see them."""

from __future__ import annotations

from collections.abc import Callable, Iterable

__all__ = ["StreamFn", "joined"]

#: What mitmproxy accepts as ``flow.response.stream``: each chunk in, what to send on out.
type StreamFn = Callable[[bytes], bytes | Iterable[bytes]]


def joined(out: bytes | Iterable[bytes]) -> bytes:
    """A stream callable's output for one chunk, as one ``bytes``."""
    return out if isinstance(out, bytes) else b"".join(out)
