"""The core contract of embed_column, end to end over real HTTP to the local server."""

from __future__ import annotations

import pickle

import numpy as np
import polars as pl
import pytest

from polars_embed import (
    ColumnTypeError,
    ConfigurationError,
    Embedder,
    embed_column,
    read_metadata,
    write_parquet,
)
from polars_embed.testing import server_vector

MODEL = "text-embedding-3-small"


def vec(text: str, dim: int = 64, model: str = MODEL) -> np.ndarray:
    return server_vector(model, dim, text)


def assert_vectors_match(out: pl.DataFrame, dim: int = 64, model: str = MODEL) -> None:
    for text, v in zip(out["text"], out["embedding"]):
        if text is None or not text.strip():
            assert v is None
        else:
            np.testing.assert_array_equal(v.to_numpy(), vec(text, dim, model))


@pytest.mark.parametrize(
    ("model", "dimensions", "dim"),
    [
        ("text-embedding-3-small", None, 1536),
        ("text-embedding-3-large", None, 3072),
        ("text-embedding-ada-002", None, 1536),
        ("text-embedding-3-small", 256, 256),
    ],
)
def test_schema_is_known_without_a_request(server, model, dimensions, dim):
    lf = pl.LazyFrame({"text": ["a", "b"]})
    expr = embed_column("text", model=model, dimensions=dimensions, base_url=server.url, api_key="k", cache=False)
    schema = lf.with_columns(expr).collect_schema()
    assert schema["embedding"] == pl.Array(pl.Float32, dim)
    assert schema["embedding_cache_hit"] == pl.Boolean
    assert schema["embedding_tokens"] == pl.UInt32
    assert schema["embedding_cost_usd"] == pl.Float64
    assert server.requests == 0


def test_unknown_model_on_custom_server_needs_dimensions(server):
    with pytest.raises(ConfigurationError, match="dimensions="):
        embed_column("text", model="my-model", base_url=server.url, api_key="k")


def test_unknown_openai_model_is_one_clear_error(monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ConfigurationError, match="unknown OpenAI model 'text-embedding-4'"):
        Embedder("text-embedding-4", cache=False)


def test_dimensions_the_model_does_not_support(monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ConfigurationError, match="ada-002.*dimensions=256"):
        Embedder("text-embedding-ada-002", dimensions=256, cache=False)


def test_missing_api_key_is_one_sentence(server, monkeypatch, tmp_path):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    emb = Embedder(MODEL, base_url=server.url, dimensions=8, cache=tmp_path / "c")
    with pytest.raises(ConfigurationError, match="set OPENAI_API_KEY"):
        pl.DataFrame({"text": ["a"]}).with_columns(emb.expr("text"))


def test_eager_output_contract(make_embedder, server):
    emb = make_embedder()
    df = pl.DataFrame({"text": ["hello world", "a cat", "hello world", None, "", "   \n", "a dog"]})
    out = df.with_columns(emb.expr("text"))
    assert out.columns == ["text", "embedding", "embedding_cache_hit", "embedding_tokens", "embedding_cost_usd"]
    assert_vectors_match(out)
    assert out["embedding_cache_hit"].to_list() == [False, False, True, None, None, None, False]
    assert out["embedding_tokens"].to_list() == [2, 2, 2, 0, 0, 0, 2]
    cost = out["embedding_cost_usd"].to_list()
    assert cost[2] == cost[3] == cost[4] == cost[5] == 0.0
    assert cost[0] > 0


def test_nulls_and_blank_strings_are_never_sent(make_embedder, server):
    emb = make_embedder()
    out = pl.DataFrame({"text": [None, "", " ", "\t\n"]}).with_columns(emb.expr("text"))
    assert out["embedding"].null_count() == 4
    assert out["embedding_cost_usd"].sum() == 0
    assert server.requests == 0


def test_duplicate_content_embedded_only_once(make_embedder, server):
    emb = make_embedder()
    texts = ["alpha", "beta", "gamma"] * 50
    out = pl.DataFrame({"text": texts}).with_columns(emb.expr("text"))
    assert sorted(server.texts_seen()) == ["alpha", "beta", "gamma"]
    assert_vectors_match(out)
    assert out["embedding_cache_hit"].sum() == 147


def test_second_run_makes_no_request_and_is_all_hits(make_embedder, server):
    emb = make_embedder()
    df = pl.DataFrame({"text": [f"document number {i}" for i in range(300)]})
    first = df.with_columns(emb.expr("text"))
    before = server.requests
    second = df.with_columns(make_embedder().expr("text"))  # a new Embedder, same cache dir
    assert server.requests == before
    assert second["embedding_cache_hit"].all()
    assert second["embedding_cost_usd"].sum() == 0
    assert second["embedding_tokens"].to_list() == first["embedding_tokens"].to_list()
    assert_vectors_match(second)


def test_cache_for_one_model_never_serves_another(make_embedder, server):
    df = pl.DataFrame({"text": ["same text"]})
    df.with_columns(make_embedder(dimensions=64).expr("text"))
    out = df.with_columns(make_embedder(dimensions=32).expr("text"))
    assert not out["embedding_cache_hit"][0]
    np.testing.assert_array_equal(out["embedding"][0].to_numpy(), vec("same text", 32))
    out = df.with_columns(make_embedder(model="text-embedding-3-large", dimensions=64).expr("text"))
    assert not out["embedding_cache_hit"][0]
    np.testing.assert_array_equal(out["embedding"][0].to_numpy(), vec("same text", 64, "text-embedding-3-large"))
    assert server.requests == 3


def test_cache_false_and_env_default(make_embedder, server, tmp_path, monkeypatch):
    df = pl.DataFrame({"text": ["x y z"]})
    df.with_columns(make_embedder(cache=False).expr("text"))
    df.with_columns(make_embedder(cache=False).expr("text"))
    assert server.requests == 2
    monkeypatch.setenv("POLARS_EMBED_CACHE", str(tmp_path / "from-env"))
    emb = Embedder(MODEL, base_url=server.url, api_key="k", dimensions=64)
    df.with_columns(emb.expr("text"))
    assert (tmp_path / "from-env").is_dir()
    assert emb.cache.stats()["entries"] == 1


def test_column_must_be_text():
    df = pl.DataFrame({"n": [1, 2]})
    with pytest.raises(ColumnTypeError, match=r"column 'n' has dtype Int64"):
        df.with_columns(embed_column("n", cache=False, api_key="k"))


def test_categorical_and_expressions_are_accepted(make_embedder, server):
    emb = make_embedder()
    df = pl.DataFrame({"text": ["Hello", "World"]}).with_columns(cat=pl.col("text").cast(pl.Categorical))
    out = df.with_columns(emb.expr("cat"))
    np.testing.assert_array_equal(out["embedding"][0].to_numpy(), vec("Hello"))
    out = df.with_columns(emb.expr(pl.col("text").str.to_lowercase(), name="lower"))
    np.testing.assert_array_equal(out["lower"][1].to_numpy(), vec("world"))
    assert "lower_cost_usd" in out.columns


def test_zero_rows(make_embedder, server):
    out = pl.DataFrame({"text": []}, schema={"text": pl.String}).with_columns(make_embedder().expr("text"))
    assert out.height == 0 and out.schema["embedding"] == pl.Array(pl.Float32, 64)
    assert server.requests == 0


def test_cost_sum_equals_billed_usage_times_price(make_embedder, server):
    emb = make_embedder()
    texts = [f"row {i % 700} " + "word " * (i % 37) for i in range(3000)]
    out = pl.DataFrame({"text": texts}).with_columns(emb.expr("text"))
    assert out["embedding_cost_usd"].sum() == pytest.approx(server.billed_tokens * 0.02 / 1e6, rel=1e-12)
    assert emb.last_stats.tokens_billed == server.billed_tokens
    assert emb.last_stats.tokens_counted == server.billed_tokens  # same tokenizer
    # the tokens column is the provider's count of each text
    first = out.filter(~pl.col("embedding_cache_hit"))
    assert first["embedding_tokens"].sum() == server.billed_tokens


def test_price_override(make_embedder, server):
    emb = make_embedder(price_per_million=1.0)
    out = pl.DataFrame({"text": ["one two three"]}).with_columns(emb.expr("text"))
    assert out["embedding_cost_usd"][0] == pytest.approx(3 / 1e6)


def test_lazy_and_streaming_cold_runs_report_real_costs(make_embedder, server):
    """Polars may evaluate a struct-returning UDF once per field; a cold run must still
    show misses and costs, not the hits the second evaluation would see."""
    df = pl.DataFrame({"text": [f"lazy text {i % 500}" for i in range(2000)]})
    for engine in ("in-memory", "streaming"):
        emb = make_embedder(cache=False) if engine == "in-memory" else make_embedder()
        server.reset_log()
        out = df.lazy().with_columns(emb.expr("text")).collect(engine=engine)
        assert out["embedding_cost_usd"].sum() == pytest.approx(server.billed_tokens * 0.02 / 1e6)
        assert server.billed_tokens > 0
        assert (~out["embedding_cache_hit"]).sum() >= 500  # every distinct text paid once per slice at least
        assert len(server.texts_seen()) == (~out["embedding_cache_hit"]).sum()
        assert_vectors_match(out.head(50))


def test_function_runs_once_per_slice(make_embedder, server, monkeypatch):
    import polars_embed.frames

    emb = make_embedder(cache=False)
    calls = []
    original = polars_embed.frames.evaluate_slice

    def counting(emb, series, *args, **kw):
        calls.append(len(series))
        return original(emb, series, *args, **kw)

    monkeypatch.setattr(polars_embed.frames, "evaluate_slice", counting)
    df = pl.DataFrame({"text": [f"t{i}" for i in range(1000)]})
    df.with_columns(emb.expr("text"))
    assert sum(calls) == 1000
    for engine in ("in-memory", "streaming"):
        calls.clear()
        df.lazy().with_columns(emb.expr("text")).collect(engine=engine)
        assert sum(calls) == 1000, engine


def test_embedder_is_picklable(make_embedder, server):
    emb = make_embedder()
    pl.DataFrame({"text": ["warm the pool"]}).with_columns(emb.expr("text"))
    clone = pickle.loads(pickle.dumps(emb))
    out = pl.DataFrame({"text": ["warm the pool", "new"]}).with_columns(clone.expr("text"))
    assert out["embedding_cache_hit"].to_list() == [True, False]


def test_parquet_has_metadata_and_is_replaced_atomically(make_embedder, tmp_path):
    emb = make_embedder()
    out = pl.DataFrame({"text": ["a", "b"]}).with_columns(emb.expr("text"))
    path = write_parquet(out, tmp_path / "out" / "x.parquet", emb.metadata())
    meta = read_metadata(path)
    assert meta["polars_embed.model"] == MODEL
    assert meta["polars_embed.dimensions"] == "64"
    assert meta["polars_embed.provider"] == "openai"
    assert "polars_embed.version" in meta
    back = pl.read_parquet(path)
    assert back.schema["embedding"] == pl.Array(pl.Float32, 64)
    assert [p.name for p in path.parent.iterdir()] == ["x.parquet"]  # no temp file left


def test_api_key_not_in_repr_or_metadata(make_embedder):
    emb = make_embedder(api_key="sk-canary-secret")
    assert "canary" not in repr(emb)
    assert "canary" not in str(emb.metadata())


def test_large_frame_requests_stay_at_the_lower_bound(make_embedder, server):
    from polars_embed.pipeline.pack import lower_bound

    emb = make_embedder(dimensions=8, timeout=60.0)  # big requests on a busy 2-core box: no timeout retries
    texts = [f"short row {i} " + "x " * (i % 50) for i in range(45_000)]
    out = pl.DataFrame({"text": texts}).with_columns(emb.expr("text"))
    bound = lower_bound(out["embedding_tokens"].to_list(), 2048, 300_000)
    assert bound >= 20  # more requests than the pool has workers: nothing to split
    assert len(server.ok_records()) <= bound * 1.01
    assert server.requests == len(server.ok_records())


def test_small_jobs_use_the_pool_and_each_text_goes_once(make_embedder, server):
    """20,000 short rows are not 10 serial 2,048-input requests: the first call (quota
    unknown) sends a small head alone, then one request's worth per worker as texts are
    tokenized; the second call (quota known) splits the same way without the probe."""
    emb = make_embedder(dimensions=8, max_workers=16)
    first = pl.Series("text", [f"small job row {i}" for i in range(20_000)])
    emb.embed(first)
    log = server.ok_records()
    assert 16 <= len(log) <= 18 and max(r.n_inputs for r in log) <= 2048
    assert log[0].n_inputs < min(r.n_inputs for r in log[1:])  # the probe: a quarter of a request
    seen = server.texts_seen()
    assert len(seen) == len(set(seen)) == 20_000
    server.reset_log()
    emb.embed(pl.Series("text", [f"second call row {i}" for i in range(20_000)]))
    log = server.ok_records()
    assert 16 <= len(log) <= 17 and len(server.texts_seen()) == 20_000


def test_alias_names_the_vector_column_and_prefixes_the_others(make_embedder):
    df = pl.DataFrame({"text": ["a", "b", None]})
    out = df.with_columns(make_embedder().expr("text").alias("vec"))
    assert out.columns == ["text", "vec", "vec_cache_hit", "vec_tokens", "vec_cost_usd"]
    lazy = df.lazy().with_columns(embed_column("text", embedder=make_embedder()).alias("v")).collect_schema()
    assert list(lazy) == ["text", "v", "v_cache_hit", "v_tokens", "v_cost_usd"]
