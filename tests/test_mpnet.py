"""local:all-mpnet-base-v2 offline, without PyTorch: built from its PyPI packages into a pinned
ONNX graph, and checked against sentence-transformers' own vectors.

``fixtures/mpnet_reference.npz`` holds sentence-transformers' vectors of 240 texts (made by
``fixtures/make_mpnet_reference.py`` in a throwaway environment with PyTorch; the versions
are in the file). The build happens once here, into a temporary models directory.
"""

from __future__ import annotations

import hashlib
from contextlib import closing
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from polars_embed import ConfigurationError, Embedder
from polars_embed.providers import mpnet as source

REFERENCE = Path(__file__).parent / "fixtures" / "mpnet_reference.npz"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        root = tmp_path_factory.mktemp("models")
        mp.setenv("POLARS_EMBED_MODELS", str(root))
        yield root


@pytest.fixture(scope="module")
def mpnet(models):
    emb = Embedder("local:all-mpnet-base-v2", cache=False)
    yield emb
    emb.close()


def test_the_built_graph_is_the_pinned_one_and_the_weights_are_not_kept(mpnet, models):
    built = models / "all-mpnet-base-v2" / "onnx" / "model.onnx"
    assert hashlib.sha256(built.read_bytes()).hexdigest() == source.MODEL_SHA256
    assert not (models / "all-mpnet-base-v2" / "model.safetensors").exists()
    assert not list(models.glob("**/*.part"))


def test_vectors_match_sentence_transformers(mpnet):
    ref = np.load(REFERENCE)
    cut = np.flatnonzero(ref["token_counts"] >= source.MAX_TOKENS)
    keep = np.sort(np.concatenate([np.flatnonzero(ref["token_counts"] < source.MAX_TOKENS), cut[:10]]))
    texts, expected = ref["texts"][keep].tolist(), ref["vectors"][keep].astype(np.float32)
    assert len(texts) >= 200 and len(cut) >= 10  # every short text, and ten cut at the limit (the suite's time)
    out = mpnet.embed(pl.Series("text", texts))
    got = np.stack(out["embedding"].to_numpy())
    assert out.schema["embedding"] == pl.Array(pl.Float32, 768)
    cos = (got * expected).sum(axis=1) / np.linalg.norm(expected, axis=1)
    assert cos.min() >= 0.999, f"min cosine {cos.min():.6f} at {texts[int(cos.argmin())]!r}"
    seen = np.minimum(np.asarray(out["embedding_tokens"].to_list()), mpnet.provider.limits.max_input_tokens) + 2
    np.testing.assert_array_equal(seen, ref["token_counts"][keep])  # the model saw what sentence-transformers fed it


def test_a_second_embedder_uses_the_built_model_and_its_own_cache_entries(mpnet, tmp_path):
    with closing(Embedder("local:all-mpnet-base-v2", cache=tmp_path)) as emb, \
         closing(Embedder("local:all-MiniLM-L6-v2", cache=tmp_path)) as small:
        emb.embed(pl.Series("text", ["hello world"]))
        assert not small.embed(pl.Series("text", ["hello world"]))["embedding_cache_hit"][0]
        assert emb.embed(pl.Series("text", ["hello world"]))["embedding_cache_hit"][0]
    assert mpnet.provider.limits.max_input_tokens == 382
    assert mpnet.provider.batch_tokens == 384  # one text at its limit: a stop waits for one text, not 4,096 tokens


def test_a_damaged_build_is_refused(mpnet, models, tmp_path, monkeypatch):
    monkeypatch.setenv("POLARS_EMBED_MODELS", str(tmp_path))
    built = tmp_path / "all-mpnet-base-v2" / "onnx" / "model.onnx"
    built.parent.mkdir(parents=True)
    built.write_bytes(b"\0" * 4096)  # a build cut short
    (tmp_path / "all-mpnet-base-v2" / "tokenizer.json").write_bytes(
        (models / "all-mpnet-base-v2" / "tokenizer.json").read_bytes())
    emb = Embedder("local:all-mpnet-base-v2", cache=False)
    with pytest.raises(ConfigurationError, match="has sha256 .* expected 7657bcdf5338.*; delete .* to build it again"):
        emb.embed(pl.Series("text", ["hello"]))
    emb.close()
