"""Voyage AI text embeddings (``"voyage:<model>"``), through the official ``voyageai`` SDK.

What the API is, from its reference (https://docs.voyageai.com/reference/embeddings-api):
``POST {base_url}/embeddings`` with ``Authorization: Bearer <key>`` and a JSON body of
``input`` (a list of texts), ``model``, ``input_type`` (null, ``"query"`` or ``"document"``:
Voyage prepends a retrieval prompt for the last two), ``truncation`` (default true: cut a
text over the context length instead of refusing it), ``output_dimension``,
``output_dtype`` and ``encoding_format``; the answer is ``{"object": "list", "data":
[{"object": "embedding", "embedding": ..., "index": i}], "model": ..., "usage":
{"total_tokens": n}}``; an error is ``{"detail": "..."}`` with its status (the shape the SDK
reads, ``voyageai/api_resources/api_requestor.py``). Limits of one request: at most 1,000
texts, and at most 1M tokens for voyage-4-lite and voyage-3.5-lite, 320K for voyage-4,
voyage-3.5 and voyage-2, 120K for voyage-4-large, voyage-3-large, voyage-code-3,
voyage-finance-2 and voyage-law-2. Context lengths and output dimensions per model:
https://docs.voyageai.com/docs/embeddings (mirrored at
https://www.mongodb.com/docs/voyageai/models/). Rate limits
(https://docs.voyageai.com/docs/rate-limits): requests and tokens per minute per model and
usage tier (tier 1: 2,000 RPM; 3M TPM for voyage-4-large, voyage-3-large and voyage-code-3, 8M
for voyage-4 and voyage-3.5, 16M for voyage-4-lite and voyage-3.5-lite; tiers 2 and 3 double
and triple them), answered with 429 when exceeded; no rate-limit headers are documented, so
give ``rpm=``/``tpm=`` to stay under them (a ``retry-after`` is honoured if one is ever sent).

The request goes through ``voyageai.Embedding.create``, the call ``Client.embed`` makes,
without the client's wrapper: the wrapper drops each vector's ``index`` and decodes base64
into Python lists, so here vectors are placed by ``index`` and decoded by numpy. The SDK
retries nothing this way (tenacity in ``pipeline/runner.py`` owns retries).

Long inputs. No tokenizer of Voyage's is available offline, so the pipeline counts UTF-8
bytes (``Utf8BytesTokenizer``, never fewer than tokens). A cut at the context length in bytes
would keep about a quarter of a 32,000-token context, so by default (``truncation`` true,
Voyage's own default) Voyage cuts each text at its context itself, and the pipeline only cuts
a text over ``BYTES_PER_TOKEN`` bytes a token of the context (at most the model's tokens per
request, so a text always fits a request). That fits ``on_long_input="truncate"`` alone:
``"chunk"`` and ``"error"`` need the exact cut: for them (``use_policy``) truncation is off,
the limit is the context in bytes, and Voyage, told not to truncate, refuses whatever
is over it (a 400) rather than embed another text than the key says. Either way a text of
more bytes than the context is "long" in the identity, keyed with the pipeline's cut, so a
vector Voyage cut never shares an entry with a vector the pipeline cut.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import os
import re
from dataclasses import dataclass
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


@dataclass(frozen=True)
class VoyageModel:
    """What the docs say of one model: its default output size, the sizes it can give
    (``output_dimension``), its context length and its tokens per request."""

    dimensions: int
    context: int
    request_tokens: int
    flexible: bool = False  # output_dimension 256, 512, 1024 or 2048


#: Sizes ``output_dimension`` takes on the models that have it.
FLEXIBLE_DIMENSIONS = (256, 512, 1024, 2048)
#: The most texts a request may carry (embeddings-api reference).
MAX_INPUTS = 1000
#: Models by name. Tokens per request from the embeddings-api reference; a model it no longer
#: lists (voyage-3, voyage-3-lite, voyage-multilingual-2, voyage-code-2) gets its smallest
#: figure, 120K. Context and dimensions from docs/embeddings.
MODELS: dict[str, VoyageModel] = {
    "voyage-4-large": VoyageModel(1024, 32_000, 120_000, flexible=True),
    "voyage-4": VoyageModel(1024, 32_000, 320_000, flexible=True),
    "voyage-4-lite": VoyageModel(1024, 32_000, 1_000_000, flexible=True),
    "voyage-3-large": VoyageModel(1024, 32_000, 120_000, flexible=True),
    "voyage-3.5": VoyageModel(1024, 32_000, 320_000, flexible=True),
    "voyage-3.5-lite": VoyageModel(1024, 32_000, 1_000_000, flexible=True),
    "voyage-code-3": VoyageModel(1024, 32_000, 120_000, flexible=True),
    "voyage-finance-2": VoyageModel(1024, 32_000, 120_000),
    "voyage-law-2": VoyageModel(1024, 16_000, 120_000),
    "voyage-multilingual-2": VoyageModel(1024, 32_000, 120_000),
    "voyage-code-2": VoyageModel(1536, 16_000, 120_000),
    "voyage-3": VoyageModel(1024, 32_000, 120_000),
    "voyage-3-lite": VoyageModel(512, 32_000, 120_000),
    "voyage-2": VoyageModel(1024, 4_000, 320_000),
}
#: A model not in the table: the smallest context and request of the current models.
UNKNOWN = VoyageModel(0, 16_000, 120_000)
ROLES = {"document": "document", "query": "query"}
#: Hosts that serve Voyage's own models (the SDK picks ai.mongodb.com for "al-" keys).
OWN_HOSTS = ("api.voyageai.com", "ai.mongodb.com")
#: With ``truncation`` on, the pipeline cuts a text only past this many bytes a token of the
#: context (English is ~4.5 bytes a token, CJK ~3): Voyage then cuts at its own tokens.
BYTES_PER_TOKEN = 8
#: Tokens a text spared, past its bytes, when checking an answer's usage (the prompt
#: Voyage prepends for input_type).
PROMPT_TOKENS = 64


def resolve_dimensions(model: str, spec: VoyageModel | None, dimensions: int | None) -> int:
    """The output size, known before any request and checked against what the model gives."""
    if dimensions is not None and (not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1):
        raise ConfigurationError(f"dimensions must be a positive integer, got {dimensions!r}")
    if spec is None:
        if dimensions is None:
            known = ", ".join(MODELS)
            raise ConfigurationError(f"unknown Voyage model {model!r} (known: {known}); for another pass dimensions=")
        return dimensions
    if dimensions is None or dimensions == spec.dimensions:
        return spec.dimensions
    if not spec.flexible:
        raise ConfigurationError(f"Voyage model {model!r} always returns {spec.dimensions} dimensions, not dimensions={dimensions}")
    if dimensions not in FLEXIBLE_DIMENSIONS:
        sizes = ", ".join(map(str, FLEXIBLE_DIMENSIONS))
        raise ConfigurationError(f"Voyage model {model!r} returns {sizes} dimensions, not dimensions={dimensions}")
    return dimensions


class VoyageProvider:
    """Embeddings from Voyage AI's ``/v1/embeddings`` (or a server that speaks it)."""

    name = "voyage"
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
        output_dtype: str = "float",
        truncation: bool | None = None,
    ) -> None:
        self.model = model
        self._spec = MODELS.get(model)
        self.dimensions = resolve_dimensions(model, self._spec, dimensions)
        # sent when asked for a size; a fixed-size model takes none
        self._send_dimensions = dimensions is not None and (self._spec is None or self._spec.flexible)
        self.input_type = input_type
        self.role = resolve_role(input_type, ROLES, f"Voyage model {model!r}")
        if output_dtype != "float":
            msg = (f"provider_options={{'output_dtype': {output_dtype!r}}} is not supported: vectors are kept as "
                   "float32, so use output_dtype='float' (the default)")
            raise ConfigurationError(msg)
        self.output_dtype = output_dtype
        if truncation is not None and not isinstance(truncation, bool):
            raise ConfigurationError(f"provider_options={{'truncation': ...}} must be True or False, got {truncation!r}")
        self._asked_truncation, self._limits = truncation, limits
        self.truncation = True if truncation is None else truncation
        if base_url is not None and not base_url.startswith(("http://", "https://")):
            raise ConfigurationError(f"base_url {base_url!r} is not an http(s) URL; use e.g. https://api.voyageai.com/v1")
        self.base_url = base_url.rstrip("/") if base_url else None
        self._api_key = api_key
        self.timeout = timeout
        self.context = (self._spec or UNKNOWN).context
        self.limits = self._limits_for(self.truncation)

    def _limits_for(self, truncation: bool) -> Limits:
        spec = self._spec or UNKNOWN
        cut = min(spec.request_tokens, BYTES_PER_TOKEN * spec.context) if truncation else spec.context
        return self._limits or Limits(max_inputs=MAX_INPUTS, max_request_tokens=spec.request_tokens, max_input_tokens=cut)

    def use_policy(self, policy: str) -> None:
        """Voyage truncates for "truncate"; "chunk" and "error" get the exact cut (Voyage told
        not to truncate), unless ``provider_options={"truncation": ...}`` said otherwise."""
        if self._asked_truncation is None:
            self.truncation = policy == "truncate"
            self.limits = self._limits_for(self.truncation)

    def __repr__(self) -> str:  # never shows the key
        return f"VoyageProvider(model={self.model!r}, dimensions={self.dimensions}, base_url={self.base_url!r})"

    # -- where requests go -------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        """Where requests go, as it may be printed (no credentials)."""
        url = self.base_url or ("https://ai.mongodb.com/v1" if self._key_or_none().startswith("al-") else "https://api.voyageai.com/v1")
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path.rstrip('/')}"

    @property
    def cache_namespace(self) -> str:
        """The endpoint, for the cache key: empty for Voyage's own hosts; never credentials."""
        if self.base_url is None:
            return ""
        host = (urlsplit(self.base_url).hostname or "").lower()
        if host in OWN_HOSTS or host.endswith(".ai.mongodb.com"):
            return ""
        return self.endpoint

    def identity(self, policy: str) -> VectorIdentity:
        """The model at its dimensions, role and dtype on this endpoint, and the pipeline's cut.
        A text of more bytes than the context is long whatever the cut: Voyage may cut it
        (or refuse it) at its own tokens, so its key names the cut it was sent with."""
        cut = self.limits.max_input_tokens
        if self.truncation and cut > self.context and policy != "truncate":
            msg = (f"on_long_input={policy!r} needs texts cut exactly, but provider_options={{'truncation': True}} "
                   f"has Voyage truncate long texts itself; drop it")
            raise ConfigurationError(msg)
        identity = identity_of(self, policy, default_limit=self.context, namespace=self.cache_namespace,
                               role=self.role, params=(("output_dtype", self.output_dtype),))
        return dataclasses.replace(identity, input_limit=min(self.context, cut))

    def tokenizer(self) -> Tokenizer:
        return Utf8BytesTokenizer()

    # -- credentials -------------------------------------------------------------------------
    def _key_or_none(self) -> str:
        key = self._api_key or os.environ.get("VOYAGE_API_KEY")
        path = os.environ.get("VOYAGE_API_KEY_PATH")
        if not key and path:
            try:
                with open(path, encoding="utf-8") as f:
                    key = f.read().strip()
            except OSError:
                key = None
        return key or ""

    def api_key(self) -> str:
        key = self._key_or_none()
        if not key:
            raise ConfigurationError("no Voyage API key: set VOYAGE_API_KEY or pass api_key=")
        return key

    def redact(self, text: str) -> str:
        """``text`` without the API key, whole or masked to a few characters of its end."""
        key = self._key_or_none()
        if len(key) < 8:
            return text.replace(key, "[key]") if key else text
        text = text.replace(key, "[key]")
        return re.sub(rf"\S*{re.escape(key[-4:])}", "[key]", text)

    def prepare(self) -> None:
        """Import the SDK (about a second: aiohttp, PIL, huggingface_hub) ahead of the first
        request; a missing SDK is raised by the request itself, with its message."""
        try:
            _sdk()
        except ConfigurationError:
            pass

    # -- one request -------------------------------------------------------------------------
    def embed(self, texts: list[str]) -> BatchResult:
        voyageai = _sdk()
        kwargs: dict[str, Any] = {
            "input": texts, "model": self.model, "input_type": self.role, "truncation": self.truncation,
            "output_dtype": self.output_dtype, "encoding_format": "base64",
            "api_key": self.api_key(), "base_url": self.base_url, "request_timeout": self.timeout,
        }
        if self._send_dimensions:
            kwargs["output_dimension"] = self.dimensions
        try:
            response = voyageai.Embedding.create(**kwargs)
        except voyageai.error.VoyageError as exc:
            raise self._failure(exc) from None  # not chained: the SDK's error may quote the request
        sizes = sum(len(t.encode("utf-8", "surrogatepass")) for t in texts)
        vectors = parse_data(response.get("data"), len(texts), self.dimensions)
        billed, reported = parse_usage(response.get("usage"), sizes, sizes + PROMPT_TOKENS * len(texts))
        return BatchResult(vectors, billed, {}, usage_reported=reported)

    def _failure(self, exc: Any) -> Exception:
        """The SDK's error as the runner reads failures: its status (None when Voyage was not
        reached: retried), Voyage's ``detail``, and the headers a wait may be read from."""
        status = getattr(exc, "http_status", None)
        message = self.redact(_detail(getattr(exc, "http_body", None)) or str(getattr(exc, "user_message", None) or exc))
        if status is not None and 200 <= status < 300:  # a 200 whose body is not JSON
            return MalformedResponse(f"response body is not an embeddings result ({message[:200]})")
        headers = {k.lower(): str(v) for k, v in (getattr(exc, "headers", None) or {}).items()
                   if k.lower().startswith(("retry-after", "x-ratelimit"))}
        if status is None:
            message = f"could not reach Voyage AI at {self.endpoint}: {message}"
        return ProviderFailure(message, status, headers)


def _sdk() -> Any:
    try:
        import voyageai
    except ImportError as exc:
        raise ConfigurationError("model 'voyage:...' needs the voyageai package: pip install 'polars-embed[voyage]'") from exc
    return voyageai


def _detail(body: Any) -> str:
    """Voyage's ``detail`` in an error body: the SDK puts its own words on a 5xx."""
    try:
        detail = json.loads(body).get("detail") if body else None
    except (ValueError, TypeError, AttributeError):
        return ""
    return detail if isinstance(detail, str) else ""


def parse_data(data: Any, n: int, dim: int) -> np.ndarray:
    """The answer's vectors as ``(n, dim)`` float32, placed by ``index``; an answer that
    cannot be true (a vector missing, repeated, of another size, not finite or all zeros)
    is malformed (retried, never cached)."""
    if not isinstance(data, list) or len(data) != n:
        raise MalformedResponse(f"response has {len(data) if isinstance(data, list) else 'no'} vectors for {n} inputs")
    out = np.empty((n, dim), dtype=np.float32)
    seen = np.zeros(n, dtype=bool)
    for item in data:
        try:
            idx = int(item["index"])
            emb = item["embedding"]
            vec = (np.frombuffer(base64.b64decode(emb, validate=True), dtype="<f4") if isinstance(emb, str)
                   else np.asarray(emb, dtype=np.float32))
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise MalformedResponse(f"response item is malformed ({exc})") from exc
        if not 0 <= idx < n or seen[idx]:
            raise MalformedResponse(f"response has a bad or repeated index {idx}")
        if vec.shape != (dim,):
            raise MalformedResponse(f"response vector has {vec.size} dimensions, expected {dim}")
        out[idx] = vec
        seen[idx] = True
    bad = ~np.isfinite(out).all(axis=1) | ~out.any(axis=1)
    if bad.any():
        raise MalformedResponse(f"response vector {int(np.argmax(bad))} is not finite or is all zeros")
    return out


def parse_usage(usage: Any, upper: int, most: int) -> tuple[int, bool]:
    """``usage.total_tokens``, and whether the answer said it; without it, ``upper`` (the
    texts' UTF-8 bytes, never below their tokens). More than ``most`` cannot be true."""
    total = usage.get("total_tokens") if isinstance(usage, dict) else None
    if total is None:
        return upper, False
    if isinstance(total, bool) or not isinstance(total, int) or not 0 <= total <= most:
        raise MalformedResponse(f"response bills {total!r} tokens for texts of {upper} bytes, which cannot be")
    return total, True


PROVIDER = VoyageProvider
