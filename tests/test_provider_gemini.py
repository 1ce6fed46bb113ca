"""``gemini:<model>``: the real ``google-genai`` SDK over HTTP against the test server's Gemini wire
(``testing/wires/gemini.py``): vectors, roles, cost bounds, limits, quotas and failures."""

from __future__ import annotations

import math
import pickle
import time

import numpy as np
import polars as pl
import pytest

from polars_embed import ConfigurationError, Embedder, ProviderError
from polars_embed.limiters import RateLimiter
from polars_embed.providers import Limits, make_provider
from polars_embed.providers.base import ProviderFailure
from polars_embed.providers.gemini import GeminiProvider
from polars_embed.testing import EmbeddingServer, Faults
from polars_embed.testing.vectors import server_vectors

KEY = "AIzaSy-test-key-0123456789"
MODEL = "gemini-embedding-001"
PRICE = 0.15
DIM = 128


@pytest.fixture
def gserver():
    with EmbeddingServer(api_key=KEY) as srv:
        yield srv


def base_url(server: EmbeddingServer) -> str:
    return f"http://{server.host}:{server.port}/"


def make(server: EmbeddingServer, tmp_path, **kwargs) -> Embedder:
    kwargs.setdefault("base_url", base_url(server))
    kwargs.setdefault("api_key", KEY)
    kwargs.setdefault("cache", tmp_path / "cache")
    kwargs.setdefault("dimensions", DIM)
    kwargs.setdefault("timeout", 5.0)
    return Embedder(f"gemini:{kwargs.pop('model', MODEL)}", **kwargs)


def expected(texts: list[str], task: str = "RETRIEVAL_DOCUMENT", model: str = MODEL, dim: int = DIM) -> np.ndarray:
    return server_vectors(f"{model}|{task}", dim, texts)


def column(n: int = 5000) -> tuple[list[str | None], str]:
    """Repeats, nulls, blanks, multi-byte text and one text over 2,048 tokens."""
    long_text = "alpha beta gamma delta epsilon " * 700  # ~3,500 tokens, ~21,700 bytes
    distinct = [f"row {i} " + ("lorem ipsum dolor " * (i % 15)) + ("naïve café 東京" if i % 7 == 0 else "")
                for i in range(2600)]
    rows: list[str | None] = []
    for i in range(n):
        rows.append(None if i % 97 == 0 else "" if i % 89 == 0 else "  \n" if i % 83 == 0 else distinct[(i * 7) % 2600])
    rows[4321] = long_text
    return rows, long_text


def test_a_column_end_to_end(gserver, tmp_path):
    rows, long_text = column()
    emb = make(gserver, tmp_path)
    out = pl.DataFrame({"text": rows}).with_columns(emb.expr("text"))
    texts = [t for t in rows if t is not None and t.strip()]
    assert out["embedding"].null_count() == len(rows) - len(texts)
    # the long text was cut to the limit (2,048 bytes: at most 2,048 tokens) and embedded as sent
    sent_long = [t for t in gserver.texts_seen() if long_text.startswith(t) and t != long_text]
    assert len(sent_long) == 1 and len(sent_long[0].encode()) <= 2048 < len(long_text.encode())
    assert out["embedding_tokens"][4321] == 2048
    assert long_text not in gserver.texts_seen()
    got = np.stack([v.to_numpy() for v in out["embedding"] if v is not None])
    want = expected([sent_long[0] if t == long_text else t for t in texts])
    np.testing.assert_array_equal(got, want)
    # no usage in Gemini's answer: the cost is an upper bound (UTF-8 bytes), never below the bill
    stats = emb.last_stats
    assert stats.tokens_estimated == stats.tokens_billed > gserver.billed_tokens
    assert out["embedding_cost_usd"].sum() == pytest.approx(stats.tokens_billed * PRICE / 1e6, rel=1e-9)
    assert out["embedding_cost_usd"].sum() >= gserver.billed_tokens * PRICE / 1e6
    # requests: within 1% of the provider's own lower bound (100 inputs per request)
    ok = gserver.ok_records()
    inputs, tokens = sum(r.n_inputs for r in ok), sum(r.tokens for r in ok)
    bound = max(math.ceil(inputs / 100), math.ceil(tokens / (100 * 2048)))
    assert inputs == len(set(texts)) and gserver.requests <= bound * 1.01
    # a rerun is all hits, with no request
    before = gserver.requests
    again = pl.DataFrame({"text": rows}).with_columns(make(gserver, tmp_path).expr("text"))
    assert gserver.requests == before
    assert again["embedding_cache_hit"].drop_nulls().all() and again["embedding_cost_usd"].sum() == 0


def test_no_429_under_a_quota(tmp_path):
    """Gemini sends no rate-limit headers on a 200, so the quota is given: ``rpm``/``tpm`` at 90%
    of the server's, on a limiter whose clock runs ``scale`` times fast like the server's (a
    "minute" lasts 1 s for both). One request goes first: the client's first connection takes
    ~0.1 s, a tenth of such a "minute" (of a real minute, nothing)."""
    scale = 60.0
    with EmbeddingServer(api_key=KEY, rpm=30, tpm=6000, time_scale=scale) as srv:
        limiter = RateLimiter(27, 5400, clock=lambda: time.monotonic() * scale, sleep=lambda s: time.sleep(s / scale))
        emb = make(srv, tmp_path, limiter=limiter, limits=Limits(max_inputs=10, max_request_tokens=20480, max_input_tokens=2048))
        pl.DataFrame({"text": ["warm up"]}).with_columns(emb.expr("text"))
        texts = [f"quota text number {i}" for i in range(800)]
        started = time.monotonic()
        out = pl.DataFrame({"text": texts}).with_columns(emb.expr("text"))
        assert srv.count(429) == 0 and srv.requests == 81
        assert time.monotonic() - started > 1.5  # the quota bound it: 80 requests at 27 a "minute"
        np.testing.assert_array_equal(np.stack(out["embedding"].to_numpy()), expected(texts))


def test_a_429_teaches_its_wait_and_quota(gserver):
    gserver.configure(rpm=2)
    provider = GeminiProvider(MODEL, base_url=base_url(gserver), api_key=KEY, dimensions=DIM)
    provider.embed(["one"])
    provider.embed(["two"])
    with pytest.raises(ProviderFailure) as info:
        provider.embed(["three"])
    exc = info.value
    assert exc.status_code == 429 and exc.retryable and "RESOURCE_EXHAUSTED" in str(exc)
    headers = exc.response.headers
    assert 0 < float(headers["retry-after"]) <= 60
    assert headers["x-ratelimit-limit-requests"] == "2" and headers["x-ratelimit-remaining-requests"] == "0"


def test_roles(gserver, tmp_path):
    df = pl.DataFrame({"text": ["what is a cat?"]})
    doc = df.with_columns(make(gserver, tmp_path).expr("text"))
    query = df.with_columns(make(gserver, tmp_path, input_type="query").expr("text"))
    assert not query["embedding_cache_hit"][0]  # another cache entry than the document's
    np.testing.assert_array_equal(query["embedding"][0].to_numpy(), expected(["what is a cat?"], "RETRIEVAL_QUERY")[0])
    assert not np.array_equal(query["embedding"][0].to_numpy(), doc["embedding"][0].to_numpy())
    for name in ("classification", "CODE_RETRIEVAL_QUERY"):
        out = df.with_columns(make(gserver, tmp_path, input_type=name).expr("text"))
        np.testing.assert_array_equal(out["embedding"][0].to_numpy(), expected(["what is a cat?"], name.upper())[0])
    assert gserver.requests == 4
    with pytest.raises(ConfigurationError, match=r"input_type='passage' is not a role"):
        make(gserver, tmp_path, input_type="passage")


def test_gemini_embedding_2_takes_its_task_in_the_text(gserver, tmp_path):
    df = pl.DataFrame({"text": ["what is a cat?"]})
    out = df.with_columns(make(gserver, tmp_path, model="gemini-embedding-2", input_type="query").expr("text"))
    sent = "task: search result | query: what is a cat?"
    assert gserver.texts_seen() == [sent]  # and no taskType: the wire refuses one for this model
    np.testing.assert_array_equal(out["embedding"][0].to_numpy(), expected([sent], "", "gemini-embedding-2")[0])
    provider = make_provider("gemini:gemini-embedding-2", dimensions=DIM, api_key=KEY)
    assert provider.identity("truncate").prefix == "title: none | text: "
    assert provider.limits.max_input_tokens == 8192 - 64


def test_settings_are_checked():
    with pytest.raises(ConfigurationError, match="128 to 3072 dimensions, got dimensions=64"):
        make_provider("gemini:gemini-embedding-001", dimensions=64, api_key=KEY)
    with pytest.raises(ConfigurationError, match="unknown Gemini model 'my-model'.*dimensions="):
        make_provider("gemini:my-model", api_key=KEY)
    provider = make_provider("gemini:gemini-embedding-001", api_key=KEY)
    assert provider.dimensions == 3072 and provider.limits.max_inputs == 100 and provider.limits.max_input_tokens == 2048
    assert provider.identity("truncate").namespace == "" and provider.identity("truncate").long_input == ""
    there = make_provider("gemini:gemini-embedding-001", api_key=KEY, base_url="http://127.0.0.1:9/")
    assert there.identity("truncate").namespace == "http://127.0.0.1:9"
    assert "AIza" not in repr(provider)
    assert make_provider("gemini:models/gemini-embedding-001", api_key=KEY).model == MODEL
    with pytest.raises(ConfigurationError, match=r"provider_options \['region'\] are not settings of a Gemini model"):
        make_provider("gemini:gemini-embedding-001", api_key=KEY, options={"region": "eu"})


def test_a_wrong_key_is_one_clear_error_without_the_key(gserver, tmp_path):
    emb = make(gserver, tmp_path, api_key="AIzaSy-wrong-key-9876543210")
    with pytest.raises(ConfigurationError) as info:
        pl.DataFrame({"text": ["a", "b", "c"]}).with_columns(emb.expr("text"))
    message = str(info.value)
    assert "400 INVALID_ARGUMENT" in message and "api_key=" in message and "9876543210" not in message
    assert gserver.requests == 1  # not retried, not bisected


def test_a_missing_key_names_the_variable(gserver, tmp_path, monkeypatch):
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    emb = make(gserver, tmp_path, api_key=None)
    with pytest.raises(ConfigurationError, match="set GEMINI_API_KEY"):
        pl.DataFrame({"text": ["a"]}).with_columns(emb.expr("text"))
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    out = pl.DataFrame({"text": ["a"]}).with_columns(make(gserver, tmp_path, api_key=None).expr("text"))
    assert out["embedding"][0] is not None


def test_storms_faults_and_malformed_answers_are_retried(gserver, tmp_path):
    gserver.configure(faults=Faults(storm_429=0.3, error_5xx=0.15, drop=0.05, short=0.05, bad_json=0.05,
                                    wrong_dim=0.05, seed=7))
    texts = [f"stormy text {i}" for i in range(600)]
    out = pl.DataFrame({"text": texts}).with_columns(make(gserver, tmp_path, limits=None).expr("text"))
    np.testing.assert_array_equal(np.stack(out["embedding"].to_numpy()), expected(texts))
    summary = gserver.summary()
    assert summary["status_429"] > 0 and summary["status_5xx"] > 0 and summary["requests"] > summary["ok"]


def test_the_sdk_does_not_retry_itself(gserver):
    gserver.configure(faults=Faults(error_5xx=1.0))
    provider = GeminiProvider(MODEL, base_url=base_url(gserver), api_key=KEY, dimensions=DIM)
    with pytest.raises(ProviderFailure) as info:
        provider.embed(["x"])
    assert info.value.status_code == 500 and info.value.retryable
    assert gserver.requests == 1


def test_a_refused_input_fails_its_row_only(gserver, tmp_path):
    gserver.configure(faults=Faults(poison=["BAD"]))
    emb = make(gserver, tmp_path, on_error="null")
    out = pl.DataFrame({"text": ["good", "a BAD one", "fine"]}).with_columns(emb.expr("text"))
    assert out["embedding"].is_null().to_list() == [False, True, False]


def test_usage_in_an_answer_is_used_when_given():
    from google.genai import types

    provider = GeminiProvider(MODEL, api_key=KEY, dimensions=DIM)
    vectors = expected(["a", "b"])
    answer = types.EmbedContentResponse(embeddings=[types.ContentEmbedding(values=v.tolist()) for v in vectors],
                                        usage_metadata=types.UsageMetadata(prompt_token_count=2))
    result = provider.result(answer, ["a", "b"])
    assert result.billed_tokens == 2 and result.usage_reported
    np.testing.assert_array_equal(result.vectors, vectors)


def test_google_genai_and_polars_embed_in_one_environment(gserver):
    """google-genai pins tenacity<9.2; the core's retries work with it (no tenacity 9.2 API)."""
    import google.genai
    import tenacity

    import polars_embed

    assert google.genai.__version__ and polars_embed.Embedder and tenacity.Retrying
    provider = GeminiProvider(MODEL, base_url=base_url(gserver), api_key=KEY, dimensions=DIM)
    provider.prepare()
    clone = pickle.loads(pickle.dumps(provider))
    result = clone.embed(["hello"])
    np.testing.assert_array_equal(result.vectors, expected(["hello"]))
    assert result.billed_tokens == 5 and not result.usage_reported


def test_a_provider_error_names_the_status(gserver, tmp_path):
    gserver.configure(faults=Faults(fail_after=0))
    emb = make(gserver, tmp_path, max_attempts=2, max_retry_seconds=2)
    with pytest.raises(ProviderError, match="500 INTERNAL"):
        pl.DataFrame({"text": ["a"]}).with_columns(emb.expr("text"))
