"""Incremental reader for AWS's binary event-stream framing (``application/vnd.amazon.eventstream``).

Bedrock's streaming APIs (ConverseStream, InvokeModelWithResponseStream) send this rather
than server-sent events. The reader has :class:`collector.wire.sse.SSEReader`'s shape (bytes in,
``(event, data)`` pairs out) so one parsing loop serves both: ``event`` is the frame's
``:event-type`` (``contentBlockDelta``, ``metadata``, ``chunk``...), or for an exception
frame its ``:exception-type`` (``throttlingException``...); ``data`` is the JSON payload.
A frame of message type ``error`` carries its message in headers only; it is given as
``(:error-code, '{"message": ...}')``.

Each frame is: total length, headers length, CRC32 of those 8 bytes (all big-endian
uint32), the headers, the payload, and a CRC32 of everything before it. Chunks may split
anywhere; the reader keeps at most one incomplete frame.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator

_PRELUDE = 12
_TRAILER = 4
#: AWS caps a message at 16 MiB of payload plus 128 KiB of headers; a larger length means
#: the bytes are not an event stream, and must not make the reader buffer without bound.
_MAX_FRAME = 16 * 1024 * 1024 + 128 * 1024 + _PRELUDE + _TRAILER
#: Value sizes of the fixed-width header types (bool true/false, byte, short, int, long,
#: timestamp, uuid); types 6 (bytes) and 7 (string) have a 2-byte length prefix.
_FIXED_SIZES = {0: 0, 1: 0, 2: 1, 3: 2, 4: 4, 5: 8, 8: 8, 9: 16}


class EventStreamReader:
    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, chunk: bytes) -> Iterator[tuple[str, str]]:
        """Yield each complete frame in ``chunk`` (plus what earlier chunks left over).

        Raises ValueError when the bytes are not a valid event stream (bad length or CRC):
        a caller that only observes the stream should stop parsing it, not guess."""
        self._buffer += chunk
        while len(self._buffer) >= _PRELUDE:
            total, headers_length, prelude_crc = struct.unpack_from(">III", self._buffer)
            if zlib.crc32(self._buffer[:8]) != prelude_crc:
                raise ValueError("not an AWS event stream: bad prelude checksum")
            if not _PRELUDE + headers_length + _TRAILER <= total <= _MAX_FRAME:
                raise ValueError(f"not an AWS event stream: frame length {total}")
            if len(self._buffer) < total:
                return
            frame = bytes(self._buffer[:total])
            del self._buffer[:total]
            (frame_crc,) = struct.unpack_from(">I", frame, total - _TRAILER)
            if zlib.crc32(frame[:-_TRAILER]) != frame_crc:
                raise ValueError("corrupt AWS event-stream frame: bad checksum")
            headers = _string_headers(frame[_PRELUDE : _PRELUDE + headers_length])
            payload = frame[_PRELUDE + headers_length : -_TRAILER]
            if (event := _event(headers, payload)) is not None:
                yield event

    def close(self) -> Iterator[tuple[str, str]]:
        """The stream ended: a partial frame left over is truncated and carries nothing."""
        self._buffer.clear()
        return iter(())


def _event(headers: dict[str, str], payload: bytes) -> tuple[str, str] | None:
    kind = headers.get(":message-type", "event")
    if kind == "event":
        return headers.get(":event-type", "event"), payload.decode("utf-8", "replace")
    if kind == "exception":
        return headers.get(":exception-type", "exception"), payload.decode("utf-8", "replace")
    if kind == "error":
        message = json.dumps({"message": headers.get(":error-message", "")})
        return headers.get(":error-code", "error"), message
    return None


def _string_headers(raw: bytes) -> dict[str, str]:
    """The frame's string-valued headers (the only kind that names events); others are skipped."""
    headers: dict[str, str] = {}
    pos = 0
    try:
        while pos < len(raw):
            name_end = pos + 1 + raw[pos]
            name = raw[pos + 1 : name_end].decode("utf-8", "replace")
            kind = raw[name_end]
            pos = name_end + 1
            if kind in (6, 7):
                (length,) = struct.unpack_from(">H", raw, pos)
                value = raw[pos + 2 : pos + 2 + length]
                pos += 2 + length
                if kind == 7:
                    headers[name] = value.decode("utf-8", "replace")
            elif kind in _FIXED_SIZES:
                pos += _FIXED_SIZES[kind]
            else:
                raise ValueError(f"unknown event-stream header type {kind}")
    except (IndexError, struct.error) as exc:
        raise ValueError("corrupt AWS event-stream headers") from exc
    return headers
