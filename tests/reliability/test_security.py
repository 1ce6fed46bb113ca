"""The API key never lands anywhere a run writes; the cache holds no text."""

from __future__ import annotations

import os
import subprocess
import sys

import polars as pl

CANARY = "sk-canary-7f3e9b1c2d4a"


def test_canary_key_appears_in_no_file_log_or_error(server, tmp_path, report):
    server.api_key = CANARY
    src = tmp_path / "in.parquet"
    texts = [f"private text number {i}" for i in range(500)]
    pl.DataFrame({"text": texts}).write_parquet(src)
    env = {**os.environ, "OPENAI_API_KEY": CANARY, "POLARS_EMBED_CACHE": str(tmp_path / "cache")}
    args = [sys.executable, "-m", "polars_embed.cli", "run", str(src), str(tmp_path / "out" / "o.parquet"),
            "--model", "text-embedding-3-small", "--dimensions", "8", "--base-url", server.url, "--log-json", "--debug"]
    ok = subprocess.run(args, check=False, env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    wrong = subprocess.run(args, check=False, env={**env, "OPENAI_API_KEY": CANARY + "-wrong", "POLARS_EMBED_CACHE": str(tmp_path / "c2")},
                           capture_output=True, text=True)  # a refused key, with tracebacks on (--debug)
    assert wrong.returncode != 0
    streams = ok.stdout + ok.stderr + wrong.stdout + wrong.stderr
    assert CANARY not in streams
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p != src]
    assert any(p.name == "ledger.sqlite" for p in files) and any(p.name == "o.parquet" for p in files)
    for path in files:
        data = path.read_bytes()
        assert CANARY.encode() not in data, path
        assert b"private text number 1" not in data or path.suffix == ".parquet", path  # no text in cache or ledger
    report(files_checked=len(files), canary_found=0)
