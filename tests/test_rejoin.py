"""Rejoin invariants: every row back exactly once, in order, with its own text's vector."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from polars_embed import Embedder, Limits, MemoryCache
from polars_embed.testing import EmbeddingServer, server_vector


@pytest.fixture(scope="module")
def shared_server():
    with EmbeddingServer(log_texts=False) as srv:
        yield srv


texts = st.lists(st.one_of(st.none(), st.sampled_from(["", " ", "a", "b", "c"]), st.text(max_size=12)), max_size=60)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=texts, max_inputs=st.integers(1, 7))
def test_every_row_comes_back_once_in_order(shared_server, rows, max_inputs):
    emb = Embedder("text-embedding-3-small", base_url=shared_server.url, api_key="k", dimensions=8,
                   cache=MemoryCache(), limits=Limits(max_inputs=max_inputs), max_workers=3)
    out = emb.embed(pl.Series("text", rows, dtype=pl.String))
    assert out.height == len(rows)
    seen: set[str] = set()
    for text, vec, hit, cost in zip(rows, out["embedding"], out["embedding_cache_hit"], out["embedding_cost_usd"]):
        if text is None or not text.strip():
            assert vec is None and hit is None and cost == 0
            continue
        np.testing.assert_array_equal(vec.to_numpy(), server_vector("text-embedding-3-small", 8, text))
        assert hit == (text in seen)  # the first occurrence pays, repeats are hits
        assert (cost > 0) == (text not in seen)
        seen.add(text)
    emb.close()
