"""Texts being fetched right now, so concurrent calls of one embedder pay for each once.

The streaming engine embeds slices in parallel, and two slices often share texts. The
first call to claim a text fetches it; the others wait for its vector instead of paying.
"""

from __future__ import annotations

import threading

import numpy as np


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
