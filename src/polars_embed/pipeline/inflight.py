"""Texts being fetched right now, so concurrent calls of one embedder pay for each once.

The streaming engine embeds slices in parallel, and two slices often share texts. The
first call to claim a text fetches it; the others wait for its vector instead of paying.
Between processes and machines, a cache with claims (``caches.redis.RedisCache``) does the
same (``claim_shared``, ``wait_shared``).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from ..errors import PolarsEmbedError


class Claim:
    """The texts one call fetches. The event is set when the whole fetch has ended (one
    event a call, not one a text); only the vectors another call waits for are kept."""

    __slots__ = ("done", "values", "wanted")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.wanted: set[bytes] = set()
        self.values: dict[bytes, tuple[np.ndarray, int]] = {}

    def wait(self, key: bytes) -> tuple[np.ndarray, int] | None:
        """The vector and tokens of ``key`` once the fetch has ended; None if it failed
        (or finished before this waiter came: the cache has it then)."""
        self.done.wait()
        return self.values.get(key)


class InFlight:
    """Distinct texts being fetched right now by some call of one embedder."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[bytes, Claim] = {}
        #: Fetches ended so far. A call that looked the cache up before another fetch ended
        #: may claim a text that fetch has just stored: it looks its claimed texts up again.
        self.released = 0

    def claim(self, keys: list[bytes], indices: np.ndarray) -> tuple[Claim, list[int], list[tuple[int, Claim]]]:
        """Split ``indices`` into the ones this call fetches (under the returned claim) and
        the ones it waits for (with the claim of the call fetching each)."""
        claim = Claim()
        mine: list[int] = []
        theirs: list[tuple[int, Claim]] = []
        with self._lock:
            pending = self._pending
            for i in indices.tolist():
                other = pending.setdefault(keys[i], claim)
                if other is claim:
                    mine.append(i)
                else:
                    other.wanted.add(keys[i])
                    theirs.append((i, other))
        return claim, mine, theirs

    def publish(self, claim: Claim, items: list[tuple[bytes, np.ndarray, int]]) -> None:
        """Hand finished vectors to the calls waiting for them."""
        with self._lock:
            if claim.wanted:
                claim.values.update((key, (vec, n)) for key, vec, n in items if key in claim.wanted)

    def release(self, claim: Claim, keys: list[bytes]) -> None:
        """End ``claim``'s fetch: its waiters take what was published, fetch the rest."""
        with self._lock:
            for key in keys:
                self._pending.pop(key, None)
            self.released += 1
        claim.done.set()


def claim_shared(cache: Any, keys: list[bytes], mine: list[int]) -> tuple[list[int], list[int], bool]:
    """Of the texts this process is to fetch, those it now claims in a cache that workers on
    other machines share, those another worker is fetching (to wait for, not pay twice), and
    whether any was claimed there. A cache without claims (``claim()``): every text is this
    process's."""
    claim = getattr(cache, "claim", None)
    if not callable(claim) or not mine:
        return mine, [], False
    won = claim([keys[i] for i in mine])
    return [i for i, w in zip(mine, won) if w], [i for i, w in zip(mine, won) if not w], True


def release_shared(cache: Any, keys: list[bytes]) -> None:
    release = getattr(cache, "release", None)
    if callable(release) and keys:
        release(keys)


def wait_shared(cache: Any, c: Any, elsewhere: list[int], stop: threading.Event) -> list[int]:
    """Wait for the texts ``elsewhere`` that other workers are fetching: each stored one is a
    cache hit of call ``c``; returns those whose worker ended without them (died, failed),
    which this process must fetch."""
    if not elsewhere:
        return []
    from .runner import Stopped

    values, reclaimed = cache.wait([c.keys[i] for i in elsewhere], stop)
    if len(values) + len(reclaimed) < len(elsewhere):
        raise Stopped("the run was stopped")
    stored = np.asarray([elsewhere[pos] for pos in values], dtype=np.int64)
    good = c.accept(stored, list(values.values()))  # the checks of any lookup: size, finite, not zeros
    c.from_cache[stored[good]] = True
    c.stats.cache_damaged += int((~good).sum())
    return [elsewhere[pos] for pos in reclaimed] + stored[~good].tolist()


class Fenced(PolarsEmbedError):
    """Texts of a request whose claims are no longer this worker's (never leaves ``Fetch``)."""

    def __init__(self, owners: set[int]) -> None:
        super().__init__(f"{len(owners)} texts were taken over by another worker")
        self.owners = owners
