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

    from .caches import Cache
    from .pipeline.run import Run
    from .pipeline.stats import RunStats, StatsBook


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


class Figures:
    """What an ``Embedder`` shows of its runs (its statistics book and last run)."""

    cache: Cache
    _stats: StatsBook
    _last_run: Run | None

    @property
    def model(self) -> str:
        raise NotImplementedError

    @property
    def dimensions(self) -> int:
        raise NotImplementedError

    def _repr_html_(self) -> str:
        """In a notebook: the configuration, then the statistics table."""
        import html

        head = (f"<p><b>Embedder</b> {html.escape(self.model)} &middot; {self.dimensions} dimensions &middot; "
                f"{html.escape(repr(self.cache))} &middot; {self._stats.runs} runs</p>")
        return head + self.stats()._repr_html_()

    def stats(self, *, full: bool = False) -> pl.DataFrame:
        """The last run and every run so far: rows, hit rate, cost, cost saved, tokens,
        requests, seconds; ``full=True``: every counter (see ``RunStats``)."""
        return self._stats.frame() if full else readable_stats(self._stats.frame())

    @property
    def last_stats(self) -> RunStats:
        """The figures of the last run (every slice of it, however Polars split it)."""
        return self._stats.last

    @property
    def total_stats(self) -> RunStats:
        return self._stats.total

    @property
    def last_failures(self) -> pl.DataFrame:
        """The rows of the last run that could not be embedded: ``row`` (null where Polars
        did not say which row a slice starts at), ``text`` and ``error``."""
        from .pipeline.run import failures_frame

        return self._last_run.failures if self._last_run is not None else failures_frame([])
