"""Run statistics: counters of a call, of a run (the sum of its calls) and of an ``Embedder``.

Every row of a run is in exactly one of: ``blank_rows`` (null, empty or whitespace: no
vector, nothing paid), ``failed_rows`` (no vector, a reason), or a row with a vector, which
was paid for now or is a hit (``hit_rows``: ``cached_rows`` whose text the cache had before
the run, and repeats of a text the run already had). The hit rate is defined once, here
(``HIT_RATE``), and every figure that shows one uses it.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, fields

import numpy as np
import polars as pl


@dataclass
class RunStats:
    """Counters of one call (or the sum of many)."""

    rows: int = 0
    blank_rows: int = 0  # null, empty or whitespace-only: a null vector, never sent
    distinct: int = 0
    cache_hits: int = 0  # distinct texts found in the cache
    duplicate_hits: int = 0  # rows that repeat an earlier row of the same call
    misses: int = 0  # distinct texts sent to the provider
    hit_rows: int = 0  # rows nothing was paid for (cached or repeated): the cache_hit column
    cached_rows: int = 0  # of those, the first rows of texts the cache had before this run (the rest repeat a row)
    long_texts: int = 0  # texts over the model's input limit, sent truncated or chunked (on_long_input)
    tokens_counted: int = 0
    tokens_billed: int = 0
    tokens_estimated: int = 0  # of those, an upper bound: the provider's answer reported no usage
    cost_usd: float = 0.0
    cost_saved_usd: float = 0.0
    requests: int = 0
    retries: int = 0
    rate_limited: int = 0  # 429 answers
    failed_rows: int = 0
    cache_damaged: int = 0  # damaged cache entries met (read as misses, fetched again, overwritten)
    uncached: int = 0  # texts paid for that could not be written to the cache (full or read-only)
    wall_seconds: float = 0.0

    def add(self, other: RunStats) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def since(self, earlier: RunStats) -> RunStats:
        """The difference of two cumulative snapshots."""
        return RunStats(**{f.name: getattr(self, f.name) - getattr(earlier, f.name) for f in fields(self)})

    def copy(self) -> RunStats:
        return RunStats(**asdict(self))

    @property
    def vector_rows(self) -> int:
        """Rows that got a vector: not blank, not failed."""
        return self.rows - self.blank_rows - self.failed_rows

    @property
    def hit_rate(self) -> float:
        """See ``HIT_RATE``."""
        return self.hit_rows / self.vector_rows if self.vector_rows > 0 else 0.0

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def as_dict(self) -> dict[str, float | int]:
        d = asdict(self)
        d["rows_per_second"] = self.rows_per_second
        d["hit_rate"] = self.hit_rate
        return d


#: The hit rate, said once: of the rows that got a vector, the share nothing was paid for
#: (found in the cache, or a repeat of a text the run already had). It is the mean of the
#: ``embedding_cache_hit`` column; blank and failed rows are counted on their own.
HIT_RATE = "hit rows / rows with a vector (rows - blank rows - failed rows)"


def hit_rate_expr() -> pl.Expr:
    """``HIT_RATE`` over frames of figures (``stats()``, ``ledger()``); records written before
    ``blank_rows`` existed count none."""
    vector_rows = pl.col("rows") - pl.col("blank_rows").fill_null(0) - pl.col("failed_rows").fill_null(0)
    return pl.col("hit_rows") / pl.max_horizontal(vector_rows, 1)


class StatsBook:
    """An embedder's running total and its last run, guarded by one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.total = RunStats()
        self.last = RunStats()  # the figures of the last run (the object its Run updates)
        self.runs = 0

    def __getstate__(self) -> dict[str, object]:
        return {"total": self.total, "last": self.last, "runs": self.runs}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__init__()  # type: ignore[misc]
        self.__dict__.update(state)

    def start(self, last: RunStats) -> None:
        """A run has started: ``last`` is its figures from now on."""
        with self._lock:
            self.last = last
            self.runs += 1

    def add(self, delta: RunStats) -> None:
        with self._lock:
            self.total.add(delta)

    def frame(self) -> pl.DataFrame:
        with self._lock:
            rows = [{"scope": "last run", **self.last.as_dict()}, {"scope": "total", **self.total.as_dict()}]
        return pl.DataFrame(rows)


def apportion(total: int, weights: np.ndarray) -> np.ndarray:
    """``total`` split in whole numbers in proportion to ``weights``, summing to ``total``
    exactly (largest remainders get the leftover units)."""
    whole = int(weights.sum())
    if whole <= 0:
        return np.zeros_like(weights)
    raw = total * weights.astype(np.float64) / whole
    out = np.floor(raw).astype(np.int64)
    left = total - int(out.sum())
    if left > 0:
        out[np.argsort(out - raw, kind="stable")[:left]] += 1
    return out
