"""What every command shares: exit codes, logging, common options, and library messages put
in the words of the command line (``--dimensions``, not ``dimensions=``)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import re
import sys
import warnings
from typing import TYPE_CHECKING

from ..errors import (
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
    from collections.abc import Iterator
    from typing import TextIO

DEFAULT_MODEL = "local:all-MiniLM-L6-v2"
EXIT_OK, EXIT_FAILED_ROWS, EXIT_USAGE, EXIT_BUDGET, EXIT_LOCKED, EXIT_PROVIDER, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 5, 130
EXIT_SHARED = 6  # the Redis that workers share (--cache/--limiter redis://) failed for good
log = logging.getLogger("polars_embed")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event = {"time": round(record.created, 3), "level": record.levelname.lower(), "message": record.getMessage()}
        event.update(getattr(record, "fields", {}))
        return json.dumps(event)


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a line is logged (as ``logging.lastResort``
    does), not to the stream it was when the command started: a caller that swaps stderr
    (pytest's capture, a notebook) and closes the old one gets no logging errors."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr


@contextlib.contextmanager
def cli_logging(args: argparse.Namespace) -> Iterator[None]:
    """The command's log lines on stderr, and warnings (a cache or a ledger that cannot be
    written) as one log line each instead of file:line noise; a program that called ``main()``
    gets its logger and ``warnings.showwarning`` back when the command returns."""
    handlers, propagate, level, showwarning = log.handlers[:], log.propagate, log.level, warnings.showwarning
    handler = _Stderr()
    handler.setFormatter(_JsonFormatter() if args.log_json else logging.Formatter("polars-embed: %(message)s"))
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.DEBUG if args.debug else logging.INFO if not args.quiet else logging.WARNING)
    warnings.showwarning = lambda message, *_, **__: log.warning(str(message).removeprefix("polars-embed: "))
    try:
        yield
    finally:
        log.handlers[:], log.propagate, warnings.showwarning = handlers, propagate, showwarning
        log.setLevel(level)


def add_common(p: argparse.ArgumentParser, *, bar: bool = False) -> None:
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar, warnings only" if bar else "warnings only")
    p.add_argument("--log-json", action="store_true", help="log JSON lines to stderr (for machines)")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")


def add_model(p: argparse.ArgumentParser) -> None:
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


def without_credentials(url: str) -> str:
    """``url`` as it may be printed: no ``user:secret@``."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "") if "@" in parts.netloc else parts.netloc
    return urlunsplit(parts._replace(netloc=netloc))


def confirmed(args: argparse.Namespace, question: str) -> bool:
    """``--yes``, or a "y" typed at a terminal; without a terminal, no."""
    if args.yes:
        return True
    if not sys.stdin.isatty():
        log.error("pass --yes to delete without a terminal to confirm at")
        return False
    return input(question).strip().lower() in ("y", "yes")


#: The library's words for a setting, and the option that sets it here.
_OPTIONS = [("mode='batch' needs the OpenAI Batch API (or a server that has it), not a local model",
             "--batch needs a model of the OpenAI Batch API: pass e.g. --model text-embedding-3-small"),
            ("mode='batch' sends one line per text, so not on_long_input='chunk': use 'truncate' or 'error'",
             "--batch sends one line per text, so not --on-long-input chunk: use truncate or error"),
            ("mode='batch' is OpenAI's Batch API", "--batch is OpenAI's Batch API"), ("drop mode='batch'", "drop --batch"),
            ("pass api_key= (or use model='local:...' offline)", "or run offline with --model local:all-MiniLM-L6-v2"),
            ("model='local:", "--model local:"), ("pass base_url= and dimensions=", "pass --base-url and --dimensions"),
            ("pass dimensions=", "pass --dimensions"), (" or pass api_key=", ""), (", pass api_key=,", ","),
            ("pass a valid api_key= or set", "set a valid"), ("or pass base_url=", "or pass --base-url"),
            ("limits=Limits(max_input_tokens=...)", "limits=Limits(max_input_tokens=...) in Python (no option here: use --on-long-input truncate or error)"), ("dimensions=", "--dimensions "),
            ("input_type=", "--input-type "), ("(provider_options=)", "(--provider-option)"), ("use on_long_input='truncate' or 'chunk'", "use --on-long-input truncate or chunk"),
            ("price_per_million", "--price"), ("max_workers", "--workers"), ("max_cost", "--max-cost"),
            ("no rpm= or tpm= given", "no --rpm or --tpm given"), ("rpm must", "--rpm must"), ("tpm must", "--tpm must"), ("limiter= must be a Limiter object or", "--limiter must be"),
            ("cache '", "--cache '")]


def for_cli(message: str) -> str:
    """A library message in the words of this command (``--dimensions``, not ``dimensions=``)."""
    message = re.sub(r"provider_options=\{'(\w+)': '?([^'}]*)'?\}", r"--provider-option \1=\2", message)
    message = re.sub(r"on_long_input='(\w+)' needs", r"--on-long-input \1 needs", message)
    message = re.sub(r"provider_options \[([^]]*)\]", lambda m: "--provider-option " + m[1].replace("'", ""), message)
    for library, option in _OPTIONS:
        message = message.replace(library, option)
    return message


def exit_code(exc: PolarsEmbedError) -> int:
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


def on_this_machine(cache: str | None) -> str | None:
    """The directory of ``--cache`` for what a run keeps beside its cache (the ledger, the batch
    manifest): a run with a redis:// cache keeps them in this machine's default directory
    (None, said once), never in a folder named after the URL."""
    from ..scale.redis_link import is_redis_url, where

    if is_redis_url(cache):
        from ..caches import default_cache_dir

        log.info(f"runs with --cache {where(str(cache))} keep this on the machine that ran them: {default_cache_dir()}")
        return None
    return cache
