"""The benchmark corpus: long-tailed lengths and a share of duplicates, deterministic."""

from __future__ import annotations

import numpy as np


def corpus(n: int, *, duplicates: float = 0.3, mean_log: float = 3.5, sigma: float = 1.2,
           max_words: int = 4000, seed: int = 0) -> list[str]:
    """``n`` texts of which ``duplicates`` are repeats of earlier ones, in a shuffled order."""
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(5000)]
    distinct = int(n * (1 - duplicates))
    lengths = np.minimum(rng.lognormal(mean_log, sigma, distinct).astype(int) + 1, max_words)
    texts = [f"doc {i}: " + " ".join(rng.choice(words, size=k)) for i, k in enumerate(lengths)]
    picks = np.concatenate([np.arange(distinct), rng.integers(0, distinct, n - distinct)])
    rng.shuffle(picks)
    return [texts[i] for i in picks]
