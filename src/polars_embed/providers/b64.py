"""Base64 float32 vectors, many at a time: what an answer of 14,000 vectors of 1,536
dimensions (115 MB of base64) costs to decode is one pass of a SIMD decoder, not a Python
call per vector.

``pybase64`` (a dependency) decodes at several GB/s and checks every character; without it
(installed with ``--no-deps``) ``binascii`` does, about six times slower. Either way a
vector is accepted only when every one of its characters decoded to its exact size (see
``decode_rows``), so a damaged answer is refused, never read shifted.
"""

from __future__ import annotations

import binascii
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Sequence

try:
    from pybase64 import b64decode as _b64decode
    from pybase64 import b64encode as _b64encode

    def decode(text: str | bytes) -> bytes:
        """Strict: any character outside the alphabet, or padding inside, raises ValueError."""
        return _b64decode(text, validate=True)

    def encode(data: bytes) -> bytes:
        return _b64encode(data)

except ImportError:  # pragma: no cover - exercised by tests that hide pybase64
    import base64

    def decode(text: str | bytes) -> bytes:
        """Lenient (binascii skips characters outside the alphabet): callers check the size."""
        return binascii.a2b_base64(text)

    def encode(data: bytes) -> bytes:
        return base64.b64encode(data)


def encoded_width(dim: int) -> int:
    """Characters of one vector of ``dim`` float32 in base64 (with its padding)."""
    return 4 * -(-4 * dim // 3)


def decode_rows(strings: Sequence[object], dim: int) -> np.ndarray | None:
    """``(len(strings), dim)`` float32 (little-endian) decoded from base64 strings (``str``,
    or bytes and memoryviews of ASCII), or None when any of them is not one vector of ``dim``
    (the caller then finds which).

    Each string has exactly ``encoded_width(dim)`` characters. When a vector needs no padding
    (``4 * dim`` a multiple of 3: 768, 1,536, 3,072 dimensions) the strings are decoded as
    one: the whole decodes to ``n`` vectors' bytes only if every character was in the
    alphabet (a skipped or padding character leaves it short), so boundaries cannot shift.
    Otherwise each string is decoded alone and must give one vector's bytes.
    """
    width, size = encoded_width(dim), 4 * dim
    if all(type(s) is str for s in strings):
        joiner: str | bytes = ""
    elif all(isinstance(s, (bytes, memoryview)) for s in strings):
        joiner = b""
    else:
        return None
    try:
        if any(len(s) != width for s in strings):  # type: ignore[arg-type]
            return None
        if size % 3 == 0:
            raw = decode(joiner.join(strings))  # type: ignore[arg-type]
            if len(raw) != size * len(strings):
                return None
        else:
            parts = [decode(s) for s in strings]  # type: ignore[arg-type]
            if any(len(p) != size for p in parts):
                return None
            raw = b"".join(parts)
    except (ValueError, binascii.Error):
        return None
    return np.frombuffer(raw, dtype="<f4").reshape(len(strings), dim)
