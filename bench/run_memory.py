"""Peak memory of `polars-embed run` on 1,000,000 rows with 1,536-dim vectors (not a test).

    python bench/run_memory.py [--rows 1000000] [--partition-rows 5000]

Starts the project's local server in another process, writes an input Parquet file,
runs the CLI in a child process and prints its peak RSS (ru_maxrss of the child), its
wall time and the output size. Memory should be set by --partition-rows, not by --rows.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--partition-rows", type=int, default=5000)
    parser.add_argument("--port", type=int, default=8799)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as d:
        src, out = Path(d) / "in.parquet", Path(d) / "out.parquet"
        pl.DataFrame({"id": range(args.rows)}).with_columns(
            text=pl.format("benchmark row {} about topic {}", pl.col("id"), pl.col("id") % 977)
        ).write_parquet(src)
        server = subprocess.Popen([sys.executable, "-m", "polars_embed.testing.server", "--port", str(args.port)],
                                  stdout=subprocess.DEVNULL)
        time.sleep(2)
        env = {**os.environ, "OPENAI_API_KEY": "bench", "POLARS_EMBED_CACHE": str(Path(d) / "cache")}
        cmd = [sys.executable, "-m", "polars_embed.cli", "run", str(src), str(out), "--model",
               "text-embedding-3-small", "--base-url", f"http://127.0.0.1:{args.port}/v1",
               "--partition-rows", str(args.partition_rows), "--quiet"]
        try:
            t = time.perf_counter()
            subprocess.run(cmd, env=env, check=True)
            wall = time.perf_counter() - t
        finally:
            server.terminate()
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"rows {args.rows:,}  partition {args.partition_rows:,}  dims 1536")
        print(f"peak RSS of the run: {peak_mb:,.0f} MB  wall {wall:.0f} s  output {out.stat().st_size / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
