"""Batch mode: the texts the cache did not have go out as Batch API jobs at half the price.

``BatchFetch`` is the batch twin of ``pipeline.fetch.Fetch`` (same inputs, same ``Results``): the
texts are tokenized (truncated or refused as the long-input policy says), written one per
line with their content key as ``custom_id`` into JSONL files of at most 50,000 lines and
200 MB, uploaded (``purpose="batch"``) and created as batches (``/v1/embeddings``, 24h),
within an enqueued-token budget and a bounded number of batches in flight. Each step is
written to the manifest (``manifest.py``) **before** it is taken, so a killed process
re-attaches on rerun and nothing is uploaded or paid for twice.

Batches are polled with backoff. On every terminal state both the output and the error
file are read: answered lines go to the cache at once; lines refused for their input
(a 4xx) fail for good with the reason; everything else (an expired or cancelled batch's
rest, 5xx lines, lines missing from both files, a batch failed on the enqueued-token limit,
which also halves the budget) is queued again, up to ``max_tries`` times per text.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import BatchPendingError, CacheError, ProviderError
from ..pipeline.fetch import Stopped
from ..pipeline.tokens import long_texts, prepare_inputs
from .api import BatchAPI
from .lines import read_output, request_line
from .mode import batch_tag
from .recover import recover

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ..caches import Cache
    from ..pipeline.fetch import Item, Stage
    from ..pipeline.results import Results
    from ..pipeline.stats import RunStats
    from ..pipeline.tokens import Piece
    from .manifest import Job, Manifest
    from .mode import BatchSettings

TERMINAL = ("completed", "expired", "cancelled", "failed")
log = logging.getLogger("polars_embed")



class BatchFetch:
    """Embed the distinct texts ``todo`` of one call through the Batch API into ``results``."""

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
        manifest: Manifest,
        settings: BatchSettings,
        refused: dict[bytes, str],
        batch_ids: list[str],
        prefetch: bool = False,
        describe: Callable[[int], str],
        on_stored: Callable[[list[Item], list[int], int], None] | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.stage, self.cache, self.texts, self.keys, self.todo = stage, cache, texts, keys, todo
        self.results, self.stats, self.manifest, self.settings = results, stats, manifest, settings
        self.refused = refused  # texts refused for good by earlier batches of this embedder
        self.prefetch = prefetch  # cache and keep the cost in the manifest: rows claim it later
        self.batch_ids = batch_ids  # of the run: for the ledger
        self.describe, self.on_stored = describe, on_stored
        self.stop = stop or threading.Event()
        self.provider: Any = stage.provider
        self.api = BatchAPI(self.provider)
        self.tag = batch_tag(stage)
        self.index = {keys[int(i)]: int(i) for i in todo}
        self.want: dict[bytes, Piece] = {}
        self.tries: dict[bytes, int] = {}
        self.queued: dict[bytes, None] = {}  # an ordered set
        self.finished: set[bytes] = set()  # answered or failed for good
        self.reserved: dict[str, float] = {}  # job -> its estimate reserved under max_cost
        self.awaited: set[bytes] = set()  # in another process's job
        self.budget = settings.enqueued_tokens

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> None:
        if not len(self.todo):
            return
        limits = self.provider.limits
        pieces = prepare_inputs([self.texts[int(i)] for i in self.todo], self.provider.tokenizer(),
                                max_input_tokens=limits.max_input_tokens, policy=self.stage.policy,
                                owners=self.todo.tolist(), describe=self.describe)
        self.stats.tokens_counted += sum(p.tokens for p in pieces)
        self.stats.long_texts += long_texts(pieces)
        for p in pieces:
            key = self.keys[p.owner]
            if key in self.refused:
                self.results.errors[p.owner] = self.refused[key]
            else:
                self.want[key] = p
                self.queued[key] = None
        live = self.attach()
        wait = self.settings.poll_seconds
        while self.pending(live):
            if self.stop.is_set():
                raise Stopped("the run was stopped")
            self.join(live)
            self.submit(live)
            ended = self.poll(live)
            self.submit(live)  # into the room the ended batches left
            if not self.pending(live):
                break
            if not self.settings.wait:
                ids = [j.batch_id for j in live if j.batch_id]
                msg = (f"{self.pending(live):,} texts are not back yet from the Batch API (batches "
                       f"{', '.join(ids) or 'none yet'}); run again to collect them (what ended is cached)")
                raise BatchPendingError(msg, batch_ids=ids)
            wait = self.settings.poll_seconds if ended else wait
            if self.stop.wait(wait):
                raise Stopped("the run was stopped")
            wait = min(wait * 1.5, self.settings.max_poll_seconds)

    def pending(self, live: list[Job]) -> int:
        """Texts of this call not answered nor failed yet (queued, or in a live batch)."""
        return sum(1 for k in self.want if k not in self.finished) if (self.queued or live or self.awaited) else 0

    # -- submit --------------------------------------------------------------------------------
    def line(self, piece: Piece) -> bytes:
        dimensions = self.provider.dimensions if getattr(self.provider, "_send_dimensions", False) else None
        return request_line(self.keys[piece.owner], self.provider.model, dimensions, piece.text)

    def submit(self, live: list[Job]) -> None:
        """New jobs from the queue while the budget and the in-flight bound allow."""
        s = self.settings
        in_flight = sum(j.tokens for j in live)
        while self.queued and len(live) < s.max_in_flight:
            room = self.budget - in_flight
            lines: dict[bytes, bytes] = {}  # the texts taken, each as its line of the file
            size = tokens = 0
            for key in self.queued:
                p = self.want[key]
                line = self.line(p) + b"\n"
                over = size + len(line) > s.max_file_bytes or tokens + p.tokens > room
                if len(lines) >= s.max_lines or (lines and over) or (not lines and over and live):
                    break
                lines[key] = line
                size, tokens = size + len(line), tokens + p.tokens
            take = list(lines)
            if not take:
                return  # waits for room in the budget
            estimate = tokens * self.stage.price / 1e6
            self.stage.budget.reserve(estimate)  # max_cost: raised before the upload, nothing sent
            for key in take:
                del self.queued[key]
            job, held_out = self.manifest.prepare(self.tag, take, tokens)
            held = set(held_out)
            if held:  # another process is sending these: its batch is joined (``join``) and awaited
                self.awaited.update(held)
            if job is None:
                self.stage.budget.settle(estimate, 0.0)
                continue
            self.reserved[job.job] = estimate
            # a process whose batch ended since this call's lookup cached them first: not sent again
            cached = self.adopt([k for k in take if k not in held])
            keys = [k for k in take if k not in held and k not in cached]
            if not keys:
                self.manifest.end(job, "abandoned", "cached by another process meanwhile")
                self.stage.budget.settle(self.reserved.pop(job.job), 0.0)
                continue
            if held or cached:
                self.manifest.drop_keys(job, [*held, *cached])
                self.manifest.set_tokens(job, sum(self.want[k].tokens for k in keys))
            self.upload(job, b"".join(lines[k] for k in keys))
            live.append(job)
            in_flight += job.tokens

    def upload(self, job: Job, data: bytes) -> None:
        self.manifest.step(job, "uploading")
        self.manifest.step(job, "uploaded", file_id=self.api.upload(job.filename, data))
        self.create(job)

    def create(self, job: Job) -> None:
        self.manifest.step(job, "creating")
        batch_id = self.api.create(job.file_id or "", job.job, self.tag)
        self.manifest.step(job, "submitted", batch_id=batch_id)
        self.batch_ids.append(batch_id)
        log.info(f"batch {batch_id} submitted: {job.lines:,} texts, {job.tokens:,} tokens")

    # -- re-attach -----------------------------------------------------------------------------
    def attach(self) -> list[Job]:
        """The manifest's live jobs holding texts of this call (cached ones too: their cost
        is still to be shown), each taken up where it stopped."""
        recover(self.api, self.manifest, self.tag, set(self.queued), {k: p.tokens for k, p in self.want.items()})
        live = []
        mine = set(self.keys)
        for job in self.manifest.live(self.tag):
            keys = self.manifest.keys(job)
            if not any(k in mine for k in keys):
                continue  # another call's job
            if job.busy:  # another process is sending it right now: awaited (``join``)
                self.awaited.update(k for k in keys if k in self.queued)
                for k in keys:
                    self.queued.pop(k, None)
            elif self.resume(job, keys):
                live.append(job)
        return live

    def resume(self, job: Job, keys: list[bytes]) -> bool:
        """Take ``job`` up from its state; False if it was abandoned (its texts queued anew)."""
        if job.state == "prepared" or (job.state == "uploading" and not self.find_file(job)):
            if not all(k in self.want for k in keys):
                self.manifest.end(job, "abandoned", "nothing reached the server and its texts are not all here")
                return False
            for k in keys:
                self.queued.pop(k, None)
            self.upload(job, b"".join(self.line(self.want[k]) + b"\n" for k in keys))
            return True
        if job.state == "uploaded" or (job.state == "creating" and not self.find_batch(job)):
            self.create(job)
        elif job.state == "submitted":
            self.batch_ids.append(job.batch_id or "")
        for k in keys:
            self.queued.pop(k, None)
        return True

    def join(self, live: list[Job]) -> None:
        """Batches another process submitted with texts this call awaits are polled here too
        (a job that process left half-sent when it died is taken over); texts whose job ended
        elsewhere are read from the cache, or sent again if it does not have them."""
        if not self.awaited:
            return
        ours, still = {j.job for j in live}, set()
        for job in self.manifest.live(self.tag):
            if job.job in ours:
                continue
            keys = self.manifest.keys(job)
            mine = [k for k in keys if k in self.awaited]
            if not mine:
                continue
            if not job.busy and self.resume(job, keys):
                live.append(job)
                self.awaited.difference_update(keys)
            else:
                still.update(mine)
        ended = self.awaited - still
        if ended:
            self.awaited -= ended
            found = self.adopt(list(ended))
            for key in ended - found:
                if key not in self.finished:
                    self.queued[key] = None

    def adopt(self, keys: list[bytes]) -> set[bytes]:
        """Those of ``keys`` another process has cached: taken from the cache (their cost is
        claimed from the manifest when the call ends)."""
        found = set()
        for key, value in zip(keys, self.cache.get_many(keys) if keys else []):
            i = self.index.get(key)
            if value is not None and i is not None:
                self.results.vectors[i], self.results.tokens[i] = value
                self.finished.add(key)
                found.add(key)
        return found

    def find_file(self, job: Job) -> bool:
        """An upload cut short may have landed: found by its name, it is not sent again."""
        file_id = self.api.find_file(job.filename)
        if file_id is not None:
            self.manifest.step(job, "uploaded", file_id=file_id)
        return file_id is not None

    def find_batch(self, job: Job) -> bool:
        """A create cut short may have landed: found by its metadata, it is not created again."""
        batch_id = self.api.find_batch(job.job)
        if batch_id is not None:
            self.manifest.step(job, "submitted", batch_id=batch_id)
            self.batch_ids.append(batch_id)
        return batch_id is not None

    # -- poll and ingest -----------------------------------------------------------------------
    def poll(self, live: list[Job]) -> bool:
        """Look at every live batch once; ingest those that ended. True if one ended."""
        ended = False
        for job in list(live):
            try:
                b = self.api.retrieve(job.batch_id or "")
            except ProviderError as exc:
                if exc.status_code != 404:
                    raise
                live.remove(job)  # the server does not know it (another project, a reset): sent again
                self.manifest.end(job, "lost", f"the server does not know batch {job.batch_id}")
                for key in self.manifest.keys(job):
                    if key in self.want and key not in self.finished:
                        self.requeue(key, f"batch {job.batch_id} lost")
                continue
            if b.status in TERMINAL:
                self.ingest(job, b)
                live.remove(job)
                ended = True
        return ended

    def ingest(self, job: Job, batch: Any) -> None:
        """Every answer of an ended batch into the cache; the rest failed or queued again."""
        keys = self.manifest.keys(job)
        answered: dict[bytes, tuple[np.ndarray, int]] = {}
        refused: dict[bytes, str] = {}
        reason = f"batch {batch.id} {batch.status}"
        if batch.status == "failed":
            errors = getattr(batch.errors, "data", None) or []
            codes = [getattr(e, "code", None) for e in errors]
            reason += f": {getattr(errors[0], 'message', '') if errors else 'no reason given'}"
            if "token_limit_exceeded" in codes and job.lines > 1:  # not the texts' fault: smaller batches, later
                self.budget = max(1, min(self.budget, job.tokens // 2))
                for k in keys:
                    self.tries[k] = self.tries.get(k, 0) - 1
        for file_id in (batch.output_file_id, batch.error_file_id):
            if file_id:
                self.read(file_id, answered, refused)
        self.store(answered, batch.id)
        billed = sum(t for _, t in answered.values()) * self.stage.price / 1e6
        self.stage.budget.settle(self.reserved.pop(job.job, 0.0), billed)
        log.info(f"batch {batch.id} {batch.status}: {len(answered):,} texts back, {len(refused):,} refused")
        for key, message in refused.items():
            self.fail(key, message)
        for key in keys:
            if key in self.want and key not in answered and key not in refused and key not in self.finished:
                self.requeue(key, reason)
        self.stats.requests += 1
        self.manifest.end(job, batch.status, None if batch.status == "completed" else reason)

    def read(self, file_id: str, answered: dict[bytes, tuple[np.ndarray, int]], refused: dict[bytes, str]) -> None:
        read_output(self.api.content(file_id), self.provider.dimensions, self.provider.limits.max_input_tokens, answered, refused)

    def store(self, answered: dict[bytes, tuple[np.ndarray, int]], batch_id: str) -> None:
        """Answers into the manifest's ``paid`` (first: a kill after the cache write cannot
        lose their cost), the cache, and this call's results."""
        if not answered:
            return
        price = self.stage.price / 1e6
        items: list[Item] = [(k, v, t) for k, (v, t) in answered.items()]
        self.manifest.add_paid([(k, t, t * price) for k, (_, t) in answered.items()], batch_id)
        done, billed = [], 0
        res = self.results
        for key, (vector, tokens) in answered.items():
            billed += tokens
            i = self.index.get(key)
            if i is not None and key in self.want and key not in self.finished:
                self.finished.add(key)
                res.vectors[i], res.tokens[i] = vector, tokens
                if not self.prefetch:  # shown on this call's row (claimed when the call ends)
                    res.cost[i] = tokens * price
                    done.append(i)
        self.stats.tokens_billed += billed
        self.stats.cost_usd += billed * price
        try:
            if getattr(self.cache, "unwritable", None):
                raise CacheError("the cache cannot be written")
            self.cache.set_many(items, tag=self.stage.tag)
        except CacheError as exc:
            if self.prefetch:  # collected only into the cache: without it they would be paid again
                msg = (f"{exc}; batch results are collected into the cache before the output is written, so "
                       f"nothing more is sent. Free the disk and rerun: ended batches are downloaded again, not paid again")
                raise CacheError(msg) from None
            self.stats.uncached += len(items)
            self.stage.warn_once(f"polars-embed: {exc}; what is fetched is returned but not cached")
        if self.on_stored is not None:
            self.on_stored([it for it in items if it[0] in self.index], done, billed)

    def fail(self, key: bytes, message: str) -> None:
        self.refused[key] = message
        self.finished.add(key)
        i = self.index.get(key)
        if i is not None and key in self.want:
            self.results.errors[i] = message

    def requeue(self, key: bytes, reason: str) -> None:
        self.tries[key] = self.tries.get(key, 0) + 1
        if self.tries[key] >= self.settings.max_tries:
            self.fail(key, f"not embedded after {self.tries[key]} batches (last: {reason})")
        else:
            self.queued[key] = None


