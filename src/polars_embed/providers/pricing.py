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
    "azure": PRICES_PER_MILLION,  # same list prices: azure.microsoft.com/pricing/details/cognitive-services/openai-service
    # https://docs.voyageai.com/docs/pricing (text embeddings; the first 200M or 50M tokens of each
    # model are free per account, not counted here). voyage-4*, voyage-code-3 as also listed at
    # https://www.mongodb.com/docs/vector-search/crud-embeddings/automated-embedding/models/
    "voyage": {
        "voyage-4-large": 0.12, "voyage-4": 0.06, "voyage-4-lite": 0.02,
        "voyage-3-large": 0.18, "voyage-3.5": 0.06, "voyage-3.5-lite": 0.02, "voyage-code-3": 0.18,
        "voyage-3": 0.06, "voyage-3-lite": 0.02,
        "voyage-finance-2": 0.12, "voyage-law-2": 0.12, "voyage-multilingual-2": 0.12, "voyage-code-2": 0.12,
    },
    "cohere": {  # https://cohere.com/pricing (text input; Embed 4 $0.12, the Embed 3 models $0.10)
        "embed-v4.0": 0.12, "embed-english-v3.0": 0.10, "embed-multilingual-v3.0": 0.10,
        "embed-english-light-v3.0": 0.10, "embed-multilingual-light-v3.0": 0.10,
    },
    # https://ai.google.dev/gemini-api/docs/pricing (paid tier, text input, per 1M tokens; Batch API is half)
    "gemini": {"gemini-embedding-001": 0.15, "gemini-embedding-2": 0.20, "gemini-embedding-2-preview": 0.20},
    # https://aws.amazon.com/bedrock/pricing/ (on-demand, us-east-1, per 1,000 input tokens x 1,000)
    "bedrock": {"amazon.titan-embed-text-v2:0": 0.02, "amazon.titan-embed-text-v1": 0.10,
                "cohere.embed-english-v3": 0.10, "cohere.embed-multilingual-v3": 0.10},
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
