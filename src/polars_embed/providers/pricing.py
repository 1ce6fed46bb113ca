"""Prices in US dollars per 1M input tokens; override with ``price_per_million=``."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import Provider

PRICES_PER_MILLION: dict[str, float] = {
    "text-embedding-3-small": 0.02,
    "text-embedding-3-large": 0.13,
    "text-embedding-ada-002": 0.10,
}


def price_per_million(model: str, override: float | None = None) -> float:
    """The configured price, else the table's, else 0 (local models, unknown servers)."""
    if override is not None:
        return float(override)
    return PRICES_PER_MILLION.get(model, 0.0)


def price_for(provider: Provider, override: float | None = None) -> float:
    """A provider's price: a local model costs nothing unless a price is set."""
    if provider.name == "local":
        return float(override or 0.0)
    return price_per_million(provider.model, override)
