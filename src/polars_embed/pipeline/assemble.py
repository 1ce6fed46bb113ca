"""Assemble: per-text results back to rows (the inverse of the dedupe), in row order."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import pyarrow as pa

if TYPE_CHECKING:
    from .plan import Plan
    from .results import Results


def hit_rows(plan: Plan, from_cache: np.ndarray, failed: list[int] | None = None) -> np.ndarray:
    """Rows for which nothing was paid and a vector came back: a cached text, or a repeat
    of an earlier row (a failed text's rows are neither hits nor misses)."""
    inv = plan.inverse
    rows = np.flatnonzero(inv >= 0)
    if not len(rows):
        return rows
    first = np.zeros(plan.n_rows, dtype=bool)
    first[plan.first_row] = True
    keep = from_cache[inv[rows]] | ~first[rows]
    if failed:
        keep &= ~np.isin(inv[rows], failed)
    return rows[keep]


def vector_array(flat: np.ndarray, null: np.ndarray) -> pa.Array:
    """The ``(rows, dim)`` float32 ``flat`` as an Arrow ``FixedSizeList(float32)`` whose rows
    ``null`` are null, on the same buffer (``pa.array`` of numpy would also import pandas, a
    second or two, on a process's first call)."""
    rows, dim = flat.shape
    values = pa.Array.from_buffers(pa.float32(), rows * dim, [None, pa.py_buffer(flat)])
    validity = pa.py_buffer(np.packbits(~null, bitorder="little")) if null.any() else None
    return pa.Array.from_buffers(pa.list_(pa.float32(), dim), rows, [validity], children=[values])


def assemble(plan: Plan, res: Results, hits: np.ndarray, name: str, *, with_errors: bool) -> pl.DataFrame:
    """The output columns of one call: vector, cache hit, tokens, cost (and error)."""
    inv = plan.inverse
    valid = inv >= 0
    n_texts, dim = len(plan.texts), res.vectors.shape[1]
    idx = np.where(valid, inv, n_texts)  # null/blank rows point at a zero sentinel
    failed = np.zeros(n_texts + 1, dtype=bool)
    failed[list(res.errors)] = True
    failed[n_texts] = True
    null = failed[idx]
    arr = vector_array(res.rows(inv, null), null)
    hit = np.zeros(plan.n_rows, dtype=bool)
    hit[hits] = True
    row_cost = np.zeros(plan.n_rows, dtype=np.float64)
    row_cost[plan.first_row] = res.cost
    columns: dict[str, Any] = {
        name: pl.Series(name, arr, dtype=pl.Array(pl.Float32, dim)),
        f"{name}_cache_hit": pl.Series(f"{name}_cache_hit", hit).scatter(np.flatnonzero(failed[idx]), None),
        f"{name}_tokens": pl.Series(f"{name}_tokens", np.append(res.tokens, 0)[idx].astype(np.uint32)),
        f"{name}_cost_usd": pl.Series(f"{name}_cost_usd", row_cost),
    }
    if with_errors:
        errors = res.errors
        reasons = [errors.get(int(i)) if v else None for i, v in zip(idx, valid)] if errors else [None] * plan.n_rows
        columns[f"{name}_error"] = pl.Series(f"{name}_error", reasons, dtype=pl.String)
    return pl.DataFrame(columns)
