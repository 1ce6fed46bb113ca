"""One vector identity: the cache key is derived from it only, stays what it was for today's
models, and separates every field that changes a vector (roles, the long-input policy, ...)."""

from __future__ import annotations

import dataclasses

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from polars_embed import Embedder
from polars_embed.errors import ConfigurationError, LongInputError
from polars_embed.identity import VectorIdentity, content_keys
from polars_embed.testing import server_vector

# Keys written by the release before identities (0.1.0, pipeline/plan.py's key_prefix), for
# "hello world": an existing cache must answer them as hits after the change.
RELEASED = {
    ("text-embedding-3-small", None, None): "48c18d990347df169f648cdc210794e9e2c3219ed43956f76ac28ba6c99cedc2",
    ("text-embedding-3-large", 256, None): "f9c732a6a50410b6e92be1c7ffd3d76e7046762b382249fd603a5cf0d040a9ac",
    ("my-model", 16, "http://127.0.0.1:8765/v1"): "35dc3a1cfa16e4fff1802ed20ca8e487df3946dfa9a3e2b105d242605c8d7315",
    ("m", 8, "http://user:pw@Example.COM:9000/v1/"): "70e5acfa8a5affd32ac094b092de5e2fdf89c675287489a90fb2f32658ef3aa2",
    ("local:all-MiniLM-L6-v2", None, None): "9a4394575c6e3cb9e37d509fa698056ed2b9c69056bee5ea08a974f6ec8b399a",
}
SNOWMAN = {  # "Ünïcode ☃"
    ("text-embedding-3-small", None, None): "cb2e0c1a31856a01c480b9f7125e5e81534b2420385dadf4ccebb4088d4e89eb",
    ("local:all-MiniLM-L6-v2", None, None): "1ba3784d81936fa89a9760eac8b32106996ce0a0a533672b22655a468d882df8",
}


@pytest.mark.parametrize(("model", "dims", "url"), list(RELEASED))
@pytest.mark.parametrize("input_type", ["document", "query"])
@pytest.mark.parametrize("policy", ["truncate", "error"])
def test_default_identities_keep_the_keys_of_the_last_release(model, dims, url, input_type, policy):
    emb = Embedder(model, dimensions=dims, base_url=url, api_key="k", cache=False, ledger=False,
                   input_type=input_type, on_long_input=policy)
    assert emb.keys(["hello world"])[0].hex() == RELEASED[(model, dims, url)]
    if (model, dims, url) in SNOWMAN:
        assert emb.keys(["Ünïcode ☃"])[0].hex() == SNOWMAN[(model, dims, url)]


def test_chunking_changes_only_the_keys_of_texts_that_may_be_over_the_limit():
    truncate = Embedder(cache=False, ledger=False, api_key="k")
    chunk = Embedder(cache=False, ledger=False, api_key="k", on_long_input="chunk")
    short, long = "a short text", "word " * 9000
    assert truncate.keys([short]) == chunk.keys([short])
    assert truncate.keys([long]) != chunk.keys([long])
    assert chunk.identity.long_input == "chunk:8191"


_text = st.text(max_size=20)
identities = st.builds(
    VectorIdentity,
    provider=st.sampled_from(["openai", "local", "voyage", "cohere", "gemini", "azure", "bedrock", "ollama"]),
    model=_text.filter(lambda s: "\0" not in s),
    dimensions=st.integers(1, 4096),
    namespace=st.sampled_from(["", "http://a:1/v1", "https://x.openai.azure.com|dep", "a@b"]),
    role=st.sampled_from(["", "query", "document", "search_query", "RETRIEVAL_QUERY"]),
    long_input=st.sampled_from(["", "chunk:8191", "truncate:512", "chunk:512"]),
    input_limit=st.just(0),  # every text may be long: the policy is in every key
    prefix=st.sampled_from(["", "query: ", "passage: "]),
    params=st.sampled_from([(), (("output_dtype", "float"),), (("truncate", "END"),), (("a", "b"), ("c", "d"))]),
)


@settings(max_examples=400, deadline=None)
@given(identities, identities, st.text(max_size=30), st.text(max_size=30))
def test_identities_that_differ_never_share_a_key(a, b, text_a, text_b):
    """Whatever the texts: equal keys only for equal identities and equal texts."""
    same = content_keys([text_a], a) == content_keys([text_b], b)
    assert same == (a == b and text_a == text_b)


@settings(max_examples=200, deadline=None)
@given(identities, st.sampled_from(["model", "dimensions", "namespace", "role", "long_input", "prefix", "params"]),
       st.text(min_size=1, max_size=30))
def test_changing_any_vector_field_changes_the_key(identity, field, text):
    other = {"model": identity.model + "x", "dimensions": identity.dimensions + 1,
             "namespace": identity.namespace + "/other", "role": identity.role + "-other",
             "long_input": identity.long_input + ":2", "prefix": identity.prefix + "> ",
             "params": (*identity.params, ("extra", "1"))}[field]
    changed = dataclasses.replace(identity, **{field: other})
    assert content_keys([text], identity) != content_keys([text], changed)


def test_an_identity_refuses_what_would_break_the_key():
    with pytest.raises(ConfigurationError, match="NUL"):
        VectorIdentity("openai", "a\0b", 4)
    with pytest.raises(ConfigurationError, match="'@'"):
        VectorIdentity("open@ai", "m", 4)


def test_roles_are_accepted_where_a_provider_has_none_and_change_nothing(make_embedder):
    doc, query = make_embedder(), make_embedder(input_type="query")
    assert doc.identity == query.identity
    with pytest.raises(ConfigurationError, match="input_type='clustering' is not a role"):
        make_embedder(input_type="clustering")


def test_truncate_then_chunk_is_a_miss_with_the_chunked_vector(make_embedder, server):
    """The issue's case: a 21,001-token text embedded with the default truncate, then asked for
    with chunk: a miss and the chunked vector; each rerun is a hit with its own vector."""
    long = "hello " * 21_001  # 21,001 tokens in cl100k_base
    series = pl.Series("text", [long, "short"])
    first = make_embedder().embed(series)
    assert first["embedding_tokens"][0] == 8191
    chunked = make_embedder(on_long_input="chunk").embed(series)
    assert chunked["embedding_cache_hit"].to_list() == [False, True]
    assert chunked["embedding_tokens"][0] >= 21_001  # every chunk billed (a cut may re-encode one more)
    truncated_vec, chunked_vec = np.asarray(first["embedding"][0]), np.asarray(chunked["embedding"][0])
    assert float(truncated_vec @ chunked_vec) < 0.99
    again_t = make_embedder().embed(series)
    again_c = make_embedder(on_long_input="chunk").embed(series)
    assert again_t["embedding_cache_hit"].all() and again_c["embedding_cache_hit"].all()
    np.testing.assert_array_equal(np.asarray(again_t["embedding"][0]), truncated_vec)
    np.testing.assert_array_equal(np.asarray(again_c["embedding"][0]), chunked_vec)
    np.testing.assert_allclose(np.asarray(again_t["embedding"][1]), server_vector("text-embedding-3-small", 64, "short"),
                               atol=1e-6)


def test_error_policy_refuses_a_long_text_the_cache_holds_truncated(make_embedder):
    long = "hello " * 9000
    make_embedder().embed(pl.Series("text", [long, "short"]))
    assert make_embedder(on_long_input="error").embed(pl.Series("text", ["short"]))["embedding_cache_hit"][0]
    with pytest.raises(LongInputError, match="row 0 of column 'text' has 9001 tokens"):
        make_embedder(on_long_input="error").embed(pl.Series("text", [long, "short"]))


def test_a_raised_limit_shares_the_default_entry_only_below_both_limits():
    """The default identity stores a 10,000-token text cut at 8,191 under the shared key: a
    server with a larger limit must not be served that vector for it."""
    from polars_embed.providers import Limits

    default = Embedder(base_url="http://127.0.0.1:1/v1", dimensions=8, api_key="k", cache=False, ledger=False)
    raised = Embedder(base_url="http://127.0.0.1:1/v1", dimensions=8, api_key="k", cache=False, ledger=False,
                      limits=Limits(max_input_tokens=16_000))
    middle = "ab " * 4000  # 12,000 bytes, ~4,000 tokens: under both in tokens, over 8,191 in bytes
    assert raised.identity.input_limit == 8191
    assert default.keys(["short"]) == raised.keys(["short"])
    assert default.keys([middle]) != raised.keys([middle])


def test_a_long_text_under_error_speaks_cli_to_a_cli_user(server, tmp_path, capsys, monkeypatch):
    from polars_embed.cli import main

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-identity")
    pl.DataFrame({"text": ["short", "hello " * 9000]}).write_parquet(tmp_path / "in.parquet")
    code = main(["run", str(tmp_path / "in.parquet"), str(tmp_path / "out.parquet"), "--model", "text-embedding-3-small",
                 "--dimensions", "8", "--base-url", server.url, "--cache", str(tmp_path / "c"), "--on-long-input", "error"])
    err = capsys.readouterr().err
    assert code == 2 and "row 1 of column 'text' has 9001 tokens, over the limit of 8191; use --on-long-input truncate or chunk" in err
    assert "on_long_input=" not in err
