"""Prices in US dollars per 1M input tokens, per provider family; override with ``price_per_million=``.

Each table cites where its prices come from; a model not in its table costs 0 unless a price
is given (a self-hosted server, a new model).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import Provider

# https://platform.openai.com/docs/pricing (Embeddings)
PRICES_PER_MILLION: dict[str, float] = {
    "text-embedding-3-small": 0.02,
    "text-embedding-3-large": 0.13,
    "text-embedding-ada-002": 0.10,
}

#: family -> model -> USD per 1M tokens. "openai" is the table above; "azure" prices by the
#: model a deployment serves (its ``price_model``), from OpenAI's table unless given.
FAMILY_PRICES: dict[str, dict[str, float]] = {
    "openai": PRICES_PER_MILLION,
    "azure": PRICES_PER_MILLION,
    "voyage": {},
    "cohere": {},
    "gemini": {},
    "bedrock": {},
    "ollama": {},  # a model on your own machine: free unless you say otherwise
}


def price_per_million(model: str, override: float | None = None, family: str = "openai") -> float:
    """The configured price, else the family's table's, else 0 (local models, unknown servers)."""
    if override is not None:
        return float(override)
    return FAMILY_PRICES.get(family, {}).get(model, 0.0)


def price_for(provider: Provider, override: float | None = None) -> float:
    """A provider's price: a local model costs nothing unless a price is set."""
    if provider.name == "local":
        return float(override or 0.0)
    return price_per_million(getattr(provider, "price_model", provider.model), override, provider.name)
