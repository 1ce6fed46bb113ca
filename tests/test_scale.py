"""Scale-out: a Redis cache and a Redis quota shared by workers, against a real redis-server
(started here on a free port), and Ray Data as the engine (a local Ray with 2 CPUs)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import polars as pl
import pytest

from polars_embed import Embedder, RedisCache, RedisLimiter, SharedStateError
from polars_embed.testing import EmbeddingServer, server_vector
from polars_embed.testing.redis import RedisServer

API_KEY = "sk-test-0123456789"
MODEL = "text-embedding-3-small"


@pytest.fixture
def redis():
    with RedisServer() as r:
        yield r


def embedder(server, redis_url, **kw) -> Embedder:
    kw.setdefault("cache", redis_url)
    return Embedder(MODEL, base_url=server.url, api_key=API_KEY, dimensions=32, timeout=5.0, ledger=False, **kw)


def correct(out: pl.DataFrame, texts: list[str]) -> bool:
    return all(np.array_equal(out["embedding"][i].to_numpy(), server_vector(MODEL, 32, t)) for i, t in enumerate(texts))


# -- the Redis cache -------------------------------------------------------------------------


def test_redis_cache_round_trip_in_chunks(redis):
    cache = RedisCache(redis.url)
    items = [(f"key{i}".encode(), np.full(8, i, np.float32), i) for i in range(2500)]  # 3 MGETs, 3 pipelines
    cache.set_many(items)
    got = cache.get_many([k for k, _, _ in items] + [b"absent"])
    assert got[-1] is None
    assert all(np.array_equal(v, items[i][1]) and t == i for i, (v, t) in enumerate(got[:-1]))
    assert cache.stats()["entries"] >= 2500


def test_damaged_redis_entry_is_a_miss_fetched_again(server, redis):
    import struct

    import redis as redis_py

    texts = ["alpha", "beta", "gamma", "delta"]
    first = embedder(server, redis.url)
    first.embed(pl.Series("text", texts))
    keys = first.plan(pl.Series("text", texts), first.start_run(), "text", None).keys
    first.close()
    client = redis_py.Redis.from_url(redis.url)
    raw = bytearray(client.get(b"polars-embed:v:" + keys[1]))
    raw[-1] ^= 0x01  # one flipped bit of a float: the checksum fails
    client.set(b"polars-embed:v:" + keys[1], bytes(raw))
    vector = np.ones(32, "<f4").tobytes()  # the disk cache's first layout, which has no checksum: refused here
    client.set(b"polars-embed:v:" + keys[3], struct.pack("<4sII", b"PEv1", 3, 32) + vector)
    client.set(b"polars-embed:v:" + keys[0][:-1] + b"x", b"\x80\x04\x95pickle")  # garbage under another key

    again = embedder(server, redis.url)
    out = again.embed(pl.Series("text", texts))
    assert out["embedding_cache_hit"].to_list() == [True, False, True, False]
    assert again.last_stats.cache_damaged == 2  # the run counts each once (the cache counts each read of it)
    assert again.cache.damaged >= 2
    assert correct(out, texts)
    assert all(v is not None for v in again.cache.get_many([keys[1], keys[3]]))  # overwritten with good values
    again.close()


def test_claims_are_per_worker_and_lapse_with_their_worker(redis):
    a, b = RedisCache(redis.url, alive_seconds=0.6), RedisCache(redis.url, alive_seconds=0.6)
    assert a.claim([b"x", b"y"]) == [True, True]
    assert b.claim([b"x", b"z"]) == [False, True]
    assert a.claim([b"x"]) == [False]  # held by this worker already: a second caller waits for it
    a.set_many([(b"x", np.ones(4, np.float32), 2)])
    found, mine = b.wait([b"x"])
    assert list(found) == [0] and mine == []
    a._closed.set()  # a dies: its heartbeat stops, and its claims are taken over
    started = time.monotonic()
    found, mine = b.wait([b"y"])
    assert found == {} and mine == [0]
    assert 0.3 < time.monotonic() - started < 3
    b.release([b"y", b"z"])
    assert a.claim([b"z"]) == [True]


def test_a_long_fetch_keeps_its_claims(redis):
    a, b = RedisCache(redis.url, alive_seconds=0.3, claim_seconds=0.6), RedisCache(redis.url, alive_seconds=0.3)
    a.claim([b"k"])
    time.sleep(1.5)  # five heartbeats' life, more than twice the claim's backstop: both renewed
    assert b.claim([b"k"]) == [False]
    a.close()  # releases
    assert b.claim([b"k"]) == [True]


def test_workers_sharing_a_redis_cache_pay_each_text_once(redis):
    """Four embedders (as four machines: each its own claims and in-flight table) embed
    overlapping slices at once: every distinct text is billed once, every row is right."""
    texts = [f"shared text {i % 300}" for i in range(1200)]
    slices = [texts[i::4] for i in range(4)]
    with EmbeddingServer(latency=0.05) as srv:
        workers = [embedder(srv, redis.url, max_workers=4, limits=_small_requests()) for _ in range(4)]
        with ThreadPoolExecutor(4) as pool:
            outs = list(pool.map(lambda w_s: w_s[0].embed(pl.Series("text", w_s[1])), zip(workers, slices)))
        assert sorted(srv.texts_seen()) == sorted(set(texts))  # each distinct text sent once
        for out, part in zip(outs, slices):
            assert correct(out, part)
        assert sum(float(o["embedding_cost_usd"].sum()) for o in outs) == pytest.approx(
            srv.billed_tokens * 0.02 / 1e6)
        for w in workers:
            w.close()


def test_no_claim_outlives_its_fetch(redis):
    """Claims are released when a fetch ends, whether it succeeded or failed (a long-lived
    actor would otherwise hold them, and make other workers wait, for as long as it lives)."""
    import redis as redis_py

    from polars_embed import ProviderError
    from polars_embed.testing import Faults

    client = redis_py.Redis.from_url(redis.url)
    with EmbeddingServer(faults=Faults(error_5xx=1.0)) as failing:
        emb = embedder(failing, redis.url, max_attempts=1)
        with pytest.raises(ProviderError):
            emb.embed(pl.Series("text", [f"failing {i}" for i in range(50)]))
        assert list(client.scan_iter(match=b"polars-embed:c:*")) == []
        emb.close()
    with EmbeddingServer() as srv:
        emb = embedder(srv, redis.url)
        emb.embed(pl.Series("text", [f"failing {i}" for i in range(50)]))
        assert list(client.scan_iter(match=b"polars-embed:c:*")) == []
        emb.close()


def test_a_value_waited_for_passes_the_checks_of_any_lookup(server, redis):
    """Another worker holds the claim, then stores a value of the wrong size and lets go:
    the waiter does not take it, it fetches the text itself."""
    holder = RedisCache(redis.url)
    waiter = embedder(server, redis.url)
    key = waiter.plan(pl.Series("text", ["held"]), waiter.start_run(), "text", None).keys[0]
    assert holder.claim([key]) == [True]

    def store_bad_value_then_let_go() -> None:
        time.sleep(0.3)
        holder.set_many([(key, np.full(8, 0.5, np.float32), 3)])  # checksummed, but 8 dimensions, not 32
        holder.release([key])

    threading.Thread(target=store_bad_value_then_let_go).start()
    out = waiter.embed(pl.Series("text", ["held"]))
    assert correct(out, ["held"]) and out["embedding_cache_hit"].to_list() == [False]
    assert server.texts_seen() == ["held"]
    waiter.close()
    holder.close()


def test_forked_workers_and_threads_sharing_one_cache_object_pay_each_text_once(redis):
    """An Embedder made before a fork, used by 4 forked processes, and one RedisCache object
    used by two Embedders in threads: each is a worker of its own (or waits for itself)."""
    import multiprocessing

    texts = [f"fork text {i}" for i in range(200)]
    with EmbeddingServer(latency=0.1) as srv:
        emb = embedder(srv, redis.url, limits=_small_requests())
        ctx = multiprocessing.get_context("fork")
        procs = [ctx.Process(target=emb.embed, args=(pl.Series("text", texts),)) for _ in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
            assert p.exitcode == 0
        assert sorted(srv.texts_seen()) == sorted(texts)
        more = [f"thread text {i}" for i in range(200)]
        cache = RedisCache(redis.url)
        pair = [embedder(srv, redis.url, cache=cache, limits=_small_requests()) for _ in range(2)]
        with ThreadPoolExecutor(2) as pool:
            outs = list(pool.map(lambda e: e.embed(pl.Series("text", more)), pair))
        assert sorted(srv.texts_seen()) == sorted(texts + more) and all(correct(o, more) for o in outs)
        emb.close()


def test_a_closed_cache_used_again_keeps_its_claims_alive(redis):
    a, b = RedisCache(redis.url, alive_seconds=0.3), RedisCache(redis.url, alive_seconds=0.3)
    a.claim([b"k"])
    a.close()
    assert a.claim([b"k2"]) == [True]  # used again after close: a new heartbeat
    time.sleep(1.0)
    assert b.claim([b"k2"]) == [False]
    a.close()
    b.close()


def test_a_redis_lost_after_an_answer_keeps_the_answer(redis, monkeypatch):
    """observe/settle/pause follow a paid answer: a Redis gone then does not lose it (the
    next reserve says so)."""
    from polars_embed.scale import redis_link

    monkeypatch.setattr(redis_link, "RETRY_SECONDS", 0.5)
    quota = RedisLimiter(redis.url, tpm=60_000, scope="q")
    quota.acquire(100)
    redis.stop()
    quota.observe({"x-ratelimit-limit-tokens": "60000", "x-ratelimit-remaining-tokens": "59000"})
    quota.settle(100, 90)
    quota.pause(1.0)
    from polars_embed import LimiterError

    with pytest.raises(LimiterError, match="failed while keeping the shared quota"):
        quota.acquire(100)


def test_urls_that_are_not_a_redis_are_refused_and_passwords_never_shown(tmp_path):
    from polars_embed import ConfigurationError, Embedder
    from polars_embed.scale.redis_link import where

    assert where("redis://:s3cret@host:6379/0") == "redis://:***@host:6379/0"
    assert where("redis://host/0?password=s3cret&db=1") == "redis://host/0?password=***&db=1"
    assert "s3cret" not in where("redis://:s3cret@host:notaport/0")
    for bad in ("http://u:s3cret@host/x", "redis://:s3cret@host:notaport/0"):
        with pytest.raises(ConfigurationError) as info:
            Embedder(MODEL, api_key=API_KEY, cache=bad, ledger=False)
        assert "s3cret" not in str(info.value)
    with pytest.raises(ConfigurationError) as info:
        Embedder(MODEL, api_key=API_KEY, cache=False, limiter="http://u:s3cret@host/x")
    assert "s3cret" not in str(info.value)
    upper = Embedder(MODEL, api_key=API_KEY, cache="Redis://:s3cret@127.0.0.1:1/0", ledger=False)
    assert isinstance(upper.cache, RedisCache) and not (tmp_path / "Redis:").exists()


def _small_requests():
    from polars_embed import Limits

    return Limits(max_inputs=20)


# -- the Redis quota ---------------------------------------------------------------------------


def test_redis_quota_is_one_bucket_for_every_worker(redis):
    a = RedisLimiter(redis.url, rpm=120, scope="q")
    b = RedisLimiter(redis.url, rpm=120, scope="q")
    other = RedisLimiter(redis.url, rpm=120, scope="another model")
    for i in range(120):
        assert (a if i % 2 else b).acquire(1) == 0.0  # a full bucket of 120, taken by both
    assert other.acquire(1) == 0.0  # another scope, another quota
    started = time.monotonic()
    a.acquire(1)  # the 121st waits for the refill (0.5 s at 120/min)
    assert 0.3 < time.monotonic() - started < 2


def test_settle_replaces_the_estimate_with_the_bill(redis):
    a, b = RedisLimiter(redis.url, tpm=6000, scope="q"), RedisLimiter(redis.url, tpm=6000, scope="q")
    a.acquire(6000)  # the whole bucket
    a.settle(6000, 600)  # billed a tenth of it: the rest is back, for every worker
    started = time.monotonic()
    b.acquire(5000)
    assert time.monotonic() - started < 0.5


def test_headers_and_pauses_reach_every_worker(redis):
    a, b = RedisLimiter(redis.url, scope="q"), RedisLimiter(redis.url, scope="q")
    assert a.claim_probe() and not b.claim_probe()  # one probe for the cluster
    a.observe({"x-ratelimit-limit-requests": "600", "x-ratelimit-remaining-requests": "0",
               "x-ratelimit-limit-tokens": "100000", "x-ratelimit-remaining-tokens": "50000"})
    a.end_probe()
    b.wait_for_quota()
    assert b.knows_quota and (b.rpm, b.tpm) == (600.0, 100000.0)  # learned from a's response
    started = time.monotonic()
    b.acquire(10)  # nothing remains: waits for one request's refill (0.1 s at 600/min)
    assert time.monotonic() - started > 0.05
    a.pause(0.5)  # a 429's retry-after holds b too
    started = time.monotonic()
    b.acquire(10)
    assert time.monotonic() - started > 0.4


def test_processes_sharing_a_redis_quota_stay_under_it(tmp_path, redis):
    """Three `polars-embed run` processes on three files, one --limiter: the server's quota
    (requests/min on a clock sped up 20 times) is met together, with few 429s."""
    with EmbeddingServer(rpm=600, time_scale=20, start_empty=True, latency=0.02) as srv:
        env = {**os.environ, "OPENAI_API_KEY": API_KEY}
        procs = []
        for k in range(3):
            src = tmp_path / f"in{k}.parquet"
            pl.DataFrame({"text": [f"file {k} text {i}" for i in range(300)]}).write_parquet(src)
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "polars_embed.cli", "run", str(src), str(tmp_path / f"out{k}.parquet"),
                 "--model", MODEL, "--dimensions", "32", "--base-url", srv.url, "--cache", str(tmp_path / f"c{k}"),
                 "--limiter", redis.url, "--partition-rows", "100", "--quiet"],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        for p in procs:
            _, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
        assert srv.count(429) <= max(2, srv.requests * 0.1)
        assert len(srv.texts_seen()) == 900
        for k in range(3):
            assert pl.read_parquet(tmp_path / f"out{k}.parquet")["embedding"].null_count() == 0


# -- Redis going away ----------------------------------------------------------------------------


def test_redis_restarted_mid_run_completes_with_right_vectors(redis):
    texts = [f"restart text {i}" for i in range(400)]
    with EmbeddingServer(latency=0.1) as srv:
        emb = embedder(srv, redis.url, limiter=redis.url, rpm=100_000, max_workers=4, limits=_small_requests())
        restarter = threading.Timer(0.3, redis.restart, kwargs={"down_seconds": 0.5})
        restarter.start()
        out = emb.embed(pl.Series("text", texts))
        restarter.join()
        assert correct(out, texts)
        again = embedder(srv, redis.url)  # what was written after the restart is right too
        assert correct(again.embed(pl.Series("text", texts)), texts)
        emb.close()
        again.close()


def test_redis_gone_for_good_stops_with_one_sentence(redis, monkeypatch):
    from polars_embed.scale import redis_link

    monkeypatch.setattr(redis_link, "RETRY_SECONDS", 1.0)
    texts = [f"gone text {i}" for i in range(400)]
    with EmbeddingServer(latency=0.1) as srv:
        emb = embedder(srv, redis.url, limiter=redis.url, rpm=100_000, max_workers=4, limits=_small_requests())
        threading.Timer(0.3, redis.stop).start()
        with pytest.raises(SharedStateError) as info:
            emb.embed(pl.Series("text", texts))
        message = str(info.value)
        assert message.startswith(f"the Redis at {redis.url} failed while") and "\n" not in message
        assert 0 < emb.last_stats.requests  # what was paid before is counted
        emb.close()


# -- Ray Data ----------------------------------------------------------------------------------


def test_actor_resources_leave_a_cpu_for_reads():
    from polars_embed.scale.ray_engine import actor_resources

    assert actor_resources(True, 2.0) == (2, 0.5)  # network actors: one per CPU up to 4, together one CPU
    assert actor_resources(True, 16.0) == (4, 1.0)
    assert actor_resources(True, 2.0, 4) == (4, 0.25)
    assert actor_resources(False, 2.0) == (2, 0.5)  # a local model: one actor per CPU, half each
    assert actor_resources(True, 64.0, 100) == (100, 0.63)
    n, share = actor_resources(False, 1.0)
    assert n == 1 and share == 0.5
    from polars_embed import ConfigurationError

    with pytest.raises(ConfigurationError, match="--actors must be at least 1, got 0"):
        actor_resources(True, 2.0, 0)


def test_engine_ray_writes_what_the_local_engine_writes(tmp_path, redis):
    texts = [f"ray text {i % 700}" for i in range(1000)] + [""]
    src = tmp_path / "in.parquet"
    pl.DataFrame({"id": range(1001), "text": texts}).write_parquet(src)
    with EmbeddingServer() as srv:
        env = {**os.environ, "OPENAI_API_KEY": API_KEY, "POLARS_EMBED_CACHE": str(tmp_path / "home"),
               "HOME": str(tmp_path)}  # Ray keeps its token in ~/.ray
        common = ["--model", MODEL, "--dimensions", "32", "--base-url", srv.url, "--partition-rows", "250"]
        ray_run = subprocess.run([sys.executable, "-m", "polars_embed.cli", "run", str(src), str(tmp_path / "ray.parquet"),
                                  "--engine", "ray", "--cache", redis.url, "--limiter", redis.url, *common],
                                 env=env, check=False, capture_output=True, text=True, timeout=300)
        assert ray_run.returncode == 0, ray_run.stderr
        assert len(srv.texts_seen()) == 700  # each distinct text once, across the actors
        billed = srv.billed_tokens
        local_run = subprocess.run([sys.executable, "-m", "polars_embed.cli", "run", str(src),
                                    str(tmp_path / "local.parquet"), "--cache", str(tmp_path / "c"), *common],
                                   env=env, check=False, capture_output=True, text=True, timeout=120)
        assert local_run.returncode == 0, local_run.stderr
    by_ray, by_local = pl.read_parquet(tmp_path / "ray.parquet"), pl.read_parquet(tmp_path / "local.parquet")
    assert by_ray.schema == by_local.schema and by_ray.height == 1001
    # rows in input order; which row of a repeated text paid depends on which actor came first
    paid_by = ["embedding_cache_hit", "embedding_cost_usd", "embedding_tokens"]
    assert by_ray.drop(paid_by).equals(by_local.drop(paid_by))
    paid = by_ray.filter(~pl.col("embedding_cache_hit") & (pl.col("text") != ""))
    assert paid["text"].n_unique() == paid.height == 700  # one row of each text paid
    import pyarrow.parquet as pq

    assert pq.read_schema(tmp_path / "ray.parquet").metadata[b"polars_embed.model"] == MODEL.encode()
    assert "embedded 1,001 rows (700 distinct texts)" in ray_run.stdout
    assert "0 in the cache before this run, 300 repeats within it" in ray_run.stdout
    from polars_embed import ledger

    records = ledger(tmp_path / "home" / "ledger.sqlite")
    assert records.height == 1 and records["source"][0].startswith("polars-embed run --engine ray")
    assert records["tokens_billed"][0] == billed
    assert by_ray["embedding_cost_usd"].sum() == pytest.approx(billed * 0.02 / 1e6)  # the cost column is the bill
    warm = subprocess.run([sys.executable, "-m", "polars_embed.cli", "run", str(src), str(tmp_path / "warm.parquet"),
                           "--engine", "ray", "--cache", redis.url, *common], env=env, check=False,
                          capture_output=True, text=True, timeout=300)
    warm_local = subprocess.run([sys.executable, "-m", "polars_embed.cli", "run", str(src),
                                 str(tmp_path / "warm-local.parquet"), "--cache", str(tmp_path / "c"), *common],
                                env=env, check=False, capture_output=True, text=True, timeout=120)
    assert warm.returncode == 0 and warm_local.returncode == 0, warm.stderr + warm_local.stderr

    def hits(out: str) -> str:
        return next(line for line in out.splitlines() if "cache hits" in line)

    assert hits(warm.stdout) == hits(warm_local.stdout)  # the blank row (a null hit) is neither cached nor a repeat
    warm_split = next(line for line in warm.stdout.splitlines() if "in the cache before this run" in line)
    assert "700 in the cache before this run, 300 repeats within it" in warm_split  # each text counted once


def ray_cli(src, dst, srv, redis, tmp_path, *options):
    """`polars-embed run --engine ray` on a Ray it starts (the machine's CPUs), sharing ``redis``."""
    env = {**os.environ, "OPENAI_API_KEY": API_KEY, "POLARS_EMBED_CACHE": str(tmp_path / "home"), "HOME": str(tmp_path)}
    return subprocess.Popen([sys.executable, "-m", "polars_embed.cli", "run", str(src), str(dst), "--model", MODEL,
                             "--dimensions", "32", "--base-url", srv.url, "--engine", "ray", "--cache", redis.url,
                             "--limiter", redis.url, "--quiet", *options],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_an_actor_killed_mid_run_costs_at_most_its_requests_in_flight(tmp_path, redis):
    """SIGKILL one actor once requests are flowing: Ray starts it again and sends its
    partitions again; the run completes with every row right, and only texts of requests in
    flight at the kill are billed twice."""
    texts = [f"killed actor text {i % 2400} " + "word " * (i % 7) for i in range(3000)]
    src = tmp_path / "in.parquet"
    pl.DataFrame({"text": texts}).write_parquet(src)
    with EmbeddingServer(latency=0.3) as srv:
        proc = ray_cli(src, tmp_path / "out.parquet", srv, redis, tmp_path, "--actors", "2", "--partition-rows", "500",
                       "--workers", "4")
        deadline = time.monotonic() + 120
        while srv.requests < 4:
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() else "slow"
            time.sleep(0.01)
        actors = subprocess.run(["pgrep", "-f", "ray::EmbedBatch"], check=False, capture_output=True, text=True).stdout.split()
        killed_at = time.time()
        os.kill(int(actors[0]), 9)
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        out = pl.read_parquet(tmp_path / "out.parquet")
        assert out.height == 3000 and correct(out, texts)
        billed = srv.ok_records()
        counts: dict[str, int] = {}
        for r in billed:
            for t in r.texts:
                counts[t] = counts.get(t, 0) + 1
        assert set(counts) == set(texts)  # every text billed, at least once
        in_flight = {t for r in billed if r.started <= killed_at <= r.time + 0.25 for t in r.texts}
        twice = {t for t, c in counts.items() if c > 1}
        assert twice <= in_flight and max(counts.values()) <= 2


def test_a_failing_actor_stops_the_job_and_the_ledger_counts_what_was_paid(tmp_path, redis):
    """--max-cost is one budget in Redis for every actor; the first to meet it stops the job
    (exit 3), the others stop sending, and the run's record has every token billed."""
    texts = [f"budget text {i} " + "word " * 20 for i in range(4000)]
    src = tmp_path / "in.parquet"
    pl.DataFrame({"text": texts}).write_parquet(src)
    with EmbeddingServer(latency=0.05) as srv:
        proc = ray_cli(src, tmp_path / "out.parquet", srv, redis, tmp_path, "--actors", "2", "--partition-rows", "500",
                       "--max-cost", "0.0005")
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 3, err
        assert "stopped before spending more than" in err and "Traceback" not in err
        assert not (tmp_path / "out.parquet").exists()
        from polars_embed import ledger

        record = ledger(tmp_path / "home" / "ledger.sqlite")
        assert record.height == 1 and record["status"][0] != "ok"
        assert record["tokens_billed"][0] == srv.billed_tokens > 0
        assert record["cost_usd"][0] == pytest.approx(srv.billed_tokens * 0.02 / 1e6) and record["cost_usd"][0] <= 0.0005


def test_embed_dataset_runs_on_ray_data_with_fractional_actors(tmp_path, redis, monkeypatch):
    """The Ray Data way: map_batches(EmbedBatch) on a local Ray of 2 CPUs, reading a Parquet
    file with read tasks beside the actors (which ask for half a CPU each, so nothing hangs)."""
    import ray
    import ray.data

    from polars_embed import embed_dataset

    monkeypatch.setenv("HOME", str(tmp_path))  # Ray keeps its token in ~/.ray
    texts = [f"dataset text {i % 500}" for i in range(1200)]
    pl.DataFrame({"id": range(1200), "text": texts}).write_parquet(tmp_path / "in.parquet")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        with EmbeddingServer() as srv:
            blocks = ray.data.read_parquet(str(tmp_path / "in.parquet")).repartition(4)  # one block per actor or more
            ds = embed_dataset(blocks, "text", model=MODEL, dimensions=32,
                               base_url=srv.url, api_key=API_KEY, cache=redis.url, limiter=redis.url, batch_rows=300)
            out = _collect(ds).sort("id")
            assert out.height == 1200 and correct(out, texts)
            assert sorted(srv.texts_seen()) == sorted(set(texts))  # each distinct text once, across the actors
            assert out["embedding_cost_usd"].sum() == pytest.approx(srv.billed_tokens * 0.02 / 1e6)
            assert out["embedding_error"].null_count() == 1200
    finally:
        ray.shutdown()


def _collect(ds) -> pl.DataFrame:
    import pyarrow as pa

    return pl.from_arrow(pa.concat_tables(list(ds.iter_batches(batch_format="pyarrow", batch_size=None))))


def test_a_shared_redis_that_fails_for_good_is_exit_code_6():
    from polars_embed import LimiterError, SharedCacheError
    from polars_embed.cli.common import exit_code as _exit_code

    assert _exit_code(SharedCacheError("the Redis at redis://h:1/0 failed while reading the cache")) == 6
    assert _exit_code(LimiterError("the Redis at redis://h:1/0 failed while keeping the shared quota")) == 6


def test_cli_refuses_ray_options_without_the_ray_engine(tmp_path):
    from polars_embed.cli import main

    src = tmp_path / "in.parquet"
    pl.DataFrame({"text": ["a"]}).write_parquet(src)
    assert main(["run", str(src), str(tmp_path / "o.parquet"), "--actors", "2"]) != 0
    assert main(["run", str(src), str(tmp_path / "o.parquet"), "--engine", "ray", "--batch"]) != 0
    assert main(["run", str(src), str(tmp_path / "o.parquet"), "--engine", "ray", "--actors", "0"]) == 2
    for address in ("127.0.0.1:1", "not an address"):  # one sentence at once, not minutes of Ray retrying
        started = time.monotonic()
        assert main(["run", str(src), str(tmp_path / "o.parquet"), "--engine", "ray", "--ray-address", address]) == 2
        assert time.monotonic() - started < 30
    # a quota kept by each actor alone would be N times the quota: refused before Ray starts
    assert main(["run", str(src), str(tmp_path / "o.parquet"), "--engine", "ray", "--rpm", "500"]) == 2
    assert main(["run", str(src), str(tmp_path / "o.parquet"), "--engine", "ray", "--tpm", "1e6", "--actors", "3",
                 "--limiter", str(tmp_path / "not-redis")]) == 2
