"""The vectors the test server answers: deterministic per (model, dimensions, text), so a test
knows, without the server, what every row of a run must hold."""

from __future__ import annotations

import hashlib

import numpy as np

MODELS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072, "text-embedding-ada-002": 1536}
SHORTENABLE = {"text-embedding-3-small", "text-embedding-3-large"}


def server_vector(model: str, dimensions: int, text: str) -> np.ndarray:
    """The vector this server returns for ``text``: a unit vector drawn from SHAKE-256 of
    (model, dimensions, text), float32."""
    return server_vectors(model, dimensions, [text])[0]


def server_vectors(model: str, dimensions: int, texts: list[str]) -> np.ndarray:
    """``server_vector`` of many texts at once, in one pass of numpy: cheap, so the
    server's CPU (which the client shares in tests and benchmarks) goes to what a real
    API costs its clients, counting tokens, not to making up vectors."""
    head = f"{model}\0{dimensions}\0".encode()
    raw = b"".join(hashlib.shake_256(head + t.encode("utf-8", "surrogatepass")).digest(4 * dimensions) for t in texts)
    v = np.frombuffer(raw, dtype="<u4").reshape(len(texts), dimensions).astype(np.float32) - np.float32(2**31)
    return v / np.linalg.norm(v, axis=1, keepdims=True)
