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
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Sequence

#: sentence-transformers' pooling flags, in its order, and our name for each.
POOLING_MODES = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean",
                 "pooling_mode_max_tokens": "max", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
                 "pooling_mode_lasttoken": "lasttoken"}
_RUNS = {"sentence_transformers.models.Transformer", "sentence_transformers.models.Pooling",
         "sentence_transformers.models.Normalize"}


#: Model types whose position table starts after the padding index (2 of ``max_position_embeddings``).
_OFFSET_POSITIONS = {"roberta", "xlm-roberta", "camembert", "mpnet", "bart", "longformer"}


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
    default_prompt: str = ""  # the role name whose prompt documents get when the model says so
    lowercase: bool = False  # sentence_bert_config.json's do_lower_case: the text is lowercased first
    sha256: str = ""  # of the model file (and its external data, if any)
    tokenizer_sha256: str = ""
    repair: str = "it changed since the embedder was made"  # what to do when a file is not what was pinned
    root: Path | None = None  # the directory, for a model given by path


def read_model_dir(path: str | Path) -> ModelFiles:
    """The model in directory ``path``; one sentence naming the file when something is missing
    or is not what sentence-transformers writes."""
    root = Path(path).expanduser().resolve()
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
    pooling_dir, normalize = _modules(root)
    pooling, width = _pooling(root / pooling_dir / "config.json")
    bert = _json(root / "sentence_bert_config.json", {}, dict)
    own = _json(root / "config_sentence_transformers.json", {}, dict)
    where = str(root / "config_sentence_transformers.json")
    prompts = own.get("prompts") or {}
    if not isinstance(prompts, dict) or not all(isinstance(v, str) for v in prompts.values()):
        msg = f"{where!r}: prompts must map role names to prefix strings"
        raise ConfigurationError(msg)
    default = own.get("default_prompt_name") or ""
    if default and default not in prompts:
        msg = f"{where!r}: default_prompt_name {default!r} names no prompt"
        raise ConfigurationError(msg)
    return ModelFiles(root=root, onnx=onnx, tokenizer=tokenizer, pooling=pooling, normalize=normalize, max_tokens=_max_tokens(root, bert),
                      dimensions=width, prompts=tuple(sorted(prompts.items())), default_prompt=default,
                      lowercase=bert.get("do_lower_case") is True, sha256=file_sha256(onnx),
                      tokenizer_sha256=file_sha256(tokenizer))


def _modules(root: Path) -> tuple[str, bool]:
    """The Pooling module's folder and whether a Normalize module follows (modules.json)."""
    modules = _json(root / "modules.json", [], list)
    pooling_dir, normalize = "1_Pooling", not modules  # without modules.json: mean pooling, normalised
    for module in modules:
        kind = module.get("type", "") if isinstance(module, dict) else ""
        if kind not in _RUNS:
            name = module.get("path") or kind if isinstance(module, dict) else module
            msg = f"{str(root)!r}: module {name!r} ({kind or 'unknown'}) is not one this runs; only Transformer, Pooling and Normalize are"
            raise ConfigurationError(msg)
        if kind.endswith(".Pooling"):
            pooling_dir = str(module.get("path") or pooling_dir)
        normalize |= kind.endswith(".Normalize")
    return pooling_dir, normalize


def _pooling(config: Path) -> tuple[str, int | None]:
    settings = _json(config, {"pooling_mode_mean_tokens": True}, dict)
    if settings.get("pooling_mode_weightedmean_tokens"):
        msg = f"{str(config)!r}: weighted-mean pooling is not one this runs (cls, mean, max, mean_sqrt_len, lasttoken are)"
        raise ConfigurationError(msg)
    if settings.get("include_prompt") is False:
        msg = f"{str(config)!r}: include_prompt false (the prompt left out of pooling) is not one this runs"
        raise ConfigurationError(msg)
    modes = [name for flag, name in POOLING_MODES.items() if settings.get(flag)]
    if len(modes) != 1:
        msg = f"{str(config)!r} sets {len(modes)} pooling modes; one of {', '.join(POOLING_MODES.values())} is supported"
        raise ConfigurationError(msg)
    width = settings.get("word_embedding_dimension")
    return modes[0], None if width is None else _count(width, config, "word_embedding_dimension")


def _max_tokens(root: Path, bert: dict[str, Any]) -> int:
    """sentence_bert_config.json's max_seq_length, else the tokenizer's model_max_length, else
    the position table's size (less the padding offset of RoBERTa-like models)."""
    if bert.get("max_seq_length") is not None:
        return _count(bert["max_seq_length"], root / "sentence_bert_config.json", "max_seq_length")
    tokenizer = _json(root / "tokenizer_config.json", {}, dict).get("model_max_length")
    if isinstance(tokenizer, int) and not isinstance(tokenizer, bool) and 0 < tokenizer < 1_000_000:
        return tokenizer
    config = _json(root / "config.json", {}, dict)
    if config.get("max_position_embeddings") is not None:
        positions = _count(config["max_position_embeddings"], root / "config.json", "max_position_embeddings")
        return positions - 2 if config.get("model_type") in _OFFSET_POSITIONS else positions
    return 512


def _count(value: Any, path: Path, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        msg = f"{str(path)!r}: {name} must be a positive whole number, got {value!r}"
        raise ConfigurationError(msg)
    return value


def _json(path: Path, default: Any, kind: type) -> Any:
    if not path.is_file():
        return default
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        msg = f"{str(path)!r} is not readable JSON ({exc})"
        raise ConfigurationError(msg) from exc
    if not isinstance(value, kind):
        msg = f"{str(path)!r} holds a JSON {type(value).__name__}, not the {kind.__name__} sentence-transformers writes"
        raise ConfigurationError(msg)
    return value


def model_parts(path: Path) -> list[Path]:
    """The model file and its ONNX external data beside it (``<name>_data``, ``<name>.data``)."""
    return [p for p in (path, path.with_name(path.name + "_data"), path.with_name(path.name + ".data")) if p.is_file()]


_digests: dict[tuple[str, tuple[tuple[int, ...], ...]], str] = {}
_digests_lock = threading.Lock()


def file_sha256(path: Path) -> str:
    """The sha256 of the file with its external data (``model_parts``); remembered per (path,
    inode, size, mtime, ctime: a copy that keeps the mtime still gets a new ctime) so that a
    second Embedder does not read it again."""
    parts = model_parts(path)
    key = (str(path.resolve()), tuple((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                                      for st in (p.stat() for p in parts)))
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


class ModelTokenizer:
    """The model's own tokenizer, checked against the sha256 its identity names when it is
    loaded. Counts exclude its special tokens (always added on top); ``running``: the
    tokenizer that feeds the model, special tokens added and cut at the model's limit."""

    def __init__(self, files: ModelFiles, *, running: bool = False) -> None:
        self.files, self.running = files, running
        self._tok: Any = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"files": self.files, "running": self.running}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["files"], running=state["running"])  # type: ignore[misc]

    @property
    def tok(self) -> Any:
        """A ``tokenizers.Tokenizer`` (unpadded; untruncated unless ``running``)."""
        if self._tok is None:
            with self._lock:
                if self._tok is None:
                    self._tok = self._load()
        return self._tok

    def _load(self) -> Any:
        from tokenizers import Tokenizer

        path = self.files.tokenizer
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if self.files.tokenizer_sha256 and digest != self.files.tokenizer_sha256:
            msg = (f"the tokenizer {path} has sha256 {digest[:12]}..., expected {self.files.tokenizer_sha256[:12]}...; "
                   f"{self.files.repair}")
            raise ConfigurationError(msg)
        try:
            tok = Tokenizer.from_str(data.decode("utf-8"))
        except Exception as exc:  # tokenizers raises a bare Exception for a file it cannot read
            msg = f"{str(path)!r} is not a tokenizer file the tokenizers package reads ({exc})"
            raise ConfigurationError(msg) from exc
        tok.no_padding()
        if self.running:
            tok.enable_truncation(max_length=self.files.max_tokens)
        else:
            tok.no_truncation()
        return tok

    def _text(self, texts: Sequence[str]) -> list[str]:
        return [t.lower() for t in texts] if self.files.lowercase else list(texts)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(self._text(texts), add_special_tokens=False)]

    def run_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """What the model is fed: special tokens added, cut at its limit."""
        return [e.ids for e in self.tok.encode_batch(self._text(texts))]

    def specials(self) -> int:
        return len(self.tok.encode("", add_special_tokens=True).ids)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids))
