"""The streaming engine: slices from several threads, bounded memory, each text sent once."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import polars as pl
import pytest

from polars_embed.pipeline.inflight import InFlight
from polars_embed.testing import server_vector


@pytest.mark.slow
def test_sink_parquet_of_200k_rows_sends_each_distinct_text_once(make_embedder, server, tmp_path):
    n, distinct = 200_000, 20_000
    src = tmp_path / "in.parquet"
    pl.DataFrame({"id": range(n), "text": [f"streamed document {i % distinct}" for i in range(n)]}).write_parquet(src)
    emb = make_embedder(dimensions=16)
    dst = tmp_path / "out.parquet"
    pl.scan_parquet(src).with_columns(emb.expr("text")).sink_parquet(dst)
    out = pl.read_parquet(dst)
    assert out.height == n and out["id"].to_list() == list(range(n))
    seen = server.texts_seen()
    assert len(seen) == len(set(seen)) == distinct
    assert (~out["embedding_cache_hit"]).sum() == distinct
    assert out["embedding_cost_usd"].sum() == pytest.approx(server.billed_tokens * 0.02 / 1e6)
    for row in out.sample(200, seed=0).iter_rows(named=True):
        assert row["embedding"] == pytest.approx(server_vector("text-embedding-3-small", 16, row["text"]).tolist())


@pytest.mark.parametrize("cache", [True, False])
def test_concurrent_calls_share_texts_in_flight(make_embedder, server, tmp_path, cache):
    """Two calls at once on overlapping texts: the shared ones are paid once, with a cache
    and without one (then the vectors are handed from one call to the other)."""
    server.latency = 0.3
    emb = make_embedder(cache=(tmp_path / "c") if cache else False)
    a = pl.Series("text", [f"shared {i}" for i in range(300)] + [f"only a {i}" for i in range(100)])
    b = pl.Series("text", [f"only b {i}" for i in range(100)] + [f"shared {i}" for i in range(300)])
    with ThreadPoolExecutor(2) as pool:
        out_a, out_b = pool.map(emb.embed, [a, b])
    seen = server.texts_seen()
    assert len(seen) == len(set(seen)) == 500
    for series, out in ((a, out_a), (b, out_b)):
        for text, vec in zip(series, out["embedding"]):
            assert vec.to_list() == pytest.approx(server_vector("text-embedding-3-small", 64, text).tolist())


def test_a_failed_claim_lets_the_waiter_fetch():
    inflight = InFlight()
    keys = [b"k0", b"k1"]
    owner, mine, theirs = inflight.claim(keys, np.array([0, 1]))
    assert mine == [0, 1] and not theirs
    _waiter, mine2, theirs2 = inflight.claim(keys, np.array([0, 1]))
    assert not mine2 and [i for i, _ in theirs2] == [0, 1]
    inflight.publish(owner, [(b"k0", np.ones(2, np.float32), 3)])  # k1's request failed
    inflight.release(owner, keys)
    got = [claim.wait(keys[i]) for i, claim in theirs2]
    assert got[0][1] == 3 and got[1] is None
    assert inflight.claim(keys, np.array([0, 1]))[1] == [0, 1]  # released: free to claim again
