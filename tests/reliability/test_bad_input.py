"""Bad input gets its defined result or one clear error; nothing done is lost."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from polars_embed import (
    ColumnTypeError,
    ConfigurationError,
    Embedder,
    MemoryCache,
    ProviderError,
    embed_column,
)
from polars_embed.testing import EmbeddingServer, server_vector

MODEL = "text-embedding-3-small"


@pytest.fixture(scope="module")
def srv():
    with EmbeddingServer(log_texts=False) as s:
        yield s


def make(srv, **kw):
    kw.setdefault("cache", MemoryCache())
    return Embedder(MODEL, base_url=srv.url, api_key="k", dimensions=8, **kw)


any_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.one_of(st.none(), any_text, st.sampled_from(["", " ", "\x00", "a\x00b", "🙂", "שלום עולם", "\u200f"])), max_size=30))
def test_any_text_comes_back_right(srv, rows):
    out = make(srv).embed(pl.Series("text", rows, dtype=pl.String))
    for text, vec in zip(rows, out["embedding"]):
        if text is None or not text.strip():
            assert vec is None
        else:
            np.testing.assert_array_equal(vec.to_numpy(), server_vector(MODEL, 8, text))


def test_a_million_character_row_is_truncated_under_the_documented_limit():
    """OpenAI documents 8,191 tokens an input (its errors say 8,192): a server enforcing
    the documented limit takes the default truncation."""
    with EmbeddingServer(log_texts=False, max_input_tokens=8191) as strict:
        out = make(strict).embed(pl.Series("text", ["word " * 200_000, "short"]))
        assert out["embedding_tokens"].to_list() == [8191, 1]
        assert out["embedding"].null_count() == 0 and strict.count(400) == 0


def test_binary_column_from_a_binary_source(srv):
    df = pl.DataFrame({"raw": [b"\xff\xfeinvalid utf-8", b"ok"]})
    with pytest.raises(ColumnTypeError, match=r"column 'raw' has dtype Binary"):
        df.with_columns(make(srv).expr("raw"))
    fixed = df.with_columns(pl.col("raw").map_elements(lambda b: b.decode("utf-8", "replace"), return_dtype=pl.String))
    assert fixed.with_columns(make(srv).expr("raw"))["embedding"].null_count() == 0


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda s: pl.DataFrame({"n": [1.5]}).with_columns(make(s).expr("n")), ColumnTypeError, "column 'n' has dtype Float64"),
        (lambda s: pl.DataFrame({"t": ["a"]}).with_columns(make(s).expr("missing")), pl.exceptions.ColumnNotFoundError, "missing"),
        (lambda s: Embedder("text-embedding-3-small", dimensions=0), ConfigurationError, "dimensions must be a positive integer"),
        (lambda s: Embedder("text-embedding-ada-002", dimensions=8, base_url=None, api_key="k"), ConfigurationError, "does not support dimensions=8"),
        (lambda s: Embedder("text-embedding-3-small", dimensions=5000, api_key="k"), ConfigurationError, "at most 1536"),
        (lambda s: Embedder("gpt-4o", api_key="k"), ConfigurationError, "unknown OpenAI model 'gpt-4o'"),
        (lambda s: Embedder(MODEL, base_url="localhost:8000", api_key="k"), ConfigurationError, "base_url 'localhost:8000' is not an http"),
        (lambda s: Embedder(MODEL, on_long_input="drop"), ConfigurationError, "on_long_input must be"),
    ],
)
def test_bad_settings_and_columns_are_one_clear_error(srv, monkeypatch, call, error, message):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(error, match=message):
        call(srv)


def test_zero_rows_and_all_null(srv):
    assert make(srv).embed(pl.Series("text", [], dtype=pl.String)).height == 0
    assert make(srv).embed(pl.Series("text", [None, None], dtype=pl.String))["embedding"].null_count() == 2


def test_unreachable_base_url_is_one_error_after_bounded_retries():
    emb = Embedder(MODEL, base_url="http://127.0.0.1:9/v1", api_key="k", dimensions=8, cache=False,
                   max_attempts=2, sleep=lambda s: None)
    with pytest.raises(ProviderError, match="still failing after retries: Connection error"):
        emb.embed(pl.Series("text", ["a"]))


def test_missing_key_loses_nothing_already_done(srv, monkeypatch, tmp_path):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    done = make(srv, cache=tmp_path / "c")
    done.embed(pl.Series("text", ["kept"]))
    keyless = Embedder(MODEL, base_url=srv.url, dimensions=8, cache=tmp_path / "c")
    with pytest.raises(ConfigurationError, match="no API key"):
        keyless.embed(pl.Series("text", ["new"]))
    assert keyless.embed(pl.Series("text", ["kept"]))["embedding_cache_hit"][0]  # a hit needs no key
    assert embed_column("text", base_url=srv.url, dimensions=8, cache=False) is not None  # building is free
