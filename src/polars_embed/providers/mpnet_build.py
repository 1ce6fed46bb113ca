"""all-mpnet-base-v2's encoder written as ONNX from its weights, with the ``onnx`` package
(``mpnet.py`` finds the weights).

The graph follows Hugging Face transformers' ``modeling_mpnet.py`` (MPNetModel, inference):

* embeddings: word + position embeddings, LayerNorm; no token_type embeddings. Position
  ids count only the non-pad tokens (``input_ids != 1``) starting at padding_idx + 1 = 2,
  and are padding_idx (1) on pad tokens (``create_position_ids_from_input_ids``);
* relative position bias: ``relative_attention_bias`` (32 buckets x 12 heads) looked up
  with the bidirectional T5-style bucket of ``key_position - query_position`` (16 buckets a
  direction, exact below 8, logarithmic up to max_distance 128), over the raw sequence
  positions 0..seq-1 (pads included); computed once and added to the scores of all 12
  layers;
* each layer (post-LN): q, k, v linear; scores = q.k^T / sqrt(64) + bias + mask, the mask
  additive ``(1 - attention_mask) * float32.min``; softmax; o linear; LayerNorm(x + attn);
  dense 768 -> 3072, GELU (exact, erf), dense 3072 -> 768, LayerNorm(x + ffn);
* LayerNorm eps 1e-5; 12 layers, 12 heads of 64, hidden 768, vocab 30527, 514 positions.

The pooler is not part of the graph: the sentence-transformers model mean-pools
``last_hidden_state`` over the attention mask and L2-normalises (1_Pooling, 2_Normalize), at
most 384 tokens including <s> and </s> (sentence_bert_config.json; tokenizer.json's own
truncation and padding of 128 are not the model's).

The build is deterministic: fixed names, fixed opset (17) and IR version (8), float32
initializers in the protobuf (about 436 MB, under protobuf's 2 GB), so its sha256 can be
pinned.
"""

from __future__ import annotations

import json
import math
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Sequence

SAFETENSORS_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"

# MPNet-base, as in the model's config.json
HIDDEN = 768
HEADS = 12
HEAD_SIZE = HIDDEN // HEADS
LAYERS = 12
PAD_ID = 1  # padding_idx of both embeddings
MAX_POSITIONS = 514
NUM_BUCKETS = 32
MAX_DISTANCE = 128
LAYER_NORM_EPS = 1e-5
OPSET = 17  # LayerNormalization
IR_VERSION = 8  # the IR of opset 17; set, not taken from the onnx package, for a stable file



def _temporary(path: Path) -> Path:
    """A name to write ``path`` under before renaming it: two processes building at once
    never write one file."""
    return path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.part")


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a safetensors file, as read-only arrays over a memory map.

    The format: 8 bytes little-endian header length, a JSON header mapping each name to
    dtype, shape and [begin, end) offsets into the data that follows.
    """
    dtypes = {"F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4"}
    with path.open("rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + size)
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        dtype = np.dtype(dtypes[entry["dtype"]])
        tensors[name] = data[begin:end].view(dtype).reshape(entry["shape"])
    return tensors


def relative_position_bucket(relative_position: np.ndarray) -> np.ndarray:
    """MPNet's bucket of ``key_position - query_position`` (float32 arithmetic, as torch)."""
    half = NUM_BUCKETS // 2
    n = -relative_position.astype(np.int64)
    ret = (n < 0).astype(np.int64) * half
    n = np.abs(n)
    max_exact = half // 2
    scaled = np.maximum(n, 1).astype(np.float32) / np.float32(max_exact)
    large = np.log(scaled) / np.float32(math.log(MAX_DISTANCE / max_exact)) * np.float32(half - max_exact)
    val_if_large = np.minimum(max_exact + large.astype(np.int64), half - 1)
    return ret + np.where(n < max_exact, n, val_if_large)


class _Graph:
    """Nodes and initializers, named in the order they are added (so the file is stable)."""

    def __init__(self) -> None:
        from onnx import helper, numpy_helper

        self.helper = helper
        self.numpy_helper = numpy_helper
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []

    def const(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(self.numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], out: str, **attrs: Any) -> str:
        self.nodes.append(self.helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    def linear(self, x: str, prefix: str, w: dict[str, np.ndarray], out: str) -> str:
        """``x @ W^T + b`` with W stored transposed."""
        weight = self.const(f"{prefix}.weight_t", np.asarray(w[f"{prefix}.weight"], np.float32).T)
        bias = self.const(f"{prefix}.bias", np.asarray(w[f"{prefix}.bias"], np.float32))
        return self.op("Add", [self.op("MatMul", [x, weight], f"{out}/matmul"), bias], out)

    def layer_norm(self, x: str, prefix: str, w: dict[str, np.ndarray], out: str) -> str:
        scale = self.const(f"{prefix}.weight", np.asarray(w[f"{prefix}.weight"], np.float32))
        bias = self.const(f"{prefix}.bias", np.asarray(w[f"{prefix}.bias"], np.float32))
        return self.op("LayerNormalization", [x, scale, bias], out, axis=-1, epsilon=LAYER_NORM_EPS)


def _weight(w: dict[str, np.ndarray], name: str) -> np.ndarray:
    return np.asarray(w[name], np.float32)


def _embeddings(g: _Graph, w: dict[str, np.ndarray]) -> str:
    """Word + position embeddings, LayerNorm; position ids 2, 3, ... over the non-pad
    tokens and 1 on pads (``create_position_ids_from_input_ids``)."""
    from onnx import TensorProto

    is_pad = g.op("Equal", ["input_ids", "pad_id"], "is_pad")
    not_pad = g.op("Cast", [g.op("Not", [is_pad], "not_pad_b")], "not_pad", to=TensorProto.INT64)
    counted = g.op("Mul", [g.op("CumSum", [not_pad, "axis_1"], "pad_cumsum"), not_pad], "pad_counted")
    position_ids = g.op("Add", [counted, "pad_id"], "position_ids")
    words_table = g.const("embeddings.word_embeddings.weight", _weight(w, "embeddings.word_embeddings.weight"))
    positions_table = g.const("embeddings.position_embeddings.weight",
                              _weight(w, "embeddings.position_embeddings.weight"))
    words = g.op("Gather", [words_table, "input_ids"], "word_embeds")
    positions = g.op("Gather", [positions_table, position_ids], "position_embeds")
    return g.layer_norm(g.op("Add", [words, positions], "embeds_sum"), "embeddings.LayerNorm", w, "embeddings")


def _additive_mask(g: _Graph) -> str:
    """[batch, 1, 1, seq]: 0 where attended, float32.min where not."""
    from onnx import TensorProto

    mask_f = g.op("Cast", ["attention_mask"], "mask_f", to=TensorProto.FLOAT)
    inverted = g.op("Sub", ["one_f", mask_f], "mask_inverted")
    return g.op("Unsqueeze", [g.op("Mul", [inverted, "mask_min"], "mask_scaled"), "axes_1_2"], "mask_additive")


def _position_bias(g: _Graph, w: dict[str, np.ndarray]) -> str:
    """[1, heads, seq, seq]: the bias of each head for each (query, key) pair of positions
    0..seq-1, from a table of buckets by distance (``MPNetEncoder.compute_position_bias``)."""
    bucket_of = relative_position_bucket(np.arange(-(MAX_POSITIONS - 1), MAX_POSITIONS))
    g.const("bucket_of_distance", bucket_of)  # index: key_pos - query_pos + MAX_POSITIONS - 1
    g.const("distance_offset", np.array(MAX_POSITIONS - 1, np.int64))
    seq_len_1d = g.op("Shape", ["input_ids"], "seq_len_1d", start=1, end=2)
    seq_len = g.op("Squeeze", [seq_len_1d, "axis_0"], "seq_len")
    steps = g.op("Range", ["zero_i64", seq_len, "one_i64"], "positions_raw")
    keys = g.op("Unsqueeze", [steps, "axis_0"], "key_positions")  # [1, seq]
    queries = g.op("Unsqueeze", [steps, "axis_1"], "query_positions")  # [seq, 1]
    relative = g.op("Sub", [keys, queries], "relative_position")
    index = g.op("Add", [relative, "distance_offset"], "distance_index")
    buckets = g.op("Gather", ["bucket_of_distance", index], "buckets")  # [seq, seq]
    name = "encoder.relative_attention_bias.weight"
    table = g.const(name, _weight(w, name))
    per_pair = g.op("Gather", [table, buckets], "position_bias_qkh")  # [seq, seq, heads]
    by_head = g.op("Transpose", [per_pair], "position_bias_hqk", perm=[2, 0, 1])
    return g.op("Unsqueeze", [by_head, "axis_0"], "position_bias")


def _layer(g: _Graph, w: dict[str, np.ndarray], n: int, hidden: str, bias: str, mask: str, out: str) -> str:
    """One post-LN encoder layer (MPNetLayer): attention with the shared bias, then the FFN."""
    p = f"encoder.layer.{n}"

    def heads(name: str, perm: list[int]) -> str:
        flat = g.linear(hidden, f"{p}.attention.attn.{name}", w, f"{p}/{name}")
        split = g.op("Reshape", [flat, "heads_shape"], f"{p}/{name}_heads")  # [batch, seq, heads, 64]
        return g.op("Transpose", [split], f"{p}/{name}_t", perm=perm)

    q = heads("q", [0, 2, 1, 3])  # [batch, heads, seq, 64]
    k = heads("k", [0, 2, 3, 1])  # [batch, heads, 64, seq]
    v = heads("v", [0, 2, 1, 3])
    scores = g.op("Mul", [g.op("MatMul", [q, k], f"{p}/qk"), "inv_sqrt_head"], f"{p}/scores_scaled")
    scores = g.op("Add", [scores, bias], f"{p}/scores_biased")
    scores = g.op("Add", [scores, mask], f"{p}/scores_masked")
    probs = g.op("Softmax", [scores], f"{p}/probs", axis=-1)
    context = g.op("MatMul", [probs, v], f"{p}/context_h")
    context = g.op("Transpose", [context], f"{p}/context_t", perm=[0, 2, 1, 3])
    context = g.op("Reshape", [context, "hidden_shape"], f"{p}/context")
    attn = g.linear(context, f"{p}.attention.attn.o", w, f"{p}/o")
    hidden = g.layer_norm(g.op("Add", [attn, hidden], f"{p}/attn_residual"), f"{p}.attention.LayerNorm", w,
                          f"{p}/attn_out")

    inner = g.linear(hidden, f"{p}.intermediate.dense", w, f"{p}/ffn_in")
    erf = g.op("Erf", [g.op("Div", [inner, "sqrt2"], f"{p}/gelu_div")], f"{p}/gelu_erf")  # GELU, exact
    gelu = g.op("Mul", [inner, g.op("Add", [erf, "one_f"], f"{p}/gelu_add")], f"{p}/gelu_mul")
    gelu = g.op("Mul", [gelu, "half_f"], f"{p}/gelu")
    ffn = g.linear(gelu, f"{p}.output.dense", w, f"{p}/ffn_out")
    return g.layer_norm(g.op("Add", [ffn, hidden], f"{p}/ffn_residual"), f"{p}.output.LayerNorm", w, out)


def build_onnx(safetensors_path: Path, out_path: Path) -> None:
    """Write MPNet's encoder (``last_hidden_state``) from ``safetensors_path`` as ONNX."""
    try:
        import onnx
        from onnx import TensorProto, helper
    except ImportError as exc:
        msg = "local:all-mpnet-base-v2 needs the onnx package, once, to build its graph: pip install 'polars-embed[mpnet]'"
        raise ConfigurationError(msg) from exc
    w = read_safetensors(safetensors_path)
    g = _Graph()
    constants: list[tuple[str, np.ndarray]] = [
        ("pad_id", np.array(PAD_ID, np.int64)),
        ("one_i64", np.array(1, np.int64)),
        ("zero_i64", np.array(0, np.int64)),
        ("axis_1", np.array(1, np.int64)),
        ("axis_0", np.array([0], np.int64)),
        ("axes_1_2", np.array([1, 2], np.int64)),
        ("one_f", np.array(1.0, np.float32)),
        ("half_f", np.array(0.5, np.float32)),
        ("sqrt2", np.array(math.sqrt(2.0), np.float32)),
        ("mask_min", np.array(np.finfo(np.float32).min, np.float32)),
        ("inv_sqrt_head", np.array(1.0 / math.sqrt(HEAD_SIZE), np.float32)),  # 1/8, exact
        ("heads_shape", np.array([0, 0, HEADS, HEAD_SIZE], np.int64)),  # 0: keep that dimension
        ("hidden_shape", np.array([0, 0, HIDDEN], np.int64)),
    ]
    for name, value in constants:
        g.const(name, value)

    hidden = _embeddings(g, w)
    mask = _additive_mask(g)
    bias = _position_bias(g, w)
    for n in range(LAYERS):
        out = "last_hidden_state" if n == LAYERS - 1 else f"encoder.layer.{n}/out"
        hidden = _layer(g, w, n, hidden, bias, mask, out)

    graph = helper.make_graph(
        g.nodes, "all-mpnet-base-v2",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "seq", HIDDEN])],
        initializer=g.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="polars-embed mpnet_build", producer_version="1")
    model.ir_version = IR_VERSION
    source = f"all-mpnet-base-v2 model.safetensors sha256 {SAFETENSORS_SHA256}"
    helper.set_model_props(model, {"source": source})
    onnx.checker.check_model(model)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(out_path)
    tmp.write_bytes(model.SerializeToString())
    os.replace(tmp, out_path)
