"""Google's Gemini API (``gemini:<model>``), through the official ``google-genai`` SDK.

What is sent, and where it comes from:

* ``client.models.embed_content`` posts ``models/<m>:batchEmbedContents`` with the key in
  ``x-goog-api-key``: one ``EmbedContentRequest`` per text, with ``taskType`` and
  ``outputDimensionality`` (API reference: https://ai.google.dev/api/embeddings). The SDK's
  own retries are off (``HttpRetryOptions(attempts=1)``): tenacity in ``pipeline/runner.py``
  owns them.
* Limits: 100 texts per request (the API's 400 says "at most 100 requests can be in one
  batch", github.com/langchain-ai/langchainjs/issues/4491); 2,048 tokens per text for
  gemini-embedding-001, 8,192 for gemini-embedding-2 (model pages,
  https://ai.google.dev/gemini-api/docs/models/gemini-embedding-001 and
  https://ai.google.dev/gemini-api/docs/embeddings); no tokens-per-request limit is
  documented, so it is the product of the two. Output size 128..3072, 3072 by default.
* Roles: ``taskType`` (``TaskType`` enum of the API reference): "document" is
  RETRIEVAL_DOCUMENT, "query" is RETRIEVAL_QUERY, and Gemini's own task types by name.
  gemini-embedding-2 takes no ``taskType``: its task is an instruction written before the
  text ("task: search result | query: ...", "title: none | text: ...", the format of its
  model page, https://docs.cloud.google.com/vertex-ai/generative-ai/docs/models/gemini/embedding-2),
  which is then part of the vector's identity (``prefix``).
* Usage: the documented answer reports none, so ``billed_tokens`` is the UTF-8 bytes of what
  was sent (no token of Gemini's tokenizer covers less than a byte), ``usage_reported=False``
  and the cost column is an upper bound; a ``usageMetadata.promptTokenCount`` in the answer,
  where the API adds one, is used instead.
* Long texts: the Gemini API documents no truncation switch (the SDK refuses
  ``auto_truncate`` outside Vertex AI), so nothing is left to the server: the pipeline cuts a
  text to ``limits.max_input_tokens`` with the bytes tokenizer, a cut that always fits (2,048
  bytes are at most 2,048 tokens) and is shorter than the model could take; "chunk" keeps it all.
* Quotas: no rate-limit headers on any answer. A 429 (``RESOURCE_EXHAUSTED``) carries a
  ``RetryInfo`` (-> ``retry-after``) and a ``QuotaFailure`` whose per-minute quota value
  becomes ``x-ratelimit-limit-requests|tokens`` with nothing remaining, so the limiter learns
  the quota from the first 429; pass ``rpm=``/``tpm=`` to have none.
"""

from __future__ import annotations

import os
import re
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

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com/"
KEY_VARIABLES = ("GOOGLE_API_KEY", "GEMINI_API_KEY")  # the SDK's order: GOOGLE_API_KEY wins
MAX_INPUTS = 100
MIN_DIMENSIONS = 128
#: Bytes kept free under a text-instructed model's limit for its instruction.
PREFIX_ROOM = 64
#: model -> (default output dimensions, tokens per input, task given in the text)
MODELS: dict[str, tuple[int, int, bool]] = {
    "gemini-embedding-001": (3072, 2048, False),
    "gemini-embedding-2": (3072, 8192, True),
    "gemini-embedding-2-preview": (3072, 8192, True),
}
TASK_TYPES = ("RETRIEVAL_DOCUMENT", "RETRIEVAL_QUERY", "SEMANTIC_SIMILARITY", "CLASSIFICATION", "CLUSTERING",
              "CODE_RETRIEVAL_QUERY", "QUESTION_ANSWERING", "FACT_VERIFICATION")
#: input_type -> taskType: ours, and Gemini's own names in either case
ROLES: dict[str, str] = {"document": "RETRIEVAL_DOCUMENT", "query": "RETRIEVAL_QUERY",
                         **{t.lower(): t for t in TASK_TYPES}}
#: taskType -> the instruction gemini-embedding-2 reads before the text instead
PREFIXES: dict[str, str] = {
    "RETRIEVAL_DOCUMENT": "title: none | text: ",
    "RETRIEVAL_QUERY": "task: search result | query: ",
    "SEMANTIC_SIMILARITY": "task: sentence similarity | query: ",
    "CLASSIFICATION": "task: classification | query: ",
    "CLUSTERING": "task: clustering | query: ",
    "CODE_RETRIEVAL_QUERY": "task: code retrieval | query: ",
    "QUESTION_ANSWERING": "task: question answering | query: ",
    "FACT_VERIFICATION": "task: fact checking | query: ",
}


def resolve_dimensions(model: str, dimensions: int | None) -> int:
    """``outputDimensionality``: known before any request (the schema costs nothing)."""
    known = MODELS.get(model)
    if dimensions is None:
        if known is None:
            names = ", ".join(sorted(MODELS))
            msg = f"unknown Gemini model {model!r} (known: {names}); pass dimensions= with it"
            raise ConfigurationError(msg)
        return known[0]
    if not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1:
        msg = f"dimensions must be a positive integer, got {dimensions!r}"
        raise ConfigurationError(msg)
    if known is not None and not MIN_DIMENSIONS <= dimensions <= known[0]:
        msg = f"Gemini model {model!r} returns {MIN_DIMENSIONS} to {known[0]} dimensions, got dimensions={dimensions}"
        raise ConfigurationError(msg)
    return dimensions


class GeminiProvider:
    """Embeddings from the Gemini API (Google AI Studio keys), or a server speaking its wire."""

    name = "gemini"
    waits_on_network = True

    def __init__(self, model: str = "gemini-embedding-001", *, dimensions: int | None = None,
                 base_url: str | None = None, api_key: str | None = None, timeout: float = 60.0,
                 limits: Limits | None = None, input_type: str = "document", **options: Any) -> None:
        if options:
            msg = f"provider_options {sorted(options)} are not settings of a Gemini model; it takes none"
            raise ConfigurationError(msg)
        self.model = model.removeprefix("models/")  # the API's resource name works too
        self.input_type = input_type
        self.base_url = base_url or os.environ.get("GOOGLE_GEMINI_BASE_URL") or None  # the SDK's variable
        if self.base_url is not None and not self.base_url.startswith(("http://", "https://")):
            msg = f"base_url {self.base_url!r} is not an http(s) URL; use e.g. {DEFAULT_BASE_URL}"
            raise ConfigurationError(msg)
        self.dimensions = resolve_dimensions(self.model, dimensions)
        self.role = resolve_role(input_type, ROLES, f"Gemini model {self.model!r}")
        in_text = MODELS.get(self.model, (0, 0, False))[2]
        self.prefix = PREFIXES[self.role] if in_text else ""  # gemini-embedding-2: the task is in the text
        per_input = MODELS.get(self.model, (0, 2048, False))[1]
        self.default_input_tokens = per_input - PREFIX_ROOM if in_text else per_input
        self.limits = limits or Limits(max_inputs=MAX_INPUTS, max_request_tokens=MAX_INPUTS * self.default_input_tokens,
                                       max_input_tokens=self.default_input_tokens)
        self._api_key = api_key
        self.timeout = timeout
        self._client: Any = None
        self._lock = threading.Lock()

    # -- where, and what makes a vector -----------------------------------------------------
    @property
    def endpoint(self) -> str:
        """Where requests go, as it may be printed (no credentials)."""
        parts = urlsplit(self.base_url or DEFAULT_BASE_URL)
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path.rstrip('/')}"

    @property
    def cache_namespace(self) -> str:
        """The endpoint, for the cache key: empty for Google's own; never credentials."""
        if self.base_url is None or (urlsplit(self.base_url).hostname or "").lower() == urlsplit(DEFAULT_BASE_URL).hostname:
            return ""
        return self.endpoint.lower()

    def identity(self, policy: str) -> VectorIdentity:
        """The model at its output size on this endpoint, told its task (as ``taskType``, or
        as the instruction before the text); the answer is always float32 values."""
        return identity_of(self, policy, default_limit=self.default_input_tokens, namespace=self.cache_namespace,
                           role=self.role, prefix=self.prefix)

    def tokenizer(self) -> Tokenizer:
        return Utf8BytesTokenizer()  # Gemini's tokenizer is not available offline

    def __repr__(self) -> str:  # never shows the key
        return f"GeminiProvider(model={self.model!r}, dimensions={self.dimensions}, base_url={self.base_url!r})"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_client"] = None
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # -- the client ---------------------------------------------------------------------------
    def api_key(self) -> str:
        key = self._api_key or next((os.environ[v] for v in KEY_VARIABLES if os.environ.get(v)), "")
        if not key:
            msg = "no API key for the Gemini API: set GEMINI_API_KEY (or GOOGLE_API_KEY) or pass api_key="
            raise ConfigurationError(msg)
        return key

    def client(self) -> Any:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    from google import genai
                    from google.genai import types

                    options = types.HttpOptions(base_url=self.base_url, timeout=int(self.timeout * 1000),
                                                retry_options=types.HttpRetryOptions(attempts=1))
                    self._client = genai.Client(vertexai=False, api_key=self.api_key(), http_options=options)
        return self._client

    def prepare(self) -> None:
        """Build the client ahead of the first request; a missing key is raised by the
        request itself, not here."""
        try:
            self.client()
        except Exception:  # noqa: BLE001, S110 - the first request raises it with its message
            pass

    def redact(self, text: str) -> str:
        """``text`` without the API key (whole, or its end as a masked echo of it would show)."""
        key = self._api_key or next((os.environ[v] for v in KEY_VARIABLES if os.environ.get(v)), "")
        if not key:
            return text
        text = text.replace(key, "[key]")
        return re.sub(rf"\S*{re.escape(key[-4:])}", "[key]", text) if len(key) >= 8 else text

    # -- one request ---------------------------------------------------------------------------
    def embed(self, texts: list[str]) -> BatchResult:
        from google.genai import types

        sent = [self.prefix + t for t in texts] if self.prefix else texts
        # one Content per text: a list of strings would be one Content of many parts for a
        # multimodal model (gemini-embedding-2), hence one vector for them all
        contents: Any = [{"parts": [{"text": t}]} for t in sent]
        config = types.EmbedContentConfig(task_type=None if self.prefix else self.role,
                                          output_dimensionality=self.dimensions)
        try:
            answer = self.client().models.embed_content(model=self.model, contents=contents, config=config)
        except (ConfigurationError, MalformedResponse):
            raise
        except Exception as exc:  # noqa: BLE001 - every failure of the SDK is translated
            raise self.failure(exc) from None
        return self.result(answer, sent)

    def result(self, answer: Any, sent: list[str]) -> BatchResult:
        """The vectors in request order, checked; the billed tokens; the answer's headers."""
        n, dim = len(sent), self.dimensions
        items = answer.embeddings or []
        if len(items) != n:
            raise MalformedResponse(f"response has {len(items)} vectors for {n} inputs")
        try:
            vectors = np.asarray([e.values for e in items], dtype=np.float32)
        except (TypeError, ValueError) as exc:  # ragged: a vector of another size
            raise MalformedResponse(f"response vectors are not all {dim} numbers ({exc})") from None
        if vectors.shape != (n, dim):
            raise MalformedResponse(f"response vectors have shape {vectors.shape}, expected {(n, dim)}")
        bad = ~np.isfinite(vectors).all(axis=1) | ~vectors.any(axis=1)
        if bad.any():
            raise MalformedResponse(f"response vector {int(np.argmax(bad))} is not finite or is all zeros")
        bound = sum(len(t.encode("utf-8", "surrogatepass")) for t in sent)
        usage = getattr(getattr(answer, "usage_metadata", None), "prompt_token_count", None)
        raw = getattr(answer, "sdk_http_response", None)
        headers = {k.lower(): v for k, v in ((raw.headers or {}) if raw else {}).items() if k.lower() == "retry-after"}
        if usage is None:
            return BatchResult(vectors, bound, headers, usage_reported=False)
        if not isinstance(usage, int) or not 0 <= usage <= n * max(self.limits.max_input_tokens, bound):
            raise MalformedResponse(f"response bills {usage!r} tokens for {n} inputs, which cannot be")
        return BatchResult(vectors, usage, headers)

    def failure(self, exc: Exception) -> Exception:
        """An SDK exception as the runner reads failures (status, retry-after, quota)."""
        from google.genai import errors

        if isinstance(exc, errors.APIError):
            return api_failure(exc, self.redact)
        if isinstance(exc, _transport_errors()):
            return ProviderFailure(self.redact(f"{type(exc).__name__}: {exc}"), None)
        if isinstance(exc, ValueError):  # the 200's body was not JSON, or not an EmbedContentResponse
            return MalformedResponse(f"response body is not an embeddings result ({type(exc).__name__})")
        return exc


def api_failure(exc: Any, redact: Any) -> Exception:
    """A Gemini error answer: a wrong key is a setting to fix (a 400 that no input caused,
    never bisected); a 429 teaches its wait and its quota; the rest keeps its status."""
    code, status = int(exc.code or 0), exc.status or ""
    message = redact(str(exc.message or exc))
    body: dict[str, Any] = exc.details if isinstance(exc.details, dict) else {}
    error: dict[str, Any] = body["error"] if isinstance(body.get("error"), dict) else body
    details = [d for d in (error.get("details") or []) if isinstance(d, dict)]
    if any(d.get("reason") == "API_KEY_INVALID" for d in details):
        msg = f"the Gemini API refused the key ({code} {status}: {message}); pass a valid api_key= or set GEMINI_API_KEY"
        return ConfigurationError(msg)
    response = getattr(exc, "response", None)
    headers = {k.lower(): str(v) for k, v in (getattr(response, "headers", None) or {}).items()
               if k.lower() in ("retry-after", "retry-after-ms")}
    headers.update(quota_headers(details))
    return ProviderFailure(f"{code} {status}: {message}", code or None, headers)


def quota_headers(details: list[dict[str, Any]]) -> dict[str, str]:
    """``RetryInfo.retryDelay`` as ``retry-after``; each exceeded per-minute quota of a
    ``QuotaFailure`` as OpenAI's ``x-ratelimit-limit-*`` with nothing remaining."""
    headers: dict[str, str] = {}
    for detail in details:
        kind = str(detail.get("@type", ""))
        if kind.endswith("google.rpc.RetryInfo"):
            delay = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)s\s*", str(detail.get("retryDelay", "")))
            if delay:
                headers["retry-after"] = delay.group(1)
        elif kind.endswith("google.rpc.QuotaFailure"):
            for violation in detail.get("violations") or []:
                quota_id, value = str(violation.get("quotaId", "")), str(violation.get("quotaValue", ""))
                if "PerMinute" not in quota_id or not value.isdigit():
                    continue  # a per-day quota is not a rate the limiter paces
                what = "tokens" if "Token" in quota_id else "requests"
                headers[f"x-ratelimit-limit-{what}"] = value
                headers[f"x-ratelimit-remaining-{what}"] = "0"
    return headers


def _transport_errors() -> tuple[type[BaseException], ...]:
    """httpx's connection failures and timeouts (and httpx2's, which the SDK may use)."""
    import httpx

    found: list[type[BaseException]] = [httpx.TransportError]
    try:
        import httpx2  # type: ignore[import-not-found]

        found.append(httpx2.TransportError)
    except ImportError:
        pass
    return tuple(found)


PROVIDER = GeminiProvider
