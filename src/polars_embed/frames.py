"""How an ``Embedder`` meets Polars: the expression behind ``embed_column``, the slices Polars
evaluates it on, and the helpers that collect or sink a frame as one run with frame row numbers.

One expression is one run: every slice Polars evaluates it on (the streaming engine's
morsels, the in-memory engine's chunks, repeated evaluations) adds to the same figures,
failures and ledger record. Build the expression in the call (``df.with_columns(
embed_column("text"))``) and each call is its own run; inside ``with embedder.run():``
every expression of that embedder belongs to the block's run instead.
"""

from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from .io import atomic_file
from .pipeline.assemble import assemble
from .pipeline.run import SliceMemo

if TYPE_CHECKING:
    import os
    from collections.abc import Callable, Iterator

    from .embedder import Embedder
    from .pipeline.run import Run

_ROW = "__polars_embed_row__"


class _Query:
    """What one expression shares across the slices Polars evaluates it on: its run (the open
    ``run()`` block's, the one a helper gives it, or its own, started by the first slice),
    and the memo that recognises a slice evaluated again."""

    def __init__(self, embedder: Embedder, run: Run | None = None) -> None:
        self.embedder = embedder
        self.run = run
        self.memo = SliceMemo()
        self._lock = threading.Lock()

    def current(self) -> Run:
        block = self.embedder.current_run()
        if block is not None and self.run is None:
            return block
        with self._lock:
            if self.run is None:
                self.run = self.embedder.start_run(open_ended=True)
            return self.run


def embedder_expr(emb: Embedder, column: str | pl.Expr, *, name: str = "embedding",
                  row_index: str | None = None, run: Run | None = None) -> pl.Expr:
    """``embed_column``'s expression for ``emb``. With ``row_index`` (a column of frame row
    numbers) failures name their rows; without it, a slice cannot know where it starts,
    so they name their text. One expression is one query: build it in the call (an
    expression reused for a second collect would answer its slices as repeats)."""
    col = pl.col(column) if isinstance(column, str) else column
    label = column if isinstance(column, str) else _expr_name(column)
    dtype = pl.Struct(emb.output_fields(name))
    query = _Query(emb, run)

    def evaluate(s: pl.Series) -> pl.Series:
        texts, rows = (s, None) if row_index is None else (s.struct.field("text"), s.struct.field("row"))
        return evaluate_slice(emb, texts, rows, query.current(), query.memo, name=name, column=label).to_struct(name)

    source = col if row_index is None else pl.struct(col.alias("text"), pl.col(row_index).alias("row"))
    # return_dtype: Polars never calls us on dummy data (that would be a paid request).
    # is_elementwise: slices may be embedded independently, in parallel, in streaming.
    expr = source.map_batches(evaluate, return_dtype=dtype, is_elementwise=True).struct.unnest()
    return _EmbeddingExpr.wrap(expr, lambda alias: embedder_expr(emb, column, name=alias, row_index=row_index, run=run))


class _EmbeddingExpr(pl.Expr):
    """The expression ``embed_column`` returns. Its ``.alias("vec")`` is ``name="vec"``: the
    vector column takes the alias and the others its prefix (``vec_cache_hit``, ...), where
    Polars would give every output column the one name."""

    _rename: Callable[[str], pl.Expr]

    @classmethod
    def wrap(cls, expr: pl.Expr, rename: Callable[[str], pl.Expr]) -> _EmbeddingExpr:
        wrapped = cls._from_pyexpr(expr._pyexpr)
        assert isinstance(wrapped, cls)
        wrapped._rename = rename
        return wrapped

    def alias(self, name: str) -> pl.Expr:
        return self._rename(name)


def evaluate_slice(emb: Embedder, series: pl.Series, rows: pl.Series | None, run: Run, memo: SliceMemo, *,
                   name: str, column: str) -> pl.DataFrame:
    """One evaluation of an expression by Polars, as a slice of ``run``. A slice the
    expression evaluates again (``.over()``, a struct field each) is answered from its
    first evaluation: the vectors from the cache, every other column as it was, so
    nothing is paid or counted twice."""
    row_numbers = None if rows is None else rows.to_numpy()
    key, entry, first = memo.enter([series] if rows is None else [series, rows])
    if first:
        try:
            out = emb.embed_slice(series, run, name=name, column=column, rows=row_numbers)
        except BaseException as exc:
            memo.leave(key, entry, None, exc)
            raise
        memo.leave(key, entry, out.drop(name), None)
        return out
    if entry.error is not None:
        raise entry.error
    answer = entry.answer
    assert answer is not None
    c = emb.plan(series, run, column, row_numbers)
    errors = answer.get_column(f"{name}_error") if emb.on_error == "null" else pl.Series([], dtype=pl.String)
    c.res.errors = {int(c.plan.inverse[r]): "" for r in errors.is_not_null().arg_true().to_list()}
    if not all(c.from_cache[i] or i in c.res.errors for i in range(len(c.keys))):
        return emb.embed_slice(series, run, name=name, column=column, rows=row_numbers)  # evicted: paid again, said so
    return assemble(c.plan, c.res, np.empty(0, np.int64), name, with_errors=False).select(name).hstack(answer)


@contextlib.contextmanager
def _helper_run(emb: Embedder) -> Iterator[Run]:
    """The run of one helper call: the open ``run()`` block's, else its own, closed at the end."""
    block = emb.current_run()
    if block is not None:
        yield block
        return
    with emb.ending(emb.start_run()) as run:
        yield run


def _with_rows(emb: Embedder, frame: pl.DataFrame | pl.LazyFrame, column: str, name: str, run: Run) -> pl.LazyFrame:
    expr = embedder_expr(emb, column, name=name, row_index=_ROW, run=run)
    return frame.lazy().with_row_index(_ROW).with_columns(expr).drop(_ROW)


def collect(emb: Embedder, frame: pl.DataFrame | pl.LazyFrame, column: str, *, name: str = "embedding",
            engine: Any = "auto") -> pl.DataFrame:
    """``frame`` with the output columns of ``column`` added, collected as one run whose
    failures name their row in ``frame``."""
    with _helper_run(emb) as run:
        return _with_rows(emb, frame, column, name, run).collect(engine=engine)


def sink_parquet(emb: Embedder, frame: pl.DataFrame | pl.LazyFrame, column: str, path: str | os.PathLike[str], *,
                 name: str = "embedding") -> None:
    """Stream ``frame`` with the output columns into the Parquet file ``path`` as one run:
    bounded memory, provenance metadata, and the file replaced only when complete."""
    with _helper_run(emb) as run, atomic_file(path) as tmp:
        _with_rows(emb, frame, column, name, run).sink_parquet(tmp, metadata=emb.metadata(), engine="streaming")


def _expr_name(expr: pl.Expr) -> str:
    try:
        return expr.meta.output_name()
    except Exception:  # noqa: BLE001 - an expression without a single root column
        return str(expr)
