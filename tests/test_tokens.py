"""Token counting and the long-input policy, against the server's own limits."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from polars_embed import Limits, LongInputError
from polars_embed.pipeline.tokens import TiktokenTokenizer, prepare_inputs
from polars_embed.testing import EmbeddingServer, server_vector

LONG = "word " * 10_000  # 10,000 tokens: over the 8,192 limit


def test_counts_match_cl100k():
    tok = TiktokenTokenizer()
    assert [len(x) for x in tok.encode_batch(["hello world", "", "tiktoken is great!"])] == [2, 0, 6]


def test_truncate_is_the_default_and_fits_the_limit(make_embedder, server):
    emb = make_embedder()
    out = pl.DataFrame({"text": [LONG, "short"]}).with_columns(emb.expr("text"))
    assert out["embedding_tokens"].to_list() == [8191, 1]
    assert server.count(400) == 0
    sent = server.texts_seen()
    truncated = next(t for t in sent if t != "short")
    np.testing.assert_array_equal(out["embedding"][0].to_numpy(), server_vector("text-embedding-3-small", 64, truncated))


def test_error_policy_names_the_row(make_embedder, server):
    """With frame row numbers (``Embedder.collect``) the row; from a bare expression, whose
    slices cannot know where they start, the text."""
    emb = make_embedder(on_long_input="error")
    df = pl.DataFrame({"body": ["fine", "fine too", LONG]})
    with pytest.raises(LongInputError, match=r"the row of column 'body' with text 'word word .*…' has 1000\d tokens"):
        df.with_columns(emb.expr("body"))
    assert server.requests == 0  # one eager slice: every row is checked before anything is paid for
    with pytest.raises(LongInputError, match=r"row 2 of column 'body' has 1000\d tokens"):
        emb.collect(df, "body")


def test_chunk_policy_is_the_weighted_mean_renormalised(tmp_path):
    limit = 50
    with EmbeddingServer(max_input_tokens=limit) as srv:
        from polars_embed import Embedder

        emb = Embedder(
            "text-embedding-3-small", base_url=srv.url, api_key="k", dimensions=16, cache=tmp_path / "c",
            on_long_input="chunk", limits=Limits(max_input_tokens=limit),
        )
        text = " ".join(f"w{i}" for i in range(60))  # more than 50 tokens
        out = pl.DataFrame({"text": [text]}).with_columns(emb.expr("text"))
        pieces = prepare_inputs([text], TiktokenTokenizer(), max_input_tokens=limit, policy="chunk")
        assert len(pieces) > 1
        expected = sum(server_vector("text-embedding-3-small", 16, p.text) * p.tokens for p in pieces)
        expected /= np.linalg.norm(expected)
        np.testing.assert_allclose(out["embedding"][0].to_numpy(), expected, rtol=1e-5, atol=1e-6)
        assert out["embedding_tokens"][0] == sum(p.tokens for p in pieces)
        assert out["embedding_cost_usd"][0] == pytest.approx(srv.billed_tokens * 0.02 / 1e6)


def test_truncation_through_multibyte_characters_still_fits():
    tok = TiktokenTokenizer()
    text = "日本語のテキスト🙂" * 500
    pieces = prepare_inputs([text], tok, max_input_tokens=100, policy="chunk")
    assert all(p.tokens <= 100 for p in pieces)
    (piece,) = prepare_inputs([text], tok, max_input_tokens=101, policy="truncate")
    assert piece.tokens <= 101
