"""The scheduled-pipeline job behind ``polars-embed run``: read in partitions, embed, write.

Memory is set by ``partition_rows``, not by the file: partitions stream from the input
(``collect_batches``) into a Parquet writer. The output appears only when complete (a
temporary file renamed over it), a lock keeps two runs off the same output, and every
finished request is in the cache, so a rerun after a crash pays only for the rest.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import InputError, PolarsEmbedError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from .embedder import Embedder
    from .estimate import Estimate
    from .stats import RunStats


class LockedError(PolarsEmbedError):
    """Another run holds the lock of this output."""


def scan(path: str | os.PathLike[str]) -> pl.LazyFrame:
    """A lazy reader for Parquet, CSV or NDJSON, chosen by the file's suffix."""
    path = Path(path)
    if not path.exists():
        msg = f"input {str(path)!r} does not exist"
        raise InputError(msg)
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return pl.scan_parquet(path)
    if suffix in (".csv", ".tsv"):
        return pl.scan_csv(path, separator="\t" if suffix == ".tsv" else ",")
    if suffix in (".ndjson", ".jsonl", ".json"):
        return pl.scan_ndjson(path)
    msg = f"input {str(path)!r}: unknown format {suffix or '(no suffix)'}; use .parquet, .csv or .ndjson"
    raise InputError(msg)


def require_column(lf: pl.LazyFrame, column: str) -> None:
    schema = lf.collect_schema()
    if column not in schema:
        msg = f"column {column!r} is not in the input (columns: {', '.join(schema.names())})"
        raise InputError(msg)


def partitions(lf: pl.LazyFrame, column: str, rows: int) -> Iterator[pl.DataFrame]:
    require_column(lf, column)
    yield from lf.collect_batches(chunk_size=rows)


@contextlib.contextmanager
def output_lock(output: Path) -> Iterator[None]:
    """An exclusive, non-blocking lock on ``OUTPUT.lock`` for the whole run."""
    output.parent.mkdir(parents=True, exist_ok=True)
    lock_path = output.with_name(output.name + ".lock")
    fh = open(lock_path, "a+")  # noqa: SIM115 - held for the duration of the run
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            msg = f"another polars-embed run is writing {output} (lock {lock_path}); not starting a second one"
            raise LockedError(msg) from None
        for stale in output.parent.glob(f".{output.name}.*.tmp"):  # left by a killed run
            stale.unlink(missing_ok=True)
        yield
    finally:
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
    on_partition: Callable[[pl.DataFrame, RunStats], None] | None = None,
) -> RunResult:
    """Embed ``source[column]`` into ``output`` (Parquet, with provenance metadata).

    Failed rows (a 400 for that input) are written with a null vector and a reason in
    ``<name>_error``; the run goes on. Anything else that stops the run (budget, provider,
    Ctrl-C) leaves the previous output untouched and the finished work cached.
    """
    if embedder.on_error != "null":
        msg = "run() needs an Embedder with on_error='null' so one bad row does not stop the job"
        raise PolarsEmbedError(msg)
    output = Path(output)
    lf = scan(source)
    before = embedder.total_stats.copy()
    started_at = time.time()
    failed: dict[int, str] = {}
    hashes: list[pl.Series] = []  # 8 bytes a row, to count distinct texts over the whole run
    started = time.perf_counter()
    with output_lock(output):
        fd, tmp_name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
        tmp = Path(tmp_name)
        writer: pq.ParquetWriter | None = None
        try:
            with os.fdopen(fd, "wb") as fh:
                offset = 0
                for part in partitions(lf, column, partition_rows):
                    emb = embedder.embed(part[column], name=name, column=column, record=False)
                    table = part.hstack(emb).to_arrow()
                    if writer is None:
                        meta = {**(table.schema.metadata or {}), **{k.encode(): v.encode() for k, v in embedder.metadata().items()}}
                        writer = pq.ParquetWriter(fh, table.schema.with_metadata(meta))
                    writer.write_table(table)
                    errors = emb[f"{name}_error"]
                    for i in errors.is_not_null().arg_true().to_list():
                        failed[offset + i] = errors[i]
                    offset += part.height
                    text = part[column].cast(pl.String)
                    hashes.append(text.filter(text.str.strip_chars().str.len_bytes() > 0).hash())
                    if on_partition is not None:
                        on_partition(part, embedder.last_stats)
                if writer is None:  # empty input: still a valid file with the right schema
                    writer = pq.ParquetWriter(fh, _empty_schema(lf, embedder, name))
                writer.close()
                writer = None
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, output)
        finally:
            if writer is not None:
                with contextlib.suppress(Exception):
                    writer.close()
            tmp.unlink(missing_ok=True)
            total = embedder.total_stats.since(before)  # every call of this run, a stopped one too
            total.wall_seconds = time.perf_counter() - started
            total.distinct = pl.concat(hashes).n_unique() if hashes else 0
            embedder.record(total, started_at, source=f"polars-embed run {source}")  # also a stopped run
    return RunResult(output, total, failed)


def _empty_schema(lf: pl.LazyFrame, embedder: Embedder, name: str) -> pa.Schema:
    schema = dict(lf.collect_schema())
    schema.update(embedder.output_fields(name))
    table = pl.DataFrame(schema=schema).to_arrow()
    return table.schema.with_metadata({k.encode(): v.encode() for k, v in embedder.metadata().items()})


def dry_run(embedder: Embedder, source: str | os.PathLike[str], *, column: str = "text",
            partition_rows: int = 5_000) -> Estimate:
    """What ``run`` would do, without a request: rows, distinct, cached, tokens, cost, time."""
    from .estimate import estimate_series

    lf = scan(source)
    return estimate_series(embedder, (p[column] for p in partitions(lf, column, partition_rows)), column)
