"""``polars-embed serve``: the OpenAI-compatible caching proxy, and its keys (``--new-key``)."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError
from .common import EXIT_OK, add_common, log, without_credentials

if TYPE_CHECKING:
    from ..serve.accounts import KeyLimits


def _pair(kind: type) -> Any:
    def parse(text: str) -> tuple[str, Any]:
        name, _, value = text.partition("=")
        try:
            return name, kind(value) if name else kind("")
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected MODEL=VALUE, got {text!r}") from None
    return parse


def add_parser(sub: Any) -> None:
    serve = sub.add_parser(
        "serve", help="run an OpenAI-compatible caching proxy (POST /v1/embeddings)",
        description="Serve POST /v1/embeddings as OpenAI does, from the cache, sending only the misses upstream "
        "(packed, paced, each distinct text paid once), plus GET /v1/models (the upstream's and --model's), /health "
        "and /metrics (Prometheus). Point any OpenAI client's base_url at http://HOST:PORT/v1; model='cohere:...' "
        "(any provider prefix) goes to that provider. The upstream key is read from $OPENAI_API_KEY (or "
        "--upstream-key-env) and never leaves the proxy. Keys may have budgets and rate limits (--new-key, "
        "--set-limits); proxies naming one Redis (--cache, --limiter) act as one. Needs: pip install "
        "'polars-embed[serve]'.")
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
    limits = serve.add_argument_group("a key's limits (with --new-key NAME, or --set-limits NAME for an existing key)")
    limits.add_argument("--set-limits", default=None, metavar="NAME", help="replace the limits of key NAME and exit")
    limits.add_argument("--budget-day", type=float, default=None, metavar="USD", help="dollars the key may spend a UTC day")
    limits.add_argument("--budget-month", type=float, default=None, metavar="USD",
                        help="dollars the key may spend a UTC month")
    limits.add_argument("--key-rpm", type=float, default=None, metavar="N", help="requests per minute the key may send")
    limits.add_argument("--key-tpm", type=float, default=None, metavar="N",
                        help="tokens per minute the key may have sent upstream")
    limits.add_argument("--key-concurrency", type=int, default=None, metavar="N",
                        help="requests of the key answered at once (its share of the proxy)")
    serve.add_argument("--allow-open", action="store_true", help="serve without --keys on an address other than loopback")
    serve.add_argument("--on-long-input", choices=["error", "truncate"], default="error",
                       help="an input over the model's token limit: 400 as OpenAI answers (default), or truncate it")
    serve.add_argument("--model-dimensions", type=_pair(int), action="append", default=[], metavar="MODEL=N",
                       help="native output size of an upstream model not in the table (repeatable)")
    serve.add_argument("--price", type=_pair(float), action="append", default=[], metavar="MODEL=USD_PER_1M",
                       help="price per 1M tokens of a model (repeatable; default: the price table)")
    serve.add_argument("--provider-url", type=_pair(str), action="append", default=[], metavar="FAMILY=URL",
                       help="where a provider family's models go (default: its own API; e.g. cohere=https://...); its key is read from its "
                       "usual variable (CO_API_KEY, VOYAGE_API_KEY, ...). Requests name them with a prefix: "
                       "model='cohere:embed-v4.0' (repeatable)")
    serve.add_argument("--model", action="append", default=[], metavar="FAMILY:MODEL", dest="models",
                       help="a provider model GET /v1/models lists beside the upstream's (repeatable)")
    serve.add_argument("--limiter", default=None, metavar="REDIS_URL",
                       help="keep the upstream quota, the keys' limits and their spending in this Redis: proxy "
                       "processes that name it (and --cache redis://...) act as one")
    serve.add_argument("--workers", type=int, default=16, help="concurrent upstream requests (default: 16)")
    serve.add_argument("--rpm", type=float, default=None, help="stay under this many upstream requests per minute")
    serve.add_argument("--tpm", type=float, default=None, help="stay under this many upstream tokens per minute")
    add_common(serve)


def command(args: argparse.Namespace) -> int:
    from ..serve.keys import Keys
    from ..serve.proxy import ProxyConfig

    try:  # before anything is said or started
        import prometheus_client  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise ConfigurationError(f"polars-embed serve needs the serve extra ({exc.name} is missing): "
                                 "pip install 'polars-embed[serve]' (in a clone: pip install -e '.[serve]')") from None

    keys = Keys(args.keys) if args.keys else None
    limits = key_limits(args)
    if args.new_key is not None or args.set_limits is not None:
        if keys is None:
            raise ConfigurationError(f"{'--new-key' if args.new_key else '--set-limits'} needs --keys FILE, the file it edits")
        if args.set_limits is not None:
            keys.set_limits(args.set_limits, limits)
            print(f"proxy key {args.set_limits!r}: {limits.to_dict() or 'no limits'}")
            return EXIT_OK
        if args.new_key in keys.hashes:
            raise ConfigurationError(f"{args.keys} already has a key named {args.new_key!r}; pick another name "
                                     "(or change its limits with --set-limits)")
        key = keys.add(args.new_key, limits)
        print(f"new proxy key {args.new_key!r} (shown once, only its hash is kept in {args.keys}):")
        print(key)
        return EXIT_OK
    if limits.to_dict():
        raise ConfigurationError("--budget-day, --budget-month, --key-rpm, --key-tpm and --key-concurrency go with "
                                 "--new-key NAME or --set-limits NAME")
    if keys is not None and not keys.hashes:
        raise ConfigurationError(f"{args.keys} holds no proxy key (missing or empty): add one with --new-key NAME")
    loopback = args.host in ("127.0.0.1", "localhost", "::1")
    if keys is None and not loopback and not args.allow_open:
        raise ConfigurationError(f"serving {args.host} without --keys lets anyone spend the upstream key; "
                                 "pass --keys FILE (see --new-key), or --allow-open")
    upstream_key = os.environ.get(args.upstream_key_env)
    if not upstream_key:
        raise ConfigurationError(f"no upstream key: set {args.upstream_key_env}")
    from ..providers import FAMILIES
    from ..serve.app import serve

    for family in [f for f, _ in args.provider_url] + [m.partition(":")[0] for m in args.models]:
        if family not in FAMILIES:
            raise ConfigurationError(f"--provider-url and --model name a provider family ({', '.join(FAMILIES)}), "
                                     f"got {family!r}")

    config = ProxyConfig(upstream_base_url=args.upstream_base_url, upstream_api_key=upstream_key, cache=args.cache,
                         keys=keys, on_long_input=args.on_long_input, rpm=args.rpm, tpm=args.tpm,
                         max_workers=args.workers, dimensions=dict(args.model_dimensions), price_per_million=dict(args.price),
                         provider_urls=dict(args.provider_url), models=args.models, limiter=args.limiter)
    who = f"{len(keys.hashes)} proxy keys from {args.keys}" if keys else "any client (no --keys)"
    log.info(f"serving http://{args.host}:{args.port}/v1 for {who}; misses go to "
             f"{without_credentials(args.upstream_base_url or os.environ.get('OPENAI_BASE_URL') or 'https://api.openai.com/v1')}")
    serve(config, host=args.host, port=args.port, log_level="warning" if args.quiet else "info")
    return EXIT_OK


def key_limits(args: argparse.Namespace) -> KeyLimits:
    """The limits the flags give (each checked: one sentence naming the flag)."""
    from ..serve.accounts import KeyLimits

    given = {"usd_per_day": ("--budget-day", args.budget_day), "usd_per_month": ("--budget-month", args.budget_month),
             "rpm": ("--key-rpm", args.key_rpm), "tpm": ("--key-tpm", args.key_tpm),
             "concurrency": ("--key-concurrency", args.key_concurrency)}
    for flag, value in given.values():
        if value is not None and not value > 0:
            raise ConfigurationError(f"{flag} must be a positive number, got {value:g}")
    return KeyLimits(**{name: value for name, (_, value) in given.items()})
