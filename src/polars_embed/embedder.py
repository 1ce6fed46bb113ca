"""``Embedder``: configuration, cache, provider, pool, limiter and statistics in one object.

``Embedder.embed(series)`` runs the pipeline on one slice of a column, top to bottom:
plan (``plan.py``) -> cache lookup -> fetch the misses (``fetch.py``) -> assemble
(``assemble.py``). Every call belongs to a run (``run.py``): its own, the expression's, or
the open ``with embedder.run():`` block. It is thread-safe (the streaming engine calls it
from several threads at once) and picklable (clients, pools and cache handles are opened
lazily and dropped on pickling).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import polars as pl

from .assemble import assemble, hit_rows
from .budget import Budget
from .cache import open_cache
from .errors import BudgetExceededError, ConfigurationError, ProviderError
from .fetch import Fetch, Results, Stage, Stopped
from .inflight import InFlight
from .pack import Sizing
from .plan import as_text, content_keys, key_prefix, make_plan
from .pricing import price_for
from .providers import make_provider
from .run import CallProgress, Failure, Run, failures_frame, rows_failed, run_status
from .runner import Runner
from .stats import RunStats, StatsBook

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from .cache import Cache
    from .fetch import Item
    from .ledger import Ledger
    from .limiter import Limiter
    from .plan import Plan
    from .providers.base import Limits, Provider
    from .tokens import LongInputPolicy

OnError = Literal["raise", "null"]


class Embedder:
    """Holds everything one embedding job needs; reuse it across calls and frames.

    Parameters
    ----------
    model
        ``"text-embedding-3-small"`` (default), ``"-3-large"``, ``"text-embedding-ada-002"``,
        any model of an OpenAI-compatible ``base_url`` (with ``dimensions=``), or
        ``"local:all-MiniLM-L6-v2"`` to run offline.
    dimensions
        Output size; required for a model not in the table.
    base_url, api_key
        Default to ``OPENAI_BASE_URL`` and ``OPENAI_API_KEY``.
    cache
        ``None``/``True``: ``$POLARS_EMBED_CACHE`` or the user cache directory; a path; a
        cache object (``get_many``/``set_many``/``stats``/``close``); ``False``: none.
    on_long_input
        Inputs over the per-input token limit: ``"truncate"`` (default), ``"chunk"``
        (token-weighted mean of the pieces, re-normalised) or ``"error"``.
    on_error
        ``"raise"`` (default): after all other rows are embedded and cached, raise
        ``RowsFailedError`` naming the rows. ``"null"``: failed rows get a null vector and
        an ``<name>_error`` column says why.
    price_per_million
        US dollars per 1M tokens; defaults to the price table (0 for unknown models).
    max_cost
        Stop before a request would take this embedder's spending past it (US dollars).
    limits
        Per-request limits of the server (inputs, tokens, per-input tokens, encoding).
    max_workers, rpm, tpm, limiter
        Concurrent requests (default 16; the number of cores for a local model), and
        requests/tokens per minute to stay under (or a ``Limiter`` object to share).
    timeout, max_attempts, max_retry_seconds
        Per-request timeout, and the retry bounds.
    ledger, source
        Where each run writes its record (the cache's ledger, else the default cache
        directory; a path; ``False`` for none), and the name it is recorded under.
    """

    def __init__(
        self,
        model: str = "text-embedding-3-small",
        *,
        dimensions: int | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        cache: Cache | str | os.PathLike[str] | bool | None = None,
        on_long_input: LongInputPolicy = "truncate",
        on_error: OnError = "raise",
        price_per_million: float | None = None,
        max_cost: float | None = None,
        limits: Limits | None = None,
        max_workers: int | None = None,
        rpm: float | None = None,
        tpm: float | None = None,
        limiter: Limiter | None = None,
        timeout: float = 60.0,
        max_attempts: int = 8,
        max_retry_seconds: float = 300.0,
        provider: Provider | None = None,
        ledger: str | os.PathLike[str] | bool | None = None,
        source: str = "embed_column",
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if on_long_input not in ("truncate", "chunk", "error"):
            msg = f"on_long_input must be 'truncate', 'chunk' or 'error', got {on_long_input!r}"
            raise ConfigurationError(msg)
        if on_error not in ("raise", "null"):
            msg = f"on_error must be 'raise' or 'null', got {on_error!r}"
            raise ConfigurationError(msg)
        self.provider = provider or make_provider(
            model, dimensions=dimensions, base_url=base_url, api_key=api_key, timeout=timeout, limits=limits
        )
        if max_workers is None:  # requests wait on the network; a local model on the cores
            max_workers = 16 if self.provider.waits_on_network else (os.cpu_count() or 1)
        if max_workers < 1:
            msg = f"max_workers must be at least 1, got {max_workers}"
            raise ConfigurationError(msg)
        self.cache = open_cache(cache)
        self.ledger = _open_ledger(ledger, self.cache)
        self.source = source
        self.on_long_input = on_long_input
        self.on_error = on_error
        self.price = price_for(self.provider, price_per_million)
        self.runner = Runner(max_workers=max_workers, max_attempts=max_attempts, max_retry_seconds=max_retry_seconds,
                             rpm=rpm, tpm=tpm, limiter=limiter, sleep=sleep)
        self.stage = Stage(
            provider=self.provider, runner=self.runner, budget=Budget(max_cost), price=self.price,
            sizing=Sizing(self.provider.limits, max_workers, self.runner.limiter), policy=on_long_input,
            tag=f"{self.provider.name}:{self.provider.model}:{self.provider.dimensions}",
        )
        self._stats = StatsBook()
        self._init_state()

    def _init_state(self) -> None:
        self._lock = threading.Lock()
        self._inflight = InFlight()  # texts some call is fetching right now
        self._scope: Run | None = None  # the open `with embedder.run()` block
        self._last_run: Run | None = None
        self._ledger_warned = False

    # -- configuration -------------------------------------------------------------------
    @property
    def model(self) -> str:
        return self.provider.model

    @property
    def dimensions(self) -> int:
        return self.provider.dimensions

    @property
    def max_cost(self) -> float | None:
        return self.stage.budget.max_cost

    def __repr__(self) -> str:
        return f"Embedder(provider={self.provider!r}, cache={self.cache!r})"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for name in ("_lock", "_inflight", "_scope", "_last_run", "_ledger_warned"):
            del state[name]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_state()

    def metadata(self) -> dict[str, str]:
        """Key-value metadata for files written from this embedder's output."""
        from . import __version__

        return {
            "polars_embed.provider": self.provider.name,
            "polars_embed.model": self.model,
            "polars_embed.dimensions": str(self.dimensions),
            "polars_embed.version": __version__,
        }

    def output_fields(self, name: str = "embedding") -> dict[str, pl.DataType]:
        """Name and dtype of every output column, known without a request."""
        out: dict[str, pl.DataType] = {
            name: pl.Array(pl.Float32, self.dimensions),
            f"{name}_cache_hit": pl.Boolean(),
            f"{name}_tokens": pl.UInt32(),
            f"{name}_cost_usd": pl.Float64(),
        }
        if self.on_error == "null":
            out[f"{name}_error"] = pl.String()
        return out

    # -- figures -------------------------------------------------------------------------
    def _repr_html_(self) -> str:
        """In a notebook: the configuration, then the statistics table."""
        import html

        head = (f"<p><b>Embedder</b> {html.escape(self.model)} &middot; {self.dimensions} dimensions &middot; "
                f"{html.escape(repr(self.cache))} &middot; {self._stats.runs} runs</p>")
        return head + self.stats()._repr_html_()

    def stats(self) -> pl.DataFrame:
        """Counters of the last run and of every run so far, as a DataFrame."""
        return self._stats.frame()

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
        return self._last_run.failures if self._last_run is not None else failures_frame([])

    def close(self) -> None:
        self.runner.close()
        self.cache.close()

    # -- runs ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def run(self, source: str | None = None) -> Iterator[Run]:
        """Everything this embedder embeds inside the block is one run: one set of figures,
        one list of failures, one ledger record (with how the block ended)."""
        run = Run(source or self.source, record=self._save)
        with self._lock:
            if self._scope is not None:
                msg = "a run of this Embedder is already open; use another Embedder for a concurrent run"
                raise ConfigurationError(msg)
            self._scope = self._last_run = run
        self._stats.start(run.stats)
        status = "ok"
        try:
            yield run
        except BaseException as exc:
            status = run_status(exc)
            raise
        finally:
            with self._lock:
                self._scope = None
            self._stats.add(run.close(status))

    def start_run(self, source: str | None = None) -> Run:
        """A new run that writes its ledger record as it goes (``close()`` ends it)."""
        run = Run(source or self.source, record=self._save)
        with self._lock:
            self._last_run = run
        self._stats.start(run.stats)
        return run

    def current_run(self) -> Run | None:
        """The open ``with embedder.run()`` block, if any."""
        return self._scope

    def _save(self, run: Run) -> None:
        """Write ``run``'s ledger record; the ledger is best effort: never lose a result to it."""
        if self.ledger is None:
            return
        meta = {"provider": self.provider.name, "model": self.model, "dimensions": str(self.dimensions)}
        try:
            self.ledger.append(run.stats.copy(), started=run.started_at, ended=run.ended_at or time.time(),
                               source=run.source, meta=meta, run_id=run.run_id, status=run.status)
        except Exception as exc:  # noqa: BLE001 - a full disk or a read-only home must not cost the vectors
            if not self._ledger_warned:
                self._ledger_warned = True
                warnings.warn(f"polars-embed: cannot write the run ledger {self.ledger.path} ({exc}); "
                              f"results are returned, the record is skipped", stacklevel=2)

    # -- Polars surface ------------------------------------------------------------------
    def expr(self, column: str | pl.Expr, *, name: str = "embedding", row_index: str | None = None) -> pl.Expr:
        """The expression ``embed_column`` returns; one expression is one run (see ``expr.py``)."""
        from .expr import embedder_expr

        return embedder_expr(self, column, name=name, row_index=row_index)

    def collect(self, frame: pl.DataFrame | pl.LazyFrame, column: str, *, name: str = "embedding",
                engine: Any = "auto") -> pl.DataFrame:
        """``frame`` with the output columns added, as one run whose rows are the frame's."""
        from .expr import collect

        return collect(self, frame, column, name=name, engine=engine)

    def sink_parquet(self, frame: pl.DataFrame | pl.LazyFrame, column: str, path: str | os.PathLike[str], *,
                     name: str = "embedding") -> None:
        """Stream ``frame`` with the output columns into ``path`` (atomically, with metadata)."""
        from .expr import sink_parquet

        sink_parquet(self, frame, column, path, name=name)

    # -- the pipeline --------------------------------------------------------------------
    def embed(self, series: pl.Series, *, name: str = "embedding", column: str | None = None,
              rows: np.ndarray | None = None, run: Run | None = None) -> pl.DataFrame:
        """Embed one Series; returns the output columns, one row per input row.

        The call is a run of its own unless ``run`` is given or a ``run()`` block is open.
        ``rows`` are the frame row numbers of the series' rows (default: their positions).
        """
        column = column or series.name or "text"
        run = run or self._scope
        if run is not None:
            return self._call(series, run, name=name, column=column, rows=rows)
        run = self.start_run()
        status = "ok"
        try:
            return self._call(series, run, name=name, column=column, rows=np.arange(len(series)) if rows is None else rows)
        except BaseException as exc:
            status = run_status(exc)
            raise
        finally:
            self._stats.add(run.close(status))

    def evaluate(self, series: pl.Series, rows: pl.Series | None, run: Run, *, name: str, column: str) -> pl.DataFrame:
        """One evaluation of an expression by Polars, as a slice of ``run``. A slice
        evaluated again (``.over()``, a struct field each) is answered from its first
        evaluation: the vectors from the cache, every other column as it was, so nothing is
        paid or counted twice."""
        row_numbers = None if rows is None else rows.to_numpy()
        key, entry, first = run.memo.enter([series] if rows is None else [series, rows])
        if first:
            try:
                out = self._call(series, run, name=name, column=column, rows=row_numbers)
            except BaseException as exc:
                run.memo.leave(key, entry, None, exc)
                raise
            run.memo.leave(key, entry, out.drop(name), None)
            return out
        if entry.error is not None:
            raise entry.error
        answer = entry.answer
        assert answer is not None
        c = self._plan(series, run, name, column, row_numbers)
        errors = answer.get_column(f"{name}_error") if self.on_error == "null" else pl.Series([], dtype=pl.String)
        c.res.errors = {int(c.plan.inverse[r]): "" for r in errors.is_not_null().arg_true().to_list()}
        if not all(c.from_cache[i] or i in c.res.errors for i in range(len(c.keys))):
            return self._call(series, run, name=name, column=column, rows=row_numbers)  # evicted: paid again, said so
        return assemble(c.plan, c.res, np.empty(0, np.int64), name, with_errors=False).select(name).hstack(answer)

    def _plan(self, series: pl.Series, run: Run, name: str, column: str, rows: np.ndarray | None) -> Call:
        """Plan one slice and look its texts up in the cache."""
        plan = make_plan(as_text(series, column))
        keys = content_keys(plan.texts, key_prefix(self.provider.name, self.model, self.dimensions))
        c = Call(plan, keys, Results.empty(len(plan.texts), self.dimensions), run, run.cache_for(self.cache),
                 column, rows)
        c.from_cache = c.lookup(np.arange(len(keys)))
        return c

    def _call(self, series: pl.Series, run: Run, *, name: str, column: str, rows: np.ndarray | None) -> pl.DataFrame:
        """One slice of ``run``: plan, cache, fetch, assemble; its figures go to the run."""
        started = time.perf_counter()
        c = self._plan(series, run, name, column, rows)
        plan, res = c.plan, c.res
        stats = c.stats
        progress = CallProgress(run, plan, c.from_cache)
        failure: BaseException | None = None
        try:
            self._fetch(c, ~c.from_cache, progress)
        except (ProviderError, BudgetExceededError, Stopped, KeyboardInterrupt) as exc:
            failure = exc  # the figures of what was paid are recorded first
        stats.cache_hits = int(c.from_cache.sum())
        stats.failed_rows = int(np.isin(plan.inverse, list(res.errors)).sum()) if res.errors else 0
        hits = hit_rows(plan, c.from_cache)
        stats.hit_rows = len(hits)
        stats.cost_saved_usd = float(res.tokens[plan.inverse[hits]].sum()) * self.price / 1e6
        stats.wall_seconds = time.perf_counter() - started
        failures = [Failure(c.row(i), plan.texts[i], reason) for i, reason in res.errors.items()]
        self._stats.add(run.add(stats, c.keys, failures))
        progress.end(stats.hit_rows)
        if failure is not None:
            raise failure
        if failures and self.on_error == "raise":
            raise rows_failed(failures, column)
        return assemble(plan, res, hits, name, with_errors=self.on_error == "null")

    def _fetch(self, c: Call, wanted: np.ndarray, progress: CallProgress) -> None:
        """Fetch the texts ``wanted``; those another call is fetching right now are waited
        for, not paid twice (and fetched here if that call failed on them)."""
        claim, mine, theirs = self._inflight.claim(c.keys, np.flatnonzero(wanted))

        def stored(items: list[Item], done: list[int], billed: int) -> None:
            self._inflight.publish(claim, items)
            progress.done(done, billed, billed * self.price / 1e6)

        c.stats.misses += len(mine)
        fetch = Fetch(self.stage, c.cache, c.plan.texts, c.keys, np.asarray(mine, dtype=np.int64), c.res, c.stats,
                      describe=lambda i: Failure(c.row(i), c.plan.texts[i], "").where(c.column),
                      on_stored=stored, stop=c.run.stopping)
        try:
            fetch.run()
        finally:
            self._inflight.release(claim, [c.keys[i] for i in mine])
        again = []
        for i, other in theirs:
            value = other.wait(c.keys[i])
            if value is None:  # not handed over: the cache may have it, else it is fetched here
                again.append(i)
            else:
                c.res.vectors[i], c.res.tokens[i] = value
                c.from_cache[i] = True
        if again:
            found = c.lookup(np.asarray(again))
            c.from_cache[again] = found
            if not found.all():
                missing = np.zeros(len(c.keys), dtype=bool)
                missing[np.asarray(again)[~found]] = True
                self._fetch(c, missing, progress)


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
    from_cache: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    stats: RunStats = field(init=False)

    def __post_init__(self) -> None:
        n_texts = len(self.plan.texts)
        self.stats = RunStats(rows=self.plan.n_rows, distinct=n_texts,
                              duplicate_hits=self.plan.n_rows - self.plan.n_blank - n_texts)

    def lookup(self, idx: np.ndarray) -> np.ndarray:
        """Fill the results of the cached texts among ``idx``; which of ``idx`` were found."""
        found = self.cache.get_many([self.keys[i] for i in idx]) if len(idx) else []
        where = [i for i, value in zip(idx.tolist(), found) if value is not None]
        if where:
            self.res.vectors[where] = np.stack([value[0] for value in found if value is not None])
            self.res.tokens[where] = [value[1] for value in found if value is not None]
        return np.array([value is not None for value in found], dtype=bool)

    def row(self, text: int) -> int | None:
        """The frame row of distinct text ``text`` (its first row), if the slice knows it."""
        return None if self.rows is None else int(self.rows[self.plan.first_row[text]])


def _open_ledger(ledger: str | os.PathLike[str] | bool | None, cache: Cache) -> Ledger | None:
    """``False``: none; a path; else the ledger the cache names, or the default one."""
    from .ledger import Ledger

    if ledger is False:
        return None
    if ledger is None or ledger is True:
        where = getattr(cache, "ledger_path", None)
        return Ledger(where() if callable(where) else None)
    return Ledger(ledger)
