"""Which provider answers a request's ``model``, and the embedder the proxy makes for it.

A model with a provider prefix (``cohere:embed-v4.0``, ``voyage:voyage-3.5``, any of
``providers.FAMILIES``) goes to that provider, with its limits, roles and prices, its key
from its usual environment variable and its address from ``--provider-url``. Any other name
is the upstream's (OpenAI, or the OpenAI-compatible server at ``--upstream-base-url``).

A name the proxy cannot size is looked up in the upstream's ``GET /v1/models`` (kept a
minute): absent there, it is OpenAI's 404 ``model_not_found``; listed, its size is asked
once with a two-token request and remembered.

https://platform.openai.com/docs/api-reference/models/list
"""

from __future__ import annotations

import copy
import json
import threading
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError
from ..pipeline.runner import status_of
from ..providers import FAMILIES, MODEL_DIMENSIONS, Limits, OpenAIProvider, make_provider
from ..providers.openai import resolve_dimensions
from .wire import OpenAIError, bad_request

if TYPE_CHECKING:
    from ..providers.base import BatchResult, Provider

#: OpenAI's limit on one input: 8,192 tokens (the library keeps 8,191, safe under both
#: readings of the old documentation; the proxy answers as the API does).
OPENAI_INPUT_TOKENS = 8192
#: Seconds the upstream's model list is kept.
MODELS_SECONDS = 60.0
#: OpenAI's models whose size may be given as ``dimensions``; their own size is no parameter.
SHORTENABLE = ("text-embedding-3-small", "text-embedding-3-large")
#: Families whose vectors are the same for every role (the rest learn it from their first identity).
ROLE_BLIND = ("", "azure", "ollama")


def not_found(model: str) -> OpenAIError:
    return OpenAIError(404, f"The model `{model}` does not exist or you do not have access to it.",
                       code="model_not_found")


def family_of(model: str) -> str:
    """The provider family a model name routes to ("" for the upstream's)."""
    family, sep, _ = model.partition(":")
    return family if sep and family in FAMILIES else ""


def normal_dimensions(model: str, dimensions: int | None, native: int | None = None) -> int | None:
    """``dimensions`` as the slot knows it: a model's own size asked explicitly is the same
    request as no ``dimensions`` (one embedder, one in-flight set, one cache entry).
    ``native``: the size the upstream told for a model not in OpenAI's table."""
    if dimensions is not None and (dimensions == native or (model in SHORTENABLE and dimensions == MODEL_DIMENSIONS[model])):
        return None
    return dimensions


class Upstream:
    """The OpenAI-compatible upstream: its address, key, model list and the sizes it told."""

    def __init__(self, base_url: str | None, api_key: str | None, timeout: float, sizes: dict[str, int]) -> None:
        self.base_url, self.api_key, self.timeout = base_url, api_key, timeout
        self.sizes = dict(sizes)  # model -> native size: --model-dimensions, then what probes found
        self._listed: tuple[float, set[str]] | None = None
        self._lock = threading.Lock()

    def models(self) -> tuple[int, bytes]:
        """``GET /v1/models`` of the upstream with the proxy's key: (status, body)."""
        base = (self.base_url or "https://api.openai.com/v1").rstrip("/")
        request = urllib.request.Request(f"{base}/models", headers={"Authorization": f"Bearer {self.api_key or ''}"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as r:
                status, text = r.status, r.read()
        except urllib.error.HTTPError as exc:
            status, text = exc.code, exc.read()
        except (OSError, ValueError) as exc:
            raise OpenAIError(502, f"the upstream cannot be reached ({type(exc).__name__})", kind="upstream_error") from None
        if status in (401, 403):
            raise OpenAIError(502, "the upstream refused the proxy's credentials", kind="upstream_error")
        if self.api_key:
            text = text.replace(self.api_key.encode(), b"[upstream key]")
        return status, text

    def lists(self, model: str) -> bool | None:
        """Whether the upstream's model list names ``model`` (None: it gave no list)."""
        with self._lock:
            listed = self._listed
            if listed is None or time.monotonic() - listed[0] > MODELS_SECONDS:
                status, body = self.models()  # a 502 when the upstream cannot be reached
                try:
                    names = {m["id"] for m in json.loads(body)["data"]} if status == 200 else None
                except (ValueError, KeyError, TypeError):
                    names = None
                if names is None:
                    return None
                listed = self._listed = (time.monotonic(), names)
        return model in listed[1]

    def provider(self, model: str, dimensions: int | None, timeout: float) -> OpenAIProvider:
        """The provider of an upstream model at ``dimensions`` (None: its own size)."""
        native = MODEL_DIMENSIONS.get(model, self.sizes.get(model))
        find = False
        if dimensions is None and native is None:
            listed = self.lists(model)
            if listed is False:
                raise not_found(model)
            find = listed is True  # asked once, then remembered
        try:
            if dimensions is not None and model in MODEL_DIMENSIONS:  # OpenAI's own names: its table says
                resolve_dimensions(model, dimensions, custom_server=False)
            provider = OpenAIProvider(model, dimensions=dimensions if dimensions is not None else native,
                                      base_url=self.base_url, api_key=self.api_key, timeout=timeout,
                                      limits=Limits(max_input_tokens=OPENAI_INPUT_TOKENS),
                                      send_dimensions=dimensions is not None, find_dimensions=find)
        except ConfigurationError as exc:
            message = str(exc).replace("pass dimensions= with it", "send dimensions, or start the proxy "
                                       "with --model-dimensions MODEL=N")
            raise OpenAIError(400, message) from None  # the request as a whole: no param, as OpenAI says
        if dimensions is None and native is None:
            self.sizes[model] = provider.dimensions
        return provider


def make_routed(model: str, dimensions: int | None, role: str, *, upstream: Upstream, timeout: float,
                urls: dict[str, str], options: dict[str, dict[str, Any]]) -> Provider:
    """The provider for a request's model (see the module's note)."""
    if model.startswith("local:"):
        raise bad_request("the proxy serves the upstream's and the providers' models, not local ones", "model")
    family = family_of(model)
    if not family:
        return upstream.provider(model, dimensions, timeout)
    try:
        return make_provider(model, dimensions=dimensions, base_url=urls.get(family), timeout=timeout,
                             input_type=role, options=options.get(family))
    except ConfigurationError as exc:
        raise OpenAIError(400, str(exc)) from None


class Timed:
    """The upstream provider, with each request's latency and 429s counted in the metrics."""

    def __init__(self, inner: Provider, metrics: Any) -> None:
        self._inner, self._metrics = inner, metrics

    def __getattr__(self, name: str) -> Any:
        if name == "_inner":  # a copy being built has no inner provider yet
            raise AttributeError(name)
        return getattr(self._inner, name)

    def __copy__(self) -> Timed:  # an Embedder copies its provider: copy the one inside too
        return Timed(copy.copy(self._inner), self._metrics)

    def embed(self, texts: list[str]) -> BatchResult:
        started = time.perf_counter()
        try:
            result = self._inner.embed(texts)
            self._metrics.upstream_tokens.inc(result.billed_tokens)
            return result
        except Exception as exc:
            if status_of(exc) == 429:
                self._metrics.upstream_429.inc()
            raise
        finally:
            self._metrics.upstream_seconds.observe(time.perf_counter() - started)
