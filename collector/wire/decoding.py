"""Incremental decoders for compressed response streams.

The client always receives the original bytes; these decoders only produce a copy for
llmtap's parser.
"""

from __future__ import annotations

import zlib
from typing import Protocol

import brotli
import zstandard


class Decoder(Protocol):
    def decompress(self, data: bytes) -> bytes: ...


class _Identity:
    def decompress(self, data: bytes) -> bytes:
        return data


class _Brotli:
    def __init__(self) -> None:
        self._inner = brotli.Decompressor()

    def decompress(self, data: bytes) -> bytes:
        return self._inner.process(data)


def decoder_for(content_encoding: str) -> Decoder:
    """A streaming decoder for a Content-Encoding value; unknown encodings raise ValueError."""
    encoding = content_encoding.strip().lower()
    if encoding in ("", "identity"):
        return _Identity()
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(wbits=zlib.MAX_WBITS | 16)
    if encoding == "deflate":
        return zlib.decompressobj()
    if encoding == "br":
        return _Brotli()
    if encoding == "zstd":
        return zstandard.ZstdDecompressor().decompressobj()
    raise ValueError(f"unsupported content-encoding {content_encoding!r}")
