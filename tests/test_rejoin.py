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


@settings(max_examples=60, deadline=None)
@given(inverse=st.lists(st.integers(-1, 9), max_size=40), placed=st.lists(st.sets(st.integers(0, 9)), max_size=4),
       failed=st.sets(st.integers(0, 9)))
def test_rows_placed_as_texts_finish_are_the_rows_a_take_would_give(inverse, placed, failed):
    """Rows written while the fetch runs (``Results.place``, any batches of finished texts)
    plus what ``rows()`` fills at the end are exactly each row's text's vector, null rows zero."""
    from polars_embed.pipeline.results import Results

    inv = np.asarray(inverse, dtype=np.int64)
    res = Results(np.zeros((10, 3), np.float32), np.zeros(10, np.int64), np.zeros(10), inverse=inv)  # placed, however small
    assert Results.empty(10, 3, inv).inverse is None  # (empty() places only outputs of PLACE_BYTES or more)
    res.vectors[:] = np.arange(30, dtype=np.float32).reshape(10, 3) + 1
    done: set[int] = set()
    for batch in placed:
        batch = sorted(batch - done - failed)
        res.place(np.asarray(batch, dtype=np.int64))
        done.update(batch)
    null = (inv < 0) | np.isin(inv, sorted(failed))
    expected = np.where(null[:, None], 0.0, res.vectors[np.clip(inv, 0, 9)])
    assert np.array_equal(res.rows(inv, null), expected)
