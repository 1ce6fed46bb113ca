"""``polars-embed ledger``: the run ledger, one record per call and per run."""

from __future__ import annotations

import argparse
from typing import Any

from .common import EXIT_OK, add_common, on_this_machine


def add_parser(sub: Any) -> None:
    ledger = sub.add_parser("ledger", help="print the run ledger (one record per call and per run)",
                            description="Print the run ledger: one record per embedding call and per "
                            "`polars-embed run` (rows, hits, tokens, cost, cost saved, requests, wall time).")
    ledger.add_argument("--cache", default=None, metavar="DIR", help="cache directory whose ledger to read (a redis:// cache's runs record theirs in this machine's default one)")
    ledger.add_argument("--last", type=int, default=20, metavar="N", help="the N most recent records (default: 20)")
    ledger.add_argument("--csv", action="store_true", help="print every column as CSV")
    add_common(ledger)



def command(args: argparse.Namespace) -> int:
    from ..caches import default_cache_dir
    from ..ledger import ledger
    from ..show import for_terminal, readable_ledger

    directory = on_this_machine(args.cache) or default_cache_dir()
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
