"""Pack inputs into requests that respect every provider limit at once."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence


def lower_bound(token_counts: Sequence[int], max_inputs: int, max_tokens: int) -> int:
    """The fewest requests any packing can use: ``max(ceil(n/max_inputs), ceil(T/max_tokens))``."""
    return bound_for(len(token_counts), sum(token_counts), max_inputs, max_tokens)


def bound_for(n: int, total_tokens: float, max_inputs: int, max_tokens: int) -> int:
    """``lower_bound`` from the totals alone (``total_tokens`` may be an estimate)."""
    if n == 0:
        return 0
    return max(math.ceil(n / max_inputs), math.ceil(total_tokens / max_tokens))


def pack(
    token_counts: Sequence[int],
    *,
    max_inputs: int,
    max_tokens: int,
    min_requests: int = 1,
) -> list[list[int]]:
    """Group input indices into requests of at most ``max_inputs`` inputs and ``max_tokens``.

    Every count must already be ``<= max_tokens`` (the per-input limit is applied before).
    Inputs are sorted by size and each request mixes big and small ones around the mean
    size, so requests fill the input limit and the token limit together (within 1% of the
    lower bound on large frames). ``min_requests`` splits a small job
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
    density = sum(token_counts) / n  # mean tokens per input
    lo, hi = 0, n - 1  # big inputs are taken from lo, small ones from hi
    requests: list[list[int]] = []
    while lo <= hi:
        batch: list[int] = []
        used = 0
        while lo <= hi and len(batch) < cap:
            big, small = token_counts[order[lo]], token_counts[order[hi]]
            # Take the big one while the request stays at or under the mean density, so
            # every request mixes big and small inputs and fills both limits together.
            if used + big <= max_tokens and used + big <= density * (len(batch) + 1):
                used += big
                batch.append(order[lo])
                lo += 1
            elif used + small <= max_tokens:
                used += small
                batch.append(order[hi])
                hi -= 1
            else:
                break
        batch.sort()
        requests.append(batch)
    return requests
