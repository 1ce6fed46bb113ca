"""What one call has so far: per distinct text its vector, tokens, cost and error, and the
output rows those vectors fill.

The rows are filled as texts finish (``Results.place``, by the fetch after each request),
while the server still works on the others: the output buffer (20,000 rows x 3,072
dimensions is 246 MB) is written, and its memory first touched, while the client would
otherwise wait, and ``rows()`` at the end copies only what was not placed yet (cache hits,
texts another call fetched). Only outputs of ``PLACE_BYTES`` or more are placed so.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: The output size (bytes) from which rows are placed as their texts finish.
PLACE_BYTES = 64 * 2**20


@dataclass
class Results:
    """Per distinct text of one call: its vector, tokens as sent, cost, and why it failed;
    ``inverse``: the text of each output row (-1: a null or blank row), when rows are kept."""

    vectors: np.ndarray
    tokens: np.ndarray
    cost: np.ndarray
    errors: dict[int, str] = field(default_factory=dict)
    inverse: np.ndarray | None = None
    _out: np.ndarray | None = field(default=None, repr=False)  # (rows, dim), made at the first place()
    _placed: np.ndarray | None = field(default=None, repr=False)  # rows already written
    _by_text: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    @classmethod
    def empty(cls, n: int, dim: int, inverse: np.ndarray | None = None) -> Results:
        """Results of ``n`` texts; rows are placed as texts finish only for an output of
        ``PLACE_BYTES`` or more (a smaller one is copied at the end in milliseconds, and a
        streamed run's partitions in flight would each hold theirs meanwhile)."""
        if inverse is not None and len(inverse) * dim * 4 < PLACE_BYTES:
            inverse = None
        return cls(np.zeros((n, dim), np.float32), np.zeros(n, np.int64), np.zeros(n, np.float64), inverse=inverse)

    def _rows_of(self, texts: np.ndarray) -> np.ndarray:
        """The output rows of ``texts`` (rows sorted by text once, then sliced)."""
        assert self.inverse is not None
        if self._by_text is None:
            order = np.argsort(self.inverse, kind="stable")
            starts = np.searchsorted(self.inverse[order], np.arange(len(self.vectors) + 1))
            self._by_text = order, starts
        order, starts = self._by_text
        begin, count = starts[texts], starts[texts + 1] - starts[texts]
        offsets = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
        return order[np.repeat(begin, count) + offsets]

    def place(self, texts: np.ndarray) -> None:
        """Write the vectors of ``texts`` (finished: never written again) into their rows.
        Threads place different texts, so different rows."""
        if self.inverse is None or not len(texts):
            return
        if self._out is None:
            self._out = np.empty((len(self.inverse), self.vectors.shape[1]), np.float32)
            self._placed = np.zeros(len(self.inverse), dtype=bool)
        rows = self._rows_of(texts)
        self._out[rows] = self.vectors[self.inverse[rows]]
        self._placed[rows] = True  # type: ignore[index]

    def rows(self, inverse: np.ndarray, null: np.ndarray) -> np.ndarray:
        """The ``(rows, dim)`` output: each row its text's vector, rows ``null`` zeros."""
        n_texts = len(self.vectors)
        if self._out is None or self._placed is None:
            take = np.clip(inverse, 0, max(n_texts - 1, 0))
            out = self.vectors.take(take, axis=0) if n_texts else np.zeros((len(inverse), self.vectors.shape[1]), np.float32)
        else:
            out = self._out
            todo = np.flatnonzero(~self._placed & ~null)
            out[todo] = self.vectors[inverse[todo]]
        out[null] = 0.0
        return out
