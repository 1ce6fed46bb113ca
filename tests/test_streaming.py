"""The streaming engine: slices from several threads, bounded memory, each text sent once."""

from __future__ import annotations

import polars as pl
import pytest

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
