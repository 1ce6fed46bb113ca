"""Ray Data as the engine: a callable class for ``Dataset.map_batches``, and the
``polars-embed run --engine ray`` job.

Each actor builds its ``Embedder`` (client, cache, limiter, pool) once and embeds the batches
it is given, Arrow in and Arrow out, with the same options as ``embed_column``. What the
actors must share to be one job -- the cache, the quota, the texts being fetched right now --
is a Redis (``cache="redis://..."``, ``limiter="redis://..."``); see ``docs/scale.md``.

Actors ask for a fraction of a CPU (``actor_resources``): actors that take every CPU
leave none to the read tasks, and the pipeline hangs.

    import ray
    from polars_embed import embed_dataset

    ds = ray.data.read_parquet("s3://bucket/texts/")
    out = embed_dataset(ds, "text", model="text-embedding-3-small",
                        cache="redis://redis:6379/0", limiter="redis://redis:6379/0")
    out.write_parquet("s3://bucket/embedded/")
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from .embedder import Embedder
from .errors import ConfigurationError, PolarsEmbedError
from .stats import RunStats

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    import pyarrow as pa

    from .job import RunResult
    from .run import Run

#: The column an actor adds, for the ``run`` job only, with the figures of the batch (first row).
STATS_COLUMN = "__polars_embed_stats__"
#: Actors of a model that waits on the network, by default.
NETWORK_ACTORS = 4


class EmbedBatch:
    """``ds.map_batches(EmbedBatch, fn_constructor_kwargs={...}, batch_format="pyarrow", ...)``.

    ``column`` is embedded into ``name`` and the output columns of ``embed_column`` are
    appended (``<name>``, ``_cache_hit``, ``_tokens``, ``_cost_usd``, ``_error``). Every other
    keyword goes to ``Embedder`` (``model``, ``cache``, ``limiter``, ...); by default a failed
    row gets a null vector and a reason (``on_error="null"``) and the actors write no ledger
    record of their own (``ledger=False``: a job records one run, not one per batch).
    """

    def __init__(self, column: str = "text", *, name: str = "embedding", report: bool = False,
                 **embedder: Any) -> None:
        embedder.setdefault("on_error", "null")
        embedder.setdefault("ledger", False)
        embedder.setdefault("source", "ray")
        self.column, self.name, self.report = column, name, report
        self.embedder = Embedder(**embedder)

    def __call__(self, batch: pa.Table) -> pa.Table:
        frame = pl.from_arrow(batch)
        assert isinstance(frame, pl.DataFrame)
        if self.column not in frame.columns:
            msg = f"column {self.column!r} is not in the dataset (columns: {', '.join(frame.columns)})"
            raise ConfigurationError(msg)
        out = self.embedder.embed(frame[self.column], name=self.name, column=self.column)
        table = batch
        for col in out.iter_columns():
            table = table.append_column(col.name, col.to_arrow())
        if self.report:
            import pyarrow as pa

            figures = [json.dumps(asdict(self.embedder.last_stats))] + [None] * (table.num_rows - 1)
            table = table.append_column(STATS_COLUMN, pa.array(figures, pa.string()))
        return table

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.embedder.close()


def actor_resources(waits_on_network: bool, cluster_cpus: float, actors: int | None = None) -> tuple[int, float]:
    """How many actors, and the CPUs each asks for: together at most all CPUs but one, so
    read tasks (which ask for a whole CPU) always find one. A model that waits on the
    network gets ``NETWORK_ACTORS``; a local model one actor per CPU."""
    cpus = max(1.0, cluster_cpus)
    n = actors or (NETWORK_ACTORS if waits_on_network else int(cpus))
    if n < 1:
        raise ConfigurationError(f"--actors must be at least 1, got {n}")
    share = min(1.0, max(cpus - 1.0, 0.5) / n)
    return n, round(share, 3)


def embed_dataset(ds: Any, column: str = "text", *, name: str = "embedding", actors: int | None = None,
                  batch_rows: int = 5_000, report: bool = False, **embedder: Any) -> Any:
    """``ds`` with the output columns of ``embed_column`` added: ``map_batches(EmbedBatch)`` on
    an actor pool sized by ``actor_resources``; ``**embedder`` as for ``Embedder``."""
    import ray

    probe = Embedder(**{**embedder, "cache": False, "ledger": False})
    n, cpus = actor_resources(probe.provider.waits_on_network, ray.cluster_resources().get("CPU", 1.0), actors)
    probe.close()
    return ds.map_batches(EmbedBatch, fn_constructor_kwargs={"column": column, "name": name, "report": report,
                                                             **embedder},
                          batch_size=batch_rows, batch_format="pyarrow", zero_copy_batch=True,
                          compute=_actor_pool(n), num_cpus=cpus)


def _actor_pool(n: int) -> Any:
    import ray.data

    return ray.data.ActorPoolStrategy(size=n)


@contextlib.contextmanager
def ray_session(address: str | None) -> Iterator[None]:
    """Ray started here (all CPUs of this machine) or joined at ``address``; a Ray already
    started in this process is used as it is. Ray's own logs are kept to warnings."""
    import ray

    logging.getLogger("ray").setLevel(logging.WARNING)
    started = not ray.is_initialized()
    if started:
        try:
            ray.init(address=address, include_dashboard=False, configure_logging=False, log_to_driver=False,
                     logging_level=logging.WARNING)
        except ConnectionError as exc:
            raise ConfigurationError(f"cannot reach the Ray cluster at {address!r}: {exc}") from exc
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def read_dataset(source: str | os.PathLike[str], batch_rows: int) -> Any:
    """The input as a Ray Dataset in blocks of ``batch_rows`` (one file is one block otherwise,
    and one actor would embed it all)."""
    import ray.data

    path = str(source)
    suffix = Path(path).suffix.lower()
    if suffix in (".parquet", ".pq"):
        ds = ray.data.read_parquet(path)
    elif suffix in (".csv", ".tsv"):
        import pyarrow.csv as pcsv

        ds = ray.data.read_csv(path, parse_options=pcsv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ","))
    else:
        ds = ray.data.read_json(path, lines=True)
    return ds.repartition(target_num_rows_per_block=batch_rows)


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
    one run (figures, failures, one ledger record written by ``embedder`` here) -- the
    actors embed with ``options`` (``Embedder`` keywords)."""
    import pyarrow.parquet as pq

    from . import job

    output = Path(output)
    lf = job.scan(source)
    job.require_column(lf, column, source)
    job.preflight(lf, Path(source), output, column, name, embedder)
    failed: dict[int, str] = {}
    with ray_session(address), job.output_lock(output), \
            embedder.run(source=f"polars-embed run --engine ray {source}") as r, job.writing(output) as tmp:
        r.on_progress = on_progress
        import ray.data

        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True  # the output keeps the input's row order
        ctx.enable_progress_bars = False
        ds = embed_dataset(read_dataset(source, partition_rows), column, name=name, actors=actors,
                           batch_rows=partition_rows, report=True, **options)
        book = Accounts(embedder, r, column, name)
        writer: pq.ParquetWriter | None = None
        try:
            with unwrapped():
                for table in ds.iter_batches(batch_format="pyarrow", batch_size=None):
                    table = book.add(table, failed)
                    if writer is None:
                        writer = pq.ParquetWriter(tmp, job._with_metadata(table.schema, embedder))
                    writer.write_table(table)
            if writer is None:
                writer = pq.ParquetWriter(tmp, job._empty_schema(lf, embedder, name))
            book.close()
        finally:
            if writer is not None:
                writer.close()
    return job.RunResult(output, r.stats, failed)


class Accounts:
    """The driver's side of one run: each batch's figures (sent by its actor) into the run,
    its failed rows by their row in the input, and which cache hits were texts another actor
    paid for in this run (repeats, not entries the cache had before)."""

    def __init__(self, embedder: Embedder, run: Run, column: str, name: str) -> None:
        self.prefix, self.run, self.column, self.name = embedder.key_prefix(), run, column, name
        self.offset = 0
        self.paid: list[np.ndarray] = []  # key prefixes of texts paid in this run
        self.found: list[np.ndarray] = []  # ... of texts each batch found, not paid in it
        self.cached = 0  # what the actors called entries the cache had before

    def add(self, table: pa.Table, failed: dict[int, str]) -> pa.Table:
        from .plan import as_text, content_keys, make_plan
        from .run import Failure

        figures = RunStats(**json.loads(table.column(STATS_COLUMN)[0].as_py()))
        table = table.drop_columns([STATS_COLUMN])
        frame = pl.from_arrow(table)
        assert isinstance(frame, pl.DataFrame)
        plan = make_plan(as_text(frame[self.column], self.column))
        keys = content_keys(plan.texts, self.prefix)
        rows = plan.inverse >= 0
        paid = np.zeros(len(keys), dtype=bool)
        np.logical_or.at(paid, plan.inverse[rows], ~frame[f"{self.name}_cache_hit"].to_numpy()[rows])
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
        return table

    def close(self) -> None:
        """Cache hits on texts paid in this run (by another actor) are repeats within it."""
        paid = np.concatenate(self.paid) if self.paid else np.empty(0, np.uint64)
        before = sum(int((~np.isin(found, paid)).sum()) for found in self.found)
        self.run.add(RunStats(cached_rows=before - self.cached), [], [])


@contextlib.contextmanager
def unwrapped() -> Iterator[None]:
    """An actor's ``PolarsEmbedError`` comes out of Ray wrapped in Ray's exceptions: it is
    raised as it is (one sentence), not as a Ray traceback."""
    try:
        yield
    except PolarsEmbedError:
        raise
    except Exception as exc:
        cause: BaseException | None = exc
        while cause is not None:
            if isinstance(cause, PolarsEmbedError):
                raise cause from None
            inner = getattr(cause, "cause", None)
            cause = inner if isinstance(inner, BaseException) and inner is not cause else cause.__cause__
        raise

