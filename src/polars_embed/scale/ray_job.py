"""``polars-embed run --engine ray``: the input file is read here, in partitions, as the local
engine does, and handed to a pool of ``EmbedBatch`` actors (``Actors``): the nodes of a
cluster need no access to the file, and the output is written here, in input order, with the
run's figures and ledger record gathered from every actor (``Accounts``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from .. import job
from ..errors import ConfigurationError, PolarsEmbedError
from ..pipeline.stats import RunStats
from .ray_engine import EmbedBatch, for_actors

log = logging.getLogger("polars_embed")

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    import pyarrow as pa

    from ..embedder import Embedder
    from ..job import RunResult
    from ..pipeline.run import Run

    #: What an actor returns for a batch: its output columns (None if it failed), its figures, its error.
    Result = tuple[pa.Table | None, dict[str, Any], BaseException | None]


@contextlib.contextmanager
def ray_session(address: str | None) -> Iterator[None]:
    """Ray joined at ``address``; without one, at ``$RAY_ADDRESS`` or the Ray running on this
    machine, else started here for the run (all CPUs of this machine). A Ray already started
    in this process is used as it is. Ray's own logs are kept to errors."""
    import ray

    logging.getLogger("ray").setLevel(logging.ERROR)
    started = not ray.is_initialized()
    if started:
        if address:
            reachable(address)
        try:
            ray.init(address=address, include_dashboard=False, configure_logging=False, log_to_driver=False,
                     logging_level=logging.ERROR)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ConfigurationError(f"cannot join the Ray cluster at {address!r}: {reason}") from None
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def reachable(address: str, timeout: float = 5.0) -> None:
    """``--ray-address`` answers on its port (Ray itself retries an unreachable one for minutes)."""
    import socket

    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigurationError(f"--ray-address {address!r} is not HOST:PORT (or auto, or ray://HOST:PORT)")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        msg = f"cannot reach the Ray cluster at {address!r} ({exc.strerror or exc}); is `ray start --head` running there?"
        raise ConfigurationError(msg) from None


class Actors:
    """``n`` ``EmbedBatch`` actors that embed partitions read here, results in input order.

    At most ``AHEAD + 1`` partitions per actor are out at once, each actor embedding them at
    once on its own pool (so its requests keep flowing across partition ends), which bounds
    memory as the local engine does. An actor that dies is started again by Ray and its
    partitions are sent again (``max_restarts``/``max_task_retries``); what it had finished
    is in the shared cache, so only its requests in flight are paid twice.
    """

    def __init__(self, n: int, cpus: float, kwargs: dict[str, Any], ready_seconds: float = 120.0) -> None:
        import ray

        remote: Any = ray.remote(EmbedBatch)
        remote = remote.options(num_cpus=cpus, max_concurrency=job.AHEAD + 2, max_restarts=-1, max_task_retries=-1)
        self.actors: list[Any] = [remote.remote(**kwargs) for _ in range(n)]
        self.out: list[int] = [0] * n  # partitions each actor has not answered yet
        self.queue: deque[tuple[pl.DataFrame, Any, int]] = deque()
        ready, _ = ray.wait([a.ready.remote() for a in self.actors], num_returns=n, timeout=ready_seconds)
        if len(ready) < n:
            msg = (f"the Ray cluster started {len(ready)} of {n} actors of {cpus:g} CPUs in {ready_seconds:.0f} s; "
                   f"ask for fewer (--actors) or add CPUs")
            raise ConfigurationError(msg)
        ray.get(ready)  # an actor that failed to start (a bad option) raises its error here

    def map(self, parts: Iterable[pl.DataFrame], column: str) -> Iterator[tuple[pl.DataFrame, Result]]:
        """``(partition, (outputs, figures, error))`` for each partition, in order."""
        limit = (job.AHEAD + 1) * len(self.actors)
        for part in parts:
            k = min(range(len(self.actors)), key=self.out.__getitem__)
            self.queue.append((part, self.actors[k].embed.remote(part.select(column).to_arrow()), k))
            self.out[k] += 1
            while len(self.queue) >= limit or (self.queue and _done(self.queue[0][1])):
                yield self._next()
        while self.queue:
            yield self._next()

    def _next(self) -> tuple[pl.DataFrame, Result]:
        import ray

        part, ref, k = self.queue[0]
        result = ray.get(ref)
        self.queue.popleft()
        self.out[k] -= 1
        return part, result

    def stop(self, wait_seconds: float = 60.0) -> list[dict[str, Any]]:
        """Stop every actor's batches and return the figures of those still out (what they
        paid), waiting at most ``wait_seconds`` for their requests in flight to end."""
        import ray

        for actor in self.actors:
            actor.stop.options(max_task_retries=0).remote()  # an actor that is gone has nothing to stop
        refs = [ref for _, ref, _ in self.queue]
        self.queue.clear()
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=wait_seconds) if refs else ([], [])
        figures = []
        for ref in done:
            with contextlib.suppress(Exception):  # a batch that failed as a task has no figures to give
                figures.append(ray.get(ref)[1])
        return figures

    def close(self) -> None:
        import ray

        for actor in self.actors:
            with contextlib.suppress(Exception):
                ray.kill(actor)


def _done(ref: Any) -> bool:
    import ray

    return bool(ray.wait([ref], timeout=0)[0])


def run(
    embedder: Embedder,
    options: dict[str, Any],
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    column: str = "text",
    name: str = "embedding",
    partition_rows: int = 5_000,
    address: str | None = None,
    actors: int | None = None,
    on_progress: Callable[[RunStats], None] | None = None,
) -> RunResult:
    """``job.run`` on Ray: the same output file (atomically, in input order, with metadata),
    one run (figures, failures, one ledger record written by ``embedder`` here). Partitions
    are read here, as the local engine reads them, and embedded by ``Actors`` with
    ``options`` (``Embedder`` keywords): a cluster's nodes need no access to the input."""
    import pyarrow.parquet as pq

    output = Path(output)
    lf = job.scan(source)
    job.require_column(lf, column, source)
    job.preflight(lf, Path(source), output, column, name, embedder)
    failed: dict[int, str] = {}
    with ray_session(address), job.output_lock(output), \
            embedder.run(source=f"polars-embed run --engine ray {source}") as r, job.writing(output) as tmp:
        r.on_progress = on_progress
        import ray

        n, cpus, options = for_actors(options, ray.cluster_resources().get("CPU", 1.0), actors, r.run_id)
        book = Accounts(embedder, r, column, name)
        writer: pq.ParquetWriter | None = None
        pool: Actors | None = None
        try:
            with unwrapped():
                pool = Actors(n, cpus, {"column": column, "name": name, **options})
                for part, (outputs, figures, error) in pool.map(job.partitions(lf, column, partition_rows, source),
                                                                column):
                    if error is not None:
                        book.spent(figures)
                        raise error
                    table = book.add(part, outputs, figures, failed)
                    if writer is None:
                        writer = pq.ParquetWriter(tmp, job._with_metadata(table.schema, embedder))
                    writer.write_table(table)
            if writer is None:
                writer = pq.ParquetWriter(tmp, job._empty_schema(lf, embedder, name))
            book.close()
        except BaseException:
            if pool is not None:  # what the other partitions paid before they stopped is the run's too
                for figures in pool.stop():
                    book.spent(figures)
            raise
        finally:
            if pool is not None:
                pool.close()
            if writer is not None:
                writer.close()
    return job.RunResult(output, r.stats, failed)


class Accounts:
    """The driver's side of one run: each batch's figures (sent by its actor) into the run,
    its failed rows by their row in the input, and which cache hits were texts another actor
    paid for in this run (repeats, not entries the cache had before)."""

    def __init__(self, embedder: Embedder, run: Run, column: str, name: str) -> None:
        self.identity, self.run, self.column, self.name = embedder.identity, run, column, name
        self.offset = 0
        self.paid: list[np.ndarray] = []  # key prefixes of texts paid in this run
        self.found: list[np.ndarray] = []  # ... of texts each batch found, not paid in it
        self.cached = 0  # what the actors called entries the cache had before

    def add(self, part: pl.DataFrame, outputs: pa.Table, stats: dict[str, Any], failed: dict[int, str]) -> pa.Table:
        """Fold in one partition's figures and failures; returns the partition with its outputs."""
        from ..identity import content_keys
        from ..pipeline.plan import as_text, make_plan
        from ..pipeline.run import Failure

        figures = RunStats(**stats)
        out = pl.from_arrow(outputs)
        assert isinstance(out, pl.DataFrame)
        frame = part.hstack(out)
        plan = make_plan(as_text(frame[self.column], self.column))
        keys = content_keys(plan.texts, self.identity)
        rows = plan.inverse >= 0
        paid = np.zeros(len(keys), dtype=bool)
        hit = frame[f"{self.name}_cache_hit"].fill_null(True).to_numpy()  # null: a blank row, paid nothing
        np.logical_or.at(paid, plan.inverse[rows], ~hit[rows])
        prefixes = np.frombuffer(b"".join(k[:8] for k in keys), dtype=np.uint64)
        self.paid.append(prefixes[paid])
        self.found.append(prefixes[~paid])
        self.cached += figures.cached_rows
        errors = frame[f"{self.name}_error"]
        failures = []
        for i in errors.is_not_null().arg_true().to_list():
            failed[self.offset + i] = errors[i]
            failures.append(Failure(self.offset + i, frame[self.column][i] or "", errors[i]))
        self.offset += frame.height
        self.run.progress(self.run.add(figures, keys, failures))
        return frame.to_arrow()

    def spent(self, stats: dict[str, Any]) -> None:
        """A partition that stopped before its rows were written: what it paid (requests,
        tokens, cost) is the run's; its rows are not counted."""
        figures = RunStats(**stats)
        self.run.add(RunStats(requests=figures.requests, retries=figures.retries, rate_limited=figures.rate_limited,
                              tokens_counted=figures.tokens_counted, tokens_billed=figures.tokens_billed,
                              tokens_estimated=figures.tokens_estimated,
                              cost_usd=figures.cost_usd, uncached=figures.uncached), [], [])

    def close(self) -> None:
        """Each text the cache had before this run counts once, whichever batches found it;
        cache hits on texts paid in this run (by another actor) are repeats within it."""
        paid = np.concatenate(self.paid) if self.paid else np.empty(0, np.uint64)
        found = np.unique(np.concatenate(self.found)) if self.found else np.empty(0, np.uint64)
        before = int((~np.isin(found, paid)).sum())
        self.run.add(RunStats(cached_rows=before - self.cached), [], [])


@contextlib.contextmanager
def unwrapped() -> Iterator[None]:
    """An actor's ``PolarsEmbedError`` comes out of Ray wrapped in Ray's exceptions (a
    ``RayTaskError`` that may also subclass it, its text a traceback): the original is
    raised, one sentence."""
    try:
        yield
    except Exception as exc:
        cause: BaseException | None = exc
        while cause is not None:
            inner = getattr(cause, "cause", None)
            if isinstance(cause, PolarsEmbedError) and not isinstance(inner, BaseException):
                raise cause from None
            cause = inner if isinstance(inner, BaseException) and inner is not cause else cause.__cause__
        raise
