"""What ``polars-embed run`` shows a person: the progress bar, the summary of a run and the
estimate of a dry run. Every row of the run is in one line of the summary (see
``pipeline/stats.py``: embedded now, found in the cache, repeats, null or blank, failed)."""

from __future__ import annotations

import contextlib
import sys
import threading
from typing import TYPE_CHECKING, Any

from .common import for_cli, log

if TYPE_CHECKING:
    from ..estimate import Estimate


def print_estimate(emb: Any, est: Estimate, source: str) -> None:
    eta = f"~{est.seconds:,.0f} s ({est.basis})" if est.seconds is not None else f"unknown ({est.basis})"
    print(f"dry run of {source} ({emb.model}, {emb.dimensions} dims): no request made")
    print(f"  rows            {est.rows:,}")
    print(f"  null or blank   {est.blank_rows:,}")
    print(f"  distinct texts  {est.distinct:,}")
    print(f"  already cached  {est.cached:,}")
    print(f"  to embed        {est.to_embed:,} in {est.requests:,} requests")
    if est.long_texts:
        print(f"  over the limit  {est.long_texts:,} texts, {_long_input(emb)}")
    from ..pipeline.tokens import Utf8BytesTokenizer

    bound = isinstance(emb.provider.tokenizer(), Utf8BytesTokenizer)
    print(f"  tokens to pay   {est.tokens_to_pay:,}" + (" at most (counted as UTF-8 bytes: the provider's tokenizer "
                                                         "is not available offline)" if bound else ""))
    print(f"  estimated cost  ${est.cost_usd:.6f}")
    print(f"  estimated time  {for_cli(eta)}")


def _long_input(emb: Any) -> str:
    limit = emb.provider.limits.max_input_tokens
    if emb.stage.policy == "chunk":
        return f"embedded in chunks of up to {limit:,} tokens, averaged"
    return f"truncated to {limit:,} tokens (--on-long-input chunk embeds them whole)"


def summary_fields(emb: Any, result: Any) -> dict[str, Any]:
    """The summary for machines (``--log-json``): the same figures as the printed one."""
    s = result.stats
    return {
        "rows": s.rows, "blank_rows": s.blank_rows, "distinct": s.distinct, "new_texts": s.misses,
        "hits": s.hit_rows, "hit_rate": round(s.hit_rate, 6), "cached_rows": s.cached_rows,
        "repeated_rows": s.hit_rows - s.cached_rows, "long_texts": s.long_texts, "on_long_input": emb.on_long_input,
        "tokens_billed": s.tokens_billed, "tokens_estimated": s.tokens_estimated,
        "cost_usd": round(s.cost_usd, 8), "cost_saved_usd": round(s.cost_saved_usd, 8), "requests": s.requests,
        "retries": s.retries, "failed_rows": len(result.failed), "wall_seconds": round(s.wall_seconds, 2),
        "output": str(result.output),
    }


def print_summary(emb: Any, result: Any) -> None:
    s = result.stats
    repeats = s.hit_rows - s.cached_rows
    print(f"embedded {s.rows:,} rows ({s.distinct:,} distinct texts) with {emb.model} in {s.wall_seconds:.1f} s")
    unit = "batch" if emb.mode == "batch" else "request"
    print(f"  new texts      {s.misses:,} embedded in {s.requests:,} {unit}{'es' if unit == 'batch' and s.requests != 1 else 's' * (s.requests != 1)} "
          f"({s.retries} retr{'ies' if s.retries != 1 else 'y'})")
    print(f"  cache hits     {s.hit_rows:,} rows ({s.hit_rate:.0%} of the {s.vector_rows:,} rows with a vector)")
    print(f"                 {s.cached_rows:,} in the cache before this run, {repeats:,} repeats within it")
    print(f"  null or blank  {s.blank_rows:,} rows (a null vector, never sent)")
    if s.long_texts:
        print(f"  over the limit {s.long_texts:,} texts, {_long_input(emb)}")
    if emb.price:
        print(f"  tokens billed  {s.tokens_billed:,}")
        price = f", Batch API price ${emb.price:g}/1M tokens" if emb.mode == "batch" else ""
        print(f"  cost           ${s.cost_usd:.6f} (saved by the cache: ${s.cost_saved_usd:.6f}{price})")
        if s.tokens_estimated:
            print(f"                 an estimate, never below the bill: {emb.provider.name} reported no usage for "
                  f"{s.tokens_estimated:,} of the tokens, counted as their UTF-8 bytes")
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
    rate and cost so far (tqdm, on stderr when it is a terminal). While it is open, log
    lines are written above it (``logging_redirect_tqdm``), never into it."""

    def __init__(self, total: int, *, disable: bool) -> None:
        from ..pipeline.stats import RunStats

        self.done = RunStats()
        self.total, self.disable = total, disable
        self._lock = threading.Lock()
        self._bar: Any = None
        self._redirect = contextlib.ExitStack()

    def __enter__(self) -> Progress:  # noqa: PYI034 - the bar itself
        if not self.disable:
            from tqdm.auto import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._redirect.enter_context(logging_redirect_tqdm(loggers=[log], tqdm_class=tqdm))
            self._bar = tqdm(total=self.total, unit="rows", file=sys.stderr, dynamic_ncols=True, smoothing=0.1)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, delta: Any) -> None:
        with self._lock:
            self.done.add(delta)
            if self._bar is not None:
                self._bar.update(delta.rows)
                self._bar.set_postfix_str(f"hits {self.done.hit_rate:.0%}, ${self.done.cost_usd:.4f}", refresh=False)

    def close(self) -> None:
        with self._lock:
            if self._bar is not None:
                self._bar.close()
                self._bar = None
            self._redirect.close()
