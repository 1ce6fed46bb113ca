"""Cohere's embed models (``cohere:<model>``) through the official ``cohere`` SDK.

One request is one ``ClientV2.embed`` call, POST ``/v2/embed`` with ``Authorization: Bearer``,
as Cohere's API reference documents it (https://docs.cohere.com/reference/embed):
``model``, ``texts`` (at most 96 a call), ``input_type`` (required for v3 and newer models:
``search_document``, ``search_query``, ``classification``, ``clustering``),
``embedding_types=["float"]``, ``truncate`` (``NONE``/``START``/``END``; Cohere's default is
``END``) and, for embed-v4.0 only, ``output_dimension`` (256, 512, 1024 or 1536). The answer
holds ``embeddings.float`` in input order (no index field) and ``meta.billed_units.input_tokens``.

Models, sizes and context lengths: https://docs.cohere.com/docs/cohere-embed (embed-v4.0:
128k tokens; the v3 models: 512). Cohere documents no tokens-per-request limit, only the 96
texts; errors are ``{"message": ...}`` (https://docs.cohere.com/reference/errors: 400, 401
"invalid api token", 429 "You are past the per minute request limit"). The rate limits are
per key in inputs a minute (https://docs.cohere.com/docs/rate-limits: Embed 2,000 inputs/min)
and no rate-limit headers are documented, so the limiter learns nothing from an answer: pass
``rpm=``/``tpm=`` to stay under a quota; a ``retry-after`` is passed on if one comes.

Long texts. Cohere's tokenizer is not available offline, so tokens are counted as UTF-8
bytes, never fewer than Cohere's tokens. Cut at the context in bytes, a text for a 512-token
v3 model would keep ~100 of the ~400 words the model reads, so by default
(``provider_options={"truncate": "END"}``) Cohere cuts long texts itself, as its API
documents, and the pipeline only cuts past ``BYTES_PER_TOKEN`` bytes a token of the context.
That serves ``on_long_input="truncate"``; ``"chunk"`` and ``"error"`` need every piece within
the context, so for them (``use_policy``) ``truncate`` is ``NONE``: the limit is the context in bytes,
and Cohere, which never sees more, would refuse rather than cut. The vector of a text Cohere
may have cut has ``truncate=END`` in its identity, so it never shares a cache entry with one
of a text embedded whole. ``START`` is refused: the pipeline's own cut keeps a text's start.

The SDK's own retries are off (``max_retries=0``): ``pipeline/runner.py`` owns them. The SDK
builds its answer model float by float (~0.5 s of CPU for 96 vectors of 1,536, ten times the
JSON parse); at Cohere's 2,000 inputs a minute that is under a tenth of a core.
"""

from __future__ import annotations

import dataclasses
import os
import re
import threading
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
class CohereModel:
    """A model's output sizes (the first is its default) and its context length in tokens."""

    sizes: tuple[int, ...]
    context: int


#: https://docs.cohere.com/docs/cohere-embed
MODELS: dict[str, CohereModel] = {
    "embed-v4.0": CohereModel((1536, 256, 512, 1024), 128_000),
    "embed-english-v3.0": CohereModel((1024,), 512),
    "embed-multilingual-v3.0": CohereModel((1024,), 512),
    "embed-english-light-v3.0": CohereModel((384,), 512),
    "embed-multilingual-light-v3.0": CohereModel((384,), 512),
}
MAX_TEXTS = 96  # texts per call (https://docs.cohere.com/reference/embed)
UNKNOWN_CONTEXT = 512  # a model not in the table: the smallest documented context
#: Under ``truncate="END"`` the pipeline cuts a text only past this many bytes a token of the
#: context (English is ~4.5 bytes a token, CJK ~3): Cohere then cuts at its own tokens.
BYTES_PER_TOKEN = 8
ROLES = {"document": "search_document", "query": "search_query",
         "classification": "classification", "clustering": "clustering"}
DEFAULT_BASE_URL = "https://api.cohere.com"
KEY_VARIABLES = ("CO_API_KEY", "COHERE_API_KEY")  # the SDK's documented one, then its alias


def resolve_dimensions(model: str, dimensions: int | None) -> tuple[int, bool]:
    """The output size known before any request, and whether to send ``output_dimension``
    (only to a model that lets one choose: v3 models refuse the field)."""
    if dimensions is not None and (not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1):
        msg = f"dimensions must be a positive integer, got {dimensions!r}"
        raise ConfigurationError(msg)
    spec = MODELS.get(model)
    if spec is None:
        if dimensions is None:
            msg = f"cohere model {model!r} is not one whose output size is known ({', '.join(MODELS)}); pass dimensions= with it"
            raise ConfigurationError(msg)
        return dimensions, True
    if dimensions is None:
        return spec.sizes[0], False
    if dimensions not in spec.sizes:
        sizes = ", ".join(map(str, sorted(spec.sizes)))
        msg = f"cohere model {model!r} returns {sizes} dimensions, not dimensions={dimensions}"
        raise ConfigurationError(msg)
    return dimensions, len(spec.sizes) > 1


def resolve_truncate(truncate: str) -> str:
    """``END`` (Cohere cuts long texts) or ``NONE`` (the pipeline does, exactly)."""
    value = truncate.upper() if isinstance(truncate, str) else truncate
    if value in ("END", "NONE"):
        return str(value)
    if value == "START":
        msg = ("provider_options={'truncate': 'START'} keeps a text's end, but on_long_input cuts "
               "a long text's end off; use 'END' or 'NONE'")
    else:
        msg = f"provider_options={{'truncate': ...}} must be 'END' or 'NONE', got {truncate!r}"
    raise ConfigurationError(msg)


class CohereProvider:
    """Embeddings from Cohere's ``/v2/embed`` (or a server that speaks it, via ``base_url=``)."""

    name = "cohere"
    waits_on_network = True

    def __init__(
        self,
        model: str = "embed-v4.0",
        *,
        dimensions: int | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        limits: Limits | None = None,
        input_type: str = "document",
        truncate: str | None = None,
    ) -> None:
        self.model = model
        self.input_type = input_type
        self.role = resolve_role(input_type, ROLES, f"cohere model {model!r}")
        self.dimensions, self._send_dimension = resolve_dimensions(model, dimensions)
        self._asked_truncate, self._limits = truncate, limits
        self.truncate = resolve_truncate("END" if truncate is None else truncate)
        self.base_url = base_url or os.environ.get("CO_API_URL") or None  # the SDK's own variable
        if self.base_url is not None and not self.base_url.startswith(("http://", "https://")):
            msg = f"base_url {self.base_url!r} is not an http(s) URL; use e.g. {DEFAULT_BASE_URL}"
            raise ConfigurationError(msg)
        spec = MODELS.get(model)
        self.context = spec.context if spec is not None else UNKNOWN_CONTEXT
        self.limits = self._limits_for(self.truncate)
        self._api_key = api_key
        self.timeout = timeout
        self._client: Any = None
        self._lock = threading.Lock()

    def _limits_for(self, truncate: str) -> Limits:
        per_input = self.context * (BYTES_PER_TOKEN if truncate == "END" else 1)
        return self._limits or Limits(max_inputs=MAX_TEXTS, max_request_tokens=MAX_TEXTS * per_input,
                                      max_input_tokens=per_input, encoding_format="float")

    def use_policy(self, policy: str) -> None:
        """Cohere cuts for "truncate" (``END``); "chunk" and "error" get the exact cut (``NONE``),
        unless ``provider_options={"truncate": ...}`` said otherwise."""
        if self._asked_truncate is None:
            self.truncate = "END" if policy == "truncate" else "NONE"
            self.limits = self._limits_for(self.truncate)

    # -- where and what ----------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        """Where requests go, as it may be printed (no credentials)."""
        parts = urlsplit(self.base_url or DEFAULT_BASE_URL)
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path.rstrip('/')}"

    @property
    def cache_namespace(self) -> str:
        """The endpoint, for the cache key: empty for Cohere's own API."""
        if self.base_url is None or (urlsplit(self.base_url).hostname or "").lower() in ("api.cohere.com", "api.cohere.ai"):
            return ""
        return self.endpoint.lower()

    @property
    def server_cuts(self) -> bool:
        """Whether a text over the model's context may reach Cohere (limit over it in bytes)."""
        return self.limits.max_input_tokens > self.context

    def identity(self, policy: str) -> VectorIdentity:
        """Model, size and role on this endpoint; ``truncate`` where Cohere may cut (or refuse)
        a text the pipeline sent whole, whose vector is then not that of the text sent."""
        if self.server_cuts and self.truncate == "END" and policy != "truncate":
            msg = (f"on_long_input={policy!r} needs texts cut exactly, but provider_options={{'truncate': 'END'}} "
                   f"has Cohere cut long texts itself; drop it")
            raise ConfigurationError(msg)
        identity = identity_of(self, policy, default_limit=self.context, namespace=self.cache_namespace,
                               role=self.role)
        if self.server_cuts:  # only texts over the context (in bytes) may be cut or refused by Cohere
            identity = dataclasses.replace(identity, long_input=f"{identity.long_input}:{self.truncate}")
        return identity

    def __repr__(self) -> str:  # never shows the key
        return (f"CohereProvider(model={self.model!r}, dimensions={self.dimensions}, "
                f"input_type={self.input_type!r}, base_url={self.base_url!r})")

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

    # -- the client --------------------------------------------------------------------------
    def api_key(self) -> str:
        key = self._api_key or next((os.environ[v] for v in KEY_VARIABLES if os.environ.get(v)), None)
        if not key:
            msg = "no Cohere API key: set CO_API_KEY (or COHERE_API_KEY) or pass api_key="
            raise ConfigurationError(msg)
        return key

    def client(self) -> Any:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    import cohere

                    self._client = cohere.ClientV2(api_key=self.api_key(), base_url=self.base_url or DEFAULT_BASE_URL,
                                                   timeout=self.timeout, max_retries=0, client_name="polars-embed")
        return self._client

    def prepare(self) -> None:
        """Build the client ahead of the first request; a missing key is raised by the request."""
        try:
            self.client()
        except Exception:  # noqa: BLE001, S110 - the first request raises it with its message
            pass

    def redact(self, text: str) -> str:
        """``text`` without the API key: not whole, nor masked around its last characters."""
        key = self._api_key or next((os.environ[v] for v in KEY_VARIABLES if os.environ.get(v)), "")
        if len(key) < 8:
            return text.replace(key, "[key]") if key else text
        text = text.replace(key, "[key]")
        return re.sub(rf"\S*{re.escape(key[-4:])}", "[key]", text)

    # -- one request -------------------------------------------------------------------------
    def embed(self, texts: list[str]) -> BatchResult:
        kwargs: dict[str, Any] = {"model": self.model, "input_type": self.role, "texts": texts,
                                  "embedding_types": ["float"], "truncate": self.truncate}
        if self._send_dimension:
            kwargs["output_dimension"] = self.dimensions
        raw = self._send(kwargs)
        headers = {k.lower(): v for k, v in raw.headers.items() if k.lower().startswith(("x-ratelimit-", "retry-after"))}
        upper = sum(len(t.encode("utf-8", "surrogatepass")) for t in texts)
        vectors, billed, reported = parse_answer(raw.data, len(texts), self.dimensions,
                                                 max_tokens=len(texts) * self.context, fallback=upper)
        return BatchResult(vectors, billed, headers, usage_reported=reported)

    def _send(self, kwargs: dict[str, Any]) -> Any:
        """The SDK's call, its failures as ``ProviderFailure`` (or ``MalformedResponse`` for a 200
        the SDK could not read), never quoting the key."""
        import httpx
        from cohere.core.api_error import ApiError
        from cohere.core.parse_error import ParsingError

        try:
            return self.client().with_raw_response.embed(**kwargs)
        except (ApiError, ParsingError) as exc:
            status = exc.status_code
            if status is not None and 200 <= status < 300:
                raise MalformedResponse("Cohere's answer is not an embed result") from None
            headers = {k.lower(): str(v) for k, v in (exc.headers or {}).items()}
            raise ProviderFailure(self.redact(error_message(exc.body, status)), status, headers) from None
        except httpx.TransportError as exc:  # timeouts, refused or dropped connections
            raise ProviderFailure(self.redact(f"{type(exc).__name__}: {exc}"), None) from None


def error_message(body: Any, status: int | None) -> str:
    """Cohere's ``{"message": ...}``, else what the body holds."""
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return f"HTTP {status}: {str(body)[:300] if body else 'no message'}"


def parse_answer(data: Any, n: int, dim: int, *, max_tokens: int, fallback: int) -> tuple[np.ndarray, int, bool]:
    """``(vectors, billed tokens, whether Cohere reported them)`` of an embed answer.

    An answer that cannot be true is malformed (retried, never cached): not ``n`` vectors of
    ``dim``, a vector not finite or all zeros, billed tokens below zero or over ``max_tokens``.
    Without ``meta.billed_units.input_tokens`` the bill is ``fallback``, an upper bound."""
    try:
        floats = _field(_field(data, "embeddings"), "float_", "float")
        vectors = np.asarray(floats, dtype=np.float32)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise MalformedResponse(f"Cohere's answer has no float embeddings ({exc})") from exc
    if vectors.ndim != 2 or vectors.shape[0] != n:
        raise MalformedResponse(f"Cohere's answer has {vectors.shape[0] if vectors.ndim else 0} vectors for {n} texts")
    if vectors.shape[1] != dim:
        raise MalformedResponse(f"Cohere's vectors have {vectors.shape[1]} dimensions, expected {dim}")
    bad = ~np.isfinite(vectors).all(axis=1) | ~vectors.any(axis=1)
    if bad.any():
        raise MalformedResponse(f"Cohere's vector {int(np.argmax(bad))} is not finite or is all zeros")
    usage = _field(_field(_field(data, "meta"), "billed_units"), "input_tokens")
    if usage is None:
        return vectors, fallback, False
    try:
        billed = int(usage)
    except (TypeError, ValueError, OverflowError) as exc:
        raise MalformedResponse(f"Cohere's answer bills {usage!r} tokens") from exc
    if billed != usage or not 0 <= billed <= max_tokens:
        raise MalformedResponse(f"Cohere's answer bills {usage!r} tokens for {n} texts, which cannot be")
    return vectors, billed, True


def _field(obj: Any, name: str, key: str | None = None) -> Any:
    """A field of the SDK's answer model, or of a plain dict (the SDK keeps unknown shapes)."""
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(key or name)
    return getattr(obj, name, None)


PROVIDER = CohereProvider
