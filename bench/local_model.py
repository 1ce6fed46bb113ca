"""The offline model: `polars-embed run` against the model's own batch throughput (not a test).

    python bench/local_model.py [--texts 2000] [--rounds 3]

Both sides embed the same distinct texts of ``data/sample.parquet`` with all-MiniLM-L6-v2
on this machine's cores, after the model is loaded (a process start and the model load,
about 1 s, are the same for both and left out):

* the model alone, the better of two ways to use every core: one onnxruntime session with
  a thread per core running batches of 256 texts in a row, or one single-threaded session
  per core, each running half of the batches (``LocalProvider.embed``: sorted by length,
  padded per mini-batch);
* ``polars-embed run``: ``job.run`` on a Parquet file of those texts, into a fresh cache,
  as the command runs it (plan, cache, tokenize, pack, the pool, assemble, write).

Rounds alternate; medians are printed with the ratio (target: run within 5% of the model).

    python bench/local_model.py --models local:all-MiniLM-L6-v2,local:all-mpnet-base-v2

instead puts local models side by side: each embeds the same texts with a single-threaded
session per core (as ``polars-embed run`` does), rounds alternating, and prints texts/s and
tokens/s (each model's own tokens) with their ratio to the first model.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from statistics import median

import polars as pl

from polars_embed import Embedder
from polars_embed.job import run
from polars_embed.providers.local import LocalProvider

SAMPLE = Path(__file__).parent.parent / "data" / "sample.parquet"


def model_alone(texts: list[str], provider: LocalProvider, workers: int = 1) -> float:
    batches = [texts[start : start + 256] for start in range(0, len(texts), 256)]
    t = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(provider.embed, batches))
    return time.perf_counter() - t


def polars_embed_run(src: Path, d: str, k: int) -> tuple[float, int]:
    emb = Embedder("local:all-MiniLM-L6-v2", cache=f"{d}/cache{k}", on_error="null", ledger=False)
    emb.provider.session  # noqa: B018 - the model load is left out, as for the model alone
    t = time.perf_counter()
    result = run(emb, src, f"{d}/out{k}.parquet")
    wall = time.perf_counter() - t
    emb.close()
    return wall, result.stats.requests


def side_by_side(texts: list[str], models: list[str], rounds: int) -> None:
    cores = os.cpu_count() or 1
    providers = [LocalProvider(m, threads=1) for m in models]
    tokens = [sum(len(x) for x in p.tokenizer().encode_batch(texts)) for p in providers]
    for p in providers:
        p.embed(texts[:8])  # load the model
    walls: list[list[float]] = [[] for _ in models]
    for _ in range(rounds):
        for i, p in enumerate(providers):
            walls[i].append(model_alone(texts, p, workers=cores))
    print(f"{len(texts):,} distinct texts of the sample, {cores} cores, a single-threaded session per core")
    first = len(texts) / median(walls[0])
    for m, n, xs in zip(models, tokens, walls):
        rate = len(texts) / median(xs)
        print(f"  {m:28s} {rate:6.1f} texts/s  {n / median(xs):8.0f} tokens/s  {rate / first:5.2f}x  "
              f"(median of {', '.join(f'{x:.2f}' for x in xs)} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models", help="comma-separated local models to put side by side instead")
    args = parser.parse_args()
    texts = pl.read_parquet(SAMPLE)["text"].unique(maintain_order=True).head(args.texts).to_list()
    if args.models:
        side_by_side(texts, args.models.split(","), args.rounds)
        return
    cores = os.cpu_count() or 1
    threaded, per_core = LocalProvider(threads=cores), LocalProvider(threads=1)
    threaded.embed(texts[:8])  # load the model
    per_core.embed(texts[:8])
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "texts.parquet"
        pl.DataFrame({"text": texts}).write_parquet(src)
        polars_embed_run(src, d, -1)  # warm-up: imports, tokenizer
        threads, sessions, runs, requests = [], [], [], 0
        for k in range(args.rounds):
            threads.append(model_alone(texts, threaded))
            sessions.append(model_alone(texts, per_core, workers=cores))
            wall, requests = polars_embed_run(src, d, k)
            runs.append(wall)
    m, r = min(median(threads), median(sessions)), median(runs)
    print(f"{len(texts):,} distinct texts, {cores} cores, all-MiniLM-L6-v2 int8")
    for label, xs in (("model, 1 session x {cores} threads", threads), ("model, {cores} sessions x 1 thread", sessions)):
        print(f"  {label.format(cores=cores):34s} {len(texts) / median(xs):5.0f} texts/s  "
              f"(median of {', '.join(f'{x:.2f}' for x in xs)} s)")
    print(f"  {'polars-embed run':34s} {len(texts) / r:5.0f} texts/s  "
          f"(median of {', '.join(f'{x:.2f}' for x in runs)} s; {requests} requests)")
    print(f"  run / the better model figure: {m / r:.3f} (target >= 0.95)")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
