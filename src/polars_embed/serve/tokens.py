"""Token arrays that are not the encoding of a text, embedded as token arrays.

OpenAI's ``input`` may be any arrays of integers, and clients send them: LangChain cuts long
documents into 8,191-token pieces, often inside a multi-byte character, and sends a blank
document as ``[220]``. A token array that is exactly tiktoken's encoding of a text is that
text (the upstream sees the same tokens either way) and shares the text's cache entry. Any
other array goes upstream as it came, through the same ``Embedder`` machinery (packing by
its length in tokens, the limiter, in-flight dedupe, retries, cost), with this provider:

* a "text" here is the array written as decimal ids separated by spaces, and the tokenizer
  reads it back, so the count is the array's length, which is what the upstream bills;
* its identity is the upstream's with the parameter ``input=token ids``, so its keys are
  a key space of their own: a token array can never be served a text's vector, nor a text
  an array's, whatever the two strings hold.

https://platform.openai.com/docs/api-reference/embeddings/create (``input``)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence as SequenceABC
from typing import TYPE_CHECKING, Any

from ..providers.openai import MODEL_DIMENSIONS
from .wire import bad_request

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ..embedder import Embedder
    from ..identity import VectorIdentity
    from ..providers.base import BatchResult, Provider


def ids_text(ids: Sequence[int]) -> str:
    """A token array as the "text" this provider reads back."""
    return " ".join(map(str, ids))


class Ids(SequenceABC[int]):
    """A token array held as its text: the pipeline asks an encoding for its length (what a
    request is packed and billed by) and, for an array over the limit, a slice. Its length
    is counted, not parsed, so a request of millions of ids holds no Python int per id."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __len__(self) -> int:
        return self.text.count(" ") + 1

    def __getitem__(self, index: Any) -> Any:
        return [int(t) for t in self.text.split()][index]


class IdsTokenizer:
    """Token ids written as text, read back: the count of an array is its length."""

    def encode_batch(self, texts: Sequence[str]) -> list[Ids]:  # type: ignore[override]
        return [Ids(text) for text in texts]

    def decode(self, ids: Sequence[int]) -> str:  # a truncated or chunked array, as text again
        return ids_text(ids)


class TokenArrays:
    """The upstream provider, sent token arrays instead of texts (see the module's note)."""

    def __init__(self, inner: Provider) -> None:
        self.inner = inner
        self.name, self.model, self.dimensions = inner.name, inner.model, inner.dimensions
        self.limits, self.waits_on_network = inner.limits, inner.waits_on_network
        self.input_type = getattr(inner, "input_type", "document")
        self.endpoint = getattr(inner, "endpoint", None)
        self.price_model = getattr(inner, "price_model", inner.model)
        self._tokenizer = IdsTokenizer()

    def tokenizer(self) -> IdsTokenizer:
        return self._tokenizer

    def identity(self, policy: str) -> VectorIdentity:
        identity = self.inner.identity(policy)
        return dataclasses.replace(identity, params=(*identity.params, ("input", "token ids")))

    def redact(self, text: str) -> str:
        redact = getattr(self.inner, "redact", None)
        return redact(text) if callable(redact) else text

    def prepare(self) -> None:
        prepare = getattr(self.inner, "prepare", None)
        if callable(prepare):
            prepare()

    def embed(self, texts: list[str]) -> BatchResult:
        arrays: Any = [[int(t) for t in text.split()] for text in texts]  # the wire takes arrays where texts go
        return self.inner.embed(arrays)


def split_inputs(emb: Embedder, inputs: list[str | list[int]]) -> dict[str, tuple[list[int], list[str]]]:
    """A request's inputs by how they are embedded: ``"text"`` (strings, and token arrays that
    are exactly the encoding of a text: the upstream sees the same tokens) and ``"tokens"``
    (any other token array, and a blank string as its tokens).

    Only OpenAI's own models (``cl100k_base``, what the library's tokenizer is) have their
    arrays read as text and their blank strings encoded: another model behind an
    OpenAI-compatible server has a vocabulary of its own, so its arrays go as they came and
    a blank string is refused (the library never embeds blank text)."""
    tokenizer = emb.provider.tokenizer()
    takes_tokens = emb.provider.name == "openai"
    reads_tokens = takes_tokens and emb.model in MODEL_DIMENSIONS
    parts: dict[str, tuple[list[int], list[str]]] = {}
    for i, x in enumerate(inputs):
        blank = isinstance(x, str) and not x.strip()
        if (not takes_tokens and not isinstance(x, str)) or (blank and not reads_tokens):
            what = "token arrays" if not isinstance(x, str) else "an input of only whitespace"
            raise bad_request(f"'$.input[{i}]' is invalid: {emb.model} takes text, not {what}.", "input")
        if isinstance(x, str):
            kind, text = ("tokens", ids_text(tokenizer.encode_batch([x])[0])) if blank else ("text", x)
        else:
            kind, text = "tokens", ids_text(x)
            if reads_tokens:
                try:
                    decoded = tokenizer.decode(x)
                    if decoded.strip() and tokenizer.encode_batch([decoded])[0] == x:
                        kind, text = "text", decoded
                except Exception:  # noqa: BLE001, S110 - ids outside the vocabulary: the upstream answers them
                    pass
        rows, texts = parts.setdefault(kind, ([], []))
        rows.append(i)
        texts.append(text)
    return parts
