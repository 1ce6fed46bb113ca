"""The ``polars-embed`` command: run, cache, ledger, doctor, serve, batch.

Errors are one line on stderr (``--debug`` shows the traceback). Exit codes:
0 done; 1 finished, but some rows failed; 2 usage, configuration, input or output error;
3 stopped by --max-cost; 4 another run holds the output's lock; 5 the provider failed
for good; 130 interrupted (Ctrl-C). Finished work is cached in every case.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import threading
import time
import warnings
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..errors import (
    BatchPendingError,
    BudgetExceededError,
    CacheError,
    ConfigurationError,
    InputError,
    LedgerError,
    OutputError,
    PolarsEmbedError,
    ProviderError,
    SharedStateError,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

DEFAULT_MODEL = "local:all-MiniLM-L6-v2"
EXIT_OK, EXIT_FAILED_ROWS, EXIT_USAGE, EXIT_BUDGET, EXIT_LOCKED, EXIT_PROVIDER, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 5, 130
EXIT_SHARED = 6  # the Redis that workers share (--cache/--limiter redis://) failed for good
log = logging.getLogger("polars_embed")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event = {"time": round(record.created, 3), "level": record.levelname.lower(), "message": record.getMessage()}
        event.update(getattr(record, "fields", {}))
        return json.dumps(event)


def _setup_logging(args: argparse.Namespace) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if args.log_json else logging.Formatter("polars-embed: %(message)s"))
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.DEBUG if args.debug else logging.INFO if not args.quiet else logging.WARNING)


def parse_age(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``45s`` -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"invalid age {text!r}; use e.g. 30d, 12h, 90m")
    return float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]


def _add_common(p: argparse.ArgumentParser, *, bar: bool = False) -> None:
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar, warnings only" if bar else "warnings only")
    p.add_argument("--log-json", action="store_true", help="log JSON lines to stderr (for machines)")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")


def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"embedding model (default: {DEFAULT_MODEL}, offline, so a first run needs no key; "
                   "the library's default is text-embedding-3-small)")
    p.add_argument("--dimensions", type=int, default=None,
                   help="output dimensions (needed for a model other than OpenAI's text-embedding-3-small/-large, "
                   "ada-002 and the local one; 3-small/-large also take fewer)")
    p.add_argument("--base-url", default=None, help="OpenAI-compatible endpoint (default: $OPENAI_BASE_URL or OpenAI)")
    p.add_argument("--cache", default=None, metavar="DIR|REDIS_URL",
                   help="cache directory (default: $POLARS_EMBED_CACHE or the user cache dir), or "
                   "redis://host:port/db: one cache for every worker")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the cache")


def _add_run(sub: Any) -> None:
    run = sub.add_parser("run", help="embed a column of a Parquet/CSV/NDJSON file into Parquet",
                         description="Embed INPUT[--column] into OUTPUT (Parquet) with the embedding, "
                         "cache-hit, token, cost and error columns and provenance metadata. Streams "
                         "in partitions; the output is replaced atomically when complete.")
    run.add_argument("input", help="input file: .parquet, .csv or .ndjson")
    run.add_argument("output", help="output Parquet file")
    run.add_argument("--column", "-c", default="text", help="text column to embed (default: text)")
    run.add_argument("--name", default="embedding", help="name of the vector column (default: embedding)")
    _add_model(run)
    run.add_argument("--partition-rows", type=int, default=5000, help="rows per partition; sets memory (default: 5000)")
    run.add_argument("--workers", type=int, default=None, help="concurrent requests (default: 16; cores for local)")
    run.add_argument("--rpm", type=float, default=None, help="stay under this many requests per minute")
    run.add_argument("--tpm", type=float, default=None, help="stay under this many tokens per minute")
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
    run.add_argument("--poll-seconds", type=float, default=30.0, help="with --batch: first wait between polls (default: 30)")
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
                     "for a local one); --max-cost is split evenly between them")
    _add_common(run, bar=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="polars-embed",
        description="Embed text columns cheaply, fast and without losing work.",
        epilog="Exit codes: 0 done, 1 some rows failed, 2 usage, configuration, input or output error, 3 --max-cost reached, "
        "4 output locked by another run, 5 provider failed, 6 the shared Redis failed, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"polars-embed {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _add_run(sub)

    cache = sub.add_parser("cache", help="inspect or clean the cache", description="Inspect or clean the vector cache.")
    cache_sub = cache.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in (("stats", "entries, bytes and path of the cache"), ("clear", "remove every entry")):
        p = cache_sub.add_parser(action, help=text, description=text[0].upper() + text[1:] + ".")
        p.add_argument("--cache", default=None, metavar="DIR", help="cache directory (default: $POLARS_EMBED_CACHE or the user cache dir)")
        if action == "clear":
            p.add_argument("--yes", "-y", action="store_true", help="do not ask before deleting (needed without a terminal)")
            p.add_argument("--force", action="store_true",
                           help="if the cache is damaged and cannot be opened, delete its files and start afresh")
        _add_common(p)
    prune = cache_sub.add_parser("prune", help="remove entries older than an age",
                                 description="Remove entries stored longer ago than --older-than.")
    prune.add_argument("--older-than", type=parse_age, required=True, metavar="AGE", help="e.g. 30d, 12h, 90m")
    prune.add_argument("--cache", default=None, metavar="DIR", help="cache directory (default: $POLARS_EMBED_CACHE or the user cache dir)")
    _add_common(prune)

    ledger = sub.add_parser("ledger", help="print the run ledger (one record per call and per run)",
                            description="Print the run ledger: one record per embedding call and per "
                            "`polars-embed run` (rows, hits, tokens, cost, cost saved, requests, wall time).")
    ledger.add_argument("--cache", default=None, metavar="DIR", help="cache directory whose ledger to read")
    ledger.add_argument("--last", type=int, default=20, metavar="N", help="the N most recent records (default: 20)")
    ledger.add_argument("--csv", action="store_true", help="print every column as CSV")
    _add_common(ledger)

    doctor = sub.add_parser("doctor", help="check key, endpoint, cache, tokenizer and local model",
                            description="Check that a run can work: API key present (never printed), endpoint "
                            "reachable, cache writable, tokenizer and local model load.")
    doctor.add_argument("--base-url", default=None, help="endpoint to check (default: $OPENAI_BASE_URL or OpenAI)")
    doctor.add_argument("--cache", default=None, metavar="DIR", help="cache directory to check")
    _add_common(doctor)
    _add_serve(sub)
    _add_batch(sub)
    return parser


def _add_batch(sub: Any) -> None:
    batch = sub.add_parser("batch", help="look at or cancel the Batch API jobs of run --batch",
                           description="The Batch API jobs recorded in the batch manifest beside the cache.")
    actions = batch.add_subparsers(dest="action", required=True, metavar="ACTION")
    status = actions.add_parser("status", help="every job: state, batch id, texts, tokens, how it ended",
                                description="Every job of the manifest; live batches are asked for their progress "
                                "when an API key is set.")
    cancel = actions.add_parser("cancel", help="cancel live batches (what they finished is collected by the next run)",
                                description="Cancel live batches; the next `run --batch` collects what they "
                                "finished and sends the rest again.")
    cancel.add_argument("batch_ids", nargs="*", metavar="BATCH_ID", help="batches to cancel (default: with --all)")
    cancel.add_argument("--all", action="store_true", help="cancel every live batch of the manifest")
    for p in (status, cancel):
        p.add_argument("--cache", default=None, metavar="DIR", help="cache directory whose manifest to read")
        p.add_argument("--base-url", default=None, help="the server of the batches (default: $OPENAI_BASE_URL or OpenAI)")
        _add_common(p)


def cmd_batch(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..batch.manifest import Manifest
    from ..caches import default_cache_dir

    path = Path(args.cache or default_cache_dir()) / "batches.sqlite"
    if not path.exists():
        print(f"no batch jobs: {path} does not exist (pass the --cache DIR the run used)")
        return EXIT_OK
    manifest = Manifest(path)
    client = _batch_client(args.base_url)
    try:
        return _batch_action(args, manifest, client)
    except Exception as exc:
        import openai

        if not isinstance(exc, openai.OpenAIError):
            raise
        msg = f"the Batch API failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        raise ProviderError(msg, status_code=getattr(exc, "status_code", None)) from None


def _batch_action(args: argparse.Namespace, manifest: Any, client: Any) -> int:
    if args.action == "cancel":
        live = [j.batch_id for j in manifest.live() if j.batch_id]
        ids = live if args.all else args.batch_ids
        if not ids:
            if args.all:
                print("no live batches to cancel")
                return EXIT_OK
            raise ConfigurationError("name the batches to cancel, or pass --all")
        if client is None:
            raise ConfigurationError("no API key: set OPENAI_API_KEY to cancel batches")
        for batch_id in ids:
            print(f"{batch_id}: {client.batches.cancel(batch_id).status}")
        return EXIT_OK
    jobs = manifest.jobs()
    if jobs:
        print(f"{'job':<16}  {'created':<16}  {'state':<10} {'batch id':<30} {'texts':>13} {'tokens':>18}  ended as")
    for j in jobs:
        progress = ""
        if j.batch_id and j.state == "submitted" and client is not None:
            b = client.batches.retrieve(j.batch_id)
            counts = b.request_counts
            progress = f" (server: {b.status}, {counts.completed:,}/{counts.total:,} done)" if counts else f" (server: {b.status})"
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(j.created))
        print(f"{j.job}  {created}  {j.state:<10} {j.batch_id or '-':<30} {j.lines:>7,} texts {j.tokens:>11,} tokens  "
              f"{j.status or ''}{progress}")
    return EXIT_OK


def _batch_client(base_url: str | None) -> Any:
    key = os.environ.get("OPENAI_API_KEY")
    if not key:
        return None
    import openai

    return openai.OpenAI(api_key=key, base_url=base_url or os.environ.get("OPENAI_BASE_URL") or None, max_retries=2)


def _pair(kind: type) -> Any:
    def parse(text: str) -> tuple[str, Any]:
        name, _, value = text.partition("=")
        try:
            return name, kind(value) if name else kind("")
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected MODEL=VALUE, got {text!r}") from None
    return parse


def _add_serve(sub: Any) -> None:
    serve = sub.add_parser(
        "serve", help="run an OpenAI-compatible caching proxy (POST /v1/embeddings)",
        description="Serve POST /v1/embeddings as OpenAI does, from the cache, sending only the misses upstream "
        "(packed, paced, each distinct text paid once), plus GET /v1/models (passed through), /health and /metrics "
        "(Prometheus). Point any OpenAI client's base_url at http://HOST:PORT/v1. The upstream key is read from "
        "$OPENAI_API_KEY (or --upstream-key-env) and never leaves the proxy. Needs: pip install 'polars-embed[serve]'.")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="port to listen on (default: 8080)")
    serve.add_argument("--upstream-base-url", default=None, help="where misses go (default: $OPENAI_BASE_URL or OpenAI)")
    serve.add_argument("--upstream-key-env", default="OPENAI_API_KEY", metavar="VAR",
                       help="environment variable holding the upstream key (default: OPENAI_API_KEY)")
    serve.add_argument("--cache", default=None, metavar="DIR",
                       help="cache directory, shared with embed_column and run (default: $POLARS_EMBED_CACHE or the user cache dir)")
    serve.add_argument("--keys", default=None, metavar="FILE",
                       help="proxy keys file (hashed); clients must present one of its keys. Without it, any client is served")
    serve.add_argument("--new-key", default=None, metavar="NAME",
                       help="add a key named NAME to --keys, print it once and exit")
    serve.add_argument("--allow-open", action="store_true", help="serve without --keys on an address other than loopback")
    serve.add_argument("--on-long-input", choices=["error", "truncate"], default="error",
                       help="an input over the model's token limit: 400 as OpenAI answers (default), or truncate it")
    serve.add_argument("--model-dimensions", type=_pair(int), action="append", default=[], metavar="MODEL=N",
                       help="native output size of an upstream model not in the table (repeatable)")
    serve.add_argument("--price", type=_pair(float), action="append", default=[], metavar="MODEL=USD_PER_1M",
                       help="price per 1M tokens of a model (repeatable; default: the price table)")
    serve.add_argument("--workers", type=int, default=16, help="concurrent upstream requests (default: 16)")
    serve.add_argument("--rpm", type=float, default=None, help="stay under this many upstream requests per minute")
    serve.add_argument("--tpm", type=float, default=None, help="stay under this many upstream tokens per minute")
    _add_common(serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from ..serve.proxy import Keys, ProxyConfig

    keys = Keys(args.keys) if args.keys else None
    if args.new_key is not None:
        if keys is None:
            raise ConfigurationError("--new-key needs --keys FILE, the file to add it to")
        if args.new_key in keys.hashes:
            raise ConfigurationError(f"{args.keys} already has a key named {args.new_key!r}; pick another name "
                                     "(or delete its line from the file to replace it)")
        key = keys.add(args.new_key)
        print(f"new proxy key {args.new_key!r} (shown once, only its hash is kept in {args.keys}):")
        print(key)
        return EXIT_OK
    if keys is not None and not keys.hashes:
        raise ConfigurationError(f"{args.keys} holds no proxy key (missing or empty): add one with --new-key NAME")
    loopback = args.host in ("127.0.0.1", "localhost", "::1")
    if keys is None and not loopback and not args.allow_open:
        raise ConfigurationError(f"serving {args.host} without --keys lets anyone spend the upstream key; "
                                 "pass --keys FILE (see --new-key), or --allow-open")
    upstream_key = os.environ.get(args.upstream_key_env)
    if not upstream_key:
        raise ConfigurationError(f"no upstream key: set {args.upstream_key_env}")
    from ..serve.app import serve

    config = ProxyConfig(upstream_base_url=args.upstream_base_url, upstream_api_key=upstream_key, cache=args.cache,
                         keys=keys, on_long_input=args.on_long_input, rpm=args.rpm, tpm=args.tpm,
                         max_workers=args.workers, dimensions=dict(args.model_dimensions), price_per_million=dict(args.price))
    who = f"{len(keys.hashes)} proxy keys from {args.keys}" if keys else "any client (no --keys)"
    log.info(f"serving http://{args.host}:{args.port}/v1 for {who}; misses go to "
             f"{_without_credentials(args.upstream_base_url or os.environ.get('OPENAI_BASE_URL') or 'https://api.openai.com/v1')}")
    serve(config, host=args.host, port=args.port, log_level="warning" if args.quiet else "info")
    return EXIT_OK


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``Embedder`` keywords of ``run``'s arguments."""
    from ..batch.fetch import BatchSettings

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


def cmd_run(args: argparse.Namespace) -> int:
    from .. import job

    if args.partition_rows < 1:
        raise ConfigurationError(f"--partition-rows must be at least 1, got {args.partition_rows}")
    from ..embedder import Embedder

    options = _options(args)
    emb = Embedder(**options)
    if args.dry_run:
        est = job.dry_run(emb, args.input, column=args.column, partition_rows=args.partition_rows)
        eta = f"~{est.seconds:,.0f} s ({est.basis})" if est.seconds is not None else f"unknown ({est.basis})"
        print(f"dry run of {args.input} ({emb.model}, {emb.dimensions} dims): no request made")
        print(f"  rows            {est.rows:,}")
        print(f"  distinct texts  {est.distinct:,}")
        print(f"  already cached  {est.cached:,}")
        print(f"  to embed        {est.to_embed:,} in {est.requests:,} requests")
        print(f"  tokens to pay   {est.tokens_to_pay:,}")
        print(f"  estimated cost  ${est.cost_usd:.6f}")
        print(f"  estimated time  {eta}")
        return EXIT_OK

    import polars as pl

    lf = job.scan(args.input)
    job.require_column(lf, args.column, args.input)
    with job.readable(args.input):
        rows = lf.select(pl.len()).collect().item()
    bar = Progress(rows, disable=args.quiet or not sys.stderr.isatty())
    log.info(f"embedding {args.input}[{args.column}] with {emb.model} into {args.output}",
             extra={"fields": {"event": "start", "rows": rows, "model": emb.model}})
    try:
        if args.engine == "ray":
            from ..scale import ray_engine

            result = ray_engine.run(emb, options, args.input, args.output, column=args.column, name=args.name,
                                    partition_rows=args.partition_rows, address=args.ray_address,
                                    actors=args.actors, on_progress=bar.update)
        else:
            result = job.run(emb, args.input, args.output, column=args.column, name=args.name,
                             partition_rows=args.partition_rows, on_progress=bar.update)
    except BatchPendingError as exc:  # --detach: submitted; a later run collects
        print(f"polars-embed: {exc}")
        print(f"  batches: {', '.join(exc.batch_ids) or 'none in flight'}; `polars-embed batch status` lists them")
        return EXIT_OK
    except KeyboardInterrupt:
        bar.close()
        log.warning(f"interrupted after {bar.done.rows:,} rows; finished requests are cached, "
                    f"rerun the same command to resume (cached rows cost nothing)")
        return EXIT_INTERRUPTED
    finally:
        bar.close()
        emb.close()
    s = result.stats
    hits = s.hit_rows
    summary = {
        "rows": s.rows, "distinct": s.distinct, "new_texts": s.misses, "hits": hits, "cached_rows": s.cached_rows,
        "repeated_rows": hits - s.cached_rows, "tokens_billed": s.tokens_billed,
        "cost_usd": round(s.cost_usd, 8), "cost_saved_usd": round(s.cost_saved_usd, 8), "requests": s.requests,
        "retries": s.retries, "failed_rows": len(result.failed), "wall_seconds": round(s.wall_seconds, 2),
        "output": str(result.output),
    }
    log.log(logging.INFO if args.log_json else logging.DEBUG, "run finished",
            extra={"fields": {"event": "summary", **summary}})
    _print_summary(emb, result)
    if result.failed:
        first, reason = next(iter(result.failed.items()))
        log.warning(f"{len(result.failed)} rows failed (first: row {first}: {reason}); they have a null vector and a reason in {args.name}_error")
        return EXIT_FAILED_ROWS
    return EXIT_OK


def _print_summary(emb: Any, result: Any) -> None:
    s = result.stats
    repeats = s.hit_rows - s.cached_rows
    print(f"embedded {s.rows:,} rows ({s.distinct:,} distinct texts) with {emb.model} in {s.wall_seconds:.1f} s")
    unit = "batch" if emb.mode == "batch" else "request"
    print(f"  new texts      {s.misses:,} embedded in {s.requests:,} {unit}{'es' if unit == 'batch' and s.requests != 1 else 's' * (s.requests != 1)} "
          f"({s.retries} retr{'ies' if s.retries != 1 else 'y'})")
    print(f"  cache hits     {s.hit_rows:,} rows ({s.hit_rows / max(1, s.rows):.0%}): {s.cached_rows:,} in the "
          f"cache before this run, {repeats:,} repeats within it")
    if emb.price:
        print(f"  tokens billed  {s.tokens_billed:,}")
        price = f", Batch API price ${emb.price:g}/1M tokens" if emb.mode == "batch" else ""
        print(f"  cost           ${s.cost_usd:.6f} (saved by the cache: ${s.cost_saved_usd:.6f}{price})")
    elif emb.provider.name == "local":
        print(f"  tokens         {s.tokens_counted:,} counted; a local model costs nothing but time")
    else:
        print(f"  tokens billed  {s.tokens_billed:,} (no price known for {emb.model}: --price counts the cost)")
    print(f"  failed rows    {len(result.failed):,}")
    if s.uncached:
        print(f"  not cached     {s.uncached:,} texts: the cache could not be written (see the warning)")
    if s.cache_damaged:
        print(f"  damaged cache  {s.cache_damaged:,} entries: fetched again and overwritten")
    where = getattr(emb.cache, "directory", None) or getattr(emb.cache, "location", None)
    print(f"  cache          {where if where is not None else 'none (--no-cache)'}")
    print(f"  wrote          {result.output}")


class Progress:
    """The progress bar of ``run``: advances as each request ends, with rows/s, ETA, hit
    rate and cost so far (tqdm, on stderr when it is a terminal)."""

    def __init__(self, total: int, *, disable: bool) -> None:
        from ..pipeline.stats import RunStats

        self.done = RunStats()
        self._lock = threading.Lock()
        self._bar: Any = None
        if not disable:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, unit="rows", file=sys.stderr, dynamic_ncols=True, smoothing=0.1)

    def update(self, delta: Any) -> None:
        with self._lock:
            self.done.add(delta)
            if self._bar is not None:
                self._bar.update(delta.rows)
                hit_rate = self.done.hit_rows / max(1, self.done.rows)
                self._bar.set_postfix_str(f"hits {hit_rate:.0%}, ${self.done.cost_usd:.4f}", refresh=False)

    def close(self) -> None:
        with self._lock:
            if self._bar is not None:
                self._bar.close()
                self._bar = None


def cmd_cache(args: argparse.Namespace) -> int:
    import polars as pl

    from ..caches import DiskCache
    from ..show import for_terminal

    cache = DiskCache(args.cache)
    try:
        if args.action == "stats":
            st = cache.stats()
            size = f"{st['bytes']:,}" if st["bytes"] is not None else "unknown (read-only)"
            print(f"path     {st['path']}\nentries  {st['entries']:,}\nbytes    {size}")
            by_model = cache.inspect()
            if by_model.height:
                with for_terminal():
                    print(by_model.with_columns(pl.col("oldest", "newest").dt.strftime("%Y-%m-%d %H:%M")))
        elif args.action == "clear":
            if not _confirmed(args, f"delete every entry of the cache at {cache.directory}? Paid vectors are lost [y/N] "):
                print("nothing deleted", file=sys.stderr)
                return EXIT_USAGE
            try:
                print(f"removed {cache.clear():,} entries from {cache.directory}")
            except CacheError:
                if not args.force:
                    raise
                cache.remove_files()
                print(f"the cache at {cache.directory} was damaged: removed its files; it starts empty")
        else:
            print(f"removed {cache.prune(args.older_than):,} entries older than {args.older_than / 86400:g} days from {cache.directory}")
    finally:
        cache.close()
    return EXIT_OK


def _confirmed(args: argparse.Namespace, question: str) -> bool:
    """``--yes``, or a "y" typed at a terminal; without a terminal, no."""
    if args.yes:
        return True
    if not sys.stdin.isatty():
        log.error("pass --yes to delete without a terminal to confirm at")
        return False
    return input(question).strip().lower() in ("y", "yes")


def cmd_ledger(args: argparse.Namespace) -> int:
    from ..caches import default_cache_dir
    from ..ledger import ledger
    from ..show import for_terminal, readable_ledger

    directory = args.cache or default_cache_dir()
    df = ledger(f"{directory}/ledger.sqlite").tail(args.last)
    if args.csv:
        print(df.write_csv(), end="")
        return EXIT_OK
    if not df.height:
        print(f"no run recorded yet in {directory}/ledger.sqlite")
        return EXIT_OK
    with for_terminal():
        print(readable_ledger(df))
    return EXIT_OK


def cmd_doctor(args: argparse.Namespace) -> int:
    checks: list[tuple[str, bool | None, str]] = []  # None: information, not a check
    key = os.environ.get("OPENAI_API_KEY")
    checks.append(("API key", True if key else None,
                   "OPENAI_API_KEY is set" if key else "OPENAI_API_KEY is not set: only --model local:... will work"))
    base = args.base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
    ok, detail = _reachable(base)
    checks.append(("endpoint", ok, detail.replace(base, _without_credentials(base))))
    try:
        import numpy as np

        from ..caches import DiskCache

        cache = DiskCache(args.cache)
        probe = b"polars-embed doctor probe"
        cache.set_many([(probe, np.zeros(2, np.float32), 0)])
        ok = cache.get_many([probe])[0] is not None
        cache.delete_many([probe])
        checks.append(("cache", ok, f"{cache.directory} is writable"))
        cache.close()
    except PolarsEmbedError as exc:
        checks.append(("cache", False, str(exc)))
    try:
        from ..pipeline.tokens import TiktokenTokenizer

        n = len(TiktokenTokenizer().encode_batch(["hello world"])[0])
        checks.append(("tokenizer", n == 2, "cl100k_base loads offline"))
    except Exception as exc:  # noqa: BLE001 - doctor reports, never raises
        checks.append(("tokenizer", False, str(exc)))
    try:
        from ..providers.local import LocalProvider

        t = time.perf_counter()
        vec = LocalProvider().embed(["hello world"]).vectors
        checks.append(("local model", vec.shape == (1, 384), f"{DEFAULT_MODEL} loads (sha256 verified, {time.perf_counter() - t:.1f} s)"))
    except Exception as exc:  # noqa: BLE001
        checks.append(("local model", False, str(exc)))
    for name, passed, detail in checks:
        print(f"{'--  ' if passed is None else 'ok  ' if passed else 'FAIL'}  {name:<12} {detail}")
    # the endpoint matters only to someone who means to use it
    required = [p for name, p, _ in checks if p is not None and (name != "endpoint" or key or args.base_url)]
    return EXIT_OK if all(required) else EXIT_USAGE


def _without_credentials(url: str) -> str:
    """``url`` as it may be printed: no ``user:secret@``."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "") if "@" in parts.netloc else parts.netloc
    return urlunsplit(parts._replace(netloc=netloc))


def _reachable(base_url: str) -> tuple[bool, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(base_url.rstrip("/") + "/models", timeout=5.0) as r:
            status = r.status
    except urllib.error.HTTPError as exc:  # an answer all the same (401 without a key)
        status = exc.code
    except Exception as exc:  # noqa: BLE001
        return False, f"{base_url} is not reachable ({type(exc).__name__})"
    return True, f"{base_url} answers (HTTP {status})"


#: The library's words for a setting, and the option that sets it here.
_OPTIONS = [("mode='batch' needs the OpenAI Batch API (or a server that has it), not a local model",
             "--batch needs a model of the OpenAI Batch API: pass e.g. --model text-embedding-3-small"),
            ("mode='batch' sends one line per text, so not on_long_input='chunk': use 'truncate' or 'error'",
             "--batch sends one line per text, so not --on-long-input chunk: use truncate or error"),
            ("pass api_key= (or use model='local:...' offline)", "or run offline with --model local:all-MiniLM-L6-v2"),
            ("model='local:", "--model local:"), ("pass base_url= and dimensions=", "pass --base-url and --dimensions"),
            ("pass dimensions=", "pass --dimensions"), ("dimensions=", "--dimensions "),
            ("price_per_million", "--price"), ("max_workers", "--workers"), ("max_cost", "--max-cost"),
            ("rpm must", "--rpm must"), ("tpm must", "--tpm must"), ("limiter= must be a Limiter object or", "--limiter must be"),
            ("cache '", "--cache '")]


def for_cli(message: str) -> str:
    """A library message in the words of this command (``--dimensions``, not ``dimensions=``)."""
    for library, option in _OPTIONS:
        message = message.replace(library, option)
    return message


def _exit_code(exc: PolarsEmbedError) -> int:
    from ..job import LockedError

    if isinstance(exc, BudgetExceededError):
        return EXIT_BUDGET
    if isinstance(exc, LockedError):
        return EXIT_LOCKED
    if isinstance(exc, SharedStateError):
        return EXIT_SHARED
    if isinstance(exc, (ConfigurationError, InputError, CacheError, OutputError, LedgerError)):
        return EXIT_USAGE
    if isinstance(exc, ProviderError):
        return EXIT_PROVIDER
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args)
    # warnings (a cache or a ledger that cannot be written) are one log line each, not file:line noise
    warnings.showwarning = lambda message, *_, **__: log.warning(str(message).removeprefix("polars-embed: "))
    handlers = {"run": cmd_run, "cache": cmd_cache, "ledger": cmd_ledger, "doctor": cmd_doctor, "serve": cmd_serve,
                "batch": cmd_batch}
    try:
        return handlers[args.command](args)
    except PolarsEmbedError as exc:
        if args.debug:
            raise
        code, message = _exit_code(exc), for_cli(str(exc).splitlines()[0])
        if args.log_json:
            log.error(message, extra={"fields": {"event": "error", "exit_code": code}})
        else:
            print(f"polars-embed: error: {message}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        print("polars-embed: interrupted; finished work is cached, rerun to resume", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
