"""The JSONL lines a batch is made of: one request per text in, one answer per text out.

https://platform.openai.com/docs/guides/batch and
https://platform.openai.com/docs/api-reference/batch/request-input: each input line is
``{"custom_id", "method": "POST", "url": "/v1/embeddings", "body"}``; each output line
carries the ``custom_id`` and a ``response`` with ``status_code`` and ``body``. The custom id
is the text's content key, so an answer finds its text however the lines were reordered.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import numpy as np


def request_line(key: bytes, model: str, dimensions: int | None, text: str) -> bytes:
    """The input line that embeds ``text`` (base64 answers; ``dimensions`` only when set)."""
    body: dict[str, Any] = {"model": model, "input": text, "encoding_format": "base64"}
    if dimensions is not None:
        body["dimensions"] = dimensions
    return json.dumps({"custom_id": key.hex(), "method": "POST", "url": "/v1/embeddings", "body": body}).encode()


def read_output(data: bytes, dim: int, max_tokens: int, answered: dict[bytes, tuple[np.ndarray, int]],
                refused: dict[bytes, str]) -> None:
    """Sort the lines of an output or error file into ``answered`` (vector, tokens) and
    ``refused`` (a 4xx for the input itself); anything else is left out, to be sent again."""
    for raw in data.splitlines():
        try:
            rec = json.loads(raw)
            key = bytes.fromhex(rec["custom_id"])
        except (ValueError, KeyError, TypeError):
            continue  # not a line of ours
        response = rec.get("response") or {}
        code = response.get("status_code")
        if code == 200:
            value = _vector(response.get("body"), dim, max_tokens)
            if value is not None:
                answered[key] = value
        elif isinstance(code, int) and 400 <= code < 500 and code != 429:
            error = ((response.get("body") or {}).get("error") or {}).get("message") or f"HTTP {code}"
            refused[key] = f"refused by the Batch API ({code}): {error}"


def _vector(body: Any, dim: int, max_tokens: int) -> tuple[np.ndarray, int] | None:
    """The vector and tokens of one answered line, or None if it cannot be true (queued again)."""
    try:
        emb = body["data"][0]["embedding"]
        tokens = int(body["usage"]["prompt_tokens"])
        vec = np.frombuffer(base64.b64decode(emb), "<f4") if isinstance(emb, str) else np.asarray(emb, np.float32)
    except (KeyError, IndexError, TypeError, ValueError, binascii.Error):
        return None
    if vec.shape != (dim,) or not np.isfinite(vec).all() or not vec.any() or not 0 <= tokens <= max_tokens:
        return None
    return vec.astype(np.float32), tokens
