"""Plan one slice of the column: validate, drop nulls and blanks, dedupe.

The content key of each distinct text is the embedder's ``VectorIdentity``'s (``identity.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from ..errors import ColumnTypeError


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
