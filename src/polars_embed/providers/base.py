"""What a provider is: one method that embeds one batch, plus the limits it declares.

Retries, threads, rate limits and caching live outside providers (``pipeline/runner.py``,
``embedder.py``), so an adapter stays a few dozen lines.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from ..errors import ConfigurationError
from ..identity import VectorIdentity, long_input

if TYPE_CHECKING:
    from collections.abc import Mapping

    import numpy as np

    from ..pipeline.tokens import Tokenizer

#: The roles every provider accepts (``input_type=``); a provider may add its own.
ROLES = ("document", "query")


@dataclass(frozen=True)
class Limits:
    """Per-request limits of a provider (OpenAI's numbers by default).

    Override them for an OpenAI-compatible server with other limits, e.g.
    ``Limits(max_inputs=10)`` or ``Limits(encoding_format="float")``.
    """

    max_inputs: int = 2048
    max_request_tokens: int = 300_000
    max_input_tokens: int = 8191  # OpenAI's documented limit (its errors say 8,192: 8,191 is safe under both)
    encoding_format: Literal["base64", "float"] = "base64"

    def __post_init__(self) -> None:
        from ..validate import check_number

        for name in ("max_inputs", "max_request_tokens", "max_input_tokens"):
            check_number(f"Limits.{name}", getattr(self, name), at_least=1)
        if self.encoding_format not in ("base64", "float"):
            msg = f"Limits.encoding_format must be 'base64' or 'float', got {self.encoding_format!r}"
            raise ConfigurationError(msg)


@dataclass
class BatchResult:
    """Vectors in input order, the tokens the provider billed, and rate-limit headers."""

    vectors: np.ndarray  # (n, dim) float32
    billed_tokens: int
    headers: dict[str, str] = field(default_factory=dict)
    # False when the answer said nothing of tokens and ``billed_tokens`` is the provider's
    # upper bound of them (the cost is then an estimate, never below the bill)
    usage_reported: bool = True


class ProviderFailure(Exception):
    """A provider SDK's error, as the runner reads every failure: ``status_code`` (None for a
    connection that failed, which ``retryable`` says is worth another try), the server's
    message in ``body``, its headers (``retry-after``) on ``response``."""

    def __init__(self, message: str, status_code: int | None = None, headers: Mapping[str, str] | None = None,
                 *, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.body = {"error": {"message": message}}
        self.response = _Response({k.lower(): str(v) for k, v in (headers or {}).items()})
        self.retryable = status_code is None or status_code == 429 or status_code >= 500 if retryable is None else retryable


@dataclass
class _Response:
    headers: dict[str, str]


class Provider(Protocol):
    name: str  # provider family, part of the cache key ("openai", "local", "voyage", ...)
    # True when a request mostly waits (on a server): then many run at once, and requests
    # leave while the rest is still tokenized. False for a model on this machine's cores.
    waits_on_network: bool
    model: str
    dimensions: int
    limits: Limits

    def tokenizer(self) -> Tokenizer: ...

    def embed(self, texts: list[str]) -> BatchResult: ...

    def identity(self, policy: str) -> VectorIdentity: ...

    # Optional: ``prepare()`` opens what the first request needs (a client); a run calls it
    # on its pool while it tokenizes, and a request waits for it before it takes its turn of
    # the quota (an SDK that takes a second to import would otherwise hold turns it cannot use).
    # Optional: ``use_policy(on_long_input)``, called once by the embedder before ``identity``: a
    # provider that can truncate server-side (Voyage, Cohere) does so for "truncate" and
    # leaves the exact cut to the pipeline for "chunk" and "error".
    # Optional: ``stops_between_batches = True`` for a model on this machine whose ``embed``
    # takes ``stop=`` (a ``threading.Event``) and ends soon after it is set (raising
    # ``pipeline.runner.Stopped``), so a stopped run does not wait for whole requests.


def resolve_role(input_type: str, roles: Mapping[str, str], where: str) -> str:
    """What a provider is told for ``input_type``: its own word from ``roles`` (our role, or
    already the provider's spelling), or ``""`` where it has no roles at all (then only
    "document" and "query" are accepted, and change nothing)."""
    if not isinstance(input_type, str):
        msg = f"input_type must be a string such as 'document' or 'query', got {input_type!r}"
        raise ConfigurationError(msg)
    if not roles:
        if input_type in ROLES:
            return ""
        msg = f"input_type={input_type!r} is not a role {where} has; it has none, so 'document' and 'query' are accepted and change nothing"
        raise ConfigurationError(msg)
    if input_type in roles:
        return roles[input_type]
    if input_type in roles.values():
        return input_type
    msg = f"input_type={input_type!r} is not a role {where} has; use one of {', '.join(map(repr, roles))}"
    raise ConfigurationError(msg)


def identity_of(provider: Any, policy: str, *, default_limit: int, namespace: str = "", role: str = "",
                prefix: str = "", params: tuple[tuple[str, str], ...] = ()) -> VectorIdentity:
    """A provider's identity: the fields every provider has, plus what it names itself.

    ``default_limit`` is the provider's documented tokens per input: truncation there (or
    ``"error"``, whose vectors are the same) is the identity's default long-input policy."""
    limit = provider.limits.max_input_tokens
    # Texts under both limits are cut by neither policy: only they share the default's key, which
    # holds a text over the default limit cut there
    return VectorIdentity(provider.name, provider.model, provider.dimensions, namespace=namespace, role=role,
                          long_input=long_input("chunk" if policy == "chunk" else "truncate", limit, default_limit),
                          input_limit=min(limit, default_limit), prefix=prefix, params=params)


def identity_for(provider: Any, policy: str, namespace: str | None = None) -> VectorIdentity:
    """``provider.identity(policy)``, with the namespace ``cache_namespace=`` gives, if any.
    A provider object written before identities gets the fields every provider has."""
    import dataclasses

    make = getattr(provider, "identity", None)
    if make is not None:
        identity = make(policy)
    else:
        identity = identity_of(provider, policy, default_limit=provider.limits.max_input_tokens,
                               namespace=getattr(provider, "cache_namespace", ""))
    return identity if namespace is None else dataclasses.replace(identity, namespace=namespace)
