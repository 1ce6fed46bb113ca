"""Providers: where vectors come from. The protocol is in ``base.py`` (one method that embeds a
batch, the limits it declares, and the identity of its vectors); a provider is one file
(``openai``, ``local``, ``azure``, ``voyage``, ``cohere``, ``gemini``, ``bedrock``, ``ollama``),
priced in ``pricing.py``, and ``make_provider`` below picks one from the model's prefix.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from ..errors import ConfigurationError
from .base import BatchResult, Limits, Provider
from .openai import MODEL_DIMENSIONS, OpenAIProvider

__all__ = ["MODEL_DIMENSIONS", "BatchResult", "Limits", "OpenAIProvider", "Provider", "make_provider"]

#: ``"<prefix>:<model>"`` -> the module of ``providers/`` whose ``PROVIDER`` class serves it.
#: A model without one of these prefixes is OpenAI's, or any OpenAI-compatible server's.
FAMILIES = ("azure", "voyage", "cohere", "gemini", "bedrock", "ollama")


def make_provider(
    model: str,
    *,
    dimensions: int | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    timeout: float = 60.0,
    limits: Limits | None = None,
    input_type: str = "document",
    options: dict[str, Any] | None = None,
) -> Provider:
    """``"local:<name>"`` runs offline in-process; ``"<family>:<model>"`` is that provider's
    (``FAMILIES``); anything else is an OpenAI-compatible model. ``options`` are the
    provider's own settings (e.g. Azure's ``api_version``, Bedrock's ``region``)."""
    if model.startswith("local:"):
        from .local import LocalProvider

        check_options(LocalProvider, "local", options or {})
        return LocalProvider(model, dimensions=dimensions, limits=limits, input_type=input_type, **(options or {}))
    family, sep, name = model.partition(":")
    if sep and family in FAMILIES:
        if not name:
            msg = f"model {model!r} names no model after {family}:; e.g. {family}:<model>"
            raise ConfigurationError(msg)
        cls = importlib.import_module(f".{family}", __name__).PROVIDER
        check_options(cls, family, options or {})
        return cls(name, dimensions=dimensions, base_url=base_url, api_key=api_key, timeout=timeout,  # type: ignore[no-any-return]
                   limits=limits, input_type=input_type, **(options or {}))
    if options:
        msg = f"{', '.join(map(repr, sorted(options)))}: no such setting of an OpenAI-compatible model (provider_options=)"
        raise ConfigurationError(msg)
    return OpenAIProvider(model, dimensions=dimensions, base_url=base_url, api_key=api_key, timeout=timeout,
                          limits=limits, input_type=input_type)


#: The keywords every provider takes from ``Embedder`` itself, never from ``provider_options``.
OWN_KEYWORDS = ("dimensions", "base_url", "api_key", "timeout", "limits", "input_type")


def check_options(cls: type, family: str, options: dict[str, Any]) -> None:
    """``provider_options`` a family's provider does not take, or that ``Embedder`` sets itself,
    are one sentence (not Python's TypeError about ``__init__``)."""
    params = list(inspect.signature(cls).parameters.values())  # the class: no self
    own = sorted(set(options) & {*OWN_KEYWORDS, params[0].name})  # and the model (Azure's: deployment)
    if own:
        msg = f"provider_options {own} are keywords of their own: pass {own[0]}= itself (provider_options=)"
        raise ConfigurationError(msg)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):  # the provider checks them itself
        return
    takes = [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in OWN_KEYWORDS]
    unknown = sorted(set(options) - set(takes))
    if unknown:
        msg = (f"provider_options {unknown} are not settings of {family} models (provider_options=); "
               f"they take {', '.join(takes) or 'none'}")
        raise ConfigurationError(msg)
