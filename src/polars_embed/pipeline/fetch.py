"""The fetch stage: one object per call embeds the texts the cache did not have.

``Fetch.run()`` tokenizes the texts, packs them into requests (``pack.schedule``, with the
request sizes of ``pack.Sizing``), sends each from the embedder's pool under its limiter,
budgets and retries (``Runner``), and folds every answer into the call's ``Results``; each
finished request is written to the cache at once, so a crash or Ctrl-C loses at most the
requests in flight. A request refused because of one of its inputs (400/422) is bisected
down to the offending rows (``Fetch.bisect``).
"""

from __future__ import annotations

import functools
import threading
import warnings
from concurrent.futures import FIRST_EXCEPTION, Future, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import CacheError, ProviderError, RequestRefusedError
from .budget import Budgets
from .inflight import Fenced
from .pack import schedule
from .results import Results
from .runner import Stopped, status_of
from .stats import apportion
from .tokens import Piece, count_tokens, long_texts, prepare_inputs

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ..caches import Cache
    from ..identity import VectorIdentity
    from ..providers.base import BatchResult, Provider
    from .budget import Budget
    from .pack import Sizing
    from .runner import Runner
    from .stats import RunStats
    from .tokens import LongInputPolicy

#: The token count of a piece sent before it was counted (``Fetch.untokenized``).
UNCOUNTED = -1
#: (cache key, vector, tokens) of a text whose every piece is back.
Item = tuple[bytes, np.ndarray, int]


@dataclass
class Stage:
    """What every fetch of one embedder shares."""

    provider: Provider
    runner: Runner
    sizing: Sizing
    budget: Budget
    price: float  # USD per 1M tokens
    policy: LongInputPolicy
    tag: str  # provider:model:dimensions, stored with each cache entry (for people: the key is the identity's)
    identity: VectorIdentity | None = None
    bound_counts: bool = False  # the tokenizer counts an upper bound (bytes), not the provider's tokens
    accepted: bool = False  # has the server answered a request of this embedder yet?
    warned: set[str] = field(default_factory=set)

    def warn_once(self, message: str) -> None:
        """A warning said once per embedder (a full cache fails every write the same way)."""
        if message not in self.warned:
            self.warned.add(message)
            warnings.warn(message, stacklevel=2)


class Fetch:
    """Embed the distinct texts ``todo`` (indices into ``texts``) of one call into ``results``.

    ``on_stored(items, billed_tokens)`` is called after each finished request with the texts
    it completed (to hand them to waiting calls and to report progress); ``describe(i)``
    names the row of text ``i`` in error messages; ``budget``: the call's own (a proxy key's)."""

    def __init__(
        self,
        stage: Stage,
        cache: Cache,
        texts: Sequence[str],
        keys: Sequence[bytes],
        todo: np.ndarray,
        results: Results,
        stats: RunStats,
        *,
        describe: Callable[[int], str],
        on_stored: Callable[[list[Item], list[int], int], None] | None = None,
        stop: threading.Event | None = None, budget: Any = None,
    ) -> None:
        self.stage, self.cache = stage, cache
        self.budget = Budgets(budget, stage.budget)
        self.texts, self.keys, self.todo = texts, keys, todo
        self.results, self.stats = results, stats
        self.describe, self.on_stored = describe, on_stored
        self.stop = stop or threading.Event()
        self.n_pieces = np.zeros(len(texts), dtype=np.int64)  # pieces per text (chunk policy: several)
        self.pending = np.zeros(len(texts), dtype=np.int64)  # pieces not yet back, per text
        self.futures: list[Future[None]] = []
        self.head: Future[None]
        self.uncounted: list[list[Piece]] = []  # requests sent before their tokens were counted
        self.counted: dict[tuple[int, int, int], list[Piece]] = {}  # ... and their counts
        self.lost: set[int] = set()  # texts whose claims another worker took over (``fenced``): its to send
        self.prepared: list[Future[Any]] = []  # the provider's ``prepare()``, which requests wait for
        self._lock = threading.Lock()

    # -- schedule ----------------------------------------------------------------------------
    def run(self) -> None:
        """Send every request; raises the first error once the requests in flight have ended."""
        if not len(self.todo):
            return
        stage = self.stage
        limiter, pool = stage.runner.limiter, stage.runner.pool
        prepare = getattr(stage.provider, "prepare", None)
        if callable(prepare):
            self.prepared.append(pool.submit(prepare))
        probe = stage.provider.waits_on_network and limiter.claim_probe()
        steps = schedule(self.todo, self.tokenize, stage.sizing, stream=stage.provider.waits_on_network,
                         probe=probe, check_first=stage.policy == "error", untokenized=self.untokenized)
        try:
            (head,) = next(steps)
        except BaseException:
            if probe:
                limiter.end_probe()  # nothing was sent: the next call probes
            raise
        try:
            if not probe:
                limiter.wait_for_quota()  # another call's probe is out: its answer paces us too
            self.head = pool.submit(self.send_probe if probe else self.send, head)
            self.futures.append(self.head)
            backlog: list[list[Piece]] = []  # tokenized while the probe is out
            for requests in steps:
                backlog += requests
                if not probe or self.head.done():
                    self.submit(self.repack(backlog))
                    backlog = []
            if probe:
                self.head.result()
            self.submit(self.repack(backlog))
            self.count_uncounted()  # while the server works
        except BaseException:
            wait(self.futures)  # what is in flight finishes and is cached
            raise
        self.wait_all()
        for i in self.results.errors:  # a text whose chunk failed is a failed text
            self.results.tokens[i] = 0

    def submit(self, requests: list[list[Piece]]) -> None:
        """Hand ``requests`` to the pool, unless the head request has already failed."""
        if self.head.done() and self.head.exception() is not None:
            raise self.head.exception()  # type: ignore[misc]
        self.futures.extend(self.stage.runner.pool.submit(self.send, r) for r in requests)

    def repack(self, requests: list[list[Piece]]) -> list[list[Piece]]:
        """Requests packed while the probe was out, before the quota was known, packed again
        if the quota its answer told makes them too big: a request of 72,000 tokens against a
        quota of 50,000 a second waits for that much room while smaller ones pass, and the
        last ones end the run late; a quarter second of quota each keeps the pace even."""
        cap = self.stage.sizing.request_tokens()
        if all(sum(p.tokens for p in r) <= cap for r in requests):
            return requests
        return self.stage.sizing.requests([p for r in requests for p in r], min_requests=1)

    def wait_all(self) -> None:
        try:
            done, not_done = wait(self.futures, return_when=FIRST_EXCEPTION)
            error = next((f.exception() for f in done if f.exception() is not None), None)
            if error is not None:
                for f in not_done:
                    f.cancel()
                wait(not_done)  # requests in flight finish and are cached
                raise error
        except KeyboardInterrupt:
            for f in self.futures:
                f.cancel()
            raise

    # -- tokenize ----------------------------------------------------------------------------
    def tokenize(self, idx: np.ndarray) -> list[Piece]:
        """Count tokens of texts ``idx`` and apply the long-input policy."""
        limits = self.stage.provider.limits
        pieces = prepare_inputs([self.texts[i] for i in idx], self.stage.provider.tokenizer(),
                                max_input_tokens=limits.max_input_tokens, policy=self.stage.policy,
                                owners=idx.tolist(), describe=self.describe)
        with self._lock:
            for p in pieces:
                self.n_pieces[p.owner] += 1
                self.pending[p.owner] += 1
            self.stats.tokens_counted += sum(p.tokens for p in pieces)
            self.stats.long_texts += long_texts(pieces)
        return pieces

    def untokenized(self, idx: np.ndarray) -> list[Piece] | None:
        """Texts ``idx`` as one request to send before counting their tokens, or None when
        they must be counted first. Each token is at least one byte, so texts whose bytes fit
        every limit fit in tokens; counting then waits for the answer (``finish``), and the
        server works while the client counts. Only once the quota is known to have no
        tokens/min limit and without ``max_cost``: both need the count before sending."""
        stage = self.stage
        if not self.head.done() or stage.runner.limiter.tpm or self.budget.max_cost is not None:
            return None
        texts = [self.texts[i] for i in idx]
        sizes = [len(t.encode("utf-8", "surrogatepass")) for t in texts]
        limits = stage.provider.limits
        if len(texts) > limits.max_inputs or max(sizes) > limits.max_input_tokens:
            return None
        if sum(sizes) > stage.sizing.request_tokens():
            return None
        request = [Piece(int(i), t, UNCOUNTED) for i, t in zip(idx, texts)]
        with self._lock:
            self.n_pieces[idx] += 1
            self.pending[idx] += 1
            self.uncounted.append(request)
        return request

    def count_uncounted(self) -> None:
        """Count the requests sent uncounted, while they are in flight (an answer that comes
        first is counted by ``finish``)."""
        while True:
            with self._lock:
                if not self.uncounted:
                    return
                request = self.uncounted.pop()
            self.count(request)

    def count(self, batch: list[Piece]) -> list[Piece]:
        """A request sent uncounted, with its token counts (counted once, by whoever comes first)."""
        key = (batch[0].owner, batch[-1].owner, len(batch))  # the halves of a bisected request differ
        with self._lock:
            counted = self.counted.get(key)
            if counted is None and batch in self.uncounted:
                self.uncounted.remove(batch)
        if counted is not None:
            return counted
        counts = count_tokens(self.stage.provider.tokenizer(), [p.text for p in batch])
        counted = [Piece(p.owner, p.text, n) for p, n in zip(batch, counts)]
        with self._lock:
            if key in self.counted:  # counted meanwhile by the other side
                return self.counted[key]
            self.counted[key] = counted
            self.stats.tokens_counted += sum(p.tokens for p in counted)
        return counted

    # -- send ----------------------------------------------------------------------------------
    def send_probe(self, batch: list[Piece]) -> None:
        try:
            self.send(batch)
        finally:
            self.stage.runner.limiter.end_probe()

    def send(self, batch: list[Piece]) -> None:
        """One request; refused for its inputs, it is bisected down to the offending rows."""
        wait(self.prepared)  # the client is built (the SDK imported) before a request takes its turn of the quota
        refused = self.attempt(batch)
        if refused is not None:
            self.bisect(batch, refused)

    def attempt(self, batch: list[Piece]) -> ProviderError | None:
        """One request under the budget, the limiter and retries, folded in when answered;
        returns the error of a request refused for its inputs (other errors are raised)."""
        stage = self.stage
        if self.stop.is_set():
            raise Stopped("the run was stopped")
        tokens = sum(max(0, p.tokens) for p in batch)  # counted, unless there is neither tpm nor a budget
        estimate = tokens * stage.price / 1e6
        self.budget.reserve(estimate)
        embed: Any = stage.provider.embed
        extra = {"stop": self.stop} if getattr(stage.provider, "stops_between_batches", False) else {}  # a local model
        send = functools.partial(embed, [p.text for p in batch], **extra)
        try:
            result = stage.runner.call(functools.partial(self.fenced, send, batch), tokens, self.on_retry, self.stop)
        except Fenced as taken:
            self.budget.settle(estimate, 0.0)
            with self._lock:
                self.lost.update(taken.owners)
            rest = [p for p in batch if p.owner not in taken.owners]
            return self.attempt(rest) if rest else None
        except Stopped:
            self.budget.settle(estimate, 0.0)
            raise
        except ProviderError as exc:
            self.budget.settle(estimate, 0.0)
            if not exc.blames_input:
                raise
            with self._lock:
                self.stats.requests += 1
            return exc
        stage.accepted = True
        try:
            self.finish(batch, result)  # stored first: a budget that fails to settle loses no paid vector
        finally:
            self.budget.settle(estimate, result.billed_tokens * stage.price / 1e6)
        return None

    def fenced(self, send: Callable[[], BatchResult], batch: list[Piece]) -> BatchResult:
        """``send()``, once the cache says the batch's claims are still this worker's (``fence``,
        asked right before each try): a worker paused past its heartbeat whose texts another
        worker took over sends none of them (``Fenced``), so it pays twice at most what it had
        in flight when it was paused."""
        fence = getattr(self.cache, "fence", None)
        if callable(fence):
            mine = fence([self.keys[p.owner] for p in batch])
            if not all(mine):
                raise Fenced({p.owner for p, m in zip(batch, mine) if not m})
        return send()

    def bisect(self, batch: list[Piece], refused: ProviderError, *, rows_at_fault: bool = False) -> None:
        """A request refused for one of its inputs: each half is sent again, down to the row.

        Only while some part is taken: when both halves of a request are refused too, a few
        single inputs spread over it are tried; if every one is refused, the request itself is
        at fault (a setting the model refuses, answers that cannot be true) and that is
        raised, after a handful of requests instead of one per row. Once a part was taken
        (``rows_at_fault``), the halves are bisected down to their rows."""
        if len(batch) == 1:
            self.refuse(batch[0], refused)
            return
        half = len(batch) // 2
        halves = [batch[:half], batch[half:]]
        errors = [self.attempt(h) for h in halves]
        rows_at_fault = rows_at_fault or not all(errors)
        if not rows_at_fault:
            picks = [batch[i] for i in sorted({0, len(batch) // 4, len(batch) // 2, 3 * len(batch) // 4, len(batch) - 1})]
            alone = [self.attempt([p]) for p in picks]
            if all(alone):
                msg = f"the request fails whatever its inputs ({len(picks)} of them tried alone): {alone[-1]}"
                raise RequestRefusedError(msg, status_code=refused.status_code)
            for p, error in zip(picks, alone):
                if error is not None:
                    self.refuse(p, error)
            tried = {id(p) for p in picks}
            halves = [[p for p in h if id(p) not in tried] for h in halves]
        for part, error in zip(halves, errors):
            if error is not None and part:
                self.bisect(part, error, rows_at_fault=True)

    def refuse(self, piece: Piece, error: ProviderError) -> None:
        with self._lock:
            self.results.errors[piece.owner] = str(error)

    def on_retry(self, exc: BaseException) -> None:
        with self._lock:
            self.stats.retries += 1
            self.stats.rate_limited += status_of(exc) == 429

    # -- finish --------------------------------------------------------------------------------
    def finish(self, batch: list[Piece], result: BatchResult) -> None:
        """Fold one answer in (billed tokens shared by counted tokens); store each text whose pieces are all back."""
        if batch[0].tokens == UNCOUNTED:
            batch = self.count(batch)
        res, n = self.results, len(batch)
        owners = np.fromiter((p.owner for p in batch), np.int64, n)
        tokens = np.fromiter((p.tokens for p in batch), np.int64, n)
        shares = result.billed_tokens * tokens / (int(tokens.sum()) or 1) * self.stage.price / 1e6
        weights = tokens  # of a chunk's vector in its text's
        if self.stage.bound_counts:  # counted as bytes: a row's tokens are its share of what was billed
            tokens = apportion(result.billed_tokens, tokens)
        with self._lock:
            self.stats.requests += 1
            self.stats.tokens_billed += result.billed_tokens
            if not getattr(result, "usage_reported", True):
                self.stats.tokens_estimated += result.billed_tokens
            self.stats.cost_usd += float(shares.sum())
            np.add.at(res.cost, owners, shares)
            np.add.at(res.tokens, owners, tokens)
            whole = self.n_pieces[owners] == 1
            if whole.all():
                res.vectors[owners] = result.vectors  # the server's vectors, untouched
            else:
                res.vectors[owners[whole]] = result.vectors[whole]
                # chunks: a token-weighted sum, re-normalised once all are back
                with np.errstate(over="ignore"):  # an overflow is caught once the chunks are combined
                    np.add.at(res.vectors, owners[~whole], result.vectors[~whole] * weights[~whole, None])
            np.subtract.at(self.pending, owners, 1)
            done = np.unique(owners[self.pending[owners] == 0])
            chunked = done[self.n_pieces[done] > 1]
            if len(chunked):
                norms = np.linalg.norm(res.vectors[chunked].astype(np.float64), axis=1, keepdims=True)
                with np.errstate(invalid="ignore", over="ignore"):
                    res.vectors[chunked] = res.vectors[chunked] / np.where(norms > 0, norms, 1.0)
                for i in chunked[~np.isfinite(res.vectors[chunked]).all(axis=1)].tolist():  # overflowed: never stored
                    res.errors[i] = "the chunks' vectors do not combine into a finite vector"
                done = np.array([i for i in done.tolist() if i not in res.errors], dtype=np.int64)
            items = [(self.keys[i], res.vectors[i], int(res.tokens[i])) for i in done.tolist()]
            res.place(done)  # their rows of the output, while the server works on the rest
        try:
            if getattr(self.cache, "unwritable", None):  # opened read-only, and said so then
                raise CacheError("unwritable")
            self.cache.set_many(items, tag=self.stage.tag)
        except CacheError as exc:  # paid for: returned all the same, and said once
            with self._lock:
                self.stats.uncached += len(items)
            if not getattr(self.cache, "unwritable", None):
                self.stage.warn_once(f"polars-embed: {exc}; what is fetched is returned but not cached")
        if self.on_stored is not None:
            self.on_stored(items, done.tolist(), result.billed_tokens)
