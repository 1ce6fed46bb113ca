"""Pack inputs into requests that respect every provider limit at once."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence


def lower_bound(token_counts: Sequence[int], max_inputs: int, max_tokens: int) -> int:
    """The fewest requests any packing can use: ``max(ceil(n/max_inputs), ceil(T/max_tokens))``."""
    n = len(token_counts)
    if n == 0:
        return 0
    return max(math.ceil(n / max_inputs), math.ceil(sum(token_counts) / max_tokens))


def pack(
    token_counts: Sequence[int],
    *,
    max_inputs: int,
    max_tokens: int,
    min_requests: int = 1,
) -> list[list[int]]:
    """Group input indices into requests of at most ``max_inputs`` inputs and ``max_tokens``.

    Every count must already be ``<= max_tokens`` (the per-input limit is applied before).
    Largest inputs open requests; the smallest ones top each request up, so requests are
    filled to within one small input of the token limit. ``min_requests`` splits a small job
    into that many requests (when there are enough inputs) so a thread pool is used.
    Indices come back in ascending order inside each request.
    """
    n = len(token_counts)
    if n == 0:
        return []
    over = [i for i, t in enumerate(token_counts) if t > max_tokens]
    if over:
        msg = f"input {over[0]} has {token_counts[over[0]]} tokens, over max_tokens={max_tokens}"
        raise ValueError(msg)
    cap = max_inputs
    if min_requests > 1:
        cap = max(1, min(max_inputs, math.ceil(n / min_requests)))
        max_tokens = max(max(token_counts), min(max_tokens, math.ceil(sum(token_counts) / min_requests)))
    order = sorted(range(n), key=lambda i: token_counts[i], reverse=True)
    lo, hi = 0, n - 1  # big ones taken from lo, small ones from hi
    requests: list[list[int]] = []
    while lo <= hi:
        batch: list[int] = []
        budget = max_tokens
        while lo <= hi and len(batch) < cap and token_counts[order[lo]] <= budget:
            batch.append(order[lo])
            budget -= token_counts[order[lo]]
            lo += 1
        while lo <= hi and len(batch) < cap and token_counts[order[hi]] <= budget:
            batch.append(order[hi])
            budget -= token_counts[order[hi]]
            hi -= 1
        batch.sort()
        requests.append(batch)
    return requests
