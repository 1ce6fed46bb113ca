"""The test server's other wire formats: one module per provider, each a ``Wire``.

A wire answers the requests whose path it ``match``es, as its provider documents them (paths,
auth, shapes, limits, errors, rate-limit headers), using the server's shared parts: the
deterministic vectors (``testing/vectors.py``), the quota, faults and latency
(``EmbeddingServer.admit``) and the request log. OpenAI's own format is ``server.py``'s.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..server import EmbeddingServer

#: Modules of this package that hold a ``WIRE``.
MODULES = ("azure", "voyage", "cohere", "gemini", "bedrock", "ollama")


class Wire(Protocol):
    def match(self, path: str) -> bool: ...

    def handle(self, server: EmbeddingServer, path: str, headers: Any,
               body: bytes) -> tuple[int, dict[str, str], bytes | None, str | None, Any]:
        """(status, headers, body or None to drop the connection, fault, (n inputs, tokens, texts) or None);
        ``headers`` are the request's (``.get`` ignores case)."""
        ...


_wires: list[Wire] | None = None


def wires() -> list[Wire]:
    global _wires
    if _wires is None:
        _wires = [importlib.import_module(f".{name}", __name__).WIRE for name in MODULES]
    return _wires


def wire_for(method: str, path: str) -> Wire | None:
    """The wire that answers ``path`` (only POSTs carry embeddings requests)."""
    if method != "POST":
        return None
    return next((w for w in wires() if w.match(path)), None)
