"""``polars-embed cache stats|clear|prune``: look at or clean the vector cache."""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

from ..errors import CacheError, ConfigurationError
from .common import EXIT_OK, EXIT_USAGE, add_common, confirmed


def add_parser(sub: Any) -> None:
    cache = sub.add_parser("cache", help="inspect or clean the cache", description="Inspect or clean the vector cache.")
    cache_sub = cache.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in (("stats", "entries, bytes and path of the cache"), ("clear", "remove every entry")):
        p = cache_sub.add_parser(action, help=text, description=text[0].upper() + text[1:] + ".")
        p.add_argument("--cache", default=None, metavar="DIR", help="cache directory or redis://host:port/db (default: $POLARS_EMBED_CACHE or the user cache dir)")
        if action == "clear":
            p.add_argument("--yes", "-y", action="store_true", help="do not ask before deleting (needed without a terminal)")
            p.add_argument("--force", action="store_true",
                           help="if the cache is damaged and cannot be opened, delete its files and start afresh")
        add_common(p)
    prune = cache_sub.add_parser("prune", help="remove entries older than an age",
                                 description="Remove entries stored longer ago than --older-than.")
    prune.add_argument("--older-than", type=parse_age, required=True, metavar="AGE", help="e.g. 30d, 12h, 90m")
    prune.add_argument("--cache", default=None, metavar="DIR", help="cache directory (default: $POLARS_EMBED_CACHE or the user cache dir)")
    add_common(prune)



def parse_age(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``45s`` -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"invalid age {text!r}; use e.g. 30d, 12h, 90m")
    return float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]


def command(args: argparse.Namespace) -> int:
    import polars as pl

    from ..caches import DiskCache
    from ..scale.redis_link import is_redis_url
    from ..show import for_terminal

    if is_redis_url(args.cache):
        return redis_command(args)
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
            if not confirmed(args, f"delete every entry of the cache at {cache.directory}? Paid vectors are lost [y/N] "):
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


def redis_command(args: argparse.Namespace) -> int:
    """``stats`` and ``clear`` of a cache in Redis (this library's entries only); ``prune``
    refused: Redis keeps no entry's age."""
    from ..caches.redis import RedisCache

    cache = RedisCache(args.cache)
    try:
        if args.action == "prune":
            raise ConfigurationError(f"cache prune cannot age the entries of {cache.location}: Redis keeps no entry's "
                                     "age; let Redis expire them (maxmemory-policy allkeys-lru) or clear them")
        if args.action == "stats":
            st = cache.stats()
            print(f"path     {st['path']}\nentries  {cache.entries():,}\nbytes    {st['bytes']:,} (the whole Redis)")
            return EXIT_OK
        if not confirmed(args, f"delete every entry of the cache in {cache.location}? Paid vectors are lost [y/N] "):
            print("nothing deleted", file=sys.stderr)
            return EXIT_USAGE
        print(f"removed {cache.clear():,} entries from {cache.location} (its other keys are left)")
        return EXIT_OK
    finally:
        cache.close()
