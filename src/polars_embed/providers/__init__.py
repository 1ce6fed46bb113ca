"""Providers: OpenAI-compatible HTTP and the offline local model."""

from .base import BatchResult, Limits, Provider
from .openai import MODEL_DIMENSIONS, OpenAIProvider

__all__ = ["MODEL_DIMENSIONS", "BatchResult", "Limits", "OpenAIProvider", "Provider"]
