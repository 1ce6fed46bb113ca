"""What makes a vector: ``VectorIdentity``, and the cache key derived from it (and only from it).

A cached vector may be served for a text only if everything that made it is the same. The
identity names all of it: the provider family, the endpoint namespace, the model (or
deployment), the output dimensions, the role the provider was told (query or document), the
long-input policy with its limit, a text prefix the model needs, and any other parameter of
the provider that changes a vector (an output data type, a truncation mode). Each provider
builds its own (``provider.identity(policy)``) and leaves out what does not change its
vectors -- the role for OpenAI, the wire encoding, the API key, timeouts -- so that entries
are still shared.

Content key (``KEY_VERSION`` 1)::

    sha256( VERSION NUL family NUL model NUL dimensions NUL utf-8 text )

``family`` is ``provider`` or ``provider@namespace``; ``VERSION`` is ``polars-embed/1``, followed,
when the identity has more than these fields, by the rest as one JSON object (``role``,
``prefix``, ``params``, and ``long_input`` for a text that may be over the input limit). So the
identity of today's OpenAI and local models (no role, no prefix, truncation at the model's
limit) encodes exactly as keys always have, and existing caches stay valid. No field may hold
a NUL and JSON escapes one, so the text starts after the fourth NUL and two identities that
differ in any field give different bytes, hence different keys.

The long-input policy changes only the vectors of texts over the input limit, and a text of
fewer UTF-8 bytes than the limit in tokens cannot be over it (every token of every tokenizer
here covers at least one byte; two are spared for a tokenizer's own marks). Such texts keep
one key whatever the policy, so asking for ``chunk`` pays only for the long texts again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .errors import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Sequence

KEY_VERSION = 1
#: Bytes spared below the input limit before a text counts as possibly long (see above).
LONG_MARGIN = 2


@dataclass(frozen=True)
class VectorIdentity:
    """Everything that changes a vector; two equal identities give the same vector for a text.

    ``long_input`` is ``""`` for the provider's default (truncation at its documented limit,
    the only policy before keys knew of policies), else ``"<policy>:<limit>"``. ``params``
    are other provider parameters that change vectors, as sorted ``(name, value)`` pairs.
    """

    provider: str
    model: str
    dimensions: int
    namespace: str = ""
    role: str = ""
    long_input: str = ""
    input_limit: int = 0  # tokens per input; a text under it in bytes is never cut
    prefix: str = ""
    params: tuple[tuple[str, str], ...] = field(default=())

    def __post_init__(self) -> None:
        for name in ("provider", "model", "namespace", "role", "long_input", "prefix"):
            value = getattr(self, name)
            if not isinstance(value, str) or "\0" in value:
                msg = f"{name} {value!r} cannot be part of a cache key (it must be text without NUL)"
                raise ConfigurationError(msg)
        if "@" in self.provider or not self.provider:
            msg = f"provider family {self.provider!r} must be a non-empty name without '@'"
            raise ConfigurationError(msg)
        object.__setattr__(self, "params", tuple(sorted((str(k), str(v)) for k, v in self.params)))

    @property
    def family(self) -> str:
        return f"{self.provider}@{self.namespace}" if self.namespace else self.provider

    def header(self, *, long: bool) -> bytes:
        """The key's bytes before the text; ``long``: for a text that may be over the limit."""
        extra: dict[str, object] = {}
        if self.role:
            extra["role"] = self.role
        if self.prefix:
            extra["prefix"] = self.prefix
        if self.params:
            extra["params"] = [list(p) for p in self.params]
        if long and self.long_input:
            extra["long_input"] = self.long_input
        version = f"polars-embed/{KEY_VERSION}"
        if extra:
            version += json.dumps(extra, sort_keys=True, separators=(",", ":"))
        return f"{version}\0{self.family}\0{self.model}\0{self.dimensions}\0".encode()

    def fingerprint(self) -> str:
        """A short stable name of this identity (batch manifests file jobs under it)."""
        return hashlib.sha256(self.header(long=True)).hexdigest()[:16]

    def describe(self) -> str:
        """One line for people: ``provider:model:dimensions`` and what else is set."""
        parts = [f"{self.provider}:{self.model}:{self.dimensions}"]
        parts += [f"{name}={getattr(self, name)}" for name in ("namespace", "role", "long_input", "prefix")
                  if getattr(self, name)]
        parts += [f"{k}={v}" for k, v in self.params]
        return " ".join(parts)


def long_input(policy: str, limit: int, default_limit: int) -> str:
    """The ``long_input`` field of an identity: empty for truncation at the provider's own limit."""
    return "" if policy == "truncate" and limit == default_limit else f"{policy}:{limit}"


def content_keys(texts: Sequence[str], identity: VectorIdentity) -> list[bytes]:
    """The cache key of each text under ``identity`` (the only place keys are made)."""
    short = hashlib.sha256(identity.header(long=False))
    long = hashlib.sha256(identity.header(long=True)) if identity.long_input else short
    limit = identity.input_limit - LONG_MARGIN
    keys = []
    for text in texts:
        data = text.encode("utf-8", "surrogatepass")
        h = (short if len(data) <= limit or long is short else long).copy()
        h.update(data)
        keys.append(h.digest())
    return keys
