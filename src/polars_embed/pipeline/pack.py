"""Request sizing, in one place: how many inputs and tokens each request carries.

``pack`` groups inputs under every limit at once; ``Sizing`` decides the limits a request
gets (the provider's, smaller under a tokens/min quota, split so the pool is used) and
``schedule`` the order requests leave in: both a run (``fetch.py``) and ``estimate()`` pack
with them.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    import numpy as np

    from ..limiters import Limiter
    from ..providers.base import Limits
    from .tokens import Piece


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


class Sizing:
    """The size of each request of one embedder: its provider's limits, its pool, its quota.

    * Under a tokens/min limit a request carries about a quarter second of quota (but
      enough that requests/min never binds first): no burst empties the bucket, and the
      last request ends close to the quota's ideal time.
    * A job smaller than one full request per worker is split over the pool, but never
      below a quarter of the input limit a request, so a 5,000-row partition does not
      become dozens of tiny requests that would eat a requests/min quota.
    """

    def __init__(self, limits: Limits, workers: int, limiter: Limiter) -> None:
        self.limits = limits
        self.workers = workers
        self.limiter = limiter

    def request_tokens(self) -> int:
        """Tokens one request may carry."""
        tpm, rpm = self.limiter.tpm, self.limiter.rpm
        if not tpm:
            return self.limits.max_request_tokens
        cap = tpm / 240.0
        if rpm:
            cap = max(cap, 2.0 * tpm / rpm)
        return max(1, min(self.limits.max_request_tokens, int(cap)))

    def parts(self, n: int, wanted: int | None = None) -> int:
        """Requests to split ``n`` inputs into: up to ``wanted`` (default: one per worker)."""
        floor = max(1, self.limits.max_inputs // 4)
        return max(1, min(self.workers if wanted is None else wanted, n // floor))

    def split_size(self, n: int) -> int:
        """Inputs a request when ``n`` inputs are split over the pool."""
        return max(1, min(self.limits.max_inputs, math.ceil(n / self.parts(n))))

    def bound(self, n: int, tokens: float) -> int:
        """The lower bound of requests for ``n`` inputs of ``tokens`` in all (an estimate is fine)."""
        return bound_for(n, tokens, self.limits.max_inputs, self.request_tokens())

    def requests(self, pieces: list[Piece], min_requests: int | None = None) -> list[list[Piece]]:
        """Pack ``pieces`` into requests (split over the pool unless ``min_requests`` says less)."""
        if not pieces:
            return []
        max_tokens = max(max(p.tokens for p in pieces), self.request_tokens())
        groups = pack([p.tokens for p in pieces], max_inputs=self.limits.max_inputs, max_tokens=max_tokens,
                      min_requests=self.parts(len(pieces), min_requests))
        return [[pieces[i] for i in g] for g in groups]


#: Inputs of the quota probe, when the job has a request to spare: its answer comes back
#: at the latency floor, and every other request waits for it.
PROBE_INPUTS = 16


def schedule(
    todo: np.ndarray,
    tokenize: Callable[[np.ndarray], list[Piece]],
    sizing: Sizing,
    *,
    stream: bool,
    probe: bool,
    check_first: bool,
    untokenized: Callable[[np.ndarray], list[Piece] | None] | None = None,
) -> Iterator[list[list[Piece]]]:
    """The requests of one call in the order they may leave, tokenizing as it goes.

    The first item is the head request alone: it leaves while the rest is tokenized (and,
    with ``probe``, goes alone until its answer tells the quota). Then:

    * a job that fits one request per worker, for a provider that waits on the network
      (``stream``), sends each next request's worth as soon as it is tokenized: the server
      works while the client counts. Probing, the head is a few inputs. A request's worth
      that ``untokenized`` accepts leaves at once, to be counted when its answer is in.
    * anything bigger, or a model on this machine's cores, is packed as a whole after the
      head, which keeps it at the lower bound of requests.
    * ``check_first`` (``on_long_input="error"``): every text is tokenized, so every row is
      checked, before anything is paid for.
    """
    n = len(todo)
    if check_first:
        head, *rest = sizing.requests(tokenize(todo))
        yield [head]
        if rest:
            yield rest
        return
    size = sizing.split_size(n)
    first, later = tokenize(todo[:size]), todo[size:]
    parts = math.ceil(n / size)
    bound = sizing.bound(n, sum(p.tokens for p in first) * n / min(size, n))
    by_segment = stream and bound <= parts
    rest_of_first: list[Piece] = []
    if by_segment and probe and bound < parts:  # a few inputs find the quota out sooner
        cut = min(PROBE_INPUTS, max(1, len(first) // 4))
        first, rest_of_first = first[:cut], first[cut:]
    head, *spill = sizing.requests(first, min_requests=1)
    yield [head]
    if by_segment:
        spilled = [r for pieces in (*spill, rest_of_first) for r in sizing.requests(pieces, min_requests=1)]
        if spilled:
            yield spilled
        for start in range(0, len(later), size):
            segment = later[start : start + size]
            quick = untokenized(segment) if untokenized is not None else None
            yield [quick] if quick else sizing.requests(tokenize(segment), min_requests=1)
    else:
        remaining = [p for r in spill for p in r] + (tokenize(later) if len(later) else [])
        if remaining:
            yield sizing.requests(remaining)
