"""The models the recommender may propose, and what each can do, as data.

:data:`MODELS_FILE` (``models.toml`` beside this module) lists, per model name as the
API takes it, the llmtap providers that serve it, its output limit and its capabilities
(a subset of :data:`collector.providers.base.FEATURES`), each with its source. Context
windows come from genai-prices' bundled catalogue, which has them for most models, and
from the file where it does not. A capability the file does not list is unknown, and
unknown never counts as supported: a route that needs it is not offered the model.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from collector.providers import builtin_providers
from collector.providers.base import FEATURES

MODELS_FILE = Path(__file__).with_name("models.toml")


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """One model as one provider serves it."""

    name: str
    provider: str
    #: Most prompt tokens it reads; None when no source states it.
    context_window: int | None
    #: Most tokens it writes in one answer; None when unknown.
    max_output_tokens: int | None
    #: Request features it is documented to handle.
    capabilities: frozenset[str]


def prices_id(provider: str) -> str | None:
    """genai-prices' id of an llmtap provider (None when the provider has no catalogue entry)."""
    return _prices_ids().get(provider)


@cache
def _prices_ids() -> dict[str, str | None]:
    return {p.name: p.prices_id for p in builtin_providers()}


@cache
def catalogue() -> dict[tuple[str, str], ModelInfo]:
    """Every (provider, model name) of :data:`MODELS_FILE`, with its limits and capabilities."""
    entries = tomllib.loads(MODELS_FILE.read_text(encoding="utf-8"))["models"]
    return {
        (provider, name): ModelInfo(
            name=name,
            provider=provider,
            context_window=entry.get("context_window") or _catalogue_context_window(provider, name),
            max_output_tokens=entry.get("max_output_tokens"),
            capabilities=frozenset(entry.get("capabilities", ())) & frozenset(FEATURES),
        )
        for name, entry in entries.items()
        for provider in entry["providers"]
    }


def model_info(provider: str, name: str) -> ModelInfo | None:
    """The catalogue's entry for ``name`` served by ``provider``, if it has one."""
    return catalogue().get((provider, name))


def served_by(provider: str) -> list[ModelInfo]:
    """The catalogue's models reachable with ``provider``'s API and credentials."""
    return [info for (served, _), info in catalogue().items() if served == provider]


def _catalogue_context_window(provider: str, name: str) -> int | None:
    from genai_prices.data import providers
    from genai_prices.data_snapshot import DataSnapshot

    snapshot = DataSnapshot(providers=providers, from_auto_update=False)
    try:
        _, info = snapshot.find_provider_model(name, None, prices_id(provider), None)
    except LookupError:
        return None
    return info.context_window


def batch_discount(provider: str) -> float | None:
    """The share off list price of ``provider``'s batch API; None when it has none."""
    return _batch_discounts().get(provider)


@cache
def _batch_discounts() -> dict[str, float]:
    table = tomllib.loads(MODELS_FILE.read_text(encoding="utf-8"))["batch_discount"]
    return {provider: float(entry["discount"]) for provider, entry in table.items()}
