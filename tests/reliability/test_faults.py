"""Every fault the API can throw: vectors stay right, nothing is lost, billing stays bounded."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from polars_embed import Embedder, Limits, ProviderError
from polars_embed.testing import Faults, server_vector

MODEL = "text-embedding-3-small"
TEXTS = [f"reliable text {i % 1500} about {i % 7}" for i in range(2000)]


def embed(server, tmp_path, **kw):
    kw.setdefault("limits", Limits(max_inputs=25))
    emb = Embedder(MODEL, base_url=server.url, api_key="k", dimensions=32, cache=tmp_path / "c",
                   timeout=1.0, sleep=lambda s: None, max_attempts=20, **kw)
    try:
        return emb.embed(pl.Series("text", TEXTS)), emb
    finally:
        emb.close()


def exact(out: pl.DataFrame) -> bool:
    vecs = out["embedding"].to_numpy()
    return all(np.array_equal(v, server_vector(MODEL, 32, t)) for t, v in zip(TEXTS, vecs))


@pytest.fixture
def clean_bill(tmp_path_factory):
    from polars_embed.testing import EmbeddingServer

    with EmbeddingServer(log_texts=False) as srv:
        embed(srv, tmp_path_factory.mktemp("clean"))
        return srv.billed_tokens


MATRIX = {
    "5xx": Faults(error_5xx=0.2, seed=1),
    "429 storm with retry-after": Faults(storm_429=0.3, seed=2),
    "429 storm without retry-after": Faults(storm_429=0.3, storm_retry_after=False, seed=3),
    "hang past the timeout": Faults(hang=0.05, hang_seconds=3, seed=4),
    "dropped connection": Faults(drop=0.1, seed=5),
    "broken JSON": Faults(bad_json=0.1, seed=6),
    "short answer": Faults(short=0.1, seed=7),
    "out-of-order answer": Faults(shuffle=1.0, seed=8),
    "wrong dimensions": Faults(wrong_dim=0.1, seed=9),
}


@pytest.mark.parametrize("fault", list(MATRIX))
def test_fault_matrix(server, tmp_path, clean_bill, fault, report):
    server.configure(faults=MATRIX[fault])
    out, emb = embed(server, tmp_path)
    assert out.height == len(TEXTS) and out["embedding"].null_count() == 0
    assert exact(out)
    paid = sum(out["embedding_cost_usd"]) / 0.02 * 1e6
    assert paid == pytest.approx(server.billed_tokens)  # the cost column is the usable answers' usage
    extra = server.processed_tokens / clean_bill  # what a bill for every processed request would be
    assert extra <= 1.25
    report(fault=fault, requests=server.requests, retries=emb.total_stats.retries,
           processed_over_clean=round(extra, 3), billed_over_clean=round(server.billed_tokens / clean_bill, 3))


def test_permanent_fault_is_one_error_and_keeps_finished_work(server, tmp_path, report):
    server.configure(faults=Faults(fail_after=30))
    with pytest.raises(ProviderError, match=r"still failing after retries: The server is down") as info:
        embed(server, tmp_path, max_workers=2)
    assert "\n" not in str(info.value).split("\n\nThis error")[0]
    stored = server.summary()["ok"]
    server.configure(faults=Faults())
    server.reset_log()
    out, emb = embed(server, tmp_path)
    assert exact(out)
    cached = emb.total_stats.cache_hits
    assert cached >= (stored - 2) * 25 > 0  # every finished request was cached (minus in-flight at the stop)
    report(requests_before_the_fault=30, distinct_cached_by_the_failed_run=cached)
