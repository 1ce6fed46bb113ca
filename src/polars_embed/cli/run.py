"""``polars-embed run``: embed a column of a file into Parquet (locally, on Ray, or as Batch API jobs)."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from ..errors import BatchPendingError, ConfigurationError
from .common import EXIT_FAILED_ROWS, EXIT_OK, add_common, add_model, log
from .report import Progress, print_estimate, print_summary, summary_fields
from .stopping import Stopper


def add_parser(sub: Any) -> None:
    run = sub.add_parser("run", help="embed a column of a Parquet/CSV/NDJSON file into Parquet",
                         description="Embed INPUT[--column] into OUTPUT (Parquet) with the embedding, "
                         "cache-hit, token, cost and error columns and provenance metadata. Streams "
                         "in partitions; the output is replaced atomically when complete.")
    run.add_argument("input", help="input file: .parquet, .csv or .ndjson")
    run.add_argument("output", help="output Parquet file")
    run.add_argument("--column", "-c", default="text", help="text column to embed (default: text)")
    run.add_argument("--name", default="embedding", help="name of the vector column (default: embedding)")
    add_model(run)
    run.add_argument("--partition-rows", type=int, default=5000, help="rows per partition; sets memory (default: 5000)")
    run.add_argument("--workers", type=int, default=None, help="concurrent requests (default: 16; cores for local)")
    run.add_argument("--rpm", type=float, default=None, help="stay under this many requests per minute")
    run.add_argument("--tpm", type=float, default=None, help="stay under this many tokens per minute")
    run.add_argument("--input-type", default="document", metavar="ROLE",
                     help="document (default) or query, sent to providers that embed them differently (Voyage, "
                     "Cohere, Gemini), or a provider's own role (e.g. clustering for Cohere); accepted, and without "
                     "effect, where a provider has none")
    run.add_argument("--provider-option", action="append", default=[], metavar="KEY=VALUE",
                     help="a setting of the provider, repeatable: e.g. region=eu-west-1 (Bedrock), "
                     "api_version=2024-10-21 and model=text-embedding-3-small (Azure); a JSON value is read as JSON")
    run.add_argument("--on-long-input", choices=["truncate", "chunk", "error"], default="truncate",
                     help="inputs over the model's token limit (default: truncate)")
    run.add_argument("--max-cost", type=float, default=None, metavar="USD",
                     help="stop before a request would take the run past this many dollars")
    run.add_argument("--price", type=float, default=None, metavar="USD_PER_1M", help="override the price per 1M tokens")
    run.add_argument("--dry-run", action="store_true", help="no request: print rows, distinct, cached, tokens, cost, time")
    run.add_argument("--batch", action="store_true",
                     help="send the uncached texts as Batch API jobs at half the price (done within 24 h); "
                     "waits for them unless --detach")
    run.add_argument("--detach", action="store_true",
                     help="with --batch: submit, collect what ended, and exit 0; the same command later "
                     "collects the rest and writes OUTPUT when every batch has ended")
    run.add_argument("--poll-seconds", type=float, default=2.0,
                     help="with --batch: first wait between polls, growing 1.5x while nothing ends, up to 10 minutes "
                     "(default: 2)")
    run.add_argument("--enqueued-tokens", type=int, default=20_000_000,
                     help="with --batch: your enqueued-token limit for the model (default: 20,000,000)")
    run.add_argument("--limiter", default=None, metavar="REDIS_URL",
                     help="redis://host:port/db: one requests/tokens-per-minute quota (--rpm/--tpm, else learned "
                     "from the server's headers) for every run and actor that names this Redis")
    run.add_argument("--engine", choices=["local", "ray"], default="local",
                     help="local: threads in this process (default); ray: Ray actors embed the partitions read here "
                     "(pip install 'polars-embed[ray]'), sharing what --cache/--limiter redis://... name")
    run.add_argument("--ray-address", default=None, metavar="ADDRESS",
                     help="with --engine ray: the cluster to join (default: $RAY_ADDRESS, else the Ray running on "
                     "this machine, else a Ray started for this run)")
    run.add_argument("--actors", type=int, default=None,
                     help="with --engine ray: actors (default: one per CPU up to 4 for a network model, one per CPU "
                     "for a local one); --max-cost is one budget for them all, kept in the --limiter (or --cache) Redis")
    add_common(run, bar=True)


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``Embedder`` keywords of ``run``'s arguments."""
    from ..batch import BatchSettings

    if args.engine == "ray" and (args.batch or args.dry_run):
        raise ConfigurationError(f"--engine ray does not do {'--batch' if args.batch else '--dry-run'}; drop one of them")
    if (args.ray_address or args.actors is not None) and args.engine != "ray":
        raise ConfigurationError("--ray-address and --actors need --engine ray")
    if args.actors is not None and args.actors < 1:
        raise ConfigurationError(f"--actors must be at least 1, got {args.actors}")
    if args.engine == "ray":  # before Ray starts
        from ..scale.ray_engine import one_quota

        one_quota({"rpm": args.rpm, "tpm": args.tpm, "limiter": args.limiter}, args.actors)
    if args.detach and not args.batch:
        raise ConfigurationError("--detach needs --batch")
    if args.batch and args.no_cache:
        raise ConfigurationError("--batch collects the batches' results into the cache before writing: drop --no-cache")
    batch = BatchSettings(wait=not args.detach, poll_seconds=args.poll_seconds, enqueued_tokens=args.enqueued_tokens,
                          max_poll_seconds=max(600.0, args.poll_seconds)) if args.batch else None
    return {
        "model": args.model,
        "dimensions": args.dimensions,
        "base_url": args.base_url,
        "cache": False if args.no_cache else args.cache,
        "on_long_input": args.on_long_input,
        "input_type": args.input_type,
        "provider_options": provider_options(args.provider_option) or None,
        "on_error": "null",
        "price_per_million": args.price,
        "max_cost": args.max_cost,
        "max_workers": args.workers,
        "rpm": args.rpm,
        "tpm": args.tpm,
        "limiter": args.limiter,
        "mode": "batch" if args.batch else "sync",
        "batch": batch,
    }


def provider_options(pairs: list[str]) -> dict[str, Any]:
    """``--provider-option KEY=VALUE`` pairs as ``provider_options``: ``true``, ``512`` or
    ``"x"`` are read as JSON, anything else as text."""
    import json

    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigurationError(f"--provider-option takes KEY=VALUE, got {pair!r}")
        try:
            options[key.strip()] = json.loads(value)
        except ValueError:
            options[key.strip()] = value
    return options


def command(args: argparse.Namespace) -> int:
    from .. import job

    if args.partition_rows < 1:
        raise ConfigurationError(f"--partition-rows must be at least 1, got {args.partition_rows}")
    from ..embedder import Embedder

    options = _options(args)
    emb = Embedder(**options)
    if args.dry_run:
        print_estimate(emb, job.dry_run(emb, args.input, column=args.column, partition_rows=args.partition_rows),
                       args.input)
        return EXIT_OK

    import polars as pl

    lf = job.scan(args.input)
    job.require_column(lf, args.column, args.input)
    with job.readable(args.input):
        rows = lf.select(pl.len()).collect().item()
    log.info(f"embedding {args.input}[{args.column}] with {emb.model} into {args.output}",
             extra={"fields": {"event": "start", "rows": rows, "model": emb.model}})
    bar = Progress(rows, disable=args.quiet or not sys.stderr.isatty())
    stopper = Stopper(emb)
    try:
        with stopper, bar:
            result = _embed(args, emb, options, bar)
    except BatchPendingError as exc:  # --detach: submitted; a later run collects
        print(f"polars-embed: {exc}")
        print(f"  batches: {', '.join(exc.batch_ids) or 'none in flight'}; `polars-embed batch status` lists them")
        return EXIT_OK
    except KeyboardInterrupt:
        log.warning(f"interrupted after {bar.done.rows:,} rows; finished requests are cached, "
                    f"rerun the same command to resume (cached rows cost nothing)")
        return stopper.exit_code
    finally:
        emb.close()
    log.log(logging.INFO if args.log_json else logging.DEBUG, "run finished",
            extra={"fields": {"event": "summary", **summary_fields(emb, result)}})
    print_summary(emb, result)
    if result.failed:
        first, reason = next(iter(result.failed.items()))
        log.warning(f"{len(result.failed)} rows failed (first: row {first}: {reason}); they have a null vector and a reason in {args.name}_error")
        return EXIT_FAILED_ROWS
    return EXIT_OK


def _embed(args: argparse.Namespace, emb: Any, options: dict[str, Any], bar: Progress) -> Any:
    """The job on the engine ``--engine`` names."""
    from .. import job

    if args.engine == "ray":
        from ..scale import ray_job

        return ray_job.run(emb, options, args.input, args.output, column=args.column, name=args.name,
                           partition_rows=args.partition_rows, address=args.ray_address, actors=args.actors,
                           on_progress=bar.update)
    return job.run(emb, args.input, args.output, column=args.column, name=args.name,
                   partition_rows=args.partition_rows, on_progress=bar.update)
