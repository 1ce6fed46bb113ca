"""``Embedder``: configuration, cache, provider, pool, limiter and statistics in one object.

``Embedder.embed(series)`` runs the whole pipeline on one slice of a column:
plan -> cache lookup -> token count -> pack -> run -> assemble. It is thread-safe (the
streaming engine calls it from several threads at once) and picklable (clients, pools and
cache handles are opened lazily and dropped on pickling).
"""

from __future__ import annotations

import math
import os
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, Future, wait
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import polars as pl
import pyarrow as pa

from .cache import open_cache
from .errors import BudgetExceededError, ConfigurationError, ProviderError, RowsFailedError
from .pack import bound_for, pack
from .plan import as_text, content_keys, key_prefix, make_plan
from .pricing import price_per_million
from .providers.base import Limits
from .providers.openai import OpenAIProvider
from .runner import Runner, status_of
from .stats import RunStats, StatsBook
from .tokens import LongInputPolicy, Piece, prepare_inputs

if TYPE_CHECKING:
    from collections.abc import Callable

    from .cache import Cache
    from .ledger import Ledger
    from .providers.base import BatchResult, Provider

OnError = Literal["raise", "null"]
#: Statuses that blame the input rather than the request: bisected down to the row.
_ROW_STATUSES = (400, 422)


def make_provider(
    model: str,
    *,
    dimensions: int | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    timeout: float = 60.0,
    limits: Limits | None = None,
) -> Provider:
    """``"local:<name>"`` runs offline in-process; anything else is an OpenAI-compatible model."""
    if model.startswith("local:"):
        from .providers.local import LocalProvider

        return LocalProvider(model, dimensions=dimensions, limits=limits)
    return OpenAIProvider(
        model, dimensions=dimensions, base_url=base_url, api_key=api_key, timeout=timeout, limits=limits
    )


class _Claim:
    """The texts one call fetches. The event is set when the whole fetch has ended (one
    event a call, not one a text); only the vectors another call waits for are kept."""

    __slots__ = ("done", "wanted", "values")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.wanted: set[bytes] = set()
        self.values: dict[bytes, tuple[np.ndarray, int]] = {}

    def wait(self, key: bytes) -> tuple[np.ndarray, int] | None:
        """The vector and tokens of ``key`` once the fetch has ended; None if it failed
        (or finished before this waiter came: the cache has it then)."""
        self.done.wait()
        return self.values.get(key)


class InFlight:
    """Distinct texts being fetched right now by some call of this embedder.

    The streaming engine embeds slices in parallel; two slices often share texts. The
    first to claim a text fetches it; the others wait for its vector instead of paying.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[bytes, _Claim] = {}

    def claim(self, keys: list[bytes], indices: np.ndarray) -> tuple[_Claim, list[int], list[tuple[int, _Claim]]]:
        """Split ``indices`` into the ones this call fetches (under the returned claim) and
        the ones it waits for (with the claim of the call fetching each)."""
        claim = _Claim()
        mine: list[int] = []
        theirs: list[tuple[int, _Claim]] = []
        with self._lock:
            pending = self._pending
            for i in indices.tolist():
                other = pending.setdefault(keys[i], claim)
                if other is claim:
                    mine.append(i)
                else:
                    other.wanted.add(keys[i])
                    theirs.append((i, other))
        return claim, mine, theirs

    def publish(self, claim: _Claim, items: list[tuple[bytes, np.ndarray, int]]) -> None:
        """Hand finished vectors to the calls waiting for them."""
        with self._lock:
            if claim.wanted:
                claim.values.update((key, (vec, n)) for key, vec, n in items if key in claim.wanted)

    def release(self, claim: _Claim, keys: list[bytes]) -> None:
        """End ``claim``'s fetch: its waiters take what was published, fetch the rest."""
        with self._lock:
            for key in keys:
                self._pending.pop(key, None)
        claim.done.set()


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
    max_workers, rpm, tpm
        Concurrent requests (default 16; the number of cores for a local model), and
        requests/tokens per minute to stay under.
    timeout, max_attempts, max_retry_seconds
        Per-request timeout, and the retry bounds.
    ledger, source
        Where each call appends a record (``ledger.sqlite`` beside a disk cache, else in
        the default cache directory; a path; ``False`` for none), and the name it is
        recorded under.
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
        self._tag = f"{self.provider.name}:{self.provider.model}:{self.provider.dimensions}"
        self.on_long_input = on_long_input
        self.on_error = on_error
        self.price = price_per_million_for(self.provider, price_per_million)
        self.max_cost = max_cost
        self.runner = Runner(
            max_workers=max_workers,
            max_attempts=max_attempts,
            max_retry_seconds=max_retry_seconds,
            rpm=rpm,
            tpm=tpm,
            sleep=sleep,
        )
        self._stats = StatsBook()
        #: Row index -> reason for the rows of the last call that could not be embedded.
        #: (Polars re-raises errors from inside an expression without their attributes.)
        self.last_failures: dict[int, str] = {}
        self._budget_lock = threading.Lock()
        self._inflight = InFlight()
        self._committed_usd = 0.0  # billed so far plus requests in flight (for max_cost)
        #: Called after each finished request with the number of distinct texts it completed.
        self.on_progress: Callable[[RunStats], None] | None = None

    # -- configuration -------------------------------------------------------------------
    @property
    def model(self) -> str:
        return self.provider.model

    @property
    def dimensions(self) -> int:
        return self.provider.dimensions

    def __repr__(self) -> str:
        return f"Embedder(provider={self.provider!r}, cache={self.cache!r})"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_budget_lock"], state["_inflight"]
        state["on_progress"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._budget_lock = threading.Lock()
        self._inflight = InFlight()

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

    def _repr_html_(self) -> str:
        """In a notebook: the configuration, then the statistics table."""
        import html

        head = (f"<p><b>Embedder</b> {html.escape(self.model)} &middot; {self.dimensions} dimensions &middot; "
                f"{html.escape(repr(self.cache))} &middot; {self._stats.calls} calls</p>")
        return head + self.stats()._repr_html_()

    def stats(self) -> pl.DataFrame:
        """Counters of the last call and of every call so far, as a DataFrame."""
        return self._stats.frame()

    @property
    def last_stats(self) -> RunStats:
        return self._stats.last

    @property
    def total_stats(self) -> RunStats:
        return self._stats.total

    def record(self, stats: RunStats, started_at: float, source: str | None = None) -> str | None:
        """Append one record to the ledger (if any); returns its run id."""
        if self.ledger is None:
            return None
        meta = {"provider": self.provider.name, "model": self.model, "dimensions": str(self.dimensions)}
        return self.ledger.append(stats, started=started_at, ended=time.time(), source=source or self.source, meta=meta)

    def close(self) -> None:
        self.runner.close()
        self.cache.close()

    # -- Polars surface ------------------------------------------------------------------
    def expr(self, column: str | pl.Expr, *, name: str = "embedding") -> pl.Expr:
        """The expression ``embed_column`` returns: adds the output columns, unnested."""
        col = pl.col(column) if isinstance(column, str) else column
        label = column if isinstance(column, str) else _expr_name(column)
        dtype = pl.Struct(self.output_fields(name))
        # return_dtype: Polars never calls us on dummy data (that would be a paid request).
        # is_elementwise: slices may be embedded independently, in parallel, in streaming.
        return col.map_batches(
            lambda s: self.embed(s, name=name, column=label).to_struct(name),
            return_dtype=dtype,
            is_elementwise=True,
        ).struct.unnest()

    # -- the pipeline ----------------------------------------------------------------------
    def embed(self, series: pl.Series, *, name: str = "embedding", column: str | None = None,
              record: bool = True) -> pl.DataFrame:
        """Embed one Series; returns the output columns, one row per input row.

        ``record=False`` keeps the call out of the ledger (``polars-embed run`` records
        the whole run once instead of each partition).
        """
        started_at = time.time()
        started = time.perf_counter()
        column = column or series.name or "text"
        call = RunStats(rows=len(series))
        plan = make_plan(as_text(series, column))
        n_texts, dim = len(plan.texts), self.dimensions
        call.distinct = n_texts
        call.duplicate_hits = plan.n_rows - plan.n_blank - n_texts

        vectors = np.zeros((n_texts, dim), dtype=np.float32)
        tokens = np.zeros(n_texts, dtype=np.int64)
        cost = np.zeros(n_texts, dtype=np.float64)
        from_cache = np.zeros(n_texts, dtype=bool)
        errors: dict[int, str] = {}

        keys = content_keys(plan.texts, key_prefix(self.provider.name, self.model, dim))
        found = self.cache.get_many(keys)
        hit_idx = [i for i, hit in enumerate(found) if hit is not None]
        if hit_idx:
            vectors[hit_idx] = np.stack([found[i][0] for i in hit_idx])  # type: ignore[index]
            tokens[hit_idx] = [found[i][1] for i in hit_idx]  # type: ignore[index]
            from_cache[hit_idx] = True
        # Texts another slice is fetching right now are waited for, not paid twice.
        claim, mine, theirs = self._inflight.claim(keys, np.flatnonzero(~from_cache))
        call.misses = len(mine)

        failure: BaseException | None = None
        try:
            if mine:
                self._fetch(plan, np.asarray(mine), keys, vectors, tokens, cost, errors, call, column, claim)
        except (ProviderError, BudgetExceededError, KeyboardInterrupt) as exc:
            failure = exc
        finally:
            self._inflight.release(claim, [keys[i] for i in mine])
        if theirs and failure is None:
            retry = []
            for i, other in theirs:
                value = other.wait(keys[i])
                if value is None:  # not handed over: looked up again below
                    retry.append(i)
                else:
                    vectors[i], tokens[i] = value
                    from_cache[i] = True
            if retry:  # another call failed on them, or stored them before we came: look again
                again = self.cache.get_many([keys[i] for i in retry])
                for i, hit in zip(retry, again):
                    if hit is not None:
                        vectors[i], tokens[i] = hit
                        from_cache[i] = True
                retry = [i for i, hit in zip(retry, again) if hit is None]
            if retry:
                call.misses += len(retry)
                self._fetch(plan, np.asarray(retry), keys, vectors, tokens, cost, errors, call, column, _Claim())
        call.cache_hits = int(from_cache.sum())
        call.failed_rows = int(np.isin(plan.inverse, list(errors)).sum()) if errors else 0
        call.wall_seconds = time.perf_counter() - started
        hit_rows = _hit_rows(plan, from_cache)
        call.hit_rows = len(hit_rows)
        call.cost_saved_usd = float(tokens[plan.inverse[hit_rows]].sum()) * self.price / 1e6
        self._stats.record(call)
        if record:
            self.record(call, started_at)
        self.last_failures = _failures_by_row(plan, errors)
        if failure is not None:
            raise failure
        if self.last_failures and self.on_error == "raise":
            raise _rows_failed(self.last_failures, column)
        return self._assemble(plan, vectors, tokens, cost, hit_rows, errors, name)

    def _fetch(
        self,
        plan: Any,
        misses: np.ndarray,
        keys: list[bytes],
        vectors: np.ndarray,
        tokens: np.ndarray,
        cost: np.ndarray,
        errors: dict[int, str],
        call: RunStats,
        column: str,
        claim: _Claim,
    ) -> None:
        """Embed the distinct texts ``misses``; each finished request goes to the cache (and
        to the slices waiting on ``claim``) at once."""
        limits = self.provider.limits
        tokenizer = self.provider.tokenizer()
        n_pieces = np.zeros(len(vectors), dtype=np.int64)  # pieces per text (chunk policy: several)
        pending = np.zeros(len(vectors), dtype=np.int64)  # pieces not yet back, per text
        lock = threading.Lock()

        def tokenize(idx: np.ndarray) -> list[Piece]:
            got = prepare_inputs(
                [plan.texts[i] for i in idx], tokenizer, max_input_tokens=limits.max_input_tokens,
                policy=self.on_long_input, row_of=[int(plan.first_row[i]) for i in idx], column=column,
            )
            out = [Piece(int(idx[p.owner]), p.text, p.tokens) for p in got]
            with lock:
                for p in out:
                    n_pieces[p.owner] += 1
                    pending[p.owner] += 1
            call.tokens_counted += sum(p.tokens for p in out)
            return out

        def on_retry(exc: BaseException) -> None:
            with lock:
                call.retries += 1
                call.rate_limited += status_of(exc) == 429

        def finish(batch: list[Piece], result: BatchResult) -> None:
            """Fold one request's vectors in; store every text whose pieces are all back."""
            counted = sum(p.tokens for p in batch) or 1
            done: list[int] = []
            with lock:
                call.requests += 1
                call.tokens_billed += result.billed_tokens
                for p, vec in zip(batch, result.vectors):
                    share = result.billed_tokens * p.tokens / counted * self.price / 1e6
                    cost[p.owner] += share
                    call.cost_usd += share
                    tokens[p.owner] += p.tokens
                    if n_pieces[p.owner] == 1:
                        vectors[p.owner] = vec  # the server's vector, untouched
                    else:
                        vectors[p.owner] += vec * p.tokens  # chunks: token-weighted sum
                    pending[p.owner] -= 1
                    if pending[p.owner] == 0:
                        done.append(p.owner)
                for i in done:
                    if n_pieces[i] > 1:  # then re-normalise the mean
                        norm = float(np.linalg.norm(vectors[i]))
                        vectors[i] /= norm if norm > 0 else 1.0
                items = [(keys[i], vectors[i], int(tokens[i])) for i in done]  # rows are final once done
            self.cache.set_many(items, tag=self._tag)
            self._inflight.publish(claim, items)
            if self.on_progress is not None:
                self.on_progress(RunStats(rows=len(done), requests=1, tokens_billed=result.billed_tokens))

        def send(batch: list[Piece]) -> None:
            """One packed request; a row-level 400 is bisected to the offending input(s)."""
            estimate = sum(p.tokens for p in batch) * self.price / 1e6
            self._reserve(estimate)
            try:
                result = self.runner.call(
                    lambda: self.provider.embed([p.text for p in batch]),
                    sum(p.tokens for p in batch),
                    on_retry,
                )
            except ProviderError as exc:
                self._settle(estimate, 0.0)
                if exc.status_code not in _ROW_STATUSES:
                    raise
                with lock:
                    call.requests += 1
                if len(batch) == 1:
                    with lock:
                        errors[batch[0].owner] = str(exc)
                    return
                half = len(batch) // 2
                send(batch[:half])
                send(batch[half:])
                return
            self._settle(estimate, result.billed_tokens * self.price / 1e6)
            finish(batch, result)

        limiter = self.runner.limiter
        packed = self._requests
        pool = self.runner.pool
        # The head request leaves while the rest is tokenized. When the quota is not known
        # yet it goes alone: its answer (x-ratelimit-*) paces the rest, so a run starts at
        # the quota instead of storming; what is tokenized meanwhile waits in `backlog`.
        # A job that fits in one request per worker sends each next request's worth as soon
        # as it is tokenized (the server works while the client counts); a bigger one, or
        # one for a model on this machine's cores, is packed as a whole, which keeps it at
        # the lower bound of requests.
        n = len(misses)
        per_request = self._split_size(n)
        probe = not limiter.knows_quota
        segments: list[np.ndarray] = []  # texts still to tokenize
        by_segment = False  # whether each backlog entry is packed on its own
        if self.on_long_input == "error":  # every row is checked before anything is paid for
            head, *spill = packed(tokenize(misses))
            backlog = [[p for r in spill for p in r]]
        else:
            first = tokenize(misses[:per_request])
            later = misses[per_request:]
            parts = math.ceil(n / per_request)
            bound = self._estimated_bound(first, min(per_request, n), n)
            # one request per worker holds it all, and a server does the work meanwhile
            by_segment = bound <= parts and self.provider.waits_on_network
            rest_of_first: list[Piece] = []
            if by_segment:
                segments = [later[i : i + per_request] for i in range(0, len(later), per_request)]
                if probe and bound < parts:  # a quarter of a request finds the quota out sooner (one request more)
                    cut = max(1, len(first) // 4)
                    first, rest_of_first = first[:cut], first[cut:]
            elif len(later):
                segments = [later]  # tokenized after the head has left, then packed with the spill
            head, *spill = packed(first, min_requests=1)
            backlog = [*spill, rest_of_first]
        backlog = [pieces for pieces in backlog if pieces]  # tokenized, not sent yet
        futures: list[Future[None]] = [pool.submit(send, head)]

        def submit_backlog(wait_for_head: bool) -> None:
            nonlocal backlog
            if not backlog or (wait_for_head and not futures[0].done()):
                return
            if futures[0].done() and futures[0].exception() is not None:
                raise futures[0].exception()  # type: ignore[misc]
            if by_segment:  # each entry is a request's worth (or a spill of the head)
                reqs = [req for pieces in backlog for req in packed(pieces, min_requests=1)]
            else:  # all together, at the lower bound
                reqs = packed([p for pieces in backlog for p in pieces])
            futures.extend(pool.submit(send, req) for req in reqs)
            backlog = []

        try:
            for segment in segments:
                backlog.append(tokenize(segment))
                submit_backlog(wait_for_head=probe)
            if probe:
                futures[0].result()
            submit_backlog(wait_for_head=False)
        except BaseException:
            wait(futures)  # what is in flight finishes and is cached
            raise
        try:
            done, not_done = wait(futures, return_when=FIRST_EXCEPTION)
            first_error = next((f.exception() for f in done if f.exception() is not None), None)
            if first_error is not None:
                for f in not_done:
                    f.cancel()
                wait(not_done)  # requests in flight finish and are cached
                raise first_error
        except KeyboardInterrupt:
            for f in futures:
                f.cancel()
            raise
        # a text whose chunk failed is a failed text, even if other chunks came back
        for i in list(errors):
            tokens[i] = 0

    def _pool_parts(self, n: int, wanted: int) -> int:
        """Requests to split ``n`` inputs into so the pool is used: up to ``wanted``, but
        never below a quarter of the input limit a request, so a 5,000-row partition does
        not become dozens of tiny requests that would eat a requests/min quota."""
        floor = max(1, self.provider.limits.max_inputs // 4)
        return max(1, min(wanted, n // floor))

    def _request_tokens(self) -> int:
        """Tokens a request may carry: the provider's limit, or less under a tokens/min
        limit (``RateLimiter.request_token_cap``)."""
        cap = self.runner.limiter.request_token_cap()
        limit = self.provider.limits.max_request_tokens
        return limit if cap is None else min(limit, cap)

    def _split_size(self, n: int) -> int:
        """Texts a request when ``n`` texts are split over the pool (as ``_requests`` does)."""
        parts = self._pool_parts(n, self.runner.max_workers)
        return max(1, min(self.provider.limits.max_inputs, math.ceil(n / parts)))

    def _estimated_bound(self, sample: list[Piece], sample_texts: int, n: int) -> int:
        """The lower bound of requests for ``n`` texts like the ``sample_texts`` that gave
        ``sample``."""
        est_tokens = sum(p.tokens for p in sample) * n / max(1, sample_texts)
        return bound_for(n, est_tokens, self.provider.limits.max_inputs, self._request_tokens())

    def _requests(self, items: list[Piece], min_requests: int | None = None) -> list[list[Piece]]:
        """Pack pieces into requests as a run sends them (``estimate`` uses it too).

        Under a tokens/min limit requests are smaller; a small job is split so the pool is
        used (``min_requests``, default one request per worker; see ``_pool_parts``).
        """
        if not items:
            return []
        max_tokens = max(max(p.tokens for p in items), self._request_tokens())
        wanted = self.runner.max_workers if min_requests is None else min_requests
        groups = pack([p.tokens for p in items], max_inputs=self.provider.limits.max_inputs, max_tokens=max_tokens,
                      min_requests=self._pool_parts(len(items), wanted))
        return [[items[i] for i in g] for g in groups]

    def _reserve(self, estimate: float) -> None:
        if self.max_cost is None:
            return
        with self._budget_lock:
            if self._committed_usd + estimate > self.max_cost + 1e-12:
                msg = (
                    f"stopped before spending more than max_cost=${self.max_cost:g} "
                    f"(${self._committed_usd:.6f} spent); finished work is cached, rerun with a "
                    f"higher --max-cost to go on"
                )
                raise BudgetExceededError(msg)
            self._committed_usd += estimate

    def _settle(self, estimate: float, actual: float) -> None:
        if self.max_cost is None:
            return
        with self._budget_lock:
            self._committed_usd += actual - estimate

    def _assemble(
        self,
        plan: Any,
        vectors: np.ndarray,
        tokens: np.ndarray,
        cost: np.ndarray,
        hit_rows: np.ndarray,
        errors: dict[int, str],
        name: str,
    ) -> pl.DataFrame:
        """Rejoin per-text results to rows (the inverse of the dedupe), in row order."""
        inv = plan.inverse
        valid = inv >= 0
        n_texts, dim = len(plan.texts), self.dimensions
        idx = np.where(valid, inv, n_texts)  # null/blank rows point at a zero sentinel
        failed = np.zeros(n_texts + 1, dtype=bool)
        failed[list(errors)] = True
        failed[n_texts] = True
        flat = np.concatenate([vectors, np.zeros((1, dim), np.float32)])[idx].reshape(-1)
        arr = pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), dim, mask=pa.array(failed[idx]))
        hit = np.zeros(plan.n_rows, dtype=bool)
        hit[hit_rows] = True
        row_cost = np.zeros(plan.n_rows, dtype=np.float64)
        row_cost[plan.first_row] = cost
        columns: dict[str, Any] = {
            name: pl.Series(name, arr, dtype=pl.Array(pl.Float32, dim)),
            f"{name}_cache_hit": pl.Series(f"{name}_cache_hit", hit).scatter(np.flatnonzero(~valid), None),
            f"{name}_tokens": pl.Series(f"{name}_tokens", np.append(tokens, 0)[idx].astype(np.uint32)),
            f"{name}_cost_usd": pl.Series(f"{name}_cost_usd", row_cost),
        }
        if self.on_error == "null":
            reasons = [errors.get(int(i)) if v else None for i, v in zip(idx, valid)] if errors else [None] * plan.n_rows
            columns[f"{name}_error"] = pl.Series(f"{name}_error", reasons, dtype=pl.String)
        return pl.DataFrame(columns)


def _hit_rows(plan: Any, from_cache: np.ndarray) -> np.ndarray:
    """Rows for which nothing was paid: a cached text, or a repeat of an earlier row."""
    inv = plan.inverse
    rows = np.flatnonzero(inv >= 0)
    if not len(rows):
        return rows
    first = np.zeros(plan.n_rows, dtype=bool)
    first[plan.first_row] = True
    keep = from_cache[inv[rows]] | ~first[rows]
    return rows[keep]


def _failures_by_row(plan: Any, errors: dict[int, str]) -> dict[int, str]:
    if not errors:
        return {}
    return {row: errors[int(i)] for row, i in enumerate(plan.inverse) if int(i) in errors}


def _rows_failed(failures: dict[int, str], column: str) -> RowsFailedError:
    first_row, reason = next(iter(failures.items()))
    more = f" and {len(failures) - 1} more" if len(failures) > 1 else ""
    msg = (
        f"row {first_row}{more} of column {column!r} could not be embedded: {reason}; "
        f"every other row is embedded and cached (on_error='null' keeps going)"
    )
    return RowsFailedError(msg, failures=failures)


def _open_ledger(ledger: str | os.PathLike[str] | bool | None, cache: Cache) -> Ledger | None:
    from .cache import DiskCache
    from .ledger import Ledger

    if ledger is False:
        return None
    if ledger is None or ledger is True:
        return Ledger(cache.directory / "ledger.sqlite") if isinstance(cache, DiskCache) else Ledger()
    return Ledger(ledger)


def price_per_million_for(provider: Provider, override: float | None) -> float:
    if provider.name == "local":
        return float(override or 0.0)
    return price_per_million(provider.model, override)


def _expr_name(expr: pl.Expr) -> str:
    try:
        return expr.meta.output_name()
    except Exception:  # noqa: BLE001 - an expression without a single root column
        return str(expr)

