"""``polars-embed batch status|cancel``: the Batch API jobs that ``run --batch`` recorded."""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from ..errors import ConfigurationError, ProviderError
from .common import EXIT_OK, add_common, on_this_machine


def add_parser(sub: Any) -> None:
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
        p.add_argument("--cache", default=None, metavar="DIR", help="cache directory whose manifest to read (a redis:// cache's runs keep theirs in this machine's default one)")
        p.add_argument("--base-url", default=None, help="the server of the batches (default: $OPENAI_BASE_URL or OpenAI)")
        add_common(p)


def command(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..batch.manifest import Manifest
    from ..caches import default_cache_dir

    path = Path(on_this_machine(args.cache) or default_cache_dir()) / "batches.sqlite"
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
