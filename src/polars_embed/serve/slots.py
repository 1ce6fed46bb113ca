"""The proxy's embedders, one per (model, dimensions, role, input kind), made on first use and
given back when idle, so that no client can take them from the others.

A client may ask for any model and size; each pair needs an embedder (a thread pool, a
limiter's share). They are bounded (``SIZE``), and when a new one is needed the one idle
longest goes; a proxy key may hold at most ``SHARE`` of them, so a key trying every size
evicts only its own. One in use by a request is never evicted: when every slot is busy, the
request is answered 503 (try again) rather than one of them being closed under a request.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .wire import OpenAIError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from ..embedder import Embedder

#: Embedders one proxy keeps, and how many of them one proxy key may hold.
SIZE, SHARE = 32, 8
#: Seconds an embedder may sit unused before the flush loop gives it back.
IDLE_SECONDS = 600.0

SlotKey = tuple[str, "int | None", str, str]  # model, dimensions (None: the model's own), role, "text"/"tokens"


@dataclass
class Slot:
    embedder: Embedder
    owner: str  # the proxy key whose request made it
    last_used: float
    busy: int = 0
    served: bool = False  # it answered a request: the model and size work


class Slots:
    """Embedders made by ``make(slot_key)``; ``use`` one for the length of a request."""

    def __init__(self, make: Callable[[SlotKey], Embedder], *, size: int = SIZE, share: int | None = SHARE,
                 idle_seconds: float = IDLE_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self._make, self.size, self.share, self.idle_seconds, self._clock = make, size, share, idle_seconds, clock
        self._slots: dict[SlotKey, Slot] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._slots)

    @contextlib.contextmanager
    def use(self, key: SlotKey, owner: str) -> Iterator[Slot]:
        """The slot of ``key`` (made if need be), held busy until the block ends."""
        with self._lock:
            slot = self._slots.get(key)
            if slot is not None:
                slot.busy += 1
        if slot is None:
            slot = self._add(key, owner)
        try:
            yield slot
        finally:
            with self._lock:
                slot.busy -= 1
                slot.last_used = self._clock()

    def _add(self, key: SlotKey, owner: str) -> Slot:
        """A new slot for ``key``, made outside the lock (making one may ask the upstream what
        a model is, and no other request waits for that), held busy."""
        embedder = self._make(key)  # an OpenAIError for a model this proxy does not serve
        with self._lock:
            slot = self._slots.get(key)
            if slot is not None:  # another request made it meanwhile: theirs, and ours is spare
                gone = [Slot(embedder, owner, 0.0)]
            else:
                try:
                    gone = self._room(owner)
                except OpenAIError:
                    _close([Slot(embedder, owner, 0.0)])
                    raise
                slot = self._slots[key] = Slot(embedder, owner, self._clock())
            slot.busy += 1
        _close(gone)
        return slot

    def peek(self, key: SlotKey) -> Embedder | None:
        with self._lock:
            slot = self._slots.get(key)
            return slot.embedder if slot is not None else None

    def forget(self, key: SlotKey, slot: Slot) -> None:
        """A slot that never worked (the upstream refused its model or size) does not stay."""
        with self._lock:
            if not slot.served and self._slots.get(key) is slot and slot.busy == 0:
                del self._slots[key]
                gone = [slot]
            else:
                gone = []
        _close(gone)

    def _room(self, owner: str) -> list[Slot]:
        """Make room for one more slot of ``owner`` (the lock held): the slots given back."""
        if self.share is not None:
            mine = [k for k, s in self._slots.items() if s.owner == owner]
            if len(mine) >= self.share:
                return self._evict(mine, f"this key uses {self.share} model and dimensions pairs at once already")
        if len(self._slots) >= self.size:
            return self._evict(list(self._slots), "every model and dimensions pair of this proxy is in use")
        return []

    def _evict(self, among: list[SlotKey], busy: str) -> list[Slot]:
        idle = [k for k in among if self._slots[k].busy == 0]
        if not idle:
            raise OpenAIError(503, f"{busy}; try again shortly", kind="server_error")
        oldest = min(idle, key=lambda k: self._slots[k].last_used)
        return [self._slots.pop(oldest)]

    def sweep(self) -> None:
        """Give back the embedders idle for ``idle_seconds``."""
        now = self._clock()
        with self._lock:
            old = [k for k, s in self._slots.items() if s.busy == 0 and now - s.last_used >= self.idle_seconds]
            gone = [self._slots.pop(k) for k in old]
        _close(gone)

    def close(self) -> None:
        with self._lock:
            gone, self._slots = list(self._slots.values()), {}
        _close(gone)


def _close(slots: list[Slot]) -> None:
    for slot in slots:
        slot.embedder.runner.close()  # its thread pool; the cache is the proxy's, shared
