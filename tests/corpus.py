"""The recorded corpus in tests/fixtures/corpus, and its usage expectations under llmtap's
token convention (the corpus keeps each provider's own semantics)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

CORPUS = Path(__file__).parent / "fixtures" / "corpus"
TOKENS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")


def normalised(provider: str, expected: dict[str, Any]) -> dict[str, int | None]:
    """`expected` usage under the convention: input includes cache reads and writes (added for
    Anthropic and Bedrock), output includes reasoning (thoughts added for Gemini and Vertex)."""
    want = {key: expected[key] for key in TOKENS}
    if provider in ("anthropic", "bedrock") and want["input_tokens"] is not None:
        want["input_tokens"] += (want["cache_read_tokens"] or 0) + (want["cache_write_tokens"] or 0)
    if provider in ("gemini", "vertex") and (want["output_tokens"], want["reasoning_tokens"]) != (None, None):
        want["output_tokens"] = (want["output_tokens"] or 0) + (want["reasoning_tokens"] or 0)
    return want
