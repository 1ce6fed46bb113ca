"""Two proxy processes on one Redis (``--cache redis://... --limiter redis://...``) are one
proxy: one cache, one upstream quota, one budget per key."""

from __future__ import annotations

import concurrent.futures
import random
import subprocess
from collections import Counter

import numpy as np
import openai
import pytest
from proxies import serve_process

from polars_embed.serve.accounts import KeyLimits
from polars_embed.serve.keys import Keys
from polars_embed.testing import EmbeddingServer
from polars_embed.testing.redis import RedisServer
from polars_embed.testing.vectors import server_vector

MODEL, DIMS = "text-embedding-3-small", 64
PRICE = 0.02 / 1e6


def start_proxy(upstream: EmbeddingServer, redis: RedisServer, keys: str, log) -> tuple[subprocess.Popen, str]:
    proc, port = serve_process("--keys", keys, "--upstream-base-url", upstream.url, "--cache", redis.url,
                               "--limiter", redis.url, "--tpm", "2000000", "--quiet", stderr=log)
    return proc, f"http://127.0.0.1:{port}/v1"


@pytest.fixture
def cluster(tmp_path):
    keys = Keys(tmp_path / "keys.json")
    secrets = {name: keys.add(name) for name in ("app", "notebook")}
    secrets["tight"] = keys.add("tight", KeyLimits(usd_per_day=20 * PRICE))  # twenty tokens a day
    with EmbeddingServer(latency=0.05) as upstream, RedisServer() as redis, \
            open(tmp_path / "proxies.log", "w") as log:
        procs = [start_proxy(upstream, redis, str(tmp_path / "keys.json"), log) for _ in range(2)]
        try:
            yield upstream, [url for _, url in procs], secrets
        finally:
            for proc, _ in procs:
                proc.terminate()
                proc.wait(timeout=30)


def test_two_proxies_on_one_redis_pay_each_text_once_and_share_the_keys_budgets(cluster):
    upstream, urls, secrets = cluster
    pool = [f"shared text {i}: " + "words " * (i % 17) for i in range(400)]
    rng = random.Random(7)
    plan = []
    for client_no in range(32):
        for request_no in range(8):
            n = rng.randint(1, 16)
            texts = [rng.choice(pool) if rng.random() < 0.5 else f"client {client_no} request {request_no} text {j}"
                     for j in range(n)]
            plan.append((urls[(client_no + request_no) % 2], secrets["app" if client_no % 2 else "notebook"], texts))

    def send(url: str, key: str, texts: list[str]) -> tuple[int, float]:
        c = openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=60)
        r = c.embeddings.with_raw_response.create(model=MODEL, input=texts, dimensions=DIMS)
        wrong = sum(not np.array_equal(np.float32(d.embedding), server_vector(MODEL, DIMS, texts[d.index]))
                    for d in r.parse().data)
        return wrong, float(r.headers["x-polars-embed-cost-usd"])

    with concurrent.futures.ThreadPoolExecutor(32) as clients:
        results = list(clients.map(lambda p: send(*p), plan))
    wrong = sum(w for w, _ in results)
    cost = sum(c for _, c in results)
    seen = Counter(upstream.texts_seen())
    distinct = {t for _, _, texts in plan for t in texts}
    print(f"two proxies, 32 clients, {len(plan)} requests: {wrong} wrong or misplaced vectors, "
          f"{len(distinct)} distinct texts, {sum(seen.values())} sent upstream, cost headers ${cost:.8f} "
          f"vs the bill ${upstream.billed_tokens * PRICE:.8f}")
    assert wrong == 0
    assert set(seen) == distinct and max(seen.values()) == 1  # each distinct text paid once, across both
    assert cost == pytest.approx(upstream.billed_tokens * PRICE, rel=1e-9)

    tight = [openai.OpenAI(base_url=url, api_key=secrets["tight"], max_retries=0) for url in urls]
    first = tight[0].embeddings.create(model=MODEL, input=["one two three four five six seven eight nine ten eleven"],
                                       dimensions=DIMS)
    assert 10 <= first.usage.prompt_tokens <= 15
    sent = upstream.requests
    for c in tight[::-1]:  # the other proxy knows what the first spent: one budget, refused before sending
        with pytest.raises(openai.RateLimitError) as info:
            c.embeddings.create(model=MODEL, input=["alpha beta gamma delta epsilon zeta eta theta iota kappa"],
                                dimensions=DIMS)
        assert info.value.code == "insufficient_quota"
    assert upstream.requests == sent
    assert openai.OpenAI(base_url=urls[1], api_key=secrets["app"], max_retries=0).embeddings.create(
        model=MODEL, input=["others are served"], dimensions=DIMS).data
