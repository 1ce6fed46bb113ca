"""The scheduled-pipeline job behind ``polars-embed run``: read in partitions, embed, write.

Memory is set by ``partition_rows``, not by the file: partitions stream from the input
(``collect_batches``) into a Parquet writer, and at most ``AHEAD`` more are embedded while
one is written, so the pool stays full across partition boundaries. The whole job is one
run (one ledger record). The output appears only when complete (a temporary file renamed
over it), a lock keeps two runs off the same output, and every finished request is in the
cache, so a rerun after a crash pays only for the rest.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import InputError, OutputError, PolarsEmbedError
from .io import atomic_file, stale_temp_files

if TYPE_CHECKING:
    from collections.abc import Callable, Generator, Iterable, Iterator

    from .embedder import Embedder
    from .estimate import Estimate
    from .pipeline.run import Run
    from .pipeline.stats import RunStats

#: Partitions embedded ahead of the one being written.
AHEAD = 2


class LockedError(PolarsEmbedError):
    """Another run holds the lock of this output."""


def scan(path: str | os.PathLike[str]) -> pl.LazyFrame:
    """A lazy reader for Parquet, CSV or NDJSON, chosen by the file's suffix."""
    path = Path(path)
    if not path.is_file():
        msg = f"input {str(path)!r} does not exist" if not path.exists() else f"input {str(path)!r} is not a file"
        raise InputError(msg)
    suffix = path.suffix.lower()
    with readable(path):
        if suffix in (".parquet", ".pq"):
            _no_duplicate_columns(path)
            return pl.scan_parquet(path)
        if suffix in (".csv", ".tsv"):
            return pl.scan_csv(path, separator="\t" if suffix == ".tsv" else ",")
        if suffix in (".ndjson", ".jsonl", ".json"):
            return pl.scan_ndjson(path)
    msg = f"input {str(path)!r}: unknown format {suffix or '(no suffix)'}; use .parquet, .csv or .ndjson"
    raise InputError(msg)


def _no_duplicate_columns(path: Path) -> None:
    """A Parquet file with two columns of one name: some Polars releases read one of them
    without a word; which one is a guess, so the file is refused."""
    import pyarrow.parquet as pq

    names = pq.read_schema(path).names
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        msg = f"cannot read the input {str(path)!r}: it has more than one column named {twice[0]!r}"
        raise InputError(msg)


@contextlib.contextmanager
def readable(source: str | os.PathLike[str]) -> Iterator[None]:
    """A file Polars cannot read (garbage, empty, a malformed CSV, a duplicate column) is one
    ``InputError`` sentence, not a traceback."""
    try:
        yield
    except (pl.exceptions.PolarsError, OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        msg = f"cannot read the input {str(source)!r}: {first}"
        raise InputError(msg) from exc


def require_column(lf: pl.LazyFrame, column: str, source: str | os.PathLike[str] = "input") -> None:
    with readable(source):
        schema = lf.collect_schema()
    if column not in schema:
        msg = f"column {column!r} is not in the input (columns: {', '.join(schema.names())})"
        raise InputError(msg)


def partitions(lf: pl.LazyFrame, column: str, rows: int, source: str | os.PathLike[str] = "input") -> Iterator[pl.DataFrame]:
    require_column(lf, column, source)
    with readable(source):
        yield from lf.collect_batches(chunk_size=rows)


def preflight(lf: pl.LazyFrame, source: Path, output: Path, column: str, name: str, embedder: Embedder) -> None:
    """What can fail before the first request is checked before it: the output path and
    its directory, and output columns the input already has."""
    if output.is_dir():
        raise InputError(f"output {str(output)!r} is a directory; give the path of a .parquet file")
    if output.exists() and output.resolve() == source.resolve():
        raise InputError(f"the output {str(output)!r} is the input; give another path")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=output.parent):
            pass
    except OSError as exc:
        blocking = next((p for p in output.parents if p.exists()), None)
        reason = f"{str(blocking)!r} is a file" if blocking is not None and not blocking.is_dir() else exc.strerror or exc
        msg = f"cannot write the output {str(output)!r}: {reason}"
        raise InputError(msg) from exc
    with readable(output):
        names = lf.collect_schema().names()
    taken = [c for c in (*embedder.output_fields(name), f"{name}_error") if c in names]
    if taken:
        msg = (f"the input already has the output column {taken[0]!r} (an earlier run's output?); "
               f"pass another --name, or embed the original input")
        raise InputError(msg)


@contextlib.contextmanager
def output_lock(output: Path) -> Iterator[None]:
    """An exclusive, non-blocking lock on ``OUTPUT.lock`` for the whole run; the file is
    removed when the run ends (a run that locked a file removed meanwhile locks again)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    lock_path = output.with_name(output.name + ".lock")
    while True:
        fh = open(lock_path, "a+")  # noqa: SIM115 - held for the duration of the run
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            msg = f"another polars-embed run is writing {output} (lock {lock_path}); not starting a second one"
            raise LockedError(msg) from None
        try:
            current = os.stat(lock_path)
        except FileNotFoundError:
            current = None
        if current is not None and current.st_ino == os.fstat(fh.fileno()).st_ino:
            break
        fh.close()  # its run ended and removed the file between our open and our lock
    try:
        for stale in stale_temp_files(output):  # left by a killed run
            stale.unlink(missing_ok=True)
        yield
    finally:
        lock_path.unlink(missing_ok=True)
        fh.close()


@dataclass
class RunResult:
    output: Path
    stats: RunStats
    failed: dict[int, str] = field(default_factory=dict)  # row index in the input -> reason


def run(
    embedder: Embedder,
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    column: str = "text",
    name: str = "embedding",
    partition_rows: int = 5_000,
    on_progress: Callable[[RunStats], None] | None = None,
) -> RunResult:
    """Embed ``source[column]`` into ``output`` (Parquet, with provenance metadata).

    Failed rows (a 400 for that input) are written with a null vector and a reason in
    ``<name>_error``; the run goes on. Anything else that stops the run (budget, provider,
    Ctrl-C) leaves the previous output untouched and the finished work cached.
    ``on_progress`` sees the figures of each finished request as it ends.
    """
    if embedder.on_error != "null":
        msg = "run() needs an Embedder with on_error='null' so one bad row does not stop the job"
        raise PolarsEmbedError(msg)
    output = Path(output)
    lf = scan(source)
    require_column(lf, column, source)
    preflight(lf, Path(source), output, column, name, embedder)
    failed: dict[int, str] = {}
    with output_lock(output), embedder.run(source=f"polars-embed run {source}") as r, \
            claims_delivered(embedder, r), writing(output) as tmp:
        r.on_progress = on_progress
        if embedder.batch is not None:
            collect_batches(embedder, r, lf, column, source)
        writer: pq.ParquetWriter | None = None
        try:
            parts = partitions(lf, column, partition_rows, source)
            with contextlib.closing(embedded(embedder, r, parts, column, name)) as out:
                for offset, part, emb in out:
                    table = part.hstack(emb).to_arrow()
                    if writer is None:
                        writer = pq.ParquetWriter(tmp, _with_metadata(table.schema, embedder))
                    writer.write_table(table)
                    errors = emb[f"{name}_error"]
                    for i in errors.is_not_null().arg_true().to_list():
                        failed[offset + i] = errors[i]
            if writer is None:  # empty input: still a valid file with the right schema
                writer = pq.ParquetWriter(tmp, _empty_schema(lf, embedder, name))
        finally:
            if writer is not None:
                writer.close()
    return RunResult(output, r.stats, failed)


def collect_batches(embedder: Embedder, run: Run, lf: pl.LazyFrame, column: str, source: str | os.PathLike[str]) -> None:
    """Batch mode: every distinct text of the column goes through the Batch API first (into
    the cache, its cost kept in the manifest), so the partitions are then written from the
    cache and each text's first row claims its cost. Without waiting (``--detach``) this
    raises ``BatchPendingError`` until every batch has ended."""
    from .pipeline.run import Run
    from .pipeline.stats import RunStats

    assert embedder.batch is not None
    with readable(source):
        first = lf.select(pl.col(column)).with_row_index("__row__").collect()
    first = first.unique(subset=column, keep="first", maintain_order=True)
    collecting = Run(f"batch collection of {source}")
    embedder.batch.prefetch = True
    try:
        embedder.embed(first[column], column=column, run=collecting, rows=first["__row__"].to_numpy())
    finally:
        embedder.batch.prefetch = False
        run.batch_ids.extend(collecting.batch_ids)
        run.add(RunStats(requests=collecting.stats.requests, retries=collecting.stats.retries), [], [])


@contextlib.contextmanager
def claims_delivered(embedder: Embedder, run: Run) -> Iterator[None]:
    """Batch mode: the costs the output's rows claim are settled once it is in place, and
    free again for the next run if it never is."""
    batch = embedder.batch
    if batch is None:
        yield
        return
    batch.defer = True
    manifest = batch.manifest(embedder.cache)
    try:
        yield
    except BaseException:
        manifest.release(run.run_id)
        raise
    finally:
        batch.defer = False
    manifest.settle(run.run_id)


@contextlib.contextmanager
def writing(output: Path) -> Iterator[Path]:
    """``atomic_file``, with a disk that refuses the output said in one sentence."""
    try:
        with atomic_file(output) as tmp:
            yield tmp
    except OSError as exc:
        msg = (f"cannot write the output {str(output)!r} ({exc.strerror or exc}); finished requests are in the "
               f"cache, unless a warning said it could not be written")
        raise OutputError(msg) from exc


def embedded(embedder: Embedder, run: Run, parts: Iterable[pl.DataFrame], column: str,
             name: str) -> Generator[tuple[int, pl.DataFrame, pl.DataFrame], None, None]:
    """``(offset, partition, its output columns)`` in input order; up to ``AHEAD`` more
    partitions are embedded (on threads, sharing the embedder's pool) while one is consumed."""
    queue: deque[tuple[int, pl.DataFrame, Future[pl.DataFrame]]] = deque()
    with ThreadPoolExecutor(AHEAD + 1, thread_name_prefix="polars-embed-partition") as pool:
        try:
            offset = 0
            for part in parts:
                rows = np.arange(offset, offset + part.height)
                queue.append((offset, part, pool.submit(embedder.embed, part[column], name=name, column=column,
                                                        rows=rows, run=run)))
                offset += part.height
                while len(queue) > AHEAD or (queue and queue[0][2].done()):
                    start, done, future = queue.popleft()
                    yield start, done, future.result()
            while queue:
                start, done, future = queue.popleft()
                yield start, done, future.result()
        except BaseException:
            run.stop()  # partitions still running send nothing more; their requests in flight end
            for *_, future in queue:
                future.cancel()
            raise


def _with_metadata(schema: pa.Schema, embedder: Embedder) -> pa.Schema:
    return schema.with_metadata({**(schema.metadata or {}),
                                 **{k.encode(): v.encode() for k, v in embedder.metadata().items()}})


def _empty_schema(lf: pl.LazyFrame, embedder: Embedder, name: str) -> pa.Schema:
    schema = dict(lf.collect_schema())
    schema.update(embedder.output_fields(name))
    return _with_metadata(pl.DataFrame(schema=schema).to_arrow().schema, embedder)


def dry_run(embedder: Embedder, source: str | os.PathLike[str], *, column: str = "text",
            partition_rows: int = 5_000) -> Estimate:
    """What ``run`` would do, without a request: rows, distinct, cached, tokens, cost, time."""
    from .estimate import estimate_series

    lf = scan(source)
    return estimate_series(embedder, (p[column] for p in partitions(lf, column, partition_rows, source)), column)
