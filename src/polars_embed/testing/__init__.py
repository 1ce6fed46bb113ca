"""Test helpers: a local OpenAI-compatible embeddings server with fault injection."""

from .server import EmbeddingServer, Faults, server_vector

__all__ = ["EmbeddingServer", "Faults", "server_vector"]
