"""Amazon Bedrock's embedding models, through the official ``boto3`` ``bedrock-runtime`` client.

One ``InvokeModel`` call per batch (``POST /model/{modelId}/invoke``, SigV4-signed by boto3), with
boto3's own retries off: tenacity in ``pipeline/runner.py`` owns them. The body is the model's own:

* Amazon Titan Text Embeddings (``amazon.titan-embed-text-v2:0``, ``amazon.titan-embed-text-v1``):
  ``{"inputText", "dimensions", "normalize"}``, ONE text per request; up to 8,192 tokens or
  50,000 characters per input; v2 answers 1,024 (default), 512 or 256 dimensions, v1 always
  1,536; the answer's ``inputTextTokenCount`` is the bill. No roles, no server-side truncation
  (a longer input is a 400), so the pipeline truncates, at 8,192 UTF-8 bytes (conservative:
  the tokenizer is not available offline).
* Cohere Embed v3 on Bedrock (``cohere.embed-english-v3``, ``cohere.embed-multilingual-v3``):
  ``{"texts", "input_type", "truncate", "embedding_types": ["float"]}``, at most 96 texts of
  at most 2,048 characters each; 1,024 dimensions; ``input_type`` is the role
  (document -> ``search_document``, query -> ``search_query``, ``classification``,
  ``clustering``). The model reads 512 tokens of a text: ``truncate="END"`` (the default here,
  ``provider_options={"truncate": ...}``) lets the server cut a longer one, so the pipeline only
  keeps each text under 2,048 UTF-8 bytes (hence 2,048 characters). The answer has no usage;
  the bill comes from the ``X-Amzn-Bedrock-Input-Token-Count`` response header, and where that
  is missing the UTF-8 bytes of the texts stand in as an upper bound (``usage_reported=False``).

Bedrock sends no rate-limit headers (embedding models are throttled by requests per minute,
answered with a 429 ``ThrottlingException``): pass ``rpm=`` to stay under your quota.

Credentials: the standard AWS chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/
``AWS_SESSION_TOKEN``, ``AWS_PROFILE`` or ``provider_options={"profile": ...}``, an instance role;
boto3 also reads a Bedrock API key from ``AWS_BEARER_TOKEN_BEDROCK``); the region from
``provider_options={"region": ...}``, ``AWS_REGION`` or ``AWS_DEFAULT_REGION``. ``api_key=`` is
refused: AWS signs requests with a key pair, not one key.

References (limits, shapes, errors, prices):
https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_InvokeModel.html
https://docs.aws.amazon.com/bedrock/latest/userguide/model-parameters-titan-embed-text.html
https://docs.aws.amazon.com/bedrock/latest/userguide/titan-embedding-models.html
https://docs.aws.amazon.com/bedrock/latest/userguide/model-parameters-embed-v3.html
https://docs.aws.amazon.com/bedrock/latest/userguide/troubleshooting-api-error-codes.html
https://aws.amazon.com/bedrock/pricing/
"""

from __future__ import annotations

import dataclasses
import json
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
class ModelSpec:
    """A model's body format, its output size, and the sizes it may be asked for."""

    kind: str  # "titan" or "cohere"
    dimensions: int
    choices: tuple[int, ...] = ()  # sent as "dimensions" (Titan v2); empty: fixed


MODELS: dict[str, ModelSpec] = {
    "amazon.titan-embed-text-v2:0": ModelSpec("titan", 1024, (256, 512, 1024)),
    "amazon.titan-embed-text-v1": ModelSpec("titan", 1536),
    "cohere.embed-english-v3": ModelSpec("cohere", 1024),
    "cohere.embed-multilingual-v3": ModelSpec("cohere", 1024),
}
#: Titan: one text per request, 8,192 tokens per text (counted here in UTF-8 bytes, >= tokens).
TITAN_LIMITS = Limits(max_inputs=1, max_request_tokens=8192, max_input_tokens=8192)
#: Cohere on Bedrock: 96 texts per request of 2,048 characters each (bytes here, >= characters).
COHERE_LIMITS = Limits(max_inputs=96, max_request_tokens=96 * 2048, max_input_tokens=2048)
#: With the server told not to cut: what the model reads, 512 tokens, held as 512 UTF-8 bytes.
COHERE_EXACT_LIMITS = Limits(max_inputs=96, max_request_tokens=96 * 512, max_input_tokens=512)
COHERE_ROLES = {"document": "search_document", "query": "search_query",
                "classification": "classification", "clustering": "clustering"}
TRUNCATE_MODES = ("END", "START", "NONE")
#: Error codes worth another try besides 429 and 5xx (a model warming up or slow).
RETRYABLE_CODES = ("ModelNotReadyException", "ModelTimeoutException", "ThrottlingException")
_PROFILE_OR_ARN = re.compile(r"^(?:arn:aws[^/]*/)?(?:[a-z-]{2,8}\.)?((?:amazon|cohere)\..+)$")
_DEFAULT_HOST = re.compile(r"^bedrock-runtime(-fips)?\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$")


def base_model_id(model: str) -> str:
    """The foundation model behind an id, an inference profile ("us.cohere...") or an ARN."""
    m = _PROFILE_OR_ARN.match(model)
    return m.group(1) if m else model


def model_spec(model: str, dimensions: int | None) -> tuple[str, ModelSpec]:
    """The base model id (prices are by it) and its spec at the asked ``dimensions``."""
    if dimensions is not None and (not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1):
        msg = f"dimensions must be a positive integer, got {dimensions!r}"
        raise ConfigurationError(msg)
    base = base_model_id(model)
    spec = MODELS.get(base)
    if spec is None:
        kind = "cohere" if "cohere.embed" in base else "titan" if "amazon.titan-embed-text" in base else ""
        if not kind:
            msg = f"unknown Bedrock embedding model {model!r} (known: {', '.join(MODELS)})"
            raise ConfigurationError(msg)
        if dimensions is None:
            msg = f"Bedrock model {model!r} has no known output size; pass dimensions= with it"
            raise ConfigurationError(msg)
        return base, ModelSpec(kind, dimensions)
    if dimensions is not None and dimensions != spec.dimensions and dimensions not in spec.choices:
        sizes = ", ".join(map(str, spec.choices or (spec.dimensions,)))
        msg = f"Bedrock model {model!r} returns {sizes} dimensions, got dimensions={dimensions}"
        raise ConfigurationError(msg)
    return base, spec


class BedrockProvider:
    """Titan Text Embeddings and Cohere Embed v3 on Amazon Bedrock (``bedrock:<model id>``)."""

    name = "bedrock"
    waits_on_network = True

    def __init__(self, model: str, *, dimensions: int | None = None, base_url: str | None = None,
                 api_key: str | None = None, timeout: float = 60.0, limits: Limits | None = None,
                 input_type: str = "document", region: str | None = None, profile: str | None = None,
                 normalize: bool | None = None, truncate: str | None = None) -> None:
        if api_key is not None:
            msg = ("api_key= is not an AWS credential; Bedrock signs requests with the AWS credential chain "
                   "(AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or a Bedrock API key in "
                   "AWS_BEARER_TOKEN_BEDROCK), so leave api_key= out")
            raise ConfigurationError(msg)
        self.model = model
        self.price_model, spec = model_spec(model, dimensions)
        self.kind = spec.kind
        self.dimensions = dimensions or spec.dimensions
        self._send_dimensions = bool(spec.choices)
        self.input_type = input_type
        self.role = resolve_role(input_type, COHERE_ROLES if self.kind == "cohere" else {}, f"Bedrock model {model}")
        if base_url is not None and not base_url.startswith(("http://", "https://")):
            msg = (f"base_url {base_url!r} is not an http(s) URL; "
                   "use e.g. https://bedrock-runtime.us-east-1.amazonaws.com")
            raise ConfigurationError(msg)
        self.base_url = base_url
        self.region_option, self.profile = region, profile
        self.normalize, self.truncate = self._options(spec, normalize, truncate)
        self._asked_truncate, self._limits_given = truncate, limits is not None
        self.timeout = timeout
        self.limits = limits or (TITAN_LIMITS if self.kind == "titan" else COHERE_LIMITS)
        if self.kind == "titan" and self.limits.max_inputs != 1:
            msg = f"Titan model {model!r} embeds one text per request; use limits=Limits(max_inputs=1, ...)"
            raise ConfigurationError(msg)
        self._client: Any = None
        self._secrets: tuple[str, ...] = ()
        self._lock = threading.Lock()

    def _options(self, spec: ModelSpec, normalize: bool | None, truncate: str | None) -> tuple[bool | None, str | None]:
        """``normalize`` is Titan v2's (default true), ``truncate`` Cohere's (default "END")."""
        if normalize is not None and not (spec.kind == "titan" and spec.choices):
            msg = "provider_options={'normalize': ...} is a setting of Titan Text Embeddings V2 only"
            raise ConfigurationError(msg)
        if normalize is not None and not isinstance(normalize, bool):
            msg = f"provider_options={{'normalize': ...}} must be True or False, got {normalize!r}"
            raise ConfigurationError(msg)
        if truncate is not None and spec.kind != "cohere":
            msg = "provider_options={'truncate': ...} is a setting of Cohere models on Bedrock; Titan has none"
            raise ConfigurationError(msg)
        if truncate is not None and truncate not in TRUNCATE_MODES:
            msg = f"provider_options={{'truncate': ...}} must be one of {', '.join(TRUNCATE_MODES)}, got {truncate!r}"
            raise ConfigurationError(msg)
        if spec.kind == "cohere":
            return None, truncate or "END"
        return (True if normalize is None else normalize) if spec.choices else None, None

    def use_policy(self, policy: str) -> None:
        """A Cohere model cuts at its 512 tokens for "truncate" (``END``). "chunk" and "error"
        need the exact cut: the server is told not to cut (``NONE``) and the pipeline keeps each
        text within 512 UTF-8 bytes, which are at most 512 tokens (the tokenizer is not
        available offline). ``provider_options={"truncate": ...}`` or ``limits=`` override it."""
        if self.kind != "cohere" or self._asked_truncate is not None:
            return
        self.truncate = "END" if policy == "truncate" else "NONE"
        if not self._limits_given:
            self.limits = COHERE_LIMITS if policy == "truncate" else COHERE_EXACT_LIMITS

    # -- where, and who -------------------------------------------------------------------
    def region(self) -> str | None:
        """``provider_options={"region": ...}``, else ``AWS_REGION``, else ``AWS_DEFAULT_REGION``."""
        return self.region_option or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None

    @property
    def endpoint(self) -> str:
        """Where requests go, as it may be printed (no credentials)."""
        if self.base_url is None:
            return f"https://bedrock-runtime.{self.region() or '<region>'}.amazonaws.com"
        parts = urlsplit(self.base_url)
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path.rstrip('/')}"

    @property
    def cache_namespace(self) -> str:
        """Empty for AWS's own endpoints in every region: a model id names one versioned model,
        whose vectors are the same wherever it is served (sharing entries across regions). Any
        other ``base_url`` (a proxy, a gateway) is a namespace of its own."""
        if self.base_url is None or _DEFAULT_HOST.match((urlsplit(self.base_url).hostname or "").lower()):
            return ""
        return self.endpoint.lower()

    def identity(self, policy: str) -> VectorIdentity:
        """The model at its size and role, with the body settings that change vectors."""
        if self.kind == "titan":
            params = (("normalize", str(self.normalize).lower()),) if self.normalize is not None else ()
            return identity_of(self, policy, default_limit=TITAN_LIMITS.max_input_tokens,
                               namespace=self.cache_namespace, params=params)
        if self.truncate != "NONE" and policy != "truncate":
            msg = (f"on_long_input={policy!r} needs texts cut exactly, but provider_options={{'truncate': "
                   f"{self.truncate!r}}} has Bedrock cut long texts itself; drop it")
            raise ConfigurationError(msg)
        # Texts within the 512 tokens the model reads (512 bytes) are cut by no one and share one
        # key; a longer one's key names who cut it (the server: END or START; or the pipeline).
        identity = identity_of(self, policy, default_limit=COHERE_EXACT_LIMITS.max_input_tokens,
                               namespace=self.cache_namespace, role=self.role)
        return dataclasses.replace(identity, long_input=f"{identity.long_input}:{self.truncate}")

    def __repr__(self) -> str:  # never shows a credential
        return f"BedrockProvider(model={self.model!r}, dimensions={self.dimensions}, endpoint={self.endpoint!r})"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_client"] = None
        state["_secrets"] = ()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def tokenizer(self) -> Tokenizer:
        return Utf8BytesTokenizer()

    def client(self) -> Any:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._make_client()
        return self._client

    def _make_client(self) -> Any:
        """A boto3 client with retries off; a missing region or credential is one sentence."""
        import boto3
        import botocore.config
        import botocore.exceptions

        try:
            session = boto3.Session(profile_name=self.profile, region_name=self.region())
        except botocore.exceptions.ProfileNotFound as exc:
            name = self.profile or os.environ.get("AWS_PROFILE")
            msg = (f"AWS profile {name!r} is not configured ({exc}); "
                   "fix AWS_PROFILE or provider_options={'profile': ...}")
            raise ConfigurationError(msg) from None
        region = session.region_name
        if not region:
            msg = "no AWS region: set AWS_REGION (or AWS_DEFAULT_REGION) or pass provider_options={'region': ...}"
            raise ConfigurationError(msg)
        credentials = session.get_credentials()
        if credentials is None and not os.environ.get("AWS_BEARER_TOKEN_BEDROCK"):
            msg = ("no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, "
                   "or a Bedrock API key in AWS_BEARER_TOKEN_BEDROCK)")
            raise ConfigurationError(msg)
        if credentials is not None:
            frozen = credentials.get_frozen_credentials()
            self._secrets = tuple(s for s in (frozen.secret_key, frozen.token) if s)
        config = botocore.config.Config(retries={"total_max_attempts": 1, "mode": "standard"},
                                         read_timeout=self.timeout, connect_timeout=min(self.timeout, 10.0),
                                         max_pool_connections=64)
        return session.client("bedrock-runtime", region_name=region, endpoint_url=self.base_url, config=config)

    def redact(self, text: str) -> str:
        """``text`` without any secret this provider knows (a secret key, a session token, an API key)."""
        for secret in (*self._secrets, *(os.environ.get(v, "") for v in (
                "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_BEARER_TOKEN_BEDROCK"))):
            if len(secret) >= 4:
                text = text.replace(secret, "[secret]")
        return text

    def prepare(self) -> None:
        """Build the client ahead of the first request; a missing setting is raised by the request."""
        try:
            self.client()
        except Exception:  # noqa: BLE001, S110 - the first request raises it with its message
            pass

    # -- one request ----------------------------------------------------------------------
    def body(self, texts: list[str]) -> dict[str, Any]:
        """The model's request body for ``texts`` (one text for Titan)."""
        if self.kind == "cohere":
            return {"texts": texts, "input_type": self.role, "truncate": self.truncate, "embedding_types": ["float"]}
        if len(texts) != 1:
            raise ConfigurationError(f"Titan model {self.model!r} embeds one text per request, got {len(texts)}")
        body: dict[str, Any] = {"inputText": texts[0]}
        if self._send_dimensions:
            body["dimensions"] = self.dimensions
        if self.normalize is not None:
            body["normalize"] = self.normalize
        return body

    def embed(self, texts: list[str]) -> BatchResult:
        content, headers = self.invoke(self.body(texts))
        vectors, tokens = parse_answer(content, self.kind, len(texts), self.dimensions)
        if tokens is None:
            tokens = header_tokens(headers)
        limit = len(texts) * max(self.limits.max_input_tokens, TITAN_LIMITS.max_input_tokens)
        if tokens is not None and not 0 <= tokens <= limit:
            raise MalformedResponse(f"response bills {tokens} tokens for {len(texts)} inputs, which cannot be")
        out = {k: v for k, v in headers.items() if k == "retry-after"}
        if tokens is None:  # no usage at all: the bytes are an upper bound of any tokenizer's count
            bound = sum(len(t.encode("utf-8", "surrogatepass")) for t in texts)
            return BatchResult(vectors, bound, out, usage_reported=False)
        return BatchResult(vectors, tokens, out)

    def invoke(self, body: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
        """One InvokeModel call: the answer's bytes and headers; every failure translated."""
        import botocore.exceptions
        import urllib3.exceptions

        try:
            answer = self.client().invoke_model(modelId=self.model, body=json.dumps(body),
                                                contentType="application/json", accept="application/json")
            content = answer["body"].read()
        except botocore.exceptions.ClientError as exc:
            raise self.failure(exc.response) from None
        except (botocore.exceptions.NoCredentialsError, botocore.exceptions.NoRegionError,
                botocore.exceptions.ParamValidationError) as exc:
            raise ConfigurationError(self.redact(f"Bedrock request for model {self.model!r} not sent: {exc}")) from None
        except (botocore.exceptions.BotoCoreError, urllib3.exceptions.HTTPError, OSError) as exc:
            message = self.redact(f"request to {self.endpoint} failed: {type(exc).__name__}: {exc}")
            raise ProviderFailure(message, None) from None
        headers = {k.lower(): str(v) for k, v in answer.get("ResponseMetadata", {}).get("HTTPHeaders", {}).items()}
        return content, headers

    def failure(self, response: dict[str, Any]) -> ProviderFailure:
        """An error answer as the runner reads it: Bedrock's code and message, and its status."""
        error = response.get("Error", {})
        meta = response.get("ResponseMetadata", {})
        status = int(meta.get("HTTPStatusCode") or 0) or None
        code = error.get("Code") or "error"
        message = self.redact(f"{code}: {error.get('Message') or response.get('message') or 'no message'}")
        headers = {k.lower(): v for k, v in (meta.get("HTTPHeaders") or {}).items() if k.lower() == "retry-after"}
        retryable = status is None or status == 429 or status >= 500 or code in RETRYABLE_CODES
        return ProviderFailure(message, status, headers, retryable=retryable)


def header_tokens(headers: dict[str, str]) -> int | None:
    """The ``X-Amzn-Bedrock-Input-Token-Count`` response header, if the answer carries one."""
    value = headers.get("x-amzn-bedrock-input-token-count")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError as exc:
        raise MalformedResponse(f"response header says {value!r} input tokens") from exc


def parse_answer(content: bytes, kind: str, n: int, dim: int) -> tuple[np.ndarray, int | None]:
    """An ``(n, dim)`` float32 array and the tokens the body reports (Titan's, else None)."""
    try:
        body = json.loads(content)
        if kind == "titan":
            rows = [body.get("embedding") or body["embeddingsByType"]["float"]]
            count = body.get("inputTextTokenCount")
            tokens = None if count is None else int(count)
            if tokens is not None and tokens != count:
                raise ValueError(f"inputTextTokenCount {count!r}")
        else:
            rows = body["embeddings"]
            rows = rows["float"] if isinstance(rows, dict) else rows
            tokens = None
        vectors = np.asarray(rows, dtype=np.float32)
    except (ValueError, KeyError, TypeError, OverflowError, AttributeError) as exc:
        raise MalformedResponse(f"response body is not an embeddings result ({exc})") from exc
    if vectors.shape != (n, dim):
        raise MalformedResponse(f"response has vectors of shape {vectors.shape}, expected ({n}, {dim})")
    bad = ~np.isfinite(vectors).all(axis=1) | ~vectors.any(axis=1)
    if bad.any():
        raise MalformedResponse(f"response vector {int(np.argmax(bad))} is not finite or is all zeros")
    return vectors, tokens


PROVIDER = BedrockProvider
