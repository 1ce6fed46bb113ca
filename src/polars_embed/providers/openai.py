"""Any OpenAI-compatible embeddings endpoint, through the official ``openai`` client.

``max_retries=0``: tenacity in ``pipeline/runner.py`` owns retries. The body is parsed here, not by
the client: base64 float32 goes straight into numpy, vectors are placed by their
``index`` field, and a short, malformed or wrong-dimension answer raises
``MalformedResponse`` (retried), never a silently misaligned result.
"""

from __future__ import annotations

import json
import operator
import os
import re
import threading
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np

from ..errors import ConfigurationError
from ..pipeline.tokens import TiktokenTokenizer
from .b64 import decode, decode_rows
from .base import BatchResult, Limits, identity_of, resolve_role

if TYPE_CHECKING:
    from ..identity import VectorIdentity
    from ..pipeline.tokens import Tokenizer

#: Output dimensions of known models; ``dimensions=`` overrides (text-embedding-3-* only).
MODEL_DIMENSIONS: dict[str, int] = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}
_SHORTENABLE = ("text-embedding-3-small", "text-embedding-3-large")


class MalformedResponse(Exception):
    """The server answered 200 with a body we cannot trust (retried)."""


def resolve_dimensions(model: str, dimensions: int | None, *, custom_server: bool) -> int:
    """Output dimension known before any request, so the schema costs nothing."""
    if dimensions is not None:
        if not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1:
            msg = f"dimensions must be a positive integer, got {dimensions!r}"
            raise ConfigurationError(msg)
        full = MODEL_DIMENSIONS.get(model)
        if full is not None and not custom_server:
            if model not in _SHORTENABLE and dimensions != full:
                msg = f"model {model!r} does not support dimensions={dimensions}; it always returns {full}"
                raise ConfigurationError(msg)
            if dimensions > full:
                msg = f"model {model!r} returns at most {full} dimensions, got dimensions={dimensions}"
                raise ConfigurationError(msg)
        return dimensions
    if model in MODEL_DIMENSIONS:
        return MODEL_DIMENSIONS[model]
    if custom_server:
        msg = f"model {model!r} has no known output size; pass dimensions= with it"
    else:
        known = ", ".join(sorted(MODEL_DIMENSIONS))
        msg = f"unknown OpenAI model {model!r} (known: {known}); for another server pass base_url= and dimensions="
    raise ConfigurationError(msg)


class OpenAIProvider:
    """Embeddings from OpenAI or any server that speaks its ``/v1/embeddings``."""

    name = "openai"
    waits_on_network = True

    def __init__(
        self,
        model: str = "text-embedding-3-small",
        *,
        dimensions: int | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        limits: Limits | None = None,
        tokenizer: Tokenizer | None = None,
        send_dimensions: bool | None = None,
        input_type: str = "document",
        find_dimensions: bool = True,
    ) -> None:
        self.model = model
        self.input_type = input_type
        resolve_role(input_type, {}, "an OpenAI embedding model")  # none: the same vector either way
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        if self.base_url is not None and not self.base_url.startswith(("http://", "https://")):
            msg = f"base_url {self.base_url!r} is not an http(s) URL; use e.g. http://127.0.0.1:8000/v1"
            raise ConfigurationError(msg)
        # sent when asked for (a proxy knows a model's native size without sending it)
        self._send_dimensions = dimensions is not None if send_dimensions is None else send_dimensions
        self._api_key = api_key
        self.timeout = timeout
        self.limits = limits or Limits()
        self._tokenizer = tokenizer or TiktokenTokenizer("cl100k_base")
        self._client: Any = None
        self._lock = threading.Lock()
        custom = self.base_url is not None
        if dimensions is None and custom and model not in MODEL_DIMENSIONS and find_dimensions:
            self.dimensions = self.probe_dimensions()
        else:
            self.dimensions = resolve_dimensions(model, dimensions, custom_server=custom)

    @property
    def endpoint(self) -> str:
        """Where requests go, as it may be printed (no credentials)."""
        parts = urlsplit(self.base_url or "https://api.openai.com/v1")
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path.rstrip('/')}"

    @property
    def cache_namespace(self) -> str:
        """The endpoint, for the cache key: empty for OpenAI's own; never credentials."""
        if self.base_url is None:
            return ""
        parts = urlsplit(self.base_url)
        host = (parts.hostname or "").lower()
        if host == "api.openai.com":
            return ""
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{host}{port}{parts.path.rstrip('/')}"

    def probe_dimensions(self) -> int:
        """The output size of a model on a server of one's own (TEI, vLLM, Infinity, Ollama's
        ``/v1``, LM Studio), found with one request on a two-token text, so the column's
        schema is known before the run; ``dimensions=`` skips it (and ``find_dimensions=False``:
        the proxy, where a client's model name must not cost a request)."""
        try:
            client = self.client().with_options(max_retries=2)  # a 429, a 5xx or a dropped connection: again
            raw = client.embeddings.with_raw_response.create(model=self.model, input=["dimensions probe"],
                                                             encoding_format="float")
            vector = json.loads(raw.content)["data"][0]["embedding"]
            if not isinstance(vector, list) or not vector:
                raise MalformedResponse("no vector in the answer")
        except Exception as exc:  # noqa: BLE001 - any failure is the same advice
            reason = self.redact(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            msg = (f"model {self.model!r} has no known output size and asking {self.endpoint} for it failed "
                   f"({reason[:200]}); pass dimensions= with it")
            raise ConfigurationError(msg) from None
        return len(vector)

    def identity(self, policy: str) -> VectorIdentity:
        """The model at its dimensions on this endpoint; no role (OpenAI has none)."""
        return identity_of(self, policy, default_limit=Limits.max_input_tokens, namespace=self.cache_namespace)

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAIProvider(model={self.model!r}, dimensions={self.dimensions}, base_url={self.base_url!r})"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_client"] = None
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def tokenizer(self) -> Tokenizer:
        return self._tokenizer

    def api_key(self) -> str:
        key = self._api_key or os.environ.get("OPENAI_API_KEY")
        if not key:
            msg = "no API key: set OPENAI_API_KEY or pass api_key= (or use model='local:...' offline)"
            raise ConfigurationError(msg)
        return key

    def client(self) -> Any:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    import openai

                    self._client = openai.OpenAI(
                        api_key=self.api_key(),
                        base_url=self.base_url,
                        timeout=self.timeout,
                        max_retries=0,
                    )
        return self._client

    def redact(self, text: str) -> str:
        """``text`` without the API key: not whole, and not as a server masks it (a few
        characters of each end around stars, as OpenAI quotes a wrong key)."""
        key = self._api_key or os.environ.get("OPENAI_API_KEY") or ""
        if len(key) < 8:
            return text.replace(key, "[key]") if key else text
        text = text.replace(key, "[key]")
        return re.sub(rf"\S*{re.escape(key[-4:])}", "[key]", text)

    def prepare(self) -> None:
        """Build the client ahead of the first request (about 0.1 s: an HTTP client and an
        SSL context); a missing key is raised by the request itself, not here."""
        try:
            self.client()
        except Exception:  # noqa: BLE001, S110 - the first request raises it with its message
            pass

    def embed(self, texts: list[str]) -> BatchResult:
        # The texts go in `extra_body` (which the client merges over the typed parameters):
        # given as `input=`, the client checks each text against the union type of `input`,
        # about 12 us a text under the GIL, which slowed a 14,000-text cold run by ~12%
        # (bench/throughput.py). The request on the wire is the same.
        kwargs: dict[str, Any] = {"input": [], "model": self.model, "extra_body": {"input": texts}}
        if self._send_dimensions:
            kwargs["dimensions"] = self.dimensions
        kwargs["encoding_format"] = self.limits.encoding_format
        raw = self.client().embeddings.with_raw_response.create(**kwargs)
        headers = {k.lower(): v for k, v in raw.headers.items() if k.lower().startswith(("x-ratelimit", "retry-after"))}
        vectors, billed = parse_body(raw.content, len(texts), self.dimensions, len(texts) * self.limits.max_input_tokens)
        return BatchResult(vectors, billed, headers)


def parse_body(content: bytes, n: int, dim: int, max_tokens: int | None = None) -> tuple[np.ndarray, int]:
    """Decode an embeddings response body into an ``(n, dim)`` float32 array by ``index``.

    An answer that cannot be true is malformed (retried, never cached): a vector that is not
    finite or is all zeros, a usage below zero or above ``max_tokens`` (``n`` inputs at the
    per-input limit). Base64 vectors are sliced out of the body (``_sliced``) and decoded all
    at once (``b64.decode_rows``), float lists in one numpy conversion; only an answer that
    fails that is parsed whole and walked item by item, to name what is wrong with it."""
    sliced = _sliced(content)
    if sliced is not None:
        try:
            return _parse(sliced[0], n, dim, max_tokens, sliced[1])
        except MalformedResponse:
            pass  # said below, in the words of the whole body
    return _parse(content, n, dim, max_tokens, None)


_KEY, _SPACE, _COLON, _QUOTE = b'"embedding"', b" \t\r\n", ord(":"), ord('"')


def _sliced(content: bytes) -> tuple[bytes, list[memoryview]] | None:
    """The body with every ``"embedding"`` string emptied, and those strings (views, in order);
    None when there are none. ``json.loads`` would copy each vector's base64 into a new
    string (115 MB an answer of 14,000 vectors of 1,536 dimensions): the emptied body parses
    in milliseconds. A JSON string cannot hold an unescaped quote, so ``"embedding"`` followed
    by a colon is a key; what its string holds is checked by the strict decoder, and
    ``_parse`` checks that the strings emptied are exactly the items' embeddings."""
    view, size = memoryview(content), len(content)
    parts: list[memoryview] = []
    values: list[memoryview] = []
    kept = pos = 0
    while (pos := content.find(_KEY, pos)) >= 0:
        pos += len(_KEY)
        while pos < size and content[pos] in _SPACE:
            pos += 1
        if pos >= size or content[pos] != _COLON:
            continue  # a value ("object": "embedding"), not the key
        pos += 1
        while pos < size and content[pos] in _SPACE:
            pos += 1
        end = content.find(b'"', pos + 1) if pos < size and content[pos] == _QUOTE else -1
        if end < 0:
            return None  # not a string (a float list), or cut short: parsed whole
        parts.append(view[kept : pos + 1])
        values.append(view[pos + 1 : end])
        kept = pos = end
    if not values:
        return None
    parts.append(view[kept:])
    return b"".join(parts), values


def _parse(content: bytes, n: int, dim: int, max_tokens: int | None,
           values: list[memoryview] | None) -> tuple[np.ndarray, int]:
    """``parse_body`` of ``content``; ``values``: the embeddings ``_sliced`` took out of it."""
    try:
        body = json.loads(content)
        data = body["data"]
        usage = body["usage"]["prompt_tokens"]
        billed = int(usage)
    except (ValueError, KeyError, TypeError, OverflowError) as exc:
        raise MalformedResponse(f"response body is not an embeddings result ({exc})") from exc
    if billed != usage or billed < 0 or (max_tokens is not None and billed > max_tokens):
        raise MalformedResponse(f"response bills {usage!r} tokens for {n} inputs, which cannot be")
    if not isinstance(data, list):
        raise MalformedResponse("response body is not an embeddings result (its data is not a list)")
    if len(data) != n:
        raise MalformedResponse(f"response has {len(data)} vectors for {n} inputs")
    out = _bulk(data, n, dim, values)
    if out is None:
        if values is not None:
            raise MalformedResponse("sliced: not as expected")  # parsed whole by parse_body
        out = _item_by_item(data, n, dim)
    bad = ~np.isfinite(out).all(axis=1) | ~out.any(axis=1)
    if bad.any():
        raise MalformedResponse(f"response vector {int(np.argmax(bad))} is not finite or is all zeros")
    return out, billed


def _bulk(data: list[Any], n: int, dim: int, values: list[memoryview] | None = None) -> np.ndarray | None:
    """The vectors of ``data`` in index order, decoded in one pass; None when any item is
    not as expected (``_item_by_item`` then says which and how). ``values``: the items'
    embeddings, sliced out of the body, where each item now holds an empty string."""
    try:
        index = np.fromiter(map(operator.index, (item["index"] for item in data)), np.int64, n)
        embeddings: list[Any] = [item["embedding"] for item in data]
    except (KeyError, TypeError, ValueError):
        return None
    if values is not None:
        if len(values) != n or any(e != "" for e in embeddings):  # "" is what _sliced left
            return None
        embeddings = values
    if n and isinstance(embeddings[0], (str, memoryview)):
        vectors = decode_rows(embeddings, dim)
    else:
        try:
            vectors = np.asarray(embeddings, dtype=np.float32)
        except (ValueError, TypeError):
            return None
    if vectors is None or vectors.shape != (n, dim):
        return None
    if np.array_equal(index, np.arange(n)):
        return vectors  # read-only when decoded from base64: nothing writes into an answer's vectors
    if index.min() < 0 or index.max() >= n or len(np.unique(index)) != n:
        return None
    out = np.empty((n, dim), dtype=np.float32)
    out[index] = vectors
    return out


def _item_by_item(data: list[Any], n: int, dim: int) -> np.ndarray:
    """``data``'s vectors one item at a time, raising ``MalformedResponse`` at the first bad one."""
    out = np.empty((n, dim), dtype=np.float32)
    seen = np.zeros(n, dtype=bool)
    for item in data:
        try:
            idx = int(item["index"])
            emb = item["embedding"]
            vec = (
                np.frombuffer(decode(emb), dtype="<f4")
                if isinstance(emb, str)
                else np.asarray(emb, dtype=np.float32)
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise MalformedResponse(f"response item is malformed ({exc})") from exc
        if not 0 <= idx < n or seen[idx]:
            raise MalformedResponse(f"response has a bad or repeated index {idx}")
        if vec.shape != (dim,):
            raise MalformedResponse(f"response vector has {vec.size} dimensions, expected {dim}")
        out[idx] = vec
        seen[idx] = True
    return out
