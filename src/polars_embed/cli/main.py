"""The ``polars-embed`` command: each command group is a module of this folder (``run``,
``cache``, ``ledger``, ``doctor``, ``serve``, ``batch``); this one only wires them.

Errors are one line on stderr (``--debug`` shows the traceback). Exit codes:
0 done; 1 finished, but some rows failed; 2 usage, configuration, input or output error;
3 stopped by --max-cost; 4 another run holds the output's lock; 5 the provider failed
for good; 6 the shared Redis failed for good; 130, 143, 129 stopped by SIGINT (Ctrl-C), SIGTERM or
SIGHUP (see ``stopping.py``). Finished work is cached in every case.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from .. import __version__
from ..errors import PolarsEmbedError
from . import batch, cache, doctor, ledger, run, serve
from .common import EXIT_INTERRUPTED, cli_logging, exit_code, for_cli, log

if TYPE_CHECKING:
    from collections.abc import Sequence

#: Each command group, in the order ``--help`` lists them: ``add_parser(sub)`` and ``command(args)``.
COMMANDS = {"run": run, "cache": cache, "ledger": ledger, "doctor": doctor, "serve": serve, "batch": batch}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="polars-embed",
        description="Embed text columns cheaply, fast and without losing work.",
        epilog="Exit codes: 0 done, 1 some rows failed, 2 usage, configuration, input or output error, 3 --max-cost reached, "
        "4 output locked by another run, 5 provider failed, 6 the shared Redis failed, 130/143/129 stopped by "
        "SIGINT/SIGTERM/SIGHUP.",
    )
    parser.add_argument("--version", action="version", version=f"polars-embed {__version__}")
    # also before the command (`polars-embed -q run ...`); a subparser's own defaults would
    # overwrite these, so they have names of their own and are merged in main()
    parser.add_argument("--quiet", "-q", action="store_true", dest="quiet_", help="no progress bar, warnings only")
    parser.add_argument("--log-json", action="store_true", dest="log_json_", help="log JSON lines to stderr")
    parser.add_argument("--debug", action="store_true", dest="debug_", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for group in COMMANDS.values():
        group.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("quiet", "log_json", "debug"):
        setattr(args, name, getattr(args, name, False) or getattr(args, name + "_"))
    with cli_logging(args):
        return _command(args)


def _command(args: argparse.Namespace) -> int:
    try:
        return COMMANDS[args.command].command(args)
    except PolarsEmbedError as exc:
        if args.debug:
            raise
        code, message = exit_code(exc), for_cli(str(exc).splitlines()[0])
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
