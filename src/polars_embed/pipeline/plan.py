"""Plan one slice of the column: validate, drop nulls and blanks, dedupe, content keys.

Content key (``KEY_VERSION`` 1)::

    sha256( b"polars-embed/1" NUL provider[@namespace] NUL model NUL dimensions NUL utf-8 text )

Exactly what determines the vector goes in: the provider family ("openai" for every
OpenAI-compatible server, "local" for the offline model), the model name, the output
dimensions and the exact text -- and, for a server other than OpenAI's, a namespace: its
endpoint (``scheme://host:port/path``, without credentials), because on such servers a model
name says nothing certain about the model behind it. ``cache_namespace=`` sets it (the same
label on two endpoints that serve the same model shares their entries; ``""`` shares with
OpenAI's). Not in the key: the API key, credentials in the URL, the token count. Bump
``KEY_VERSION`` if the meaning of a stored vector ever changes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import polars as pl

from ..errors import ColumnTypeError

KEY_VERSION = 1


def key_prefix(provider: str, model: str, dimensions: int, namespace: str = "") -> hashlib._Hash:
    """A hasher already fed with everything but the text; ``.copy()`` it per text. (A provider
    family never contains "@", so a namespaced key cannot equal one without.)"""
    h = hashlib.sha256()
    family = f"{provider}@{namespace}" if namespace else provider
    h.update(f"polars-embed/{KEY_VERSION}\0{family}\0{model}\0{dimensions}\0".encode())
    return h


def content_keys(texts: list[str], prefix: hashlib._Hash) -> list[bytes]:
    keys = []
    for text in texts:
        h = prefix.copy()
        h.update(text.encode("utf-8", "surrogatepass"))
        keys.append(h.digest())
    return keys


@dataclass
class Plan:
    """``texts[inverse[row]]`` is the text of ``row``; ``inverse[row] == -1`` for null/blank."""

    n_rows: int
    texts: list[str]
    first_row: np.ndarray  # first row of each distinct text
    inverse: np.ndarray  # int64, one per row

    @property
    def n_blank(self) -> int:
        return int((self.inverse < 0).sum())


def as_text(series: pl.Series, column: str) -> pl.Series:
    """The column as String; Categorical/Enum are cast, anything else is an error."""
    dtype = series.dtype
    if dtype == pl.String:
        return series
    if isinstance(dtype, (pl.Categorical, pl.Enum)):
        return series.cast(pl.String)
    if dtype == pl.Null:
        return series.cast(pl.String)
    msg = f"column {column!r} has dtype {dtype}, but only text can be embedded (String, Categorical); cast it first"
    raise ColumnTypeError(msg)


def make_plan(series: pl.Series) -> Plan:
    """Dedupe the non-blank texts of a String series, keeping the order of first sight."""
    n = len(series)
    inverse = np.full(n, -1, dtype=np.int64)
    seen: dict[str, int] = {}
    texts: list[str] = []
    first: list[int] = []
    for row, text in enumerate(series.to_list()):
        if text is None or not text.strip():
            continue
        idx = seen.get(text)
        if idx is None:
            idx = seen[text] = len(texts)
            texts.append(text)
            first.append(row)
        inverse[row] = idx
    return Plan(n, texts, np.asarray(first, dtype=np.int64), inverse)
