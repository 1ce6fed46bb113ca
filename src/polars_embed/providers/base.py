"""What a provider is: one method that embeds one batch, plus the limits it declares.

Retries, threads, rate limits and caching live outside providers (``pipeline/runner.py``,
``embedder.py``), so an adapter stays a few dozen lines.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

from ..errors import ConfigurationError

if TYPE_CHECKING:
    import numpy as np

    from ..pipeline.tokens import Tokenizer


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


class Provider(Protocol):
    name: str  # provider family, part of the cache key ("openai", "local")
    # True when a request mostly waits (on a server): then many run at once, and requests
    # leave while the rest is still tokenized. False for a model on this machine's cores.
    waits_on_network: bool
    model: str
    dimensions: int
    limits: Limits

    def tokenizer(self) -> Tokenizer: ...

    def embed(self, texts: list[str]) -> BatchResult: ...

    # Optional: ``prepare()`` opens what the first request needs (a client); a run calls it
    # on its pool while it tokenizes, so the first request does not wait for it.
    # Optional: ``stops_between_batches = True`` for a model on this machine whose ``embed``
    # takes ``stop=`` (a ``threading.Event``) and ends soon after it is set (raising
    # ``pipeline.runner.Stopped``), so a stopped run does not wait for whole requests.
