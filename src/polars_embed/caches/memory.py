"""In-memory caches: ``MemoryCache`` (bounded, per process) and ``NoCache`` (``cache=False``)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import numpy as np

from .base import decode_value, encode_value

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path


class MemoryCache:
    """A dict-backed cache for one process (tests, throwaway notebooks); with ``max_bytes``,
    the least recently used entries are dropped beyond that size."""

    def __init__(self, max_bytes: int | None = None) -> None:
        self.max_bytes = max_bytes
        self._data: OrderedDict[bytes, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        with self._lock:
            return {"max_bytes": self.max_bytes, "data": list(self._data.items())}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["max_bytes"])  # type: ignore[misc]
        self._data.update(state["data"])
        self._bytes = sum(len(v) for v in self._data.values())

    def get_many(self, keys: Sequence[bytes]) -> list[tuple[np.ndarray, int] | None]:
        with self._lock:
            raws = [self._data.get(k) for k in keys]
            if self.max_bytes is not None:
                for k, r in zip(keys, raws):
                    if r is not None:
                        self._data.move_to_end(k)
        return [None if r is None else decode_value(r) for r in raws]

    def set_many(self, items: Sequence[tuple[bytes, np.ndarray, int]], *, tag: str | None = None) -> None:
        with self._lock:
            for key, vector, tokens in items:
                value = encode_value(vector, tokens)
                old = self._data.pop(key, None)
                self._bytes += len(value) - (len(old) if old is not None else 0)
                self._data[key] = value
            while self.max_bytes is not None and self._bytes > self.max_bytes and self._data:
                self._bytes -= len(self._data.popitem(last=False)[1])

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"backend": "memory", "entries": len(self._data), "bytes": self._bytes}

    def ledger_path(self) -> Path | None:
        """No place of its own: the ledger goes to the default directory."""
        return None

    def close(self) -> None:
        pass


class NoCache:
    """``cache=False``: nothing is looked up or stored."""

    def get_many(self, keys: Sequence[bytes]) -> list[tuple[np.ndarray, int] | None]:
        return [None] * len(keys)

    def set_many(self, items: Sequence[tuple[bytes, np.ndarray, int]], *, tag: str | None = None) -> None:
        pass

    def stats(self) -> dict[str, Any]:
        return {"backend": "none", "entries": 0, "bytes": 0}

    def ledger_path(self) -> Path | None:
        return None

    def close(self) -> None:
        pass
