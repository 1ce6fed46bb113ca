"""A sentence-transformers model directory exported to ONNX, read into what running it needs.

The layout sentence-transformers saves and ONNX exports ship
(https://sbert.net/docs/sentence_transformer/usage/efficiency.html)::

    model.onnx or onnx/model.onnx        the transformer (input_ids, attention_mask[, token_type_ids])
    tokenizer.json                       the Hugging Face ``tokenizers`` file
    modules.json                         the pipeline: Transformer, Pooling, optionally Normalize
    1_Pooling/config.json                the pooling mode and word_embedding_dimension
    sentence_bert_config.json            max_seq_length (tokens, special ones included)
    config_sentence_transformers.json    prompts: {"query": "query: ", ...}

Pooling modes follow sentence-transformers' ``Pooling`` module
(https://sbert.net/docs/package_reference/sentence_transformer/models.html#sentence_transformers.models.Pooling).
A module this does not run (a ``Dense`` layer, weighted-mean pooling) is refused by name
rather than run wrong. The model file's sha256 names the model in the cache key, so two
models that once lived at one path never share entries.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError

#: sentence-transformers' pooling flags, in its order, and our name for each.
POOLING_MODES = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean",
                 "pooling_mode_max_tokens": "max", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
                 "pooling_mode_lasttoken": "lasttoken"}
_RUNS = {"sentence_transformers.models.Transformer", "sentence_transformers.models.Pooling",
         "sentence_transformers.models.Normalize"}


@dataclass(frozen=True)
class ModelFiles:
    """What running one model needs; ``max_tokens`` counts the tokenizer's special tokens."""

    onnx: Path
    tokenizer: Path
    pooling: str = "mean"
    normalize: bool = True
    max_tokens: int = 512
    dimensions: int | None = None
    prompts: tuple[tuple[str, str], ...] = ()  # (role name, prefix), from the model's own config
    sha256: str = ""  # of the model file (and its external data, if any)
    tokenizer_sha256: str = ""


def read_model_dir(path: str | Path) -> ModelFiles:
    """The model in directory ``path``; one sentence naming the file when something is missing."""
    root = Path(path).expanduser()
    if not root.is_dir():
        msg = f"local model directory {str(root)!r} does not exist (model='local:<directory>')"
        raise ConfigurationError(msg)
    onnx = next((p for p in (root / "model.onnx", root / "onnx" / "model.onnx") if p.is_file()), None)
    if onnx is None:
        msg = f"{str(root)!r} holds no model.onnx or onnx/model.onnx; export the model to ONNX first"
        raise ConfigurationError(msg)
    tokenizer = root / "tokenizer.json"
    if not tokenizer.is_file():
        msg = f"{str(root)!r} holds no tokenizer.json (the Hugging Face tokenizers file of the model)"
        raise ConfigurationError(msg)
    modules = _json(root / "modules.json", [])
    pooling_dir, normalize = "1_Pooling", not modules  # without modules.json: mean pooling, normalised
    for module in modules:
        kind = module.get("type", "")
        if kind not in _RUNS:
            msg = f"{str(root)!r}: module {module.get('path') or kind!r} ({kind}) is not one this runs; only Transformer, Pooling and Normalize are"
            raise ConfigurationError(msg)
        if kind.endswith(".Pooling"):
            pooling_dir = module.get("path") or pooling_dir
        normalize |= kind.endswith(".Normalize")
    pooling, width = _pooling(root / pooling_dir / "config.json")
    bert = _json(root / "sentence_bert_config.json", {})
    max_tokens = bert.get("max_seq_length") or _json(root / "config.json", {}).get("max_position_embeddings") or 512
    prompts = _json(root / "config_sentence_transformers.json", {}).get("prompts") or {}
    if not isinstance(prompts, dict) or not all(isinstance(v, str) for v in prompts.values()):
        msg = f"{str(root / 'config_sentence_transformers.json')!r}: prompts must map role names to prefix strings"
        raise ConfigurationError(msg)
    return ModelFiles(onnx=onnx, tokenizer=tokenizer, pooling=pooling, normalize=normalize, max_tokens=int(max_tokens),
                      dimensions=width, prompts=tuple(sorted(prompts.items())), sha256=file_sha256(onnx),
                      tokenizer_sha256=file_sha256(tokenizer))


def _pooling(config: Path) -> tuple[str, int | None]:
    settings = _json(config, {"pooling_mode_mean_tokens": True})
    if settings.get("pooling_mode_weightedmean_tokens"):
        msg = f"{str(config)!r}: weighted-mean pooling is not one this runs (cls, mean, max, mean_sqrt_len, lasttoken are)"
        raise ConfigurationError(msg)
    modes = [name for flag, name in POOLING_MODES.items() if settings.get(flag)]
    if len(modes) != 1:
        msg = f"{str(config)!r} sets {len(modes)} pooling modes; one of {', '.join(POOLING_MODES.values())} is supported"
        raise ConfigurationError(msg)
    width = settings.get("word_embedding_dimension")
    return modes[0], int(width) if width else None


def _json(path: Path, default: Any) -> Any:
    if not path.is_file():
        return default
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        msg = f"{str(path)!r} is not readable JSON ({exc})"
        raise ConfigurationError(msg) from exc


_digests: dict[tuple[str, int, int], str] = {}
_digests_lock = threading.Lock()


def file_sha256(path: Path) -> str:
    """The file's sha256 with its ONNX external data (``<name>_data``, ``<name>.data``) if any;
    remembered per (path, size, mtime) so that a second Embedder does not read it again."""
    parts = [p for p in (path, path.with_name(path.name + "_data"), path.with_name(path.name + ".data")) if p.is_file()]
    stamp = tuple((p.stat().st_size, p.stat().st_mtime_ns) for p in parts)
    key = (str(path.resolve()), hash(stamp), len(parts))
    with _digests_lock:
        if key in _digests:
            return _digests[key]
    h = hashlib.sha256()
    for part in parts:
        with part.open("rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    digest = h.hexdigest()
    with _digests_lock:
        _digests[key] = digest
    return digest
