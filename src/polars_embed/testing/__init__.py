"""Test helpers: a local server per wire format (``server.py``: OpenAI's embeddings, with
``batches.py`` its Batch API; ``redis.py`` a real redis-server), with fault injection.

Imported lazily, so ``python -m polars_embed.testing.server`` runs the module only once.
"""

from __future__ import annotations

from typing import Any

__all__ = ["EmbeddingServer", "Faults", "server_vector"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import server

        return getattr(server, name)
    raise AttributeError(name)
