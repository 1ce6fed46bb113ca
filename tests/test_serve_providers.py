"""Every provider behind the proxy: a ``model`` with a provider prefix goes to that provider,
with its roles, limits and price; OpenAI's clients talk to it as to OpenAI."""

from __future__ import annotations

import numpy as np
import openai
import pytest

from polars_embed.serve.app import Serving
from polars_embed.serve.proxy import ProxyConfig
from polars_embed.testing import EmbeddingServer
from polars_embed.testing.vectors import server_vectors

KEY = "co-test-key-0123456789abcdef"
COHERE = "cohere:embed-english-light-v3.0"  # 384 dimensions, $0.10 per 1M tokens


@pytest.fixture
def proxy(tmp_path, monkeypatch):
    monkeypatch.setenv("CO_API_KEY", KEY)
    with EmbeddingServer(api_key=KEY) as server, Serving(ProxyConfig(
            upstream_base_url=server.url, upstream_api_key=KEY, cache=tmp_path / "cache",
            provider_urls={"cohere": f"http://{server.host}:{server.port}"}, models=[COHERE])) as s:
        yield s, server


def test_a_prefixed_model_is_answered_by_its_provider_with_roles_and_price(proxy):
    s, _ = proxy
    c = openai.OpenAI(base_url=s.url, api_key="client", max_retries=0)
    texts = ["where is the station?", "a timetable of trains"]
    for role in ("search_query", "search_document"):
        r = c.embeddings.with_raw_response.create(model=COHERE, input=texts, extra_body={"input_type": role})
        got = np.array([d.embedding for d in r.parse().data], dtype=np.float32)
        assert np.allclose(got, server_vectors(f"embed-english-light-v3.0|{role}", 384, texts), atol=1e-7)
        assert r.headers["x-polars-embed-cache"] == "MISS"  # the role is part of the vector's identity
        assert float(r.headers["x-polars-embed-cost-usd"]) == pytest.approx(r.parse().usage.prompt_tokens * 0.10 / 1e6)
    again = c.embeddings.with_raw_response.create(model=COHERE, input=texts[:1], extra_body={"input_type": "query"})
    assert again.headers["x-polars-embed-cache"] == "HIT"
    assert COHERE in [m.id for m in c.models.list()]
    with pytest.raises(openai.BadRequestError) as info:
        c.embeddings.create(model=COHERE, input=[[1, 2, 3]])
    assert "takes text" in info.value.message


def test_a_prefixed_model_the_provider_does_not_know_is_one_sentence(proxy):
    s, _ = proxy
    c = openai.OpenAI(base_url=s.url, api_key="client", max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        c.embeddings.create(model="cohere:embed-english-light-v3.0", input="x", dimensions=7)
    assert "7" in info.value.message and info.value.body["param"] is None
