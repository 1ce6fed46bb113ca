"""What a run will cost before it runs: the same plan, cache lookup, token count and
packing as a real run, without a request. ``polars-embed run --dry-run`` uses it too."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import polars as pl

from .plan import as_text, content_keys, key_prefix, make_plan
from .tokens import prepare_inputs

if TYPE_CHECKING:
    from collections.abc import Iterable

    from .embedder import Embedder


@dataclass
class Estimate:
    rows: int = 0
    distinct: int = 0
    cached: int = 0
    to_embed: int = 0
    tokens_to_pay: int = 0
    requests: int = 0
    cost_usd: float = 0.0
    seconds: float | None = None  # under the configured rpm/tpm; None without limits

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def frame(self) -> pl.DataFrame:
        return pl.DataFrame([self.as_dict()])


def estimate_series(embedder: Embedder, parts: Iterable[pl.Series], column: str = "text") -> Estimate:
    """Estimate over slices of one column; texts repeated across slices count once."""
    est = Estimate()
    seen: set[bytes] = set()
    prefix = key_prefix(embedder.provider.name, embedder.model, embedder.dimensions)
    limits = embedder.provider.limits
    tokenizer = embedder.provider.tokenizer()
    for series in parts:
        plan = make_plan(as_text(series, column))
        est.rows += plan.n_rows
        keys = content_keys(plan.texts, prefix)
        new = [i for i, k in enumerate(keys) if k not in seen]
        seen.update(keys[i] for i in new)
        est.distinct += len(new)
        hits = embedder.cache.get_many([keys[i] for i in new])
        misses = [i for i, h in zip(new, hits) if h is None]
        est.cached += len(new) - len(misses)
        est.to_embed += len(misses)
        pieces = prepare_inputs(
            [plan.texts[i] for i in misses], tokenizer,
            max_input_tokens=limits.max_input_tokens, policy=embedder.on_long_input,
            row_of=[int(plan.first_row[i]) for i in misses], column=column,
        )
        est.tokens_to_pay += sum(p.tokens for p in pieces)
        est.requests += len(embedder._requests(pieces))
    est.cost_usd = est.tokens_to_pay * embedder.price / 1e6
    rpm, tpm = embedder.runner.limiter.rpm, embedder.runner.limiter.tpm
    if rpm or tpm:
        minutes = max(est.requests / rpm if rpm else 0.0, est.tokens_to_pay / tpm if tpm else 0.0)
        est.seconds = math.ceil(minutes * 60.0 * 10) / 10
    return est


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
