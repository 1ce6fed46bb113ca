"""Azure OpenAI (``azure:<deployment>``), through the core's ``openai`` package (``openai.AzureOpenAI``).

What is sent, and where it comes from:

* ``POST {endpoint}/openai/deployments/{deployment}/embeddings?api-version=...`` with the key in
  ``api-key``, or a Microsoft Entra token in ``Authorization: Bearer`` from
  ``provider_options={"azure_ad_token_provider": callable}``; body and answer are OpenAI's
  (``input``, ``dimensions``, ``encoding_format``; ``data[].embedding``, ``usage.prompt_tokens``).
  REST reference: https://learn.microsoft.com/en-us/azure/ai-foundry/openai/reference (sections
  "Authentication", "REST API versioning", "Embeddings"). The SDK's retries are off
  (``max_retries=0``): tenacity in ``pipeline/runner.py`` owns them.
* ``api-version``: ``provider_options={"api_version": ...}``, else ``OPENAI_API_VERSION`` (the SDK's
  variable), else ``2024-10-21``, the GA release of the dated data-plane inference API that the
  reference above describes.
* ``base_url=`` is the SDK's ``azure_endpoint``: the resource, ``https://<resource>.openai.azure.com``
  (default ``AZURE_OPENAI_ENDPOINT``); the deployment is the model name after ``azure:``.
* A deployment's name says nothing certain about its model: ``provider_options={"model":
  "text-embedding-3-small"}`` names the model it serves, which gives the output size, the price
  (``price_model``, read by ``pricing.py``) and whether ``dimensions=`` may shorten it (then it
  is sent). Without it ``dimensions=`` is required: the deployment's output size, never sent.
* Limits: 2,048 inputs per request ("Max number of inputs in array with /embeddings",
  https://learn.microsoft.com/en-us/azure/ai-services/openai/quotas-limits), 8,191 tokens per
  input (8,192 in https://learn.microsoft.com/en-us/azure/ai-services/openai/how-to/embeddings;
  8,191 is safe under both), 300,000 tokens per request (the Foundry v1 API reference of
  embeddings: "a maximum of 300,000 tokens summed across all inputs in a single request"; an
  older how-to said 8,192 a call, which a deployment that refuses more takes as
  ``limits=Limits(max_request_tokens=8192)``).
  Older deployments take 16 inputs, or 1: their 400 "Too many inputs. The max number of inputs
  is 16." (github.com/microsoft/semantic-kernel/issues/2099) becomes a ConfigurationError that
  says to pass ``limits=Limits(max_inputs=16)``. Tokens: ``cl100k_base`` (text-embedding-3-*,
  ada-002 version 2), as for OpenAI.
* Quotas: Azure answers with ``x-ratelimit-remaining-requests`` and ``-tokens``
  (learn.microsoft.com/en-us/answers/questions/2156987), and some versions with
  ``x-ratelimit-limit-requests`` too, stated per 10-second window, a sixth of the deployment's
  requests/min (learn.microsoft.com/en-us/answers/questions/2265464: 20 for a 120 RPM
  deployment; Azure "evaluates the rate of incoming requests over a small period of time,
  typically 1 or 10 seconds", https://learn.microsoft.com/en-us/azure/ai-foundry/openai/how-to/quota).
  So the limit is multiplied by 6 into OpenAI's per-minute header; the remaining counts, what
  may go now, pass as they are; tokens are per minute. A 429 carries ``retry-after`` (and
  ``retry-after-ms``). Where a deployment sends no limit, pass ``tpm=``/``rpm=`` (its quota in
  the portal): the remaining counts then keep the buckets honest.
* Errors: Azure's own shape ``{"error": {"code": "401", "message": "Access denied due to invalid
  subscription key..."}}`` (404 ``DeploymentNotFound``, 429), OpenAI's for a refused input.
"""

from __future__ import annotations

import os
import re
import threading
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from ..errors import ConfigurationError
from ..pipeline.tokens import TiktokenTokenizer
from .base import BatchResult, Limits, ProviderFailure, identity_of, resolve_role
from .openai import MODEL_DIMENSIONS, MalformedResponse, parse_body, resolve_dimensions

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from ..identity import VectorIdentity
    from ..pipeline.tokens import Tokenizer

DEFAULT_API_VERSION = "2024-10-21"
ENDPOINT_VARIABLE = "AZURE_OPENAI_ENDPOINT"
KEY_VARIABLE = "AZURE_OPENAI_API_KEY"
VERSION_VARIABLE = "OPENAI_API_VERSION"
SHORTENABLE = ("text-embedding-3-small", "text-embedding-3-large")
#: Azure states requests per 10-second window: six of them make its requests/min.
WINDOWS_PER_MINUTE = 6
OPTIONS = ("api_version", "azure_ad_token_provider", "model")


class AzureProvider:
    """Embeddings from one Azure OpenAI deployment."""

    name = "azure"
    waits_on_network = True

    def __init__(
        self,
        deployment: str,
        *,
        dimensions: int | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        limits: Limits | None = None,
        input_type: str = "document",
        model: str | None = None,
        api_version: str | None = None,
        azure_ad_token_provider: Callable[[], str] | None = None,
        **unknown: Any,
    ) -> None:
        if unknown:
            msg = f"provider_options {sorted(unknown)} are not settings of Azure OpenAI; it takes {', '.join(OPTIONS)}"
            raise ConfigurationError(msg)
        if quote(deployment, safe="") != deployment:
            msg = f"deployment name {deployment!r} cannot be part of a URL; use the name the Azure portal shows"
            raise ConfigurationError(msg)
        self.model = deployment  # what the identity and the URL name
        self.price_model = model or ""  # the model the deployment serves: its price
        self.input_type = input_type
        resolve_role(input_type, {}, "an Azure OpenAI deployment")  # none: the same vector either way
        self.base_url = _endpoint(base_url or os.environ.get(ENDPOINT_VARIABLE))
        self.api_version = api_version or os.environ.get(VERSION_VARIABLE) or DEFAULT_API_VERSION
        if azure_ad_token_provider is not None and not callable(azure_ad_token_provider):
            msg = "provider_options={'azure_ad_token_provider': ...} must be a function that returns a token"
            raise ConfigurationError(msg)
        if azure_ad_token_provider is not None and api_key is not None:
            msg = "pass api_key= or provider_options={'azure_ad_token_provider': ...}, not both"
            raise ConfigurationError(msg)
        self._token_provider = azure_ad_token_provider
        self.dimensions, self._send_dimensions = _dimensions(model, dimensions)
        self._api_key = api_key
        self.timeout = timeout
        self.limits = limits or Limits()
        self._tokenizer = TiktokenTokenizer("cl100k_base")
        self._client: Any = None
        self._lock = threading.Lock()

    # -- where, and who ------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        """Where requests go, as it may be printed (no credentials)."""
        return f"{self.base_url}/openai/deployments/{self.model}"

    @property
    def cache_namespace(self) -> str:
        """The resource (host and path, no scheme nor credentials): a deployment's name means
        something only on its resource."""
        parts = urlsplit(self.base_url)
        port = f":{parts.port}" if parts.port else ""
        return f"{(parts.hostname or '').lower()}{port}{parts.path}"

    def identity(self, policy: str) -> VectorIdentity:
        """The deployment on its resource, at its dimensions; no role (Azure OpenAI has none)."""
        return identity_of(self, policy, default_limit=Limits.max_input_tokens, namespace=self.cache_namespace)

    def __repr__(self) -> str:  # never shows the key
        return (f"AzureProvider(deployment={self.model!r}, model={self.price_model or None!r}, "
                f"dimensions={self.dimensions}, base_url={self.base_url!r})")

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

    def redact(self, text: str) -> str:
        """``text`` without the API key, whole or as a server masks it (its last characters)."""
        key = self._api_key or os.environ.get(KEY_VARIABLE) or ""
        if len(key) < 8:
            return text.replace(key, "[key]") if key else text
        text = text.replace(key, "[key]")
        return re.sub(rf"\S*{re.escape(key[-4:])}", "[key]", text)

    # -- the client ----------------------------------------------------------------------------
    def _credential(self) -> dict[str, Any]:
        if self._token_provider is not None:
            return {"azure_ad_token_provider": self._token}
        key = self._api_key or os.environ.get(KEY_VARIABLE)
        if not key:
            msg = (f"no Azure OpenAI credential: set {KEY_VARIABLE}, pass api_key=, or pass "
                   f"provider_options={{'azure_ad_token_provider': ...}} for Microsoft Entra ID")
            raise ConfigurationError(msg)
        return {"api_key": key}

    def _token(self) -> str:
        """The Entra token of this request; a provider that fails is a setting to fix."""
        assert self._token_provider is not None
        try:
            token = self._token_provider()
        except Exception as exc:  # noqa: BLE001 - whatever the credential library raises
            msg = f"provider_options={{'azure_ad_token_provider': ...}} failed: {type(exc).__name__}: {exc}"
            raise ConfigurationError(msg) from None
        if not isinstance(token, str) or not token:
            msg = "provider_options={'azure_ad_token_provider': ...} returned no token (it must return a non-empty string)"
            raise ConfigurationError(msg)
        return token

    def _sdk(self) -> Any:
        """The ``AzureOpenAI`` client, built once (named so that batch mode, which needs
        OpenAI's Batch API through ``client()``, does not take this provider for OpenAI)."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    import openai

                    self._client = openai.AzureOpenAI(
                        azure_endpoint=self.base_url, azure_deployment=self.model, api_version=self.api_version,
                        timeout=self.timeout, max_retries=0, **self._credential())
        return self._client

    def prepare(self) -> None:
        """Build the client ahead of the first request; a missing credential is raised by the
        request itself, not here."""
        try:
            self._sdk()
        except Exception:  # noqa: BLE001, S110 - the first request raises it with its message
            pass

    # -- one request ---------------------------------------------------------------------------
    def embed(self, texts: list[str]) -> BatchResult:
        import openai

        # the texts go in `extra_body`, as in openai.py: the client's per-text type check is slow
        kwargs: dict[str, Any] = {"input": [], "model": self.model, "extra_body": {"input": texts},
                                  "encoding_format": self.limits.encoding_format}
        if self._send_dimensions:
            kwargs["dimensions"] = self.dimensions
        try:
            raw = self._sdk().embeddings.with_raw_response.create(**kwargs)
        except openai.APIStatusError as exc:
            raise self._failure(exc) from None
        except openai.APIConnectionError as exc:  # timeouts included
            raise ProviderFailure(self.redact(f"{type(exc).__name__}: {exc}"), None) from None
        try:
            vectors, billed = parse_body(raw.content, len(texts), self.dimensions,
                                         len(texts) * self.limits.max_input_tokens)
        except MalformedResponse as exc:
            if self.price_model or "dimensions" not in str(exc):
                raise
            raise MalformedResponse(f"{exc} (dimensions= must be deployment {self.model!r}'s output size)") from None
        return BatchResult(vectors, billed, rate_headers(raw.headers))

    def _failure(self, exc: Any) -> Exception:
        """An error answer as the runner reads it; a deployment that takes fewer inputs than
        asked is a setting to fix, not an input to bisect."""
        body = exc.body if isinstance(exc.body, dict) else {}
        message = str(body.get("message") or exc.message or exc)
        code = body.get("code")
        if code and str(code) != str(exc.status_code):
            message = f"{message} ({code})"
        message = self.redact(message)
        fewer = re.search(r"max number of inputs is (\d+)", message)
        if exc.status_code == 400 and fewer:
            n = int(fewer.group(1))
            msg = (f"Azure deployment {self.model!r} takes at most {n} inputs per request; "
                   f"pass limits=Limits(max_inputs={n})")
            return ConfigurationError(msg)
        return ProviderFailure(message, exc.status_code, rate_headers(exc.response.headers))


def _endpoint(value: str | None) -> str:
    """The resource's endpoint as the SDK's ``azure_endpoint`` takes it."""
    if not value:
        msg = f"no Azure OpenAI endpoint: set {ENDPOINT_VARIABLE} or pass base_url= (https://<resource>.openai.azure.com)"
        raise ConfigurationError(msg)
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        msg = f"base_url {value!r} is not an http(s) URL; use e.g. https://<resource>.openai.azure.com"
        raise ConfigurationError(msg)
    if "/openai" in parts.path:
        msg = (f"base_url {value!r} must be the resource's endpoint, e.g. https://<resource>.openai.azure.com, "
               f"without /openai/...: the deployment is the model name, azure:<deployment>")
        raise ConfigurationError(msg)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}{parts.path.rstrip('/')}"


def _dimensions(model: str | None, dimensions: int | None) -> tuple[int, bool]:
    """The output size, known without a request, and whether it is sent (only to shorten a
    model that can be shortened: a deployment of unknown model is never told a size)."""
    if model is None:
        if dimensions is None:
            msg = ("an Azure deployment's name says nothing certain about its model: pass "
                   "provider_options={'model': ...} (e.g. 'text-embedding-3-small') or dimensions= with its output size")
            raise ConfigurationError(msg)
        return resolve_dimensions("", dimensions, custom_server=True), False
    if model not in MODEL_DIMENSIONS:
        if dimensions is None:
            msg = f"model {model!r} has no known output size; pass dimensions= with the deployment's output size"
            raise ConfigurationError(msg)
        return resolve_dimensions(model, dimensions, custom_server=True), False
    return resolve_dimensions(model, dimensions, custom_server=False), dimensions is not None and model in SHORTENABLE


def rate_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Azure's rate-limit headers in OpenAI's names and units: the request limit it states
    per 10-second window becomes per minute; remaining counts and ``retry-after`` pass."""
    out = {}
    for name in ("retry-after", "retry-after-ms", "x-ratelimit-remaining-requests",
                 "x-ratelimit-remaining-tokens", "x-ratelimit-limit-tokens"):
        value = headers.get(name)
        if value is not None:
            out[name] = str(value)
    window = headers.get("x-ratelimit-limit-requests")
    try:
        per_window = float(window) if window is not None else None
    except ValueError:
        per_window = None
    if per_window is not None and per_window > 0:
        out["x-ratelimit-limit-requests"] = str(int(per_window * WINDOWS_PER_MINUTE))
    return out


PROVIDER = AzureProvider
