"""The models the recommender may propose, and what each can do, as data.

:data:`MODELS_FILE` (``models.toml`` beside this module) lists, per model name as the
API takes it, the llmtap providers that serve it, its output limit and its capabilities
(a subset of :data:`collector.providers.base.FEATURES`), each with its source. Context
windows come from genai-prices' bundled catalogue, which has them for most models, and
from the file where it does not. A capability the file does not list is unknown, and
unknown never counts as supported: a route that needs it is not offered the model.

The file is validated as :class:`CatalogueFile` when first read: a misspelt capability or
provider would silently keep a model from every route, so a mistake is an error naming
the file and the key.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, Strict, ValidationError, field_validator

from collector.providers import builtin_providers
from collector.routing.rules import Feature
from collector.settings.validation import HttpUrl, Item, Table, explain

MODELS_FILE = Path(__file__).with_name("models.toml")


class CatalogueError(ValueError):
    """models.toml is not valid; the message names the key and what it takes."""


Tokens = Annotated[int, Strict(), Field(gt=0, description="a positive whole number of tokens")]


class CatalogueModel(Table):
    """A ``[models."NAME"]`` table."""

    providers: tuple[Item, ...] = Field(min_length=1, description="a non-empty list of llmtap provider names")
    context_window: Tokens | None = None
    max_output_tokens: Tokens | None = None
    capabilities: tuple[Feature, ...] = ()
    source: HttpUrl

    @field_validator("providers")
    @classmethod
    def _known_providers(cls, providers: tuple[str, ...]) -> tuple[str, ...]:
        if unknown := [name for name in providers if name not in _prices_ids()]:
            raise ValueError(
                f"{', '.join(unknown)}: not llmtap providers ({', '.join(sorted(_prices_ids()))})"
            )
        return providers


class BatchDiscount(Table):
    discount: Annotated[
        float, Strict(), Field(gt=0, lt=1, description="the share off list price, between 0 and 1")
    ]
    source: HttpUrl


class CatalogueFile(Table):
    models: dict[str, CatalogueModel] = Field(description='a table of [models."NAME"] tables')
    batch_discount: dict[str, BatchDiscount] = Field(
        default_factory=dict, description="a table of PROVIDER = {discount = 0.5, source = URL}"
    )


@cache
def _file() -> CatalogueFile:
    document = tomllib.loads(MODELS_FILE.read_text(encoding="utf-8"))
    try:
        return CatalogueFile.model_validate(document)
    except ValidationError as exc:
        message = explain(
            exc, source=str(MODELS_FILE), root=CatalogueFile, document=document, noun="catalogue"
        )
        raise CatalogueError(message) from None


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
    return {
        (provider, name): ModelInfo(
            name=name,
            provider=provider,
            context_window=entry.context_window or _catalogue_context_window(provider, name),
            max_output_tokens=entry.max_output_tokens,
            capabilities=frozenset(entry.capabilities),
        )
        for name, entry in _file().models.items()
        for provider in entry.providers
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


def _batch_discounts() -> dict[str, float]:
    return {provider: entry.discount for provider, entry in _file().batch_discount.items()}
