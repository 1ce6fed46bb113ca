"""Figures as a person reads them first: few columns, units in the names, rounded.

The full frames stay one call away (``Embedder.stats(full=True)``, ``ledger()``,
``polars-embed ledger --csv``).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import polars as pl

from .pipeline.stats import hit_rate_expr

if TYPE_CHECKING:
    from collections.abc import Iterator


def _hit_rate() -> pl.Expr:
    return (hit_rate_expr() * 100).round(1).alias("hit rate (%)")


def readable_stats(full: pl.DataFrame) -> pl.DataFrame:
    """``Embedder.stats()``: what a run did and cost, in eight columns."""
    return full.select(
        "scope",
        "rows",
        _hit_rate(),
        pl.col("cost_usd").round(6).alias("cost (USD)"),
        pl.col("cost_saved_usd").round(6).alias("saved by the cache (USD)"),
        pl.col("tokens_billed").alias("tokens billed"),
        "requests",
        pl.col("wall_seconds").round(1).alias("seconds"),
    )


def readable_ledger(full: pl.DataFrame) -> pl.DataFrame:
    """``polars-embed ledger``: one line a run, the columns people come for."""
    return full.select(
        pl.col("started_at").dt.strftime("%Y-%m-%d %H:%M").alias("started (UTC)"),
        pl.col("source").str.replace(r"^(polars-embed run ).*/", "$1"),  # the input's name, not its directories
        "model",
        "rows",
        _hit_rate(),
        # a local model bills nothing: its tokens are counted, not billed
        pl.when(pl.col("provider") == "local").then(pl.lit("none (local)"))
        .otherwise(pl.col("tokens_billed").map_elements(lambda v: f"{v:,}", return_dtype=pl.String))
        .alias("tokens billed"),
        pl.col("cost_usd").round(6).alias("cost (USD)"),
        pl.col("cost_saved_usd").round(6).alias("saved (USD)"),
        "requests",
        pl.col("failed_rows").alias("failed"),
        pl.col("wall_seconds").round(1).alias("seconds"),
        "status",
    )


@contextlib.contextmanager
def for_terminal() -> Iterator[None]:
    """Every row and column, thousands separated, no dtype line, long strings whole."""
    with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True,
                   tbl_width_chars=200, fmt_str_lengths=60, thousands_separator=",", float_precision=None):
        yield
