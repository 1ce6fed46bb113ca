"""The cache protocol and the layout of a stored value, shared by every backend.

A cache maps a content key to ``(float32 vector, token count)``. Values are raw bytes in a
fixed layout, never pickled objects, so opening a cache that came from elsewhere cannot
execute code. Layout of a value (little-endian)::

    b"PEv2" | uint32 token count | uint32 dim | uint32 crc32 of the floats | dim x float32

(``PEv1``, written before, has no checksum and is still read from disk.) An entry that does
not decode -- another layout, a wrong length, a failed checksum, a pickle -- is *damaged*: it
reads as a miss, so the text is fetched again and the entry overwritten, and it is counted
(``damaged`` in ``stats()``).

The interface is four methods (``get_many``, ``set_many``, ``stats``, ``close``) and
optional ones: ``ledger_path`` (where the run ledger of this cache lives; ``None`` or absent
for the default directory) and, for a cache shared between machines, ``claim``/``release``/
``wait`` (texts another worker is fetching: see ``caches/redis.py``), so another backend
plugs in without touching the pipeline.
"""

from __future__ import annotations

import struct
import zlib
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Sequence

_MAGIC, _MAGIC_V1 = b"PEv2", b"PEv1"
_HEADER = struct.Struct("<4sIII")
_HEADER_V1 = struct.Struct("<4sII")


class Cache(Protocol):
    """What the pipeline needs from a cache backend."""

    def get_many(self, keys: Sequence[bytes]) -> list[tuple[np.ndarray, int] | None]: ...

    def set_many(self, items: Sequence[tuple[bytes, np.ndarray, int]], *, tag: str | None = None) -> None: ...

    def stats(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


def encode_value(vector: np.ndarray, tokens: int) -> bytes:
    vec = np.ascontiguousarray(vector, dtype="<f4").tobytes()
    return _HEADER.pack(_MAGIC, tokens, len(vec) // 4, zlib.crc32(vec)) + vec


def encode_values(vectors: Sequence[np.ndarray], tokens: Sequence[int]) -> list[bytes]:
    """``encode_value`` of many vectors of one size, in one pass of numpy."""
    return [row.tobytes() for row in encode_block(vectors, tokens)]


def encode_block(vectors: Sequence[np.ndarray] | np.ndarray, tokens: Sequence[int]) -> np.ndarray:
    """The stored values of many vectors of one size as the rows of one ``uint8`` array
    (a caller that can bind buffers hands out views of its rows instead of copying them)."""
    if not len(vectors):
        return np.zeros((0, _HEADER.size), dtype=np.uint8)
    mat = np.ascontiguousarray(vectors if isinstance(vectors, np.ndarray) else np.stack(vectors), dtype="<f4")
    n, dim = mat.shape
    head = np.zeros(n, dtype=[("magic", "S4"), ("tokens", "<u4"), ("dim", "<u4"), ("crc", "<u4")])
    head["magic"], head["tokens"], head["dim"] = _MAGIC, tokens, dim
    head["crc"] = [zlib.crc32(row) for row in mat]
    buf = np.empty((n, _HEADER.size + 4 * dim), dtype=np.uint8)
    buf[:, : _HEADER.size] = head.view(np.uint8).reshape(n, _HEADER.size)
    buf[:, _HEADER.size :] = mat.view(np.uint8)
    return buf


def decode_value(raw: object, *, legacy: bool = True) -> tuple[np.ndarray, int] | None:
    """The vector and token count of a stored value; None if it is damaged (see above).
    ``legacy=False``: a value of the first layout, which has no checksum, is refused too."""
    if not isinstance(raw, bytes) or len(raw) < _HEADER_V1.size:
        return None
    if raw[:4] == _MAGIC_V1 and legacy:
        _, tokens, dim = _HEADER_V1.unpack_from(raw)
        if len(raw) != _HEADER_V1.size + 4 * dim:
            return None
        return np.frombuffer(raw, dtype="<f4", offset=_HEADER_V1.size), tokens
    if raw[:4] != _MAGIC or len(raw) < _HEADER.size:
        return None
    _, tokens, dim, crc = _HEADER.unpack_from(raw)
    if len(raw) != _HEADER.size + 4 * dim or zlib.crc32(memoryview(raw)[_HEADER.size :]) != crc:
        return None
    return np.frombuffer(raw, dtype="<f4", offset=_HEADER.size), tokens
