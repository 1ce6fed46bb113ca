"""The Polars surface: ``embed_column``, one public function that returns an expression.

The expression itself, and how its slices become one run, are in ``frames.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .embedder import Embedder

if TYPE_CHECKING:
    import polars as pl


def embed_column(
    column: str | pl.Expr,
    *,
    name: str = "embedding",
    model: str = "text-embedding-3-small",
    embedder: Embedder | None = None,
    **options: Any,
) -> pl.Expr:
    """Embed a text column; adds ``name``, ``name_cache_hit``, ``name_tokens``, ``name_cost_usd``.

    Parameters
    ----------
    column
        A column name or an expression that evaluates to text (String; Categorical and
        Enum are cast).
    name
        Name of the vector column and prefix of the others.
    model
        See :class:`Embedder`; ignored when ``embedder`` is given.
    embedder
        An :class:`Embedder` to reuse (its cache, pool and statistics).
    **options
        Any other :class:`Embedder` argument: ``dimensions``, ``base_url``, ``api_key``,
        ``cache``, ``on_long_input``, ``on_error``, ``max_workers``, ``rpm``, ``tpm``, ...

    Returns
    -------
    pl.Expr
        A multi-column expression (a struct, unnested). The output schema is known without
        a request, so ``collect_schema()`` is free. One expression is one run.

    Examples
    --------
    >>> import polars as pl
    >>> from polars_embed import embed_column
    >>> df = pl.DataFrame({"text": ["a cat", "a dog", "a cat", None]})
    >>> df.with_columns(embed_column("text", model="local:all-MiniLM-L6-v2", cache=False))
    shape: (4, 5)
    ┌───────┬──────────────────────────────┬─────────────────────┬─────────────────┬────────────────────┐
    │ text  ┆ embedding                    ┆ embedding_cache_hit ┆ embedding_tokens ┆ embedding_cost_usd │
    │ ---   ┆ ---                          ┆ ---                 ┆ ---             ┆ ---                │
    │ str   ┆ array[f32, 384]              ┆ bool                ┆ u32             ┆ f64                │
    ╞═══════╪══════════════════════════════╪═════════════════════╪═════════════════╪════════════════════╡
    │ a cat ┆ [0.042, 0.011, … 0.067]      ┆ false               ┆ 2               ┆ 0.0                │
    │ …     ┆ …                            ┆ …                   ┆ …               ┆ …                  │
    └───────┴──────────────────────────────┴─────────────────────┴─────────────────┴────────────────────┘
    """
    if embedder is None:
        embedder = Embedder(model, **options)
    elif options:
        msg = f"pass options to Embedder(...) or to embed_column, not both: {sorted(options)}"
        raise TypeError(msg)
    return embedder.expr(column, name=name)
