"""Retries, limits of the server, faulty answers: nothing lost, nothing misaligned."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from polars_embed import Embedder, Limits, ProviderError, RowsFailedError
from polars_embed.pipeline.runner import RateLimiter
from polars_embed.testing import EmbeddingServer, Faults, server_vector

MODEL = "text-embedding-3-small"


def check_all(out: pl.DataFrame, dim: int = 64) -> None:
    for text, v in zip(out["text"], out["embedding"]):
        np.testing.assert_array_equal(v.to_numpy(), server_vector(MODEL, dim, text))


def test_5xx_is_retried_with_backoff(make_embedder, server):
    waits: list[float] = []
    server.configure(faults=Faults(error_5xx=0.5, seed=1))
    emb = make_embedder(sleep=waits.append, limits=Limits(max_inputs=4))  # 10 requests
    out = pl.DataFrame({"text": [f"t{i}" for i in range(40)]}).with_columns(emb.expr("text"))
    check_all(out)
    assert server.count(500) > 0
    assert emb.last_stats.retries == server.count(500) == len(waits)


def test_429_honours_retry_after_ms(make_embedder, server):
    waits: list[float] = []
    server.configure(faults=Faults(storm_429=0.5, seed=2))
    emb = make_embedder(sleep=waits.append, max_workers=1, limits=Limits(max_inputs=2))
    out = pl.DataFrame({"text": [f"t{i}" for i in range(20)]}).with_columns(emb.expr("text"))
    check_all(out)
    assert server.count(429) > 0 and waits and all(w == pytest.approx(0.05) for w in waits)
    assert emb.last_stats.rate_limited == server.count(429)


def test_other_4xx_fail_at_once_with_the_servers_message(make_embedder, server):
    waits: list[float] = []
    emb = make_embedder(api_key=None, sleep=waits.append)
    emb.provider._api_key = "wrong"  # the server below requires another key
    server.api_key = "right"
    with pytest.raises(ProviderError, match=r"\(401\): Incorrect API key provided"):
        pl.DataFrame({"text": ["a"]}).with_columns(emb.expr("text"))
    assert waits == [] and server.requests == 1


def test_retries_are_bounded(make_embedder, server):
    server.configure(faults=Faults(error_5xx=1.0))
    emb = make_embedder(sleep=lambda s: None, max_attempts=3)
    with pytest.raises(ProviderError, match="still failing after retries"):
        pl.DataFrame({"text": ["a"]}).with_columns(emb.expr("text"))
    assert server.requests == 3


@pytest.mark.parametrize("fault", ["shuffle", "short", "bad_json", "wrong_dim", "drop"])
def test_bad_answers_are_retried_never_misaligned(make_embedder, server, fault):
    server.configure(faults=Faults(**{fault: 0.3}, seed=3))
    emb = make_embedder(sleep=lambda s: None, max_workers=2, max_attempts=15, limits=Limits(max_inputs=25))
    texts = [f"text {i}" for i in range(500)]
    out = pl.DataFrame({"text": texts}).with_columns(emb.expr("text"))
    check_all(out)
    if fault != "shuffle":  # a shuffled answer is a correct one: nothing to retry
        with server._lock:
            assert any(r.fault == fault for r in server.log)
        assert emb.last_stats.retries > 0


def test_a_hang_past_the_timeout_is_retried(make_embedder, server):
    server.configure(faults=Faults(hang=0.3, hang_seconds=5, seed=4))
    emb = make_embedder(sleep=lambda s: None, timeout=0.5)
    out = pl.DataFrame({"text": [f"h{i}" for i in range(30)]}).with_columns(emb.expr("text"))
    check_all(out)


def test_mixed_faults_lose_nothing(make_embedder, server):
    server.configure(faults=Faults(error_5xx=0.05, drop=0.01, shuffle=1.0, seed=5))
    emb = make_embedder(sleep=lambda s: None, limits=Limits(max_inputs=20))
    texts = [f"row {i % 3000}" for i in range(5000)]
    out = pl.DataFrame({"text": texts}).with_columns(emb.expr("text"))
    check_all(out)
    assert len(set(server.texts_seen())) == 3000
    assert out["embedding_cost_usd"].sum() == pytest.approx(server.billed_tokens * 0.02 / 1e6)


def test_server_that_takes_10_inputs_and_floats_only(tmp_path):
    with EmbeddingServer(max_inputs=10) as srv:
        emb = Embedder(MODEL, base_url=srv.url, api_key="k", dimensions=64, cache=tmp_path / "c",
                       limits=Limits(max_inputs=10, encoding_format="float"))
        out = pl.DataFrame({"text": [f"t{i}" for i in range(95)]}).with_columns(emb.expr("text"))
        assert srv.count(400) == 0 and all(r.n_inputs <= 10 for r in srv.log)
        for text, v in zip(out["text"], out["embedding"]):
            np.testing.assert_allclose(v.to_numpy(), server_vector(MODEL, 64, text), rtol=1e-6)


def test_a_bad_row_is_isolated_and_everything_else_is_cached(make_embedder, server):
    server.configure(faults=Faults(poison=["POISON"]))
    texts = [f"good {i}" for i in range(100)] + ["bad POISON row"] + [f"good {i}" for i in range(100, 150)]
    df = pl.DataFrame({"text": texts})
    emb = make_embedder()
    with pytest.raises(RowsFailedError, match=r"row 100 of column 'text' could not be embedded"):
        emb.collect(df, "text")
    assert emb.last_failures["row"].to_list() == [100]
    with pytest.raises(RowsFailedError, match=r"the row of column 'text' with text 'bad POISON row'"):
        df.with_columns(emb.expr("text"))  # a slice of a bare expression does not know its rows
    assert emb.last_failures.rows() == [(None, "bad POISON row", emb.last_failures["error"][0])]
    out = df.with_columns(make_embedder(on_error="null").expr("text"))
    assert out["embedding_cache_hit"].sum() == 150  # all good rows were stored by the first run
    assert out["embedding"].null_count() == 1 and out["embedding"][100] is None
    assert "forbidden" in out["embedding_error"][100]
    assert out["embedding_error"].null_count() == 150


def test_limiter_holds_the_rate():
    now = [0.0]

    def sleep(s: float) -> None:
        now[0] += s

    lim = RateLimiter(rpm=60, tpm=6000, clock=lambda: now[0], sleep=sleep)
    for _ in range(120):
        lim.acquire(50)
    # 60 requests in the first bucket, then 1 per second; tokens: 6000 then 100/s -> 2 per second
    assert 55 <= now[0] <= 65


def test_limiter_learns_the_quota_from_headers():
    now = [0.0]
    lim = RateLimiter(clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s))
    lim.observe({"x-ratelimit-limit-requests": "120", "x-ratelimit-remaining-requests": "0",
                 "x-ratelimit-limit-tokens": "1000000", "x-ratelimit-remaining-tokens": "999000"})
    assert lim.rpm == 120 and lim.tpm == 1_000_000
    lim.acquire(10)  # nothing left: waits for one request's worth, 0.5 s at 120/min
    assert now[0] == pytest.approx(0.5)


def test_configured_limits_win_over_headers_but_remaining_still_counts():
    lim = RateLimiter(rpm=60)
    lim.observe({"x-ratelimit-limit-requests": "10000", "x-ratelimit-remaining-requests": "3"})
    assert lim.rpm == 60 and lim._req <= 3


def test_rate_limited_server_is_not_stormed(make_embedder, server):
    # 600 RPM with a 20x clock: 200 requests/s of real time; 10,000 tokens/min -> ~3,333 tokens/s
    server.time_scale = 20.0
    server.configure(rpm=600, tpm=10_000)
    emb = make_embedder(limits=Limits(max_inputs=10))
    texts = [f"limited {i}" for i in range(1000)]
    out = pl.DataFrame({"text": texts}).with_columns(emb.expr("text"))
    check_all(out)
    assert server.count(429) <= 0.05 * server.requests


def test_what_was_packed_before_the_quota_was_known_goes_at_its_pace(make_embedder, server):
    """The probe's answer tells a tokens/min limit, with buckets of a quarter minute full at
    the start (OpenAI enforces limits over periods shorter than a minute): the requests packed
    while it was out (a share of the pool each) are packed again to a quarter
    second of quota, so none waits for room while smaller ones pass, and none is refused."""
    server.time_scale, server.latency, server.burst_seconds = 10.0, 0.3, 15.0  # 10,000 tokens/s
    server.configure(tpm=60_000)
    emb = make_embedder(max_workers=4)
    texts = [f"word{i} and word{i + 1}" for i in range(2400)]  # a share of the pool each: 600 texts, ~3,700 tokens
    check_all(pl.DataFrame({"text": texts}).with_columns(emb.expr("text")))
    ok = [r for r in server.log if r.status == 200]
    assert sum(r.tokens for r in ok) > 12_000 and server.count(429) == 0
    cap = 60_000 * 10 / 240  # the request size the learned quota sets
    assert max(r.tokens for r in ok) <= cap + 100, sorted(r.tokens for r in ok)[-5:]


def test_backoff_doubles_up_to_its_cap_with_bounded_jitter():
    from tenacity import RetryCallState

    from polars_embed.pipeline.runner import wait_backoff

    wait = wait_backoff(initial=0.25, max=20.0, jitter=0.5)
    state = RetryCallState(None, None, (), {})
    for attempt, floor in [(1, 0.25), (2, 0.5), (3, 1.0), (8, 20.0), (2000, 20.0)]:
        state.attempt_number = attempt
        assert floor <= wait(state) <= floor + 0.5


def test_a_finished_call_lets_its_vectors_go_without_the_garbage_collector(make_embedder, monkeypatch):
    """tenacity keeps each request's state in a reference cycle; a call's vectors must not
    wait in it for a collection (several partitions' worth at once pushed a 1,000,000-row
    run's peak memory up by hundreds of MB)."""
    import gc
    import weakref

    from polars_embed.pipeline import results

    made: list[weakref.ref] = []
    empty = results.Results.empty

    def watched(*args, **kwargs):
        res = empty(*args, **kwargs)
        made.append(weakref.ref(res))
        return res

    emb = make_embedder(limits=Limits(max_inputs=50))
    monkeypatch.setattr(results.Results, "empty", watched)
    gc.disable()
    try:
        for k in range(3):
            emb.embed(pl.Series("text", [f"cycle {k} {i}" for i in range(400)]))
        assert len(made) == 3 and all(ref() is None for ref in made)
    finally:
        gc.enable()
