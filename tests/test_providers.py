"""What every provider shares: picking one by the model's prefix, self-hosted servers, roles,
and the input types of the CLI and the proxy."""

from __future__ import annotations

import importlib.util

import polars as pl
import pytest

from polars_embed import Embedder
from polars_embed.cli import main
from polars_embed.errors import ConfigurationError
from polars_embed.providers import FAMILIES, make_provider
from polars_embed.testing import EmbeddingServer, server_vector

KEY = "sk-test-providers"


def test_every_family_is_a_provider_file_with_its_prefix():
    import importlib

    for family in FAMILIES:
        cls = importlib.import_module(f"polars_embed.providers.{family}").PROVIDER
        assert cls.name == family
        wire = importlib.import_module(f"polars_embed.testing.wires.{family}").WIRE
        assert callable(wire.handle), f"{family} has no wire format in the test server"


def test_a_prefix_without_a_model_is_one_sentence():
    with pytest.raises(ConfigurationError, match=r"names no model after voyage:"):
        make_provider("voyage:")



def test_every_family_takes_the_protocol_keywords_and_a_role_it_lacks_is_one_sentence():
    """`document` and `query` are accepted by every family; a word none has is refused."""
    common = {"timeout": 5.0}
    for family, model, extra in (("azure", "dep", {"base_url": "https://r.openai.azure.com", "api_key": "k",
                                                   "options": {"model": "text-embedding-3-small"}}),
                                 ("voyage", "voyage-3.5", {"api_key": "k"}), ("cohere", "embed-v4.0", {"api_key": "k"}),
                                 ("gemini", "gemini-embedding-001", {"api_key": "k"}),
                                 ("bedrock", "amazon.titan-embed-text-v2:0", {"options": {"region": "us-east-1"}}),
                                 ("ollama", "nomic-embed-text", {})):
        if family == "ollama" and importlib.util.find_spec("ollama") is None:  # the core-only (lowest) job
            with pytest.raises(ConfigurationError, match=r"needs the ollama package: pip install 'polars-embed\[ollama\]'"):
                make_provider(f"{family}:{model}", **common, **extra)
            continue
        for role in ("document", "query"):
            make_provider(f"{family}:{model}", input_type=role, **common, **extra)
        with pytest.raises(ConfigurationError, match="input_type='poem' is not a role"):
            make_provider(f"{family}:{model}", input_type="poem", **common, **extra)


def test_options_an_openai_model_does_not_have_are_refused():
    with pytest.raises(ConfigurationError, match=r"'region': no such setting .* \(provider_options=\)"):
        Embedder("text-embedding-3-small", api_key="k", cache=False, ledger=False, provider_options={"region": "x"})


def test_options_a_family_does_not_take_or_sets_itself_are_one_sentence(tmp_path, capsys, monkeypatch):
    with pytest.raises(ConfigurationError, match=r"provider_options \['regoin'\] are not settings of bedrock models "
                                                 r"\(provider_options=\); they take region, profile, normalize, truncate"):
        make_provider("bedrock:amazon.titan-embed-text-v2:0", options={"regoin": "x"})
    with pytest.raises(ConfigurationError, match=r"provider_options \['dimensions'\] are keywords of their own: pass dimensions="):
        make_provider("voyage:voyage-3.5", api_key="k", options={"dimensions": 256})
    pl.DataFrame({"text": ["a"]}).write_parquet(tmp_path / "in.parquet")
    monkeypatch.setenv("VOYAGE_API_KEY", "k")
    assert main(["run", str(tmp_path / "in.parquet"), str(tmp_path / "out.parquet"), "--model", "voyage:voyage-3.5",
                 "--cache", str(tmp_path / "c"), "--provider-option", "truncaton=false"]) == 2
    err = capsys.readouterr().err
    assert "--provider-option truncaton are not settings of voyage models (--provider-option)" in err, err


def test_a_provider_given_to_two_embedders_keeps_each_ones_policy():
    """``use_policy`` changes what a provider sends: each Embedder works on its own copy."""
    from polars_embed.providers.voyage import VoyageProvider

    given = VoyageProvider("voyage-3.5", api_key="k")
    cut = Embedder(provider=given, cache=False, ledger=False)
    exact = Embedder(provider=given, cache=False, ledger=False, on_long_input="error")
    assert cut.provider.truncation is True and exact.provider.truncation is False
    assert cut.identity != exact.identity and given.truncation is True
    with pytest.raises(ConfigurationError, match="input_type='query' differs from the given provider's"):
        Embedder(provider=given, cache=False, ledger=False, input_type="query")
    assert Embedder(provider=given, cache=False, ledger=False, input_type="document").identity == cut.identity


def test_a_self_hosted_model_of_unknown_size_is_asked_once():
    """TEI, vLLM, Infinity, LM Studio: without dimensions=, one request on a short text finds it."""
    with EmbeddingServer(models={"bge-small-en-v1.5": 384}) as server:
        emb = Embedder("bge-small-en-v1.5", base_url=server.url, api_key=KEY, cache=False, ledger=False)
        assert emb.dimensions == 384 and server.requests == 1
        out = emb.embed(pl.Series("text", ["a", "b"]))
        assert out.schema["embedding"] == pl.Array(pl.Float32, 384)
        assert (out["embedding"][0].to_numpy() == server_vector("bge-small-en-v1.5", 384, "a")).all()


def test_a_self_hosted_model_that_cannot_be_asked_says_pass_dimensions():
    with pytest.raises(ConfigurationError, match=r"asking http://127.0.0.1:9/v1 for it failed .*; pass dimensions="):
        Embedder("bge-small", base_url="http://127.0.0.1:9/v1", api_key=KEY, cache=False, ledger=False)


def test_the_cli_takes_an_input_type(tmp_path, capsys, server):
    pl.DataFrame({"text": ["a question?", "a document"]}).write_parquet(tmp_path / "in.parquet")
    args = ["run", str(tmp_path / "in.parquet"), str(tmp_path / "out.parquet"), "--model", "text-embedding-3-small",
            "--dimensions", "8", "--base-url", server.url, "--cache", str(tmp_path / "c")]
    import os

    os.environ["OPENAI_API_KEY"] = KEY
    try:
        assert main([*args, "--input-type", "query"]) == 0
        assert main([*args, "--input-type", "clustering"]) == 2
        assert main([*args, "--provider-option", "region"]) == 2
        assert main([*args, "--provider-option", "region=eu-west-1"]) == 2
    finally:
        del os.environ["OPENAI_API_KEY"]
    err = capsys.readouterr().err
    assert "--input-type 'clustering' is not a role an OpenAI embedding model has" in err
    assert "--provider-option takes KEY=VALUE, got 'region'" in err
    assert "'region': no such setting of an OpenAI-compatible model (--provider-option)" in err


def test_the_proxy_reads_other_providers_role_words():
    from polars_embed.serve.wire import parse_request

    assert parse_request(b'{"model": "m", "input": "x", "input_type": "search_query"}').input_type == "query"
    assert parse_request(b'{"model": "m", "input": "x", "task_type": "RETRIEVAL_DOCUMENT"}').input_type == "document"
    with pytest.raises(Exception, match="input_type"):
        parse_request(b'{"model": "m", "input": "x", "input_type": "poem"}')
