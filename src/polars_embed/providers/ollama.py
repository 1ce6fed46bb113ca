"""Ollama (``ollama:<model>``, e.g. nomic-embed-text, mxbai-embed-large, all-minilm), through the
official ``ollama`` SDK (``ollama.Client(host=, timeout=)``).

What is sent, and where it comes from:

* ``POST {host}/api/embed`` ``{"model", "input": [...], "truncate", "dimensions"?,
  "keep_alive"?}`` -> ``{"model", "embeddings": [[...]], "total_duration", "load_duration",
  "prompt_eval_count"}``; errors are ``{"error": "..."}`` (404 ``model "x" not found, try pulling
  it first``, 400 ``the input length exceeds the context length``, 503 when its queue is full).
  API reference: https://github.com/ollama/ollama/blob/main/docs/api.md ("Generate Embeddings"),
  https://github.com/ollama/ollama/blob/main/docs/openapi.yaml (``EmbedRequest``, with
  ``dimensions``), https://github.com/ollama/ollama/blob/main/docs/api/errors.mdx. The SDK has
  no retries of its own.
* Host: ``base_url=``, else ``OLLAMA_HOST`` (the SDK's variable), else http://localhost:11434,
  in any form ``OLLAMA_HOST`` takes (``host:port``, a URL). No key: ``api_key=``, where given,
  goes as ``Authorization: Bearer`` (a server behind a proxy, ollama.com).
* Usage: ``prompt_eval_count`` is the tokens billed (price 0 unless ``price_per_million=``);
  an Ollama that reports none is billed the UTF-8 bytes sent (``usage_reported=False``).
* Dimensions: a table of common library models; ``dimensions=`` asks the server to cut the
  vector to that size (it renormalises; any model); otherwise one request on a short text
  finds the size when the provider is made (free on one's own server): the column's schema
  must be known before it is built.
* Limits: Ollama documents none per request; 32 inputs and 16,384 UTF-8 bytes a request are
  this adapter's choice. Ollama embeds a request's inputs one after another on a runner and
  queues the requests it cannot run yet, so small requests keep the 16 a run sends at once
  (``max_workers``) under ``timeout=`` even on a CPU; the bytes (512 an input) leave the
  input count to bind first on usual rows, which packs requests at the lower bound. Per
  input, the model's context is the limit, and only Ollama knows it (the model's, capped by
  its ``num_ctx``): under ``on_long_input="truncate"`` the server truncates (``truncate:
  true``) and the pipeline only cuts a text over 262,144 bytes, far past any model's context,
  so the vector is Ollama's own truncation. Under "error" and "chunk" the server is told
  ``truncate: false``, so an input over the context is refused (400), never cut in silence;
  "chunk" needs ``limits=Limits(max_input_tokens=<context in tokens>)`` (chunks are cut in
  bytes, so each is at most that many tokens).
* No roles: "document" and "query" are accepted and change nothing (a model that wants a
  task prefix, e.g. nomic's "search_query: ", takes it in the text).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import threading
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np

from ..errors import ConfigurationError
from ..pipeline.tokens import Utf8BytesTokenizer
from .base import BatchResult, Limits, ProviderFailure, identity_of, resolve_role
from .openai import MalformedResponse

if TYPE_CHECKING:
    from ..identity import VectorIdentity
    from ..pipeline.tokens import Tokenizer

HOST_VARIABLE = "OLLAMA_HOST"
DEFAULT_PORT = 11434
#: Output sizes of library models (https://ollama.com/library), by ``name`` or ``name:tag``.
MODEL_DIMENSIONS: dict[str, int] = {
    "nomic-embed-text": 768,
    "nomic-embed-text-v2-moe": 768,
    "mxbai-embed-large": 1024,
    "all-minilm": 384,
    "bge-m3": 1024,
    "bge-large": 1024,
    "snowflake-arctic-embed": 1024,
    "snowflake-arctic-embed:335m": 1024,
    "snowflake-arctic-embed:137m": 768,
    "snowflake-arctic-embed:110m": 768,
    "snowflake-arctic-embed:33m": 384,
    "snowflake-arctic-embed:22m": 384,
    "snowflake-arctic-embed2": 1024,
    "embeddinggemma": 768,
    "paraphrase-multilingual": 768,
    "granite-embedding:278m": 768,
    "granite-embedding:30m": 384,
}
#: Bytes past which the pipeline cuts a text itself under "truncate" (Ollama truncates at the
#: model's context long before: 262,144 bytes are 32,768 tokens even at 8 bytes a token).
SERVER_TRUNCATES = 262_144
LIMITS = Limits(max_inputs=32, max_request_tokens=16_384, max_input_tokens=SERVER_TRUNCATES, encoding_format="float")


class OllamaProvider:
    """Embeddings from a model on an Ollama server."""

    name = "ollama"
    waits_on_network = True

    def __init__(
        self,
        model: str,
        *,
        dimensions: int | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        limits: Limits | None = None,
        input_type: str = "document",
        keep_alive: str | float | None = None,
        **unknown: Any,
    ) -> None:
        if unknown:
            msg = f"provider_options {sorted(unknown)} are not settings of Ollama; it takes keep_alive"
            raise ConfigurationError(msg)
        if importlib.util.find_spec("ollama") is None:
            raise ConfigurationError("model 'ollama:...' needs the ollama package: pip install 'polars-embed[ollama]'")
        self.model = model.removesuffix(":latest")  # the same model: one cache key
        self.input_type = input_type
        resolve_role(input_type, {}, f"Ollama model {self.model!r}")  # none: the same vector either way
        self.base_url = host_url(base_url or os.environ.get(HOST_VARIABLE) or "")
        self._api_key = api_key
        self.timeout = timeout
        self.keep_alive = keep_alive
        self._limits_given = limits is not None
        self.limits = limits or LIMITS
        self._server_truncates = True  # until use_policy() says the policy is "error" or "chunk"
        self._client: Any = None
        self._lock = threading.Lock()
        self._send_dimensions = dimensions is not None
        if dimensions is not None:
            if not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1:
                msg = f"dimensions must be a positive integer, got {dimensions!r}"
                raise ConfigurationError(msg)
            full = MODEL_DIMENSIONS.get(self.model)
            if full is not None and dimensions > full:
                msg = f"Ollama model {self.model!r} returns at most {full} dimensions, got dimensions={dimensions}"
                raise ConfigurationError(msg)
            self.dimensions = dimensions
        elif self.model in MODEL_DIMENSIONS:
            self.dimensions = MODEL_DIMENSIONS[self.model]
        else:
            self.dimensions = self.probe_dimensions()

    # -- where ---------------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        """Where requests go, as it may be printed (no credentials)."""
        return self.base_url

    @property
    def cache_namespace(self) -> str:
        """Empty for the default local server; else the server (host, port, path)."""
        parts = urlsplit(self.base_url)
        host = (parts.hostname or "").lower()
        if host in ("localhost", "127.0.0.1", "::1") and parts.port == DEFAULT_PORT and not parts.path:
            return ""
        return f"{host}:{parts.port}{parts.path}"

    def use_policy(self, policy: str) -> None:
        """Ollama truncates (at the model's context) only under "truncate"; under "error" and
        "chunk" it is told not to, and refuses a text over the context. "chunk" needs the
        context, which Ollama does not say ahead."""
        if policy == "chunk" and not self._limits_given:
            msg = (f"on_long_input='chunk' needs limits=Limits(max_input_tokens=...) with Ollama, set to the "
                   f"context of {self.model!r} in tokens (e.g. 2048), which Ollama does not say ahead")
            raise ConfigurationError(msg)
        self._server_truncates = policy == "truncate"

    def identity(self, policy: str) -> VectorIdentity:
        """The model at its dimensions on this server; no role. Ollama's own truncation (under
        "truncate") is in the key of every text: the context it cuts at is not known here."""
        identity = identity_of(self, policy, default_limit=SERVER_TRUNCATES, namespace=self.cache_namespace)
        if self._server_truncates:  # at a context we do not know: any text may be cut, so none shares
            identity = dataclasses.replace(identity, long_input="truncate:server", input_limit=0)  # "error"'s key
        return identity

    def __repr__(self) -> str:  # never shows a key
        return f"OllamaProvider(model={self.model!r}, dimensions={self.dimensions}, base_url={self.base_url!r})"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_client"] = None
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def tokenizer(self) -> Tokenizer:
        return Utf8BytesTokenizer()

    def redact(self, text: str) -> str:
        return text.replace(self._api_key, "[key]") if self._api_key else text

    # -- the client ----------------------------------------------------------------------------
    def _sdk(self) -> Any:
        """The ``ollama.Client``, built once (not named ``client``: batch mode would take this
        provider for OpenAI's Batch API)."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    import ollama

                    headers = {"authorization": f"Bearer {self._api_key}"} if self._api_key else None
                    self._client = ollama.Client(host=self.base_url, timeout=self.timeout, headers=headers)
        return self._client

    def prepare(self) -> None:
        """Build the client ahead of the first request (an HTTP client)."""
        self._sdk()

    def probe_dimensions(self) -> int:
        """The output size of a model not in the table: one request on a two-word text."""
        try:
            vectors, _ = self._request(["dimensions probe"])
        except Exception as exc:  # noqa: BLE001 - any failure is the same advice
            reason = self.redact(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            msg = (f"Ollama model {self.model!r} has no known output size and asking {self.endpoint} for it "
                   f"failed ({reason[:200]}); pass dimensions= with it")
            raise ConfigurationError(msg) from None
        return int(vectors.shape[1])

    # -- one request ---------------------------------------------------------------------------
    def embed(self, texts: list[str]) -> BatchResult:
        vectors, count = self._request(texts)
        sent = sum(len(t.encode("utf-8", "surrogatepass")) for t in texts)
        if count is None:  # an Ollama that reports no usage: the bytes, an upper bound
            return BatchResult(check(vectors, len(texts), self.dimensions), sent, usage_reported=False)
        if count < 0 or count > sent + 8 * len(texts):  # a token covers a byte, but for a few marks an input
            raise MalformedResponse(f"response bills {count} tokens for {sent} bytes, which cannot be")
        return BatchResult(check(vectors, len(texts), self.dimensions), count)

    def _request(self, texts: list[str]) -> tuple[np.ndarray, int | None]:
        """One ``/api/embed``: the vectors as they came and ``prompt_eval_count`` (None if absent)."""
        import httpx
        import ollama
        import pydantic

        try:
            answer = self._sdk().embed(model=self.model, input=texts, truncate=self._server_truncates,
                                       dimensions=self.dimensions if self._send_dimensions else None,
                                       keep_alive=self.keep_alive)
        except ollama.ResponseError as exc:
            raise ProviderFailure(self.redact(str(exc.error)), exc.status_code if exc.status_code > 0 else None) from None
        except ConnectionError:  # the SDK's word for a refused connection
            msg = f"cannot connect to Ollama at {self.endpoint}: is it running (ollama serve)?"
            raise ProviderFailure(msg, None) from None
        except (httpx.TransportError, httpx.DecodingError) as exc:  # timeouts, dropped connections
            raise ProviderFailure(self.redact(f"{type(exc).__name__}: {exc}"), None) from None
        except (ValueError, pydantic.ValidationError) as exc:  # the 200's body is not an EmbedResponse
            raise MalformedResponse(f"response body is not an embeddings result ({type(exc).__name__})") from None
        try:
            vectors = np.asarray(answer.embeddings, dtype=np.float32)
        except (TypeError, ValueError) as exc:  # rows of different lengths
            raise MalformedResponse(f"response vectors are malformed ({exc})") from None
        count = answer.prompt_eval_count
        return vectors, None if count is None else int(count)


def check(vectors: np.ndarray, n: int, dim: int) -> np.ndarray:
    """The answer's vectors, if they can be true: one per input, of the size asked, finite and
    not all zeros; else ``MalformedResponse`` (retried, never cached)."""
    if vectors.ndim != 2 or vectors.shape[0] != n:
        raise MalformedResponse(f"response has {vectors.shape[0] if vectors.ndim else 0} vectors for {n} inputs")
    if vectors.shape[1] != dim:
        raise MalformedResponse(f"response vector has {vectors.shape[1]} dimensions, expected {dim}")
    bad = ~np.isfinite(vectors).all(axis=1) | ~vectors.any(axis=1)
    if bad.any():
        raise MalformedResponse(f"response vector {int(np.argmax(bad))} is not finite or is all zeros")
    return vectors


def host_url(value: str) -> str:
    """``OLLAMA_HOST``'s forms as one URL: ``host``, ``host:port``, ``http(s)://host[:port][/path]``
    (port 11434 when no scheme is given, else the scheme's)."""
    value = value.strip() or f"http://127.0.0.1:{DEFAULT_PORT}"
    schemed = "://" in value
    parts = urlsplit(value if schemed else f"http://{value}")
    if parts.scheme not in ("http", "https"):
        msg = f"base_url {value!r} is not an http(s) URL; use e.g. http://localhost:{DEFAULT_PORT}"
        raise ConfigurationError(msg)
    try:
        port = parts.port or (DEFAULT_PORT if not schemed else 443 if parts.scheme == "https" else 80)
    except ValueError:
        msg = f"base_url {value!r} has no valid port; use e.g. http://localhost:{DEFAULT_PORT}"
        raise ConfigurationError(msg) from None
    host = parts.hostname or "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}:{port}{parts.path.rstrip('/')}"


PROVIDER = OllamaProvider
