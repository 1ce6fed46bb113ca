"""Packing: no request over any limit, every input exactly once, close to the lower bound."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from polars_embed.pipeline.pack import lower_bound, pack


@settings(max_examples=200, deadline=None)
@given(
    counts=st.lists(st.integers(1, 500), max_size=400),
    max_inputs=st.integers(1, 64),
    max_tokens=st.integers(500, 5000),
    min_requests=st.integers(1, 16),
)
def test_no_request_over_any_limit_and_every_input_once(counts, max_inputs, max_tokens, min_requests):
    requests = pack(counts, max_inputs=max_inputs, max_tokens=max_tokens, min_requests=min_requests)
    flat = [i for r in requests for i in r]
    assert sorted(flat) == list(range(len(counts)))
    for r in requests:
        assert r and len(r) <= max_inputs
        assert sum(counts[i] for i in r) <= max_tokens
        assert r == sorted(r)


def test_large_frame_is_within_one_percent_of_the_lower_bound():
    rng = np.random.default_rng(0)
    # long-tailed lengths: most texts short, some up to the per-input limit
    counts = np.minimum(rng.lognormal(4.0, 1.3, 200_000).astype(int) + 1, 8192).tolist()
    requests = pack(counts, max_inputs=2048, max_tokens=300_000)
    bound = lower_bound(counts, 2048, 300_000)
    assert len(requests) <= bound * 1.01
    short = [20] * 100_000
    assert len(pack(short, max_inputs=2048, max_tokens=300_000)) == lower_bound(short, 2048, 300_000)
    long = [8000] * 3000  # 37 fit in a request: 82 is optimal (the bound's 80 is not reachable)
    assert len(pack(long, max_inputs=2048, max_tokens=300_000)) == 82


def test_small_jobs_are_split_for_the_pool():
    requests = pack([10] * 1000, max_inputs=2048, max_tokens=300_000, min_requests=8)
    assert len(requests) == 8
