"""A model's prices as rates: what the price book computes with, and what the config's
``[prices."MODEL"]`` tables become.

Standard library only: the settings (and so every command and the loader child) hold
Rates, and must not import the price catalogue, the store or the proxy to do so.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal


@dataclass(frozen=True, slots=True)
class Rates:
    """USD per million tokens for one model, as one catalogue entry or override states them.

    ``input`` is required: a model priced in other units only (audio hours, pages) is
    unpriced for llmtap. ``output`` None means output is free (embeddings);
    ``cache_read``/``cache_write`` None cost the input rate; ``reasoning`` None costs
    the output rate.

    ``tiers`` are (threshold, rates): when a call's prompt (``input_tokens``, cache
    included) is above a threshold, ALL its tokens use that tier's rates (the "cliff"
    model providers and genai-prices use, e.g. above 200k tokens for long context).
    Thresholds increase; each tier's rates are complete (not deltas).
    """

    input: Decimal
    output: Decimal | None = None
    cache_read: Decimal | None = None
    cache_write: Decimal | None = None
    reasoning: Decimal | None = None
    tiers: tuple[tuple[int, Rates], ...] = ()
    #: Which catalogue entry and version, or which override, e.g. "genai-prices 0.2.3: openai/gpt-4o".
    ref: str = ""


def tier_ref(ref: str, above: int) -> str:
    """The ref of a tier's rates, so a stored price says the long-context rate was used."""
    return f"{ref}, prompt > {above} tokens"
