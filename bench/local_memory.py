"""Memory of a long local run (not a test): peak RSS, and whether it grows from start to end.

    python bench/local_memory.py [--texts 100000] [--model local:all-MiniLM-L6-v2] [--arena]

Embeds ``--texts`` distinct texts (the shipped sample's, numbered so that none repeats) of
which 1% are at or over the model's input limit, in slices of a tenth, with no cache (only
the model's memory is measured). After each slice it prints the process's RSS; at the end
its peak RSS (``VmHWM``), and the RSS growth between the end of the first tenth and the end
of the last. ``--arena`` turns onnxruntime's CPU memory arena back on, to compare.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import polars as pl

from polars_embed import Embedder
from polars_embed.providers import local

SAMPLE = Path(__file__).parent.parent / "data" / "sample.parquet"


def status(field: str) -> float:
    """A ``/proc/self/status`` figure in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--texts", type=int, default=100_000)
    parser.add_argument("--model", default="local:all-MiniLM-L6-v2")
    parser.add_argument("--arena", action="store_true", help="onnxruntime's CPU arena on (the default is off)")
    args = parser.parse_args()
    local.CPU_ARENA = args.arena
    base = pl.read_parquet(SAMPLE)["text"].unique(maintain_order=True).to_list()
    emb = Embedder(args.model, cache=False, ledger=False)
    limit, tok = emb.provider.limits.max_input_tokens, emb.provider.tokenizer()
    at_limit = tok.decode(tok.encode_batch([" ".join(base[:200])])[0][: limit - 4])  # the number makes it `limit`
    texts = [f"{at_limit} {i}" if i % 100 == 0 else f"{base[i % len(base)]} ({i})" for i in range(args.texts)]
    print(f"{args.model}: {len(texts):,} texts, 1% at the {limit}-token limit; {os.cpu_count()} cores; "
          f"arena {'on' if args.arena else 'off'}; RSS before {status('VmRSS'):.0f} MB")
    step, rss, started = len(texts) // 10, [], time.perf_counter()
    for start in range(0, len(texts), step):
        out = emb.embed(pl.Series("text", texts[start : start + step]))
        rss.append(status("VmRSS"))
        print(f"  {start + len(out):7,} texts  {time.perf_counter() - started:6.1f} s  RSS {rss[-1]:6.0f} MB  peak {status('VmHWM'):6.0f} MB")
        del out
    wall = time.perf_counter() - started
    emb.close()
    print(f"peak RSS {status('VmHWM'):.0f} MB; RSS after the first tenth {rss[0]:.0f} MB, after the last {rss[-1]:.0f} MB "
          f"({rss[-1] - rss[0]:+.0f} MB); {len(texts) / wall:.0f} texts/s")


if __name__ == "__main__":
    main()
