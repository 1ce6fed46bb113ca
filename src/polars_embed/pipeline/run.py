"""A run: what a user asked for in one go, however Polars slices it.

One ``Embedder.embed()`` call, one expression (every slice Polars evaluates it on, in any
engine), one ``collect``/``sink_parquet`` helper call, one ``with embedder.run():`` block
(everything the embedder embeds while it is open, from any thread), or one
``polars-embed run`` is one run: one set of figures (``Embedder.stats()``), one list of
failed rows (``Embedder.last_failures``) and one ledger record, updated as its slices finish.

Polars may evaluate the same slice of one query more than once (``.over()``, once per
struct field when common-subexpression elimination is off). An expression's ``SliceMemo``
recognises a slice it has already embedded by the identity of its input buffers and answers
with the first evaluation's accounting, so nothing is paid twice and the per-row columns
stay true: the rows that paid are not reported as hits, and the cost column sums to the bill.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from ..caches import MemoryCache, NoCache
from ..errors import BatchPendingError, BudgetExceededError, PolarsEmbedError, RowsFailedError
from .assemble import hit_rows
from .results import Results
from .stats import RunStats

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable, Sequence

    from ..caches import Cache
    from .plan import Plan

#: Input and accounting a run keeps to recognise slices evaluated again (bytes).
MEMO_BYTES = 256 * 2**20
#: Vectors a run keeps for itself when there is no cache (``cache=False``), so that a
#: text met again in the same run is not paid again (bytes).
RUN_CACHE_BYTES = 512 * 2**20


@dataclass(frozen=True)
class Failure:
    """A row that could not be embedded: its row number when the slice knows it, its text."""

    row: int | None
    text: str
    error: str

    def where(self, column: str) -> str:
        """``row 12 of column 'text'`` or ``the row of column 'text' with text 'A long…'``."""
        if self.row is not None:
            return f"row {self.row} of column {column!r}"
        return f"the row of column {column!r} with text {preview(self.text)!r}"


def preview(text: str, width: int = 40) -> str:
    """The first ``width`` characters of ``text`` on one line."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def failures_frame(failures: list[Failure]) -> pl.DataFrame:
    return pl.DataFrame(
        {"row": [f.row for f in failures], "text": [f.text for f in failures], "error": [f.error for f in failures]},
        schema={"row": pl.Int64, "text": pl.String, "error": pl.String},
    )


def rows_failed(failures: list[Failure], column: str) -> RowsFailedError:
    """The error of a slice with failed rows (raised after every other row is done)."""
    first = failures[0]
    more = f" and {len(failures) - 1} more" if len(failures) > 1 else ""
    msg = (
        f"{first.where(column)}{more} could not be embedded: {first.error}; every other row is embedded "
        f"and cached (Embedder.last_failures lists them; on_error='null' keeps going)"
    )
    return RowsFailedError(msg, failures=failures_frame(failures))


def run_status(exc: BaseException) -> str:
    """How a run ended, for its ledger record."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    if isinstance(exc, BudgetExceededError):
        return "stopped at max_cost"
    if isinstance(exc, RowsFailedError):
        return "rows failed"
    if isinstance(exc, BatchPendingError):
        return "batches pending"
    return f"failed: {type(exc).__name__}" if isinstance(exc, PolarsEmbedError) else "failed"


class Run:
    """The figures, failures and ledger record of one run (see the module docstring)."""

    def __init__(self, source: str, *, record: Callable[[Run], None] | None = None, open_ended: bool = False) -> None:
        self.run_id = uuid.uuid4().hex
        self.source = source
        self.started_at = time.time()
        self.ended_at: float | None = None
        self.open_ended = open_ended  # an expression's run: never closed, its status is its last slice's
        self.status = "running"
        self.stats = RunStats()
        #: Called with the figures of each finished request (and of each slice's hits).
        self.on_progress: Callable[[RunStats], None] | None = None
        self._t0 = time.perf_counter()
        self._failures: list[Failure] = []
        self._distinct = _KeySet()
        self._paid = _KeySet()  # texts paid for in this run
        self._counted = _KeySet()  # texts counted as in the cache before this run
        self._record = record
        self._run_cache: MemoryCache | None = None
        self._lock = threading.Lock()
        #: Set by ``stop()``: the run's calls send nothing more (requests in flight end).
        self.stopping = threading.Event()
        #: Batch mode: the batches this run submitted or collected (for the ledger).
        self.batch_ids: list[str] = []
        #: A budget of the run's own beside the embedder's (as ``pipeline.budget.Budget``): a proxy key's.
        self.budget: Any = None

    def __repr__(self) -> str:
        return f"Run({self.source!r}, {self.status}, rows={self.stats.rows:,}, cost=${self.stats.cost_usd:.6f})"

    @property
    def failures(self) -> pl.DataFrame:
        """Rows that could not be embedded: ``row`` (null where the slice cannot know it), ``text``, ``error``."""
        with self._lock:
            return failures_frame(list(self._failures))

    def cache_for(self, cache: Cache) -> Cache:
        """The cache a call of this run reads and writes: the embedder's, or with none
        (``cache=False``) a bounded in-memory one that lives as long as the run."""
        if not isinstance(cache, NoCache):
            return cache
        with self._lock:
            if self._run_cache is None:
                self._run_cache = MemoryCache(max_bytes=RUN_CACHE_BYTES)
            return self._run_cache

    def add(self, call: RunStats, keys: list[bytes], failures: list[Failure]) -> RunStats:
        """Fold in one finished call (a slice) and update the ledger record; returns what
        the run's figures grew by (distinct texts and wall time counted for the run)."""
        with self._lock:
            distinct, wall = self.stats.distinct, self.stats.wall_seconds
            self.stats.add(call)
            self.stats.distinct = self._distinct.add(keys) if keys else distinct
            self.stats.wall_seconds = max(wall, time.perf_counter() - self._t0)
            self._failures.extend(failures)
            if self.open_ended:
                self.status = "rows failed" if self._failures else "ok"
            delta = call.copy()
            delta.distinct = self.stats.distinct - distinct
            delta.wall_seconds = self.stats.wall_seconds - wall
        self.save()
        return delta

    def stop(self) -> None:
        """Send nothing more (Ctrl-C, or an error in another slice); what is in flight ends."""
        self.stopping.set()

    def note_paid(self, paid: list[bytes]) -> None:
        """Texts this run paid for, noted as each request's answers are stored: before any
        other call of the run can find them in the cache or be handed them."""
        if paid:
            with self._lock:
                self._paid.add(paid)

    def count_cached(self, cached: list[bytes]) -> np.ndarray:
        """Which of a call's ``cached`` texts the cache had before this run: not paid in
        this run, and not counted already by another call (a partition) of it. The others
        repeat a row of the run."""
        if not cached:
            return np.zeros(0, dtype=bool)
        with self._lock:
            before = ~(self._paid.contains(cached) | self._counted.contains(cached))
            self._counted.add([k for k, b in zip(cached, before.tolist()) if b])
        return before

    def progress(self, delta: RunStats) -> None:
        if self.on_progress is not None:
            self.on_progress(delta)

    def close(self, status: str = "ok") -> RunStats:
        """End the run: its final figures go to the ledger with ``status``; returns the
        wall time added since the last call."""
        with self._lock:
            self.status = status
            self.ended_at = time.time()
            wall = self.stats.wall_seconds
            self.stats.wall_seconds = time.perf_counter() - self._t0
            self._run_cache = None
        self.save()
        return RunStats(wall_seconds=self.stats.wall_seconds - wall)

    def save(self) -> None:
        if self._record is not None:
            self._record(self)


class _KeySet:
    """Distinct content keys seen by a run, by their first 8 bytes: a sorted array, and the
    newest in a set until they reach a quarter of it (then merged). A lookup of k keys costs
    O(k log n), not O(n): a long-lived run (the proxy's, a key's) answers each call as fast
    at a million keys as at ten; adding stays linear overall."""

    def __init__(self) -> None:
        self._seen = np.empty(0, dtype=np.uint64)
        self._new: set[int] = set()

    def _in_seen(self, prefixes: np.ndarray) -> np.ndarray:
        if not len(self._seen):
            return np.zeros(len(prefixes), dtype=bool)
        at = np.minimum(np.searchsorted(self._seen, prefixes), len(self._seen) - 1)
        return self._seen[at] == prefixes

    def contains(self, keys: list[bytes]) -> np.ndarray:
        prefixes = _prefixes(keys)
        found = self._in_seen(prefixes)
        if self._new:
            new = self._new
            found |= np.fromiter((p in new for p in prefixes.tolist()), dtype=bool, count=len(prefixes))
        return found

    def add(self, keys: list[bytes]) -> int:
        """Add ``keys``; returns how many distinct keys there are now."""
        prefixes = _prefixes(keys)
        self._new.update(prefixes[~self._in_seen(prefixes)].tolist())
        if len(self._new) * 4 >= len(self._seen):
            merged = np.fromiter(self._new, dtype=np.uint64, count=len(self._new))
            self._seen, self._new = np.union1d(self._seen, merged), set()
        return len(self._seen) + len(self._new)


def _prefixes(keys: list[bytes]) -> np.ndarray:
    return np.frombuffer(b"".join(k[:8] for k in keys), dtype=np.uint64)


@dataclass
class _Entry:
    done: threading.Event
    source: Any  # the input's Arrow export: keeps its buffers alive, so no other slice can get its address
    answer: pl.DataFrame | None = None  # every output column but the vector
    error: BaseException | None = None
    size: int = 0


class SliceMemo:
    """Accounting of the slices a run embedded, by the identity of their input buffers."""

    def __init__(self, max_bytes: int = MEMO_BYTES) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def enter(self, inputs: list[pl.Series]) -> tuple[Hashable, _Entry, bool]:
        """The slice's key and entry, and whether this evaluation is the first (it then
        computes and must call ``leave``); a later one waits for the first to end."""
        import pyarrow as pa

        source = [pa.chunked_array(s) for s in inputs]  # zero-copy: buffer addresses identify the slice
        key = tuple(
            (chunk.offset, len(chunk), tuple(b.address if b is not None else 0 for b in chunk.buffers()))
            for array in source for chunk in array.chunks
        )
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                first = False
            else:
                entry = self._entries[key] = _Entry(threading.Event(), source)
                first = True
        if not first:
            entry.done.wait()
        return key, entry, first

    def leave(self, key: Hashable, entry: _Entry, answer: pl.DataFrame | None, error: BaseException | None) -> None:
        """Record the first evaluation's answer (or error), then keep the memo in budget."""
        entry.answer, entry.error = answer, error
        entry.done.set()  # first: a waiting evaluation must never wait forever
        # the input's size from its buffers (``nbytes`` of a string_view array raises before pyarrow 19)
        held = sum(b.size for a in entry.source for chunk in a.chunks for b in chunk.buffers() if b is not None)
        entry.size = int(answer.estimated_size() if answer is not None else 0) + held
        with self._lock:
            if self._entries.get(key) is not entry:
                return  # cleared meanwhile
            if error is not None:  # those waiting now see the error; a later evaluation tries again
                del self._entries[key]
                return
            self._bytes += entry.size
            while self._bytes > self.max_bytes and self._entries:
                _, old = self._entries.popitem(last=False)
                self._bytes -= old.size

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0


class CallProgress:
    """Reports one call's progress to its run: the rows nothing is fetched for at once, the
    rows of each finished request as it ends, and the rest (waited for, failed) at the end."""

    def __init__(self, run: Run, plan: Plan, from_cache: np.ndarray) -> None:
        self.run = run
        self.weights = np.bincount(plan.inverse[plan.inverse >= 0], minlength=len(plan.texts))
        self.hits = int(self.weights[from_cache].sum())  # rows of cached texts
        self.reported = plan.n_blank + self.hits
        self.total = plan.n_rows
        run.progress(RunStats(rows=self.reported, blank_rows=plan.n_blank, hit_rows=self.hits))

    def done(self, texts: list[int], billed: int, cost: float) -> None:
        rows = int(self.weights[texts].sum())
        self.reported += rows
        self.hits += rows - len(texts)  # repeats of a text paid now
        self.run.progress(RunStats(rows=rows, hit_rows=rows - len(texts), requests=1, tokens_billed=billed,
                                   cost_usd=cost))

    def end(self, hit_rows: int, failed_rows: int) -> None:
        self.run.progress(RunStats(rows=self.total - self.reported, hit_rows=hit_rows - self.hits,
                                   failed_rows=failed_rows))


@dataclass
class Call:
    """One slice being embedded: its plan and keys, results and figures, and its run."""

    plan: Plan
    keys: list[bytes]
    res: Results
    run: Run
    cache: Cache
    column: str
    rows: np.ndarray | None  # frame row number of each row of the slice, when known
    released: int = 0  # fetches the embedder had ended when the cache was looked up (InFlight.released)
    from_cache: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    stats: RunStats = field(init=False)

    def __post_init__(self) -> None:
        n_texts = len(self.plan.texts)
        self.stats = RunStats(rows=self.plan.n_rows, blank_rows=self.plan.n_blank, distinct=n_texts,
                              duplicate_hits=self.plan.n_rows - self.plan.n_blank - n_texts)

    def lookup(self, idx: np.ndarray, *, again: bool = False) -> np.ndarray:
        """Fill the results of the cached texts among ``idx``; which of ``idx`` were found.
        A value of the wrong size or not finite is a damaged entry: a miss, fetched again
        (counted at the first lookup, not ``again``)."""
        damaged_before = getattr(self.cache, "damaged", 0)
        found = self.cache.get_many([self.keys[i] for i in idx]) if len(idx) else []
        good = self.accept(idx, found)
        if not again:
            self.stats.cache_damaged += sum(v is not None for v in found) - int(good.sum())
            self.stats.cache_damaged += getattr(self.cache, "damaged", 0) - damaged_before
        return good

    def accept(self, idx: np.ndarray, found: Sequence[tuple[np.ndarray, int] | None]) -> np.ndarray:
        """Fill the results of texts ``idx`` from the values ``found`` for them; which were
        usable (of this embedder's size, finite, not all zeros)."""
        dim = self.res.vectors.shape[1]
        sized = [j for j, v in enumerate(found) if v is not None and len(v[0]) == dim]
        good = np.zeros(len(found), dtype=bool)
        if sized:
            mat = np.stack([found[j][0] for j in sized])  # type: ignore[index]
            ok = np.isfinite(mat).all(axis=1) & mat.any(axis=1)
            where = idx[np.asarray(sized)[ok]]
            self.res.vectors[where] = mat[ok]
            self.res.tokens[where] = [found[j][1] for j, keep in zip(sized, ok) if keep]  # type: ignore[index]
            good[np.asarray(sized)[ok]] = True
        return good

    def account(self, price: float, wall_seconds: float) -> tuple[np.ndarray, list[Failure]]:
        """Complete the call's figures; returns its hit rows and its failures."""
        plan, res, stats = self.plan, self.res, self.stats
        stats.cache_hits = int(self.from_cache.sum())
        stats.failed_rows = int(np.isin(plan.inverse, list(res.errors)).sum()) if res.errors else 0
        hits = hit_rows(plan, self.from_cache, list(res.errors))
        stats.hit_rows = len(hits)
        stats.cost_saved_usd = float(res.tokens[plan.inverse[hits]].sum()) * price / 1e6
        stats.wall_seconds = wall_seconds
        cached = np.flatnonzero(self.from_cache)
        # the sync and batch fetches note what they pay as they store it; this notes what batch
        # mode's claim() turned into a paid row after the fetch (collected by another call or process)
        self.run.note_paid([self.keys[i] for i in np.flatnonzero(~self.from_cache) if int(i) not in res.errors])
        stats.cached_rows = int(self.run.count_cached([self.keys[i] for i in cached]).sum())
        failed_rows = np.flatnonzero(np.isin(plan.inverse, list(res.errors))) if res.errors else np.empty(0, np.int64)
        rows = self.rows
        return hits, [Failure(None if rows is None else int(rows[r]), plan.texts[plan.inverse[r]],
                              res.errors[int(plan.inverse[r])]) for r in failed_rows]

    def row(self, text: int) -> int | None:
        """The frame row of distinct text ``text`` (its first row), if the slice knows it."""
        return None if self.rows is None else int(self.rows[self.plan.first_row[text]])
