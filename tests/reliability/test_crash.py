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


def kill_when(p, ready, delay=0.0, timeout=120.0):
    """SIGKILL ``p`` once ``ready()`` holds (plus ``delay`` seconds); False if it exited first."""
    deadline = time.monotonic() + timeout
    while not ready():
        if p.poll() is not None:
            return False
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.002)
    time.sleep(delay)
    if p.poll() is not None:
        return False
    p.send_signal(signal.SIGKILL)
    p.wait(60)
    return True


@pytest.mark.slow
def test_sigkill_at_random_moments_then_rerun(server, tmp_path, source, report):
    """Kill points are set by progress, not by the clock, so a slow or fast machine kills
    at the same places: after k answered requests (anywhere in the run), and after the last
    answer (while the output is written and renamed)."""
    src, texts = source
    server.latency = 0.02
    # the clean bill, in its own cache
    t = time.perf_counter()
    p = start(src, tmp_path / "clean.parquet", server, tmp_path / "clean-cache")
    assert p.wait(120) == 0, p.stderr.read()
    clean_wall = time.perf_counter() - t
    clean = server.billed_tokens
    n_requests = len(server.ok_records())
    max_request = max(r.tokens for r in server.ok_records())
    assert n_requests >= 5  # enough requests to kill between (one per 300-row partition here)
    rng = random.Random(0)
    out = tmp_path / "out.parquet"
    pl.DataFrame({"id": [0], "text": ["old output"]}).write_parquet(out)  # an old output to protect
    mid_kills, end_kills, extra_total, worst = 0, 0, 0, 0
    mid_points, end_points = 9, 3
    for point in range(mid_points + end_points):
        cache = tmp_path / f"cache{point}"
        server.reset_log()
        if point < mid_points:  # after k answered requests: the run cannot have finished
            k = rng.randint(1, n_requests - 1)
            p = start(src, out, server, cache)
            assert kill_when(p, lambda k=k: server.requests >= k), p.stderr.read()
            mid_kills += 1
        else:  # after the last answer, while the output is written; a run that beats the kill is tried again
            delay = rng.uniform(0.0, 0.05)
            for attempt in range(5):
                cache = tmp_path / f"cache{point}-{attempt}"
                server.reset_log()
                pl.DataFrame({"id": [0], "text": ["old output"]}).write_parquet(out)
                p = start(src, out, server, cache)
                if kill_when(p, lambda: len(server.ok_records()) >= n_requests, delay):
                    end_kills += 1
                    break
                delay /= 4
        old_or_new = pl.read_parquet(out)  # never half-written: the old file or a complete new one
        assert old_or_new.height in (1, ROWS)
        p = start(src, out, server, cache)
        assert p.wait(120) == 0, p.stderr.read()
        assert not list(tmp_path.glob(".out.parquet.*.tmp"))  # what a killed run left is cleaned up
        check_output(out, texts)
        extra = server.billed_tokens - clean
        assert extra <= 4 * max_request  # at most the requests in flight (--workers 4) at the kill
        extra_total += extra
        worst = max(worst, extra)
        pl.DataFrame({"id": [0], "text": ["old output"]}).write_parquet(out)
    assert mid_kills == mid_points and end_kills >= 1
    report(kill_points=mid_points + end_points, killed=mid_kills + end_kills, killed_after_last_answer=end_kills,
           clean_requests=n_requests, clean_tokens=clean, clean_wall_seconds=round(clean_wall, 2),
           mean_extra_tokens=extra_total / (mid_points + end_points), max_extra_tokens=worst,
           bound_tokens=4 * max_request)


def test_sigint_stops_promptly_and_says_how_to_resume(server, tmp_path, source, report):
    src, _ = source
    server.latency = 0.1
    p = start(src, tmp_path / "out.parquet", server, tmp_path / "cache")
    deadline = time.monotonic() + 60
    while server.requests < 4:  # mid-run, by progress: a fast machine must not finish first
        assert p.poll() is None and time.monotonic() < deadline, p.stderr.read()
        time.sleep(0.01)
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
