"""Ray as the engine: ``EmbedBatch``, a callable class for Ray Data's ``map_batches``
(``embed_dataset``), and how actors are sized and configured. The ``polars-embed run
--engine ray`` job that drives them is ``ray_job.py``.

Each actor builds its ``Embedder`` (client, cache, limiter, pool) once and embeds the batches
it is given, Arrow in and Arrow out, with the same options as ``embed_column``. What the
actors must share to be one job -- the cache, the quota, the texts being fetched right now --
is a Redis (``cache="redis://..."``, ``limiter="redis://..."``); see ``docs/scale.md``.

Actors ask for a fraction of a CPU (``actor_resources``): actors that take every CPU
leave none to Ray Data's read tasks, and the pipeline hangs.

    import ray
    from polars_embed import embed_dataset

    ds = ray.data.read_parquet("s3://bucket/texts/")
    out = embed_dataset(ds, "text", model="text-embedding-3-small",
                        cache="redis://redis:6379/0", limiter="redis://redis:6379/0")
    out.write_parquet("s3://bucket/embedded/")

"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from ..embedder import Embedder
from ..errors import ConfigurationError, PolarsEmbedError
from ..pipeline.fetch import Stopped

log = logging.getLogger("polars_embed")

if TYPE_CHECKING:

    import pyarrow as pa

    from ..pipeline.run import Run

    #: What an actor returns for a batch: its output columns (None if it failed), its figures, its error.
    Result = tuple[pa.Table | None, dict[str, Any], BaseException | None]

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

    def __init__(self, column: str = "text", *, name: str = "embedding", budget: Any = None, **embedder: Any) -> None:
        embedder.setdefault("on_error", "null")
        embedder.setdefault("ledger", False)
        embedder.setdefault("source", "ray")
        self.column, self.name = column, name
        self.budget = budget  # the run's max_cost, shared by every actor (``redis_budget.RedisBudget``)
        self.embedder = Embedder(**embedder)
        self._lock = threading.Lock()
        self._runs: set[Run] = set()  # batches being embedded right now (an actor may take several at once)

    def __call__(self, batch: pa.Table) -> pa.Table:
        """``batch`` with the output columns appended."""
        outputs, _, error = self.embed(batch)
        if error is not None:
            raise error
        assert outputs is not None
        for col_name, col in zip(outputs.column_names, outputs.columns):
            batch = batch.append_column(col_name, col)
        return batch

    def embed(self, batch: pa.Table) -> tuple[pa.Table | None, dict[str, Any], BaseException | None]:
        """The output columns of ``batch`` alone, the figures of embedding it (a run of its
        own), and the error that stopped it, if one did: what it paid is in the figures."""
        if self.column not in batch.column_names:
            msg = f"column {self.column!r} is not in the dataset (columns: {', '.join(batch.column_names)})"
            raise ConfigurationError(msg)
        text = pl.from_arrow(batch.select([self.column]))
        assert isinstance(text, pl.DataFrame)
        emb = self.embedder
        run = emb.start_run()
        run.budget = self.budget
        with self._lock:
            self._runs.add(run)
        try:
            with emb.ending(run):
                out = emb.embed(text[self.column], name=self.name, column=self.column, run=run).to_arrow()
        except (PolarsEmbedError, Stopped) as exc:
            return None, asdict(run.stats), exc
        finally:
            with self._lock:
                self._runs.discard(run)
        return out, asdict(run.stats), None

    def stop(self) -> None:
        """The job is failing: batches being embedded here send nothing more (their requests
        in flight end and are cached) and return their figures."""
        with self._lock:
            for run in self._runs:
                run.stop()

    def ready(self) -> bool:
        return True

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.embedder.close()


def actor_resources(waits_on_network: bool, cluster_cpus: float, actors: int | None = None) -> tuple[int, float]:
    """How many actors, and the CPUs each asks for: together at most all CPUs but one, so
    read tasks (which ask for a whole CPU) always find one. A model that waits on the
    network gets ``NETWORK_ACTORS`` (fewer on fewer CPUs: an actor's threads wait on the
    network, its CPU work is tokens and hashes); a local model one actor per CPU."""
    cpus = max(1.0, cluster_cpus)
    n = actors if actors is not None else (min(NETWORK_ACTORS, int(cpus)) if waits_on_network else int(cpus))
    if n < 1:
        raise ConfigurationError(f"--actors must be at least 1, got {n}")
    share = min(1.0, max(cpus - 1.0, 0.5) / n)
    return n, round(share, 3)


def embed_dataset(ds: Any, column: str = "text", *, name: str = "embedding", actors: int | None = None,
                  batch_rows: int = 5_000, **embedder: Any) -> Any:
    """``ds`` with the output columns of ``embed_column`` added: ``map_batches(EmbedBatch)`` on
    an actor pool sized by ``actor_resources``; ``**embedder`` as for ``Embedder``."""
    import ray
    import ray.data

    n, cpus, options = for_actors(embedder, ray.cluster_resources().get("CPU", 1.0), actors, uuid.uuid4().hex)
    return ds.map_batches(EmbedBatch, fn_constructor_kwargs={"column": column, "name": name, **options},
                          batch_size=batch_rows, batch_format="pyarrow", zero_copy_batch=True,
                          compute=ray.data.ActorPoolStrategy(size=n), num_cpus=cpus)


def for_actors(options: dict[str, Any], cluster_cpus: float, actors: int | None,
               run_id: str) -> tuple[int, float, dict[str, Any]]:
    """How many actors, their CPUs (``actor_resources``), and ``options`` as every actor needs
    them on any node: the endpoint, key and cache directory this process resolved from its
    environment (a node's environment is not the driver's), and ``max_cost`` as one budget
    in the Redis they share, for run ``run_id``. No request is made."""
    from ..caches import default_cache_dir
    from .redis_link import is_redis_url

    probe = Embedder(**{**options, "cache": False, "ledger": False, "limiter": None})
    network = probe.provider.waits_on_network
    probe.close()
    n, cpus = actor_resources(network, cluster_cpus, actors)
    resolved = dict(options)
    base_url = getattr(probe.provider, "base_url", None)
    if network and base_url:
        resolved["base_url"] = base_url
    # OpenAI's key travels to the actors; another provider's credentials are read where each actor runs
    key = options.get("api_key") or (os.environ.get("OPENAI_API_KEY") if probe.provider.name == "openai" else None)
    if key:
        resolved["api_key"] = key
    one_budget(options, resolved, n, run_id)
    cache = options.get("cache")
    if cache is None or cache is True:
        resolved["cache"] = str(default_cache_dir())
    elif isinstance(cache, (str, os.PathLike)) and not is_redis_url(cache):
        resolved["cache"] = str(Path(cache).resolve())
    one_quota(options, n)
    if n > 1 and not is_redis_url(options.get("cache")):
        log.warning("the actors share no cache in Redis (--cache redis://...): a text in two partitions embedded "
                    "at once may be paid twice, and actors on other machines do not see each other's vectors")
    return n, cpus, resolved


def one_quota(options: dict[str, Any], actors: int | None) -> None:
    """``rpm``/``tpm`` for several actors (or a number not known yet) need a Redis limiter:
    each actor would otherwise keep the whole quota to itself."""
    from .redis_link import is_redis_url

    if (options.get("rpm") or options.get("tpm")) and actors != 1 and not is_redis_url(options.get("limiter")):
        msg = ("--rpm/--tpm with several Ray actors need --limiter redis://host:port/db (one quota for all of "
               "them; each would otherwise keep the whole quota to itself), or --actors 1")
        raise ConfigurationError(msg)


def one_budget(options: dict[str, Any], resolved: dict[str, Any], actors: int, run_id: str) -> None:
    """``max_cost`` as one budget in Redis for every actor of the run (a restarted one joins it,
    where a budget of its own would start again from nothing); with several actors and no
    Redis, refused: their budgets could not add up to the user's."""
    from .redis_budget import RedisBudget
    from .redis_link import is_redis_url

    if options.get("max_cost") is None:
        return
    shared = next((u for u in (options.get("limiter"), options.get("cache")) if is_redis_url(u)), None)
    if shared is not None:
        resolved["budget"] = RedisBudget(str(shared), run_id, options["max_cost"])
        del resolved["max_cost"]
    elif actors != 1:
        msg = ("--max-cost with several Ray actors needs --limiter redis://host:port/db (or --cache redis://...): "
               "one budget for all of them, which an actor started again joins; or --actors 1")
        raise ConfigurationError(msg)
