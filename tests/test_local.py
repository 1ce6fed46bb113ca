"""The offline default model: real embeddings with no key and no network."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import polars as pl
import pytest

from polars_embed import ConfigurationError, Embedder
from polars_embed.providers.local import LocalProvider

MODEL = "local:all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    emb = Embedder(MODEL, cache=tmp_path_factory.mktemp("cache"))
    yield emb
    emb.close()


def cos(a, b) -> float:
    return float(np.dot(a, b))


def test_paraphrases_score_clearly_above_unrelated_pairs(local):
    pairs = [
        ("A man is playing a guitar.", "Someone is playing the guitar."),
        ("The stock market fell sharply today.", "Share prices dropped a lot today."),
        ("How do I open a file in Python?", "Reading a file with Python"),
        ("The cat sleeps on the sofa.", "A cat is napping on the couch."),
    ]
    texts = [t for p in pairs for t in p]
    v = np.stack(local.embed(pl.Series("text", texts))["embedding"].to_numpy())
    para = [cos(v[2 * i], v[2 * i + 1]) for i in range(len(pairs))]
    unrelated = [cos(v[2 * i], v[2 * j + 1]) for i in range(len(pairs)) for j in range(len(pairs)) if i != j]
    assert min(para) > 0.6
    assert max(unrelated) < 0.35
    assert min(para) - max(unrelated) > 0.3


def test_unit_vectors_of_384_dims_and_own_token_counts(local):
    out = local.embed(pl.Series("text", ["hello world", "Hello World!"]))
    assert out.schema["embedding"] == pl.Array(pl.Float32, 384)
    v = out["embedding"].to_numpy()
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-5)
    assert out["embedding_tokens"].to_list() == [2, 3]  # WordPiece, uncased, without [CLS]/[SEP]
    assert out["embedding_cost_usd"].sum() == 0.0


def test_cache_key_names_the_local_model(local):
    texts = pl.Series("text", ["a text for the cache test"])
    local.embed(texts)
    assert local.embed(texts)["embedding_cache_hit"][0]
    remote = Embedder("text-embedding-3-small", base_url="http://127.0.0.1:9/v1", api_key="k", dimensions=384,
                      cache=local.cache, max_attempts=1)
    with pytest.raises(Exception):  # noqa: B017 - no cache hit across providers: it must try the (dead) server
        remote.embed(texts)


def test_truncates_at_256_tokens(local):
    long = " ".join(f"word{i}" for i in range(400))
    tok = local.provider.tokenizer()
    ids = tok.encode_batch([long])[0]
    head = tok.decode(ids[:254])
    out = local.embed(pl.Series("text", [long, head]))
    assert out["embedding_tokens"][0] == 254
    a, b = out["embedding"].to_numpy()
    assert cos(a, b) > 0.999


def test_price_can_be_set(tmp_path):
    emb = Embedder(MODEL, cache=False, price_per_million=1.0)
    out = emb.embed(pl.Series("text", ["one two three"]))
    assert out["embedding_cost_usd"][0] == pytest.approx(3 / 1e6)


def test_deterministic_across_processes(local):
    code = (
        "import polars as pl, sys; from polars_embed import Embedder;"
        "e = Embedder('local:all-MiniLM-L6-v2', cache=False);"
        "sys.stdout.write(e.embed(pl.Series('t', ['determinism check', 'second text']))['embedding'].to_numpy().tobytes().hex())"
    )
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout for _ in range(2)]
    assert runs[0] == runs[1] and len(runs[0]) == 2 * 384 * 4 * 2


def test_wrong_dimensions_and_unknown_local_model():
    with pytest.raises(ConfigurationError, match="always returns 384"):
        LocalProvider(MODEL, dimensions=512)
    with pytest.raises(ConfigurationError, match="unknown local model 'local:nope'"):
        Embedder("local:nope")
