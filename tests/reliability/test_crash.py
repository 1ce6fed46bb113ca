"""`polars-embed run` killed at random moments: the rerun completes, pays only for the rest."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import polars as pl
import pytest

from polars_embed.testing import server_vector

ROWS = 3000


def start(src, out, server, cache, *extra):
    env = {**os.environ, "OPENAI_API_KEY": "k", "POLARS_EMBED_CACHE": str(cache)}
    cmd = [sys.executable, "-m", "polars_embed.cli", "run", str(src), str(out), "--model", "text-embedding-3-small",
           "--dimensions", "16", "--base-url", server.url, "--partition-rows", "300", "--workers", "4", *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def check_output(out, texts):
    df = pl.read_parquet(out)
    assert df["id"].to_list() == list(range(ROWS))
    for row in df.sample(100, seed=1).iter_rows(named=True):
        assert row["embedding"] == pytest.approx(server_vector("text-embedding-3-small", 16, row["text"]).tolist())
    return df


@pytest.fixture
def source(tmp_path):
    texts = [f"crash test row {i} " + "word " * (i % 40) for i in range(ROWS)]
    src = tmp_path / "in.parquet"
    pl.DataFrame({"id": range(ROWS), "text": texts}).write_parquet(src)
    return src, texts


@pytest.mark.slow
def test_sigkill_at_random_moments_then_rerun(server, tmp_path, source, report):
    src, texts = source
    server.latency = 0.02
    # the clean bill, in its own cache
    t = time.perf_counter()
    p = start(src, tmp_path / "clean.parquet", server, tmp_path / "clean-cache")
    assert p.wait(120) == 0, p.stderr.read()
    clean_wall = time.perf_counter() - t  # the whole process: start-up, requests, output write
    clean = server.billed_tokens
    max_request = max(r.tokens for r in server.ok_records())
    rng = random.Random(0)
    out = tmp_path / "out.parquet"
    pl.DataFrame({"id": [0], "text": ["old output"]}).write_parquet(out)  # an old output to protect
    kills, extra_total, worst = 0, 0, 0
    points = 12
    for point in range(points):
        cache = tmp_path / f"cache{point}"
        server.reset_log()
        # kill points spread over the whole run; the last three near its end (the output write)
        fraction = rng.uniform(0.1, 1.0) if point < points - 3 else rng.uniform(0.85, 0.98)
        for _ in range(5):  # a run that finished before its kill point is tried again, earlier
            p = start(src, out, server, cache)
            time.sleep(fraction * clean_wall)
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                kills += 1
                p.wait(60)
                break
            fraction *= 0.8
        old_or_new = pl.read_parquet(out)  # never half-written: the old file or a complete new one
        assert old_or_new.height in (1, ROWS)
        p = start(src, out, server, cache)
        assert p.wait(120) == 0, p.stderr.read()
        check_output(out, texts)
        extra = server.billed_tokens - clean
        assert extra <= 4 * max_request  # at most the requests in flight (--workers 4) at the kill
        extra_total += extra
        worst = max(worst, extra)
        pl.DataFrame({"id": [0], "text": ["old output"]}).write_parquet(out)
    assert kills >= 10
    report(kill_points=points, killed=kills, clean_tokens=clean, clean_wall_seconds=round(clean_wall, 2),
           mean_extra_tokens=extra_total / points, max_extra_tokens=worst, bound_tokens=4 * max_request)


def test_sigint_stops_promptly_and_says_how_to_resume(server, tmp_path, source, report):
    src, _ = source
    server.latency = 0.1
    p = start(src, tmp_path / "out.parquet", server, tmp_path / "cache")
    time.sleep(2.0)
    t = time.perf_counter()
    p.send_signal(signal.SIGINT)
    code = p.wait(30)
    stopped_in = time.perf_counter() - t
    err = p.stderr.read()
    assert code == 130 and stopped_in < 5
    assert "rerun the same command to resume" in err and "Traceback" not in err
    assert not (tmp_path / "out.parquet").exists()
    done = len(set(server.texts_seen()))
    server.reset_log()
    p = start(src, tmp_path / "out.parquet", server, tmp_path / "cache")
    assert p.wait(120) == 0
    assert len(set(server.texts_seen())) <= ROWS - done + 4 * 300  # the rest, plus what was in flight
    report(stopped_in_seconds=round(stopped_in, 2), texts_stored_before_stop=done)
