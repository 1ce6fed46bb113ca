"""Providers: where vectors come from. The protocol is in ``base.py`` (one method that embeds a
batch, and the limits it declares); a provider is one file (``openai``, ``local``), priced in
``pricing.py``, and ``make_provider`` below picks one from the model name.
"""

from __future__ import annotations

from .base import BatchResult, Limits, Provider
from .openai import MODEL_DIMENSIONS, OpenAIProvider

__all__ = ["MODEL_DIMENSIONS", "BatchResult", "Limits", "OpenAIProvider", "Provider", "make_provider"]


def make_provider(
    model: str,
    *,
    dimensions: int | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    timeout: float = 60.0,
    limits: Limits | None = None,
) -> Provider:
    """``"local:<name>"`` runs offline in-process; anything else is an OpenAI-compatible model."""
    if model.startswith("local:"):
        from .local import LocalProvider

        return LocalProvider(model, dimensions=dimensions, limits=limits)
    return OpenAIProvider(
        model, dimensions=dimensions, base_url=base_url, api_key=api_key, timeout=timeout, limits=limits
    )
