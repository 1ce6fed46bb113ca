"""Core figures on a 100,000-row frame against the local server (not a test: it prints).

    python bench/core_figures.py

Prints the number of requests against the lower bound max(ceil(n/2048), ceil(T/300k))
and checks sum(embedding_cost_usd) against the server's billed usage x price.
"""

from __future__ import annotations

import tempfile
import time

import polars as pl
from corpus import corpus

from polars_embed import Embedder
from polars_embed.pipeline.pack import lower_bound
from polars_embed.testing import EmbeddingServer


def main() -> None:
    texts = corpus(100_000, max_words=4000)
    df = pl.DataFrame({"text": texts})
    with EmbeddingServer(log_texts=False) as srv, tempfile.TemporaryDirectory() as d:
        emb = Embedder("text-embedding-3-small", base_url=srv.url, api_key="k", dimensions=64, cache=d)
        t = time.perf_counter()
        out = df.with_columns(emb.expr("text"))
        wall = time.perf_counter() - t
        counts = [r.tokens for r in srv.ok_records()]
        distinct_counts = out.filter(~pl.col("embedding_cache_hit"))["embedding_tokens"].to_list()
        bound = lower_bound(distinct_counts, 2048, 300_000)
        billed = srv.billed_tokens
        cost = out["embedding_cost_usd"].sum()
        print(f"rows {df.height:,}  distinct {len(distinct_counts):,}  tokens billed {billed:,}  wall {wall:.1f}s")
        print(f"requests {len(counts)}  lower bound {bound}  ratio {len(counts) / bound:.4f}")
        print(f"sum(embedding_cost_usd) = {cost:.10f}  billed x price = {billed * 0.02 / 1e6:.10f}  "
              f"relative difference {abs(cost - billed * 0.02 / 1e6) / (billed * 0.02 / 1e6):.2e}")
        emb.close()


if __name__ == "__main__":
    main()
