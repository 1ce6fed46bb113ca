"""What a run will cost before it runs: the same plan, cache lookup, token count and
packing as a real run, without a request. ``polars-embed run --dry-run`` uses it too."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from .pipeline.pack import schedule
from .pipeline.plan import as_text, make_plan
from .pipeline.tokens import long_texts, prepare_inputs

if TYPE_CHECKING:
    from collections.abc import Iterable

    from .embedder import Embedder
    from .pipeline.plan import Plan
    from .pipeline.tokens import Piece


#: The basis of a time that nothing bounds (the CLI says --rpm/--tpm).
NO_LIMITS = "no rpm= or tpm= given: nothing bounds the time"


@dataclass
class Estimate:
    rows: int = 0
    blank_rows: int = 0  # null, empty or whitespace-only: never sent
    distinct: int = 0
    cached: int = 0
    to_embed: int = 0
    long_texts: int = 0  # of those, over the model's input limit: truncated or chunked (on_long_input)
    tokens_to_pay: int = 0
    requests: int = 0
    cost_usd: float = 0.0
    seconds: float | None = None  # see ``basis``; None when nothing bounds the time
    basis: str = NO_LIMITS  # how ``seconds`` was estimated

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def frame(self) -> pl.DataFrame:
        return pl.DataFrame([self.as_dict()])

    def __repr__(self) -> str:
        time = f"~{self.seconds:,.0f} s ({self.basis})" if self.seconds is not None else f"unknown ({self.basis})"
        return (f"Estimate({self.rows:,} rows, {self.distinct:,} distinct, {self.cached:,} cached; "
                f"{self.to_embed:,} to embed in {self.requests:,} requests, {self.tokens_to_pay:,} tokens, "
                f"${self.cost_usd:.6f}, time {time})")

    def _repr_html_(self) -> str:
        """In a notebook: what a run would do, one line a figure."""
        import html

        time = f"~{self.seconds:,.0f} s ({self.basis})" if self.seconds is not None else f"unknown ({self.basis})"
        rows = [("rows", f"{self.rows:,}"), ("null or blank rows", f"{self.blank_rows:,}"),
                ("distinct texts", f"{self.distinct:,}"),
                ("already cached", f"{self.cached:,}"), ("to embed", f"{self.to_embed:,} in {self.requests:,} requests"),
                ("over the input limit", f"{self.long_texts:,}"), ("tokens to pay", f"{self.tokens_to_pay:,}"),
                ("cost", f"${self.cost_usd:.6f}"), ("time", time)]
        body = "".join(f"<tr><th style='text-align:left'>{k}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
        return f"<p><b>Estimate</b> (no request made)</p><table>{body}</table>"


def estimate_series(embedder: Embedder, parts: Iterable[pl.Series], column: str = "text") -> Estimate:
    """Estimate over slices of one column (as ``polars-embed run`` embeds them); texts
    repeated across slices count once. Requests are counted by the schedule a run uses
    (``pack.schedule``), the quota probe of a first call included."""
    est = Estimate()
    sample: list[str] = []  # a few texts to time a local model on
    seen: set[bytes] = set()
    stage = embedder.stage
    network = stage.provider.waits_on_network
    probe = network and not stage.runner.limiter.knows_quota
    for series in parts:
        plan = make_plan(as_text(series, column))
        est.rows += plan.n_rows
        est.blank_rows += plan.n_blank
        keys = embedder.keys(plan.texts)
        new = [i for i, k in enumerate(keys) if k not in seen]
        seen.update(keys[i] for i in new)
        est.distinct += len(new)
        hits = embedder.cache.get_many([keys[i] for i in new])
        misses = np.asarray([i for i, h in zip(new, hits) if h is None], dtype=np.int64)
        est.cached += len(new) - len(misses)
        est.to_embed += len(misses)
        if not len(misses):
            continue

        def tokenize(idx: np.ndarray, plan: Plan = plan) -> list[Piece]:
            pieces = prepare_inputs([plan.texts[i] for i in idx], stage.provider.tokenizer(),
                                    max_input_tokens=stage.provider.limits.max_input_tokens, policy=stage.policy,
                                    owners=idx.tolist(), describe=lambda i: f"row {int(plan.first_row[i])} of column {column!r}")
            est.tokens_to_pay += sum(p.tokens for p in pieces)
            est.long_texts += long_texts(pieces)
            return pieces

        for requests in schedule(misses, tokenize, stage.sizing, stream=network, probe=probe,
                                 check_first=stage.policy == "error"):
            est.requests += len(requests)
            if not network and len(sample) < SAMPLE:
                sample += [p.text for r in requests for p in r][: SAMPLE - len(sample)]
        probe = False
    est.cost_usd = est.tokens_to_pay * embedder.price / 1e6
    rpm, tpm = stage.runner.limiter.rpm, stage.runner.limiter.tpm
    if not est.to_embed:
        est.seconds, est.basis = 0.0, "nothing to embed"
    elif rpm or tpm:
        minutes = max(est.requests / rpm if rpm else 0.0, est.tokens_to_pay / tpm if tpm else 0.0)
        est.seconds = math.ceil(minutes * 60.0 * 10) / 10
        est.basis = "under the configured limits"
    elif sample:
        est.seconds, est.basis = _time_locally(embedder, sample, est.tokens_to_pay)
    return est


#: Texts a local model is timed on to estimate a run's time (it costs only time).
SAMPLE = 128


def _time_locally(embedder: Embedder, sample: list[str], tokens: int) -> tuple[float, str]:
    """A model on this machine's cores: time it on ``sample`` (after loading it), scale by
    tokens, and divide by the workers that share the cores."""
    import time

    provider = embedder.provider
    provider.embed(sample[:16])  # load and warm the model: not part of the rate
    started = time.perf_counter()
    done = provider.embed(sample)
    rate = max(1, done.billed_tokens) / max(1e-9, time.perf_counter() - started)
    workers = min(embedder.runner.max_workers, os.cpu_count() or 1)
    return tokens / rate / workers, f"the local model timed on {len(sample)} texts"


def estimate(df: pl.DataFrame | pl.LazyFrame, column: str, *, embedder: Embedder | None = None,
             **options: Any) -> Estimate:
    """Rows, distinct texts, already cached, tokens and cost to pay, and time under the
    configured limits, for embedding ``df[column]``; no request is made."""
    from .embedder import Embedder

    emb = embedder or Embedder(**options)
    frame = df.collect() if isinstance(df, pl.LazyFrame) else df
    if column not in frame.columns:
        from .errors import InputError

        msg = f"column {column!r} is not in the frame (columns: {', '.join(frame.columns)})"
        raise InputError(msg)
    return estimate_series(emb, [frame[column]], column)
