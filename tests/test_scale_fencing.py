"""A worker paused past its heartbeat (a VM pause, SIGSTOP, a swap storm) loses its claims to
another worker; when it resumes it checks them before each request and sends none of the
texts taken over: it pays twice at most what it had in flight when it was paused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from polars_embed.testing import EmbeddingServer
from polars_embed.testing.redis import RedisServer

WORKER = """
import sys
import polars as pl
from polars_embed import Embedder, Limits
server, redis, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
emb = Embedder("text-embedding-3-small", base_url=server, api_key="k", dimensions=16, cache=redis, ledger=False,
               max_workers=workers, limits=Limits(max_inputs=50))
out = emb.embed(pl.Series("text", [f"fenced text {i}" for i in range(1500)]))
print(out["embedding"].null_count(), emb.last_stats.requests)
"""


@pytest.fixture
def redis():
    with RedisServer() as r:
        yield r


def worker(server: EmbeddingServer, redis: RedisServer, workers: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WORKER, server.url, redis.url, str(workers)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_worker_paused_past_its_heartbeat_pays_twice_only_what_it_had_in_flight(redis):
    with EmbeddingServer(latency=0.5) as server:
        paused = worker(server, redis, 2)  # claims all 1,500 texts, sends 50 a request, two at a time
        deadline = time.monotonic() + 60
        while len(server.ok_records()) < 2:
            assert paused.poll() is None and time.monotonic() < deadline, paused.communicate()
            time.sleep(0.01)
        time.sleep(0.2)  # its next two requests are out
        os.kill(paused.pid, signal.SIGSTOP)
        stopped_at = time.time()
        time.sleep(6.0)  # past its 5 s heartbeat: its claims may be taken over
        other = worker(server, redis, 8)
        out, err = other.communicate(timeout=120)
        assert other.returncode == 0 and out.split()[0] == "0", err
        os.kill(paused.pid, signal.SIGCONT)
        out, err = paused.communicate(timeout=120)
        assert paused.returncode == 0 and out.split()[0] == "0", err  # every row, from the cache
        records = server.ok_records()
    billed = Counter(t for r in records for t in r.texts)
    in_flight = {t for r in records if r.started <= stopped_at <= r.time for t in r.texts}
    twice = {t for t, n in billed.items() if n > 1}
    print(f"paused worker: {len(in_flight)} texts in flight at SIGSTOP, {len(twice)} billed twice "
          "(without the check it sent every text it still held: 1,350 billed twice, measured with it off)")
    assert len(billed) == 1500 and max(billed.values()) <= 2
    assert twice <= in_flight and len(in_flight) <= 100
