"""An operator's commands on a cache in Redis, and a Redis that is full or gone: each acts on
what it names or says in one sentence why not, never a folder named after the URL."""

from __future__ import annotations

import threading
import time

import polars as pl
import pytest

from polars_embed import Embedder, Limits, SharedStateError
from polars_embed.cli import main
from polars_embed.testing import EmbeddingServer
from polars_embed.testing.redis import RedisServer

MODEL = "text-embedding-3-small"


@pytest.fixture
def redis():
    with RedisServer() as r:
        yield r


def fill(redis_url: str, server: EmbeddingServer, n: int) -> None:
    emb = Embedder(MODEL, base_url=server.url, api_key="k", dimensions=16, cache=redis_url, ledger=False)
    emb.embed(pl.Series("text", [f"operator text {i}" for i in range(n)]))
    emb.close()


def test_cache_commands_act_on_the_redis_they_are_given(redis, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    import redis as redis_py

    other = redis_py.Redis.from_url(redis.url)
    other.set("someone-else:key", "kept")
    with EmbeddingServer() as server:
        fill(redis.url, server, 30)
    assert main(["cache", "stats", "--cache", redis.url]) == 0
    assert "entries  30" in capsys.readouterr().out
    assert main(["cache", "clear", "--cache", redis.url, "--yes"]) == 0
    assert "removed 30 entries" in capsys.readouterr().out
    assert other.get("someone-else:key") == b"kept"  # only this library's entries
    assert main(["cache", "prune", "--cache", redis.url, "--older-than", "30d"]) == 2
    assert "Redis keeps no entry's age" in capsys.readouterr().err
    for command in (["ledger"], ["batch", "status"]):
        assert main([*command, "--cache", redis.url]) == 0
    assert not any(p.name.startswith("redis") for p in tmp_path.rglob("*"))  # no folder named after the URL


def test_a_full_redis_is_said_to_be_full(redis):
    import redis as redis_py

    client = redis_py.Redis.from_url(redis.url)
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", "1")  # already over: every write is refused
    with EmbeddingServer() as server:
        emb = Embedder(MODEL, base_url=server.url, api_key="k", dimensions=16, cache=redis.url, ledger=False)
        with pytest.raises(SharedStateError, match=r"is full \(its maxmemory.*polars-embed cache clear") as info:
            emb.embed(pl.Series("text", ["a text no one can store"]))
        assert "rerun once it answers" not in str(info.value)  # it answers: it is full
        emb.close()


def test_a_redis_gone_for_good_stops_the_run_soon_after(redis):
    with EmbeddingServer(latency=0.1) as server:
        emb = Embedder(MODEL, base_url=server.url, api_key="k", dimensions=16, cache=redis.url, limiter=redis.url,
                       rpm=100_000, max_workers=4, ledger=False, limits=Limits(max_inputs=20))
        killed: list[float] = []
        threading.Timer(0.5, lambda: (killed.append(time.monotonic()), redis.stop())).start()
        with pytest.raises(SharedStateError, match="failed while"):
            emb.embed(pl.Series("text", [f"gone text {i}" for i in range(2000)]))
        took = time.monotonic() - killed[0]
        emb.close()
    print(f"stopped {took:.1f} s after Redis went away (docs/scale.md: about 12 s; 13 s measured with the suite beside it)")
    assert took < 20  # it was 35 s: every command after the first retried 10 s again
