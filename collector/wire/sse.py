"""Incremental server-sent-events reader: bytes in, (event, data) pairs out.

Chunks may split anywhere, including inside a UTF-8 sequence or a CRLF pair, so the
reader keeps the unfinished tail between calls. It never holds more than one
incomplete event.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator


class SSEReader:
    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""

    def feed(self, chunk: bytes) -> Iterator[tuple[str, str]]:
        """Yield each complete event in ``chunk`` (plus what earlier chunks left over)."""
        text = self._decoder.decode(chunk)
        if not text:
            return
        buffer = self._buffer + text
        # Hold back a trailing CR: it may be the first half of a CRLF.
        hold = buffer.endswith("\r")
        if hold:
            buffer = buffer[:-1]
        buffer = buffer.replace("\r\n", "\n").replace("\r", "\n")
        *blocks, rest = buffer.split("\n\n")
        self._buffer = rest + ("\r" if hold else "")
        for block in blocks:
            if (event := _parse_block(block)) is not None:
                yield event

    def close(self) -> Iterator[tuple[str, str]]:
        """Yield a final event that the stream ended without a blank line after."""
        tail = self._buffer + self._decoder.decode(b"", final=True)
        self._buffer = ""
        if tail.strip() and (event := _parse_block(tail.replace("\r", ""))) is not None:
            yield event


def _parse_block(block: str) -> tuple[str, str] | None:
    event = "message"
    data: list[str] = []
    for line in block.split("\n"):
        if not line or line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
    if not data:
        return None
    return event, "\n".join(data)
