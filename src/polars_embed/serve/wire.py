"""OpenAI's ``POST /v1/embeddings`` on the wire: the request as OpenAI checks it, its error shape,
and the vector encodings of its answer.

https://platform.openai.com/docs/api-reference/embeddings/create
"""

from __future__ import annotations

import base64
import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger("polars_embed.proxy")

#: OpenAI's limit on inputs in one request.
MAX_INPUTS = 2048
#: The largest ``dimensions`` a request may ask for (OpenAI's largest model has 3,072).
MAX_DIMENSIONS = 16_384
#: The body fields the spec names (``CreateEmbeddingRequest``), and the role fields other
#: providers' clients send; anything else is refused, as OpenAI refuses it.
FIELDS = {"model", "input", "encoding_format", "dimensions", "user", "input_type", "task_type"}

class OpenAIError(Exception):
    """An answer in OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, *, kind: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code
        self.headers: dict[str, str] = {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass
class EmbeddingRequest:
    model: str
    inputs: list[str | list[int]]
    encoding_format: str = "float"
    dimensions: int | None = None
    input_type: str = "document"  # "query" or "document", from `input_type` (Voyage, Cohere) or `task_type` (Gemini)


#: The role words other providers' clients send, as the library's roles.
ROLE_WORDS = {"document": "document", "query": "query", "search_document": "document", "search_query": "query",
              "retrieval_document": "document", "retrieval_query": "query"}


def bad_request(message: str, param: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, param=param)


def parse_request(body: bytes) -> EmbeddingRequest:
    """The body of ``POST /v1/embeddings``, checked as OpenAI checks it (400 otherwise)."""
    try:
        req = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise bad_request("We could not parse the JSON body of your request. (HINT: This likely means you aren't using "
                   "your HTTP library correctly. The OpenAI API expects a JSON payload.)") from None
    if not isinstance(req, dict):
        raise bad_request("The body of your request must be a JSON object.")
    unknown = sorted(set(req) - FIELDS)
    if unknown:
        raise bad_request(f"Unrecognized request argument supplied: {', '.join(map(str, unknown))}")
    model = req.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("you must provide a model parameter", "model")
    if not _encodable(model) or len(model) > 256:
        raise bad_request("'$.model' is invalid: not a model name.", "model")
    raw = req.get("input")
    if isinstance(raw, str) or (isinstance(raw, list) and raw and all(_is_token(t) for t in raw)):
        raw = [raw]  # one text, or one token array
    if not isinstance(raw, list) or not raw:
        raise bad_request("'$.input' is invalid: give a string, an array of strings or an array of token arrays.", "input")
    if any(isinstance(x, str) for x in raw) and any(not isinstance(x, str) for x in raw):
        raise bad_request("'$.input' is invalid: an array of strings or an array of token arrays, not both.", "input")
    if len(raw) > MAX_INPUTS:
        raise bad_request(f"'$.input' is invalid: array must have at most {MAX_INPUTS} items, got {len(raw)}.", "input")
    for i, x in enumerate(raw):
        if isinstance(x, str):
            if not x:
                raise bad_request(f"'$.input[{i}]' is invalid: an input cannot be an empty string.", "input")
            if not _encodable(x):
                raise bad_request(f"'$.input[{i}]' is invalid: not valid Unicode (a lone surrogate).", "input")
        elif not (isinstance(x, list) and x and all(_is_token(t) for t in x)):
            raise bad_request(f"'$.input[{i}]' is invalid: each input is a non-empty string or array of tokens.", "input")
    fmt = req.get("encoding_format", "float")
    if fmt is None:
        raise bad_request("None is not of type 'string' - 'encoding_format'", "encoding_format")
    if not isinstance(fmt, str) or fmt not in ("float", "base64"):
        raise bad_request(f"'{fmt}' is not one of ['float', 'base64'] - 'encoding_format'", "encoding_format")
    dims = req.get("dimensions")
    if dims is not None and (not isinstance(dims, int) or isinstance(dims, bool) or not 1 <= dims <= MAX_DIMENSIONS):
        raise bad_request(f"'$.dimensions' is invalid: an integer from 1 to {MAX_DIMENSIONS:,}.", "dimensions")
    return EmbeddingRequest(model, raw, fmt, dims, _role(req))


def _role(req: dict[str, Any]) -> str:
    """The request's role: clients written for Voyage or Cohere send ``input_type``, for Gemini
    ``task_type``. The upstream (OpenAI's API) has no roles: the role is checked, and the
    vector and cache entry are the same for both."""
    for param in ("input_type", "task_type"):
        value = req.get(param)
        if value is None:
            continue
        role = ROLE_WORDS.get(value.lower()) if isinstance(value, str) else None
        if role is None:
            words = ", ".join(sorted(ROLE_WORDS))
            raise bad_request(f"'$.{param}' is invalid: {value!r} is not a role this proxy knows ({words}).", param)
        return role
    return "document"


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _is_token(t: object) -> bool:
    return isinstance(t, int) and not isinstance(t, bool) and 0 <= t < 2**31


def encode_vector(vector: np.ndarray, fmt: str) -> Any:
    if fmt == "base64":
        return base64.b64encode(vector.astype("<f4", copy=False).tobytes()).decode()
    return vector.tolist()  # float32 -> the nearest double, which parses back to the same float32


def shared_down(exc: Exception) -> OpenAIError:
    """A shared cache or quota (Redis) that fails: 503 at once, in OpenAI's shape (the cause
    goes to the log, not to the client)."""
    log.warning("the shared cache or quota failed: %s", str(exc).splitlines()[0])
    error = OpenAIError(503, "The proxy's cache or quota is unavailable; try again shortly.", kind="server_error")
    error.headers = {"retry-after": "5"}
    return error
