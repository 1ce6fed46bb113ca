"""Amazon Bedrock (``bedrock:<model id>``): the real boto3 client, SigV4-signed, over real HTTP
to the test server's Bedrock wire (``testing/wires/bedrock.py``)."""

from __future__ import annotations

import pickle
import time

import numpy as np
import polars as pl
import pytest

from polars_embed import ConfigurationError, Embedder
from polars_embed.errors import LongInputError, ProviderError
from polars_embed.pipeline.pack import lower_bound
from polars_embed.providers.bedrock import BedrockProvider
from polars_embed.testing.server import EmbeddingServer, Faults
from polars_embed.testing.vectors import server_vectors
from polars_embed.testing.wires import bedrock as wire

TITAN, COHERE = "amazon.titan-embed-text-v2:0", "cohere.embed-english-v3"
TITAN_PRICE, COHERE_PRICE = 0.02, 0.10


@pytest.fixture(autouse=True)
def aws_env(monkeypatch, tmp_path):
    """The test credentials and a region, and nothing else of the AWS chain (no files, no IMDS)."""
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_REGION", "AWS_BEARER_TOKEN_BEDROCK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", wire.ACCESS_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wire.SECRET_ACCESS_KEY)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture(scope="module")
def shared_server():
    with EmbeddingServer() as srv:  # one for the module: stopping one takes half a second
        yield srv


@pytest.fixture
def server(shared_server):
    """The module's server with no quota, no faults and an empty log."""
    shared_server.time_scale = 1.0
    shared_server.configure(rpm=None, tpm=None, faults=Faults())
    shared_server.reset_log()
    return shared_server


@pytest.fixture
def make(server, tmp_path):
    made: list[Embedder] = []

    def make(model: str = TITAN, **kwargs) -> Embedder:
        kwargs.setdefault("base_url", f"http://127.0.0.1:{server.port}")
        kwargs.setdefault("cache", tmp_path / "cache")
        kwargs.setdefault("timeout", 10.0)
        if model == TITAN:
            kwargs.setdefault("dimensions", 256)
        emb = Embedder(f"bedrock:{model}", **kwargs)
        made.append(emb)
        return emb

    yield make
    for emb in made:
        emb.close()


def vec(text: str, key: str = TITAN, dim: int = 256) -> np.ndarray:
    return server_vectors(key, dim, [text])[0]


def assert_rows(out: pl.DataFrame, key: str, dim: int, skip: str | None = None) -> None:
    for text, v in zip(out["text"], out["embedding"]):
        if text is None or not text.strip():
            assert v is None
        elif text != skip:
            np.testing.assert_allclose(v.to_numpy(), vec(text, key, dim), rtol=0, atol=1e-7)


# -- 1. a large column --------------------------------------------------------------------------


def test_titan_column_vectors_costs_requests_and_rerun(make, server):
    """5,000 rows, 800 distinct texts (one request each: Titan takes one text), nulls, blanks
    and one text over 8,192 tokens' worth of bytes, cut by the pipeline to 8,192 bytes."""
    long = "long " * 3000
    texts: list[str | None] = [f"titan row {i % 799} " + "w " * (i % 799 % 11) for i in range(5000)]
    for i in range(0, 5000, 97):
        texts[i] = None
    texts[5], texts[6], texts[7] = "", "   ", long
    emb = make()
    out = pl.DataFrame({"text": texts}).with_columns(emb.expr("text"))
    assert_rows(out, TITAN, 256, skip=long)
    row, sent = out.row(7, named=True), long[:8192]  # cut at the limit, in the bytes the pipeline counts
    np.testing.assert_allclose(np.asarray(row["embedding"]), vec(sent), atol=1e-7)
    assert sent in server.texts_seen() and long not in server.texts_seen()
    assert row["embedding_tokens"] == len(server._enc.encode_ordinary(sent))  # what Bedrock billed for it
    assert out["embedding_cost_usd"].sum() == pytest.approx(server.billed_tokens * TITAN_PRICE / 1e6, rel=1e-9)
    assert emb.last_stats.tokens_billed == server.billed_tokens and emb.last_stats.tokens_estimated == 0
    misses = out.filter(~pl.col("embedding_cache_hit"))
    bound = lower_bound(misses["embedding_tokens"].to_list(), 1, 8192)
    assert bound == 800 and len(server.ok_records()) <= bound * 1.01 and server.requests == len(server.ok_records())
    assert {r.n_inputs for r in server.ok_records()} == {1}
    before = server.requests
    again = pl.DataFrame({"text": texts}).with_columns(make().expr("text"))
    assert server.requests == before
    assert again["embedding_cache_hit"].drop_nulls().all() and again["embedding_cost_usd"].sum() == 0


def test_cohere_batches_roles_usage_and_server_truncation(make, server):
    """Up to 96 texts a request at the lower bound; the role is sent; a text over the model's
    512 tokens (under 2,048 characters) is cut by the server (``truncate: END``), billed 512."""
    long = "x1 " * 600  # 1,800 characters, about 1,200 tokens
    texts = [f"cohere text {i % 2500}" for i in range(4000)] + [long]
    emb = make(COHERE)
    out = pl.DataFrame({"text": texts}).with_columns(emb.expr("text"))
    key = f"{COHERE}|search_document"
    assert_rows(out.head(300), key, 1024)
    cut = server._enc.decode(server._enc.encode_ordinary(long)[:512])
    np.testing.assert_allclose(out["embedding"][-1].to_numpy(), vec(cut, key, 1024), atol=1e-7)
    misses = out.filter(~pl.col("embedding_cache_hit"))
    bound = lower_bound(misses["embedding_tokens"].to_list(), 96, 96 * 2048)
    assert len(server.ok_records()) <= bound * 1.01 and max(r.n_inputs for r in server.ok_records()) <= 96
    assert out["embedding_cost_usd"].sum() == pytest.approx(server.billed_tokens * COHERE_PRICE / 1e6, rel=1e-9)
    assert emb.last_stats.tokens_estimated == 0


def test_cohere_without_the_token_header_costs_an_upper_bound(make, server, monkeypatch):
    monkeypatch.setattr(wire.WIRE, "token_header", False)
    emb = make(COHERE, cache=False)
    out = pl.DataFrame({"text": [f"no usage {i}" for i in range(200)]}).with_columns(emb.expr("text"))
    assert out["embedding_cost_usd"].sum() >= server.billed_tokens * COHERE_PRICE / 1e6 > 0
    assert emb.last_stats.tokens_estimated == emb.last_stats.tokens_billed > server.billed_tokens


# -- 2. a quota -----------------------------------------------------------------------------------


def test_no_429_under_a_requests_quota(tmp_path):
    """Bedrock sends no rate-limit headers (embedding models are throttled by requests/min), so
    the quota is given as ``rpm=``: 310 requests at 300/min take the whole bucket, then wait
    0.2 s each for the last 10, never a 429. Paced, the 310th cannot leave before 2 s.

    The server's clock runs 2.5× (it refills 12.5 a second against the client's 5): its bucket
    starts draining at its first request, 0.15-0.35 s after the client's first claim on a busy
    machine, and at 1.5× that lag could put the client one request ahead of it at the end of
    the burst (one 429 in CI). A server of its own: the module's shared one may still be
    answering an earlier test's connections when the quota starts."""
    with EmbeddingServer(rpm=300, time_scale=2.5) as own:
        emb = Embedder(f"bedrock:{TITAN}", base_url=f"http://127.0.0.1:{own.port}", cache=tmp_path / "cache",
                       timeout=10.0, dimensions=256, rpm=300)
        started = time.monotonic()
        out = pl.DataFrame({"text": [f"quota row {i}" for i in range(310)]}).with_columns(emb.expr("text"))
        emb.close()
        assert time.monotonic() - started > 1.99  # paced: 10 requests past a full bucket at 5 a second
        assert own.count(429) == 0 and out["embedding"].null_count() == 0


# -- 3. roles -------------------------------------------------------------------------------------


def test_cohere_query_role_is_sent_and_cached_apart(make, server):
    df = pl.DataFrame({"text": ["what is a cat", "a dog"]})
    doc = df.with_columns(make(COHERE).expr("text"))
    query = df.with_columns(make(COHERE, input_type="query").expr("text"))
    assert not query["embedding_cache_hit"].any()
    assert_rows(doc, f"{COHERE}|search_document", 1024)
    assert_rows(query, f"{COHERE}|search_query", 1024)
    clustering = df.with_columns(make(COHERE, input_type="clustering").expr("text"))
    assert_rows(clustering, f"{COHERE}|clustering", 1024)
    with pytest.raises(ConfigurationError, match="input_type='summarize' is not a role"):
        make(COHERE, input_type="summarize")


def test_titan_has_no_roles(make, server):
    df = pl.DataFrame({"text": ["same either way"]})
    df.with_columns(make().expr("text"))
    query = df.with_columns(make(input_type="query").expr("text"))
    assert query["embedding_cache_hit"].all() and server.requests == 1
    with pytest.raises(ConfigurationError, match="it has none"):
        make(input_type="classification")


# -- 4. errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("variable", "value", "code"), [
    ("AWS_SECRET_ACCESS_KEY", "wrong-secret-canary-123", "InvalidSignatureException"),
    ("AWS_ACCESS_KEY_ID", "AKIAOTHERKEY", "UnrecognizedClientException"),
])
def test_wrong_credentials_name_the_status_not_the_secret(make, monkeypatch, variable, value, code):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ProviderError, match=rf"403.*{code}") as info:
        pl.DataFrame({"text": ["a"]}).with_columns(make(cache=False).expr("text"))
    assert "canary" not in str(info.value)


def test_storms_5xx_drops_and_malformed_answers_are_retried(make, server):
    """Bedrock's 429s carry no retry-after: the runner backs off on its own (so few requests here)."""
    from polars_embed.providers.base import Limits

    small = Limits(max_inputs=20, max_request_tokens=96 * 2048, max_input_tokens=2048)
    for k, faults in enumerate([Faults(storm_429=0.3, seed=3),
                                Faults(error_5xx=0.2, drop=0.05, bad_json=0.05, wrong_dim=0.05, short=0.05, seed=5)]):
        server.configure(faults=faults)
        out = pl.DataFrame({"text": [f"flaky {k} {i}" for i in range(100)]}).with_columns(
            make(COHERE, limits=small).expr("text"))
        assert_rows(out, f"{COHERE}|search_document", 1024)
    assert server.count(429) > 0 and server.count(500) > 0
    assert len(server.texts_seen()) == 200


@pytest.mark.parametrize(("unset", "match"), [
    (("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"), "no AWS credentials: set AWS_ACCESS_KEY_ID"),
    (("AWS_REGION",), "no AWS region: set AWS_REGION"),
])
def test_missing_credentials_or_region_is_one_sentence(make, monkeypatch, unset, match):
    for name in unset:
        monkeypatch.delenv(name)
    with pytest.raises(ConfigurationError, match=match):
        pl.DataFrame({"text": ["a"]}).with_columns(make().expr("text"))


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"api_key": "sk-123"}, "api_key= is not an AWS credential"),
    ({"dimensions": 300}, "returns 256, 512, 1024 dimensions"),
    ({"model": "bedrock:amazon.titan-embed-image-v1"}, "unknown Bedrock embedding model"),
    ({"model": f"bedrock:{COHERE}", "dimensions": 512}, "returns 1024 dimensions"),
    ({"provider_options": {"truncate": "END"}}, "Titan has none"),
    ({"model": f"bedrock:{COHERE}", "provider_options": {"normalize": False}}, "Titan Text Embeddings V2 only"),
])
def test_settings_bedrock_refuses(kwargs, match):
    kwargs = {"model": f"bedrock:{TITAN}", "cache": False, **kwargs}
    with pytest.raises(ConfigurationError, match=match):
        Embedder(kwargs.pop("model"), **kwargs)


def test_server_limits_answer_bedrock_400s(make, server):
    """Past the pipeline's own limits the server refuses as Bedrock does: Titan over 8,192
    tokens, Cohere over 512 tokens with ``truncate: NONE`` (both row failures, not retried)."""
    from polars_embed.providers.base import Limits

    big = "token " * 9000  # 54,000 characters... over 50,000
    over = "tok " * 9000 + "end"  # 9,000 tokens in 36,003 characters
    unlimited = Limits(max_inputs=1, max_request_tokens=60_000, max_input_tokens=60_000)
    titan = make(cache=False, on_error="null", limits=unlimited)
    out = pl.DataFrame({"text": [over, big, "fine"]}).with_columns(titan.expr("text"))
    assert "Too many input tokens" in out["embedding_error"][0] and "maxLength: 50000" in out["embedding_error"][1]
    assert out["embedding_error"][2] is None
    cohere = make(COHERE, cache=False, on_error="null", provider_options={"truncate": "NONE"})
    out = pl.DataFrame({"text": ["x1 " * 600, "short"]}).with_columns(cohere.expr("text"))
    assert "ValidationException" in out["embedding_error"][0] and out["embedding_error"][1] is None
    assert server.count(500) == 0


def test_cohere_error_and_chunk_cut_exactly_and_keep_their_own_entries(make, server):
    """Under "error" and "chunk" the server is told not to cut (``NONE``) and the pipeline holds
    each text to 512 bytes (<= the 512 tokens the model reads): "error" refuses a longer one,
    "chunk" averages exact pieces; neither is served the server-cut vector "truncate" stored."""
    long, short = "x1 " * 600, "short text"
    first = pl.DataFrame({"text": [long, short]}).with_columns(make(COHERE).expr("text"))
    assert first["embedding_cache_hit"].sum() == 0
    server.reset_log()
    with pytest.raises(LongInputError, match="has 1800 tokens, over the limit of 512"):
        pl.DataFrame({"text": [long, short]}).with_columns(make(COHERE, on_long_input="error").expr("text"))
    alone = pl.DataFrame({"text": [short]}).with_columns(make(COHERE, on_long_input="error").expr("text"))
    assert alone["embedding_cache_hit"][0] and server.requests == 0  # a short text shares the entry
    emb = make(COHERE, on_long_input="chunk")
    chunked = pl.DataFrame({"text": [long]}).with_columns(emb.expr("text"))
    assert not chunked["embedding_cache_hit"][0] and emb.provider.truncate == "NONE"
    assert all(len(t.encode()) <= 512 for t in server.texts_seen())
    a, b = first["embedding"][0].to_numpy(), chunked["embedding"][0].to_numpy()
    assert float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) < 0.999
    with pytest.raises(ConfigurationError, match=r"on_long_input='chunk' needs texts cut exactly.*'END'"):
        make(COHERE, on_long_input="chunk", provider_options={"truncate": "END"})


# -- 5. Bedrock's own -----------------------------------------------------------------------------


def test_identity_region_endpoint_and_settings():
    def ident(**kw):
        return BedrockProvider(kw.pop("model", TITAN), **kw).identity("truncate")

    assert ident(region="us-east-1") == ident(region="eu-west-1")  # one model id, one model everywhere
    assert ident(base_url="https://bedrock-runtime.us-west-2.amazonaws.com").namespace == ""
    assert ident(base_url="http://127.0.0.1:9/").namespace == "http://127.0.0.1:9"
    assert ident() != ident(normalize=False) and ident() != ident(dimensions=512)
    assert ident(model=COHERE) != ident(model=COHERE, truncate="NONE")
    assert ident(model=COHERE, input_type="query").role == "search_query"
    assert ident(model=f"us.{COHERE}").dimensions == 1024
    p = BedrockProvider(f"arn:aws:bedrock:us-east-1::foundation-model/{TITAN}")
    assert p.price_model == TITAN and p.limits.max_inputs == 1


def test_titan_v1_and_cohere_multilingual(make, server):
    """Titan v1 sends ``inputText`` alone (1,536 dimensions); both are priced at $0.10/1M."""
    df = pl.DataFrame({"text": ["first generation", "zweite Sprache"]})
    v1, multi = "amazon.titan-embed-text-v1", "cohere.embed-multilingual-v3"
    first = df.with_columns(make(v1).expr("text"))
    assert_rows(first, v1, 1536)
    second = df.with_columns(make(multi, input_type="classification").expr("text"))
    assert_rows(second, f"{multi}|classification", 1024)
    cost = first["embedding_cost_usd"].sum() + second["embedding_cost_usd"].sum()
    assert cost == pytest.approx(server.billed_tokens * 0.10 / 1e6, rel=1e-9) and cost > 0


def test_unnormalized_titan_and_a_pickled_provider(make, server):
    df = pl.DataFrame({"text": ["scale me"]})
    out = df.with_columns(make(provider_options={"normalize": False}).expr("text"))
    np.testing.assert_allclose(out["embedding"][0].to_numpy(), vec("scale me") * wire.UNNORMALIZED_NORM, rtol=1e-6)
    emb = make(cache=False)
    df.with_columns(emb.expr("text"))
    clone = pickle.loads(pickle.dumps(emb))
    again = df.with_columns(clone.expr("text"))
    np.testing.assert_allclose(again["embedding"][0].to_numpy(), vec("scale me"), atol=1e-7)
    assert "SECRET" not in repr(emb.provider) and wire.SECRET_ACCESS_KEY not in repr(emb.provider)
