"""``Embedder``: configuration, cache, provider, pool, limiter and statistics in one object.

``Embedder.embed(series)`` runs the pipeline on one slice of a column, top to bottom:
plan (``pipeline/plan.py``) -> cache lookup -> fetch the misses (``pipeline/fetch.py``) -> assemble
(``pipeline/assemble.py``). Every call belongs to a run (``pipeline/run.py``): its own, the expression's, or
the open ``with embedder.run():`` block. It is thread-safe (the streaming engine calls it
from several threads at once) and picklable (clients, pools and cache handles are opened
lazily and dropped on pickling).
"""

from __future__ import annotations

import contextlib
import copy
import os
import threading
import time
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import polars as pl

from . import frames
from .batch import BatchSettings, batch_mode
from .batch.fetch import BatchFetch
from .caches import open_cache
from .errors import (
    BatchPendingError,
    BudgetExceededError,
    ConfigurationError,
    ProviderError,
    SharedStateError,
)
from .identity import content_keys
from .ledger import open_ledger
from .limiters import shared_limiter
from .pipeline.assemble import assemble
from .pipeline.budget import Budget
from .pipeline.fetch import Fetch, Results, Stage, Stopped
from .pipeline.inflight import InFlight, claim_shared, release_shared, wait_shared
from .pipeline.pack import Sizing
from .pipeline.plan import as_text, make_plan
from .pipeline.run import Call, CallProgress, Failure, Run, rows_failed, run_status
from .pipeline.runner import Runner
from .pipeline.stats import StatsBook
from .pipeline.tokens import Utf8BytesTokenizer, over_limit
from .providers import make_provider
from .providers.base import identity_for
from .providers.pricing import price_for
from .show import Figures
from .validate import check_choices, check_settings

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from .caches import Cache
    from .limiters import Limiter
    from .pipeline.fetch import Item
    from .pipeline.tokens import LongInputPolicy
    from .providers.base import Limits, Provider

OnError = Literal["raise", "null"]


class Embedder(Figures):
    """Holds everything one embedding job needs; reuse it across calls and frames.

    Parameters
    ----------
    model
        ``"text-embedding-3-small"`` (default), ``"-3-large"``, ``"text-embedding-ada-002"``,
        any model of an OpenAI-compatible ``base_url`` (with ``dimensions=``),
        ``"local:all-MiniLM-L6-v2"`` to run offline, or another provider's as
        ``"<provider>:<model>"``: ``azure:<deployment>``, ``voyage:``, ``cohere:``, ``gemini:``,
        ``bedrock:<model id>``, ``ollama:`` (README, "Providers").
    input_type
        ``"document"`` (default) or ``"query"``, sent to providers that embed the two
        differently (and a provider's own roles, e.g. Cohere's ``"clustering"``); accepted
        and without effect where a provider has no roles. Part of the cache key where it matters.
    provider_options
        The provider's own settings (e.g. Azure's ``api_version``, Bedrock's ``region``).
    dimensions
        Output size; required for a model not in the table.
    base_url, api_key
        Default to ``OPENAI_BASE_URL`` and ``OPENAI_API_KEY``.
    cache
        ``None``/``True``: ``$POLARS_EMBED_CACHE`` or the user cache directory; a path;
        ``"redis://host:port/db"`` (shared by many workers); a cache object; ``False``: none.
    on_long_input
        Inputs over the per-input token limit: ``"truncate"`` (default), ``"chunk"``
        (token-weighted mean of the pieces, re-normalised) or ``"error"``.
    on_error
        ``"raise"`` (default): after all other rows are embedded and cached, raise
        ``RowsFailedError`` naming the rows. ``"null"``: failed rows get a null vector and
        an ``<name>_error`` column says why.
    price_per_million
        US dollars per 1M tokens; defaults to the price table (0 for unknown models; half in batch mode).
    max_cost
        Stop before a request would take this embedder's spending past it (US dollars).
    limits
        Per-request limits of the server (inputs, tokens, per-input tokens, encoding).
    max_workers, rpm, tpm, limiter
        Concurrent requests (default 16; the number of cores for a local model), requests/tokens
        per minute to stay under, a ``Limiter`` to share, or ``"redis://..."``: one quota for every worker.
    timeout, max_attempts, max_retry_seconds
        Per-request timeout, and the retry bounds.
    cache_namespace
        Part of the cache key; default: the endpoint of a server other than OpenAI's (a
        model name there says nothing certain about the model), empty for OpenAI's.
    ledger, source
        Where each run writes its record (the cache's ledger, else the default cache
        directory; a path; ``False`` for none), and the name it is recorded under.
    mode, batch
        ``"batch"``: misses go out as Batch API jobs at half the price; ``BatchSettings`` (``batch/mode.py``).
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
        limiter: Limiter | str | None = None,
        timeout: float = 60.0,
        max_attempts: int = 8,
        max_retry_seconds: float = 300.0,
        provider: Provider | None = None,
        ledger: str | os.PathLike[str] | bool | None = None,
        source: str = "embed_column",
        cache_namespace: str | None = None,
        mode: Literal["sync", "batch"] = "sync",
        batch: BatchSettings | None = None,
        sleep: Callable[[float], None] = time.sleep,
        input_type: str | None = None,
        provider_options: dict[str, Any] | None = None,
    ) -> None:
        check_choices(on_long_input=on_long_input, on_error=on_error, mode=mode)
        check_settings(rpm=rpm, tpm=tpm, price_per_million=price_per_million, max_cost=max_cost, timeout=timeout,
                       max_workers=1 if max_workers is None else max_workers, max_attempts=max_attempts,
                       max_retry_seconds=max_retry_seconds)
        if provider is not None and input_type not in (None, getattr(provider, "input_type", "document")):
            msg = f"input_type={input_type!r} differs from the given provider's; set it on the provider only"
            raise ConfigurationError(msg)
        self.provider = copy.copy(provider) if provider is not None else make_provider(  # copied: use_policy below
            model, dimensions=dimensions, base_url=base_url, api_key=api_key, timeout=timeout, limits=limits,
            input_type=input_type or "document", options=provider_options,
        )
        if max_workers is None:  # requests wait on the network; a local model on the cores
            max_workers = 16 if self.provider.waits_on_network else (os.cpu_count() or 1)
        self.cache = open_cache(cache)
        self.ledger = open_ledger(ledger, self.cache)
        self.source = source
        self.cache_namespace = cache_namespace
        if hasattr(self.provider, "use_policy"):  # a provider that truncates server-side unless told otherwise
            self.provider.use_policy(on_long_input)
        self.identity = identity_for(self.provider, on_long_input, cache_namespace)
        self.on_long_input = on_long_input
        self.on_error = on_error
        self.mode, self.batch = mode, batch_mode(self.provider, mode, batch, on_long_input)
        self.price = price_for(self.provider, price_per_million) / (2 if mode == "batch" and price_per_million is None else 1)
        self.runner = Runner(max_workers=max_workers, max_attempts=max_attempts, max_retry_seconds=max_retry_seconds,
                             rpm=rpm, tpm=tpm, limiter=shared_limiter(limiter, rpm, tpm, self.provider), sleep=sleep,
                             redact=getattr(self.provider, "redact", None), endpoint=getattr(self.provider, "endpoint", None))
        self.stage = Stage(
            provider=self.provider, runner=self.runner, budget=Budget(max_cost), price=self.price,
            sizing=Sizing(self.provider.limits, max_workers, self.runner.limiter), policy=on_long_input,
            tag=f"{self.provider.name}:{self.provider.model}:{self.provider.dimensions}", identity=self.identity,
            bound_counts=isinstance(self.provider.tokenizer(), Utf8BytesTokenizer),
        )
        self._stats = StatsBook()
        self._init_state()

    def _init_state(self) -> None:
        self._lock = threading.Lock()
        self._inflight = InFlight()  # texts some call is fetching right now
        self._scope: Run | None = None  # the open `with embedder.run()` block
        self._last_run: Run | None = None

    # -- configuration -------------------------------------------------------------------
    @property
    def model(self) -> str:
        return self.provider.model

    @property
    def dimensions(self) -> int:
        return self.provider.dimensions

    def __repr__(self) -> str:
        return f"Embedder(provider={self.provider!r}, cache={self.cache!r})"  # never the key

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for name in ("_lock", "_inflight", "_scope", "_last_run"):
            del state[name]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_state()

    def keys(self, texts: list[str]) -> list[bytes]:
        """The cache key of each text: derived from this embedder's ``identity`` only."""
        return content_keys(texts, self.identity)

    def metadata(self) -> dict[str, str]:
        """Key-value metadata for files written from this embedder's output: what made the
        vectors (the identity), and whether the cost is the provider's count or an upper bound."""
        from . import __version__

        reported = getattr(self.provider, "reports_usage", True)
        return {"polars_embed.provider": self.provider.name, "polars_embed.model": self.model,
                "polars_embed.dimensions": str(self.dimensions), "polars_embed.version": __version__,
                "polars_embed.identity": self.identity.describe(), "polars_embed.input_type": str(getattr(self.provider, "input_type", "document")),
                "polars_embed.cost": "billed usage" if reported else "estimate, an upper bound (no usage reported)"}

    def output_fields(self, name: str = "embedding") -> dict[str, pl.DataType]:
        """Name and dtype of every output column, known without a request."""
        out: dict[str, pl.DataType] = {name: pl.Array(pl.Float32, self.dimensions), f"{name}_cache_hit": pl.Boolean(),
                                       f"{name}_tokens": pl.UInt32(), f"{name}_cost_usd": pl.Float64()}
        if self.on_error == "null":
            out[f"{name}_error"] = pl.String()
        return out

    def close(self) -> None:
        self.runner.close()
        self.cache.close()

    # -- runs ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def run(self, source: str | None = None) -> Iterator[Run]:
        """Everything this embedder embeds inside the block is one run: one set of figures,
        one list of failures, one ledger record (with how the block ended)."""
        with self.ending(self.start_run(source, block=True)) as run:
            try:
                yield run
            finally:
                with self._lock:
                    self._scope = None

    @contextlib.contextmanager
    def ending(self, run: Run) -> Iterator[Run]:
        """Close ``run`` when the block ends, with how it ended."""
        status = "ok"
        try:
            yield run
        except BaseException as exc:
            status = run_status(exc)
            raise
        finally:
            self._stats.add(run.close(status))

    def start_run(self, source: str | None = None, *, block: bool = False, open_ended: bool = False) -> Run:
        """A new run that writes its ledger record as it goes (``close()`` ends it); with
        ``block``, the run every call joins until it is closed (``run()``); ``open_ended``:
        an expression's, never closed, whose status is that of its last slice."""
        run = Run(source or self.source, record=self._save, open_ended=open_ended)
        with self._lock:
            if block and self._scope is not None:
                msg = "a run of this Embedder is already open; use another Embedder for a concurrent run"
                raise ConfigurationError(msg)
            if block:
                self._scope = run
            self._last_run = run
        self._stats.start(run.stats)
        return run

    def current_run(self) -> Run | None:
        return self._scope  # the open `with embedder.run()` block, if any

    def _save(self, run: Run) -> None:
        """Write ``run``'s ledger record; best effort: a result is never lost to the ledger."""
        if self.ledger is not None:
            meta = {"provider": self.provider.name, "model": self.model, "dimensions": str(self.dimensions),
                    "mode": self.mode, "price_per_million": str(self.price)}
            self.ledger.record(run, meta)

    # -- Polars surface ------------------------------------------------------------------
    def expr(self, column: str | pl.Expr, *, name: str = "embedding", row_index: str | None = None) -> pl.Expr:
        """The expression ``embed_column`` returns; one expression is one run (see ``frames.py``)."""
        return frames.embedder_expr(self, column, name=name, row_index=row_index)

    def collect(self, frame: pl.DataFrame | pl.LazyFrame, column: str, *, name: str = "embedding",
                engine: Any = "auto") -> pl.DataFrame:
        """``frame`` with the output columns added, as one run whose rows are the frame's."""
        return frames.collect(self, frame, column, name=name, engine=engine)

    def sink_parquet(self, frame: pl.DataFrame | pl.LazyFrame, column: str, path: str | os.PathLike[str], *,
                     name: str = "embedding") -> None:
        """Stream ``frame`` with the output columns into ``path`` (atomically, with metadata)."""
        frames.sink_parquet(self, frame, column, path, name=name)

    # -- the pipeline --------------------------------------------------------------------
    def embed(self, series: pl.Series, *, name: str = "embedding", column: str | None = None,
              rows: np.ndarray | None = None, run: Run | None = None) -> pl.DataFrame:
        """Embed one Series; returns the output columns, one row per input row.

        The call is a run of its own unless ``run`` is given or a ``run()`` block is open.
        ``rows`` are the frame row numbers of the series' rows (default: their positions).
        """
        column = column or series.name or "text"
        rows = np.arange(len(series)) if rows is None else rows
        run = run or self._scope
        if run is not None:
            return self.embed_slice(series, run, name=name, column=column, rows=rows)
        with self.ending(self.start_run()) as own:
            return self.embed_slice(series, own, name=name, column=column, rows=rows)

    def plan(self, series: pl.Series, run: Run, column: str, rows: np.ndarray | None) -> Call:
        """Plan one slice of ``run`` and look its texts up in the cache (stages 1 and 2)."""
        plan = make_plan(as_text(series, column))
        keys = self.keys(plan.texts)
        c = Call(plan, keys, Results.empty(len(plan.texts), self.dimensions, plan.inverse), run, run.cache_for(self.cache),
                 column, rows, released=self._inflight.released)
        c.from_cache = self._lookup(c, np.arange(len(keys)))
        return c

    def _lookup(self, c: Call, idx: np.ndarray, *, again: bool = False) -> np.ndarray:
        """Which of texts ``idx`` the cache has (their results filled). Under ``on_long_input="error"``
        a long text is refused even when the cache has it (truncated by a run that allowed it)."""
        found = c.lookup(idx, again=again)
        if self.on_long_input == "error" and found.any():
            over = over_limit(c.plan.texts, idx[found], self.provider.tokenizer(), self.provider.limits.max_input_tokens)
            found[np.isin(idx, over)] = False
        return found

    def embed_slice(self, series: pl.Series, run: Run, *, name: str, column: str, rows: np.ndarray | None) -> pl.DataFrame:
        """One slice of ``run``: plan, cache, fetch, assemble; its figures go to the run."""
        started = time.perf_counter()
        c = self.plan(series, run, column, rows)
        progress = CallProgress(run, c.plan, c.from_cache)
        failure: BaseException | None = None
        try:
            self._fetch(c, ~c.from_cache, progress)
            if self.batch:
                self.batch.claim(self.cache, c)
        except (ProviderError, BudgetExceededError, BatchPendingError, SharedStateError, Stopped, KeyboardInterrupt) as exc:
            failure = exc  # the figures of what was paid are recorded first
        hits, failures = c.account(self.price, time.perf_counter() - started)
        self._stats.add(run.add(c.stats, c.keys, failures))
        progress.end(c.stats.hit_rows, c.stats.failed_rows)
        if failure is not None:
            raise failure
        if failures and self.on_error == "raise":
            raise rows_failed(failures, column)
        return assemble(c.plan, c.res, hits, name, with_errors=self.on_error == "null")

    def _fetch(self, c: Call, wanted: np.ndarray, progress: CallProgress) -> None:
        """Fetch the texts ``wanted``; those another call is fetching right now are waited
        for, not paid twice (and fetched here if that call failed on them)."""
        claim, mine, theirs = self._inflight.claim(c.keys, np.flatnonzero(wanted))
        ours: list[int] = []

        def stored(items: list[Item], done: list[int], billed: int) -> None:
            c.run.note_paid([key for key, _, _ in items])  # before another call can be handed them
            self._inflight.publish(claim, items)
            progress.done(done, billed, billed * self.price / 1e6)

        try:
            ours, elsewhere, shared = claim_shared(c.cache, c.keys, mine)  # other machines fetch `elsewhere`
            fetched = np.asarray(ours, dtype=np.int64)
            # A fetch that ended since the lookup (here, or on another machine: it stores before it
            # releases its claims) may have stored what we just claimed: look those up again.
            if (shared or self._inflight.released != c.released) and len(fetched):
                found = self._lookup(c, fetched, again=True)
                c.from_cache[fetched[found]] = True
                fetched = fetched[~found]
            c.stats.misses += len(fetched)
            kind, extra = (BatchFetch, self.batch.options(self.cache, c.run)) if self.batch else (Fetch, {"budget": c.run.budget})
            fetch = kind(self.stage, c.cache, c.plan.texts, c.keys, fetched, c.res, c.stats,  # type: ignore[operator]
                         describe=lambda i: Failure(c.row(i), c.plan.texts[i], "").where(c.column),
                         on_stored=stored, stop=c.run.stopping, **extra)
            fetch.run()
        finally:  # whatever happened, the texts are free for other calls and workers again
            self._inflight.release(claim, [c.keys[i] for i in mine])
            release_shared(c.cache, [c.keys[i] for i in ours])
        again = wait_shared(c.cache, c, elsewhere + sorted(getattr(fetch, "lost", ())), c.run.stopping)  # taken over
        for i, other in theirs:
            value = other.wait(c.keys[i])
            if value is None:  # not handed over: the cache may have it, else it is fetched here
                again.append(i)
            else:
                c.res.vectors[i], c.res.tokens[i] = value
                c.from_cache[i] = True
        if again:
            found = self._lookup(c, np.asarray(again), again=True)
            c.from_cache[again] = found
            if not found.all():
                missing = np.zeros(len(c.keys), dtype=bool)
                missing[np.asarray(again)[~found]] = True
                self._fetch(c, missing, progress)
