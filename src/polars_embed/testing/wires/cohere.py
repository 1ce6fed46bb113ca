"""Cohere's Embed API v2, ``POST /v2/embed``, as the test server answers it.

From the API reference, https://docs.cohere.com/reference/embed: ``Authorization: Bearer
<key>``; a body ``{"model", "texts", "input_type", "embedding_types", "truncate",
"output_dimension", "max_tokens"}``; ``input_type`` is required for v3 and newer models
(``search_document``, ``search_query``, ``classification``, ``clustering``, ``image``); at most
96 texts a call; ``truncate`` ``NONE``/``START``/``END``, default ``END`` ("input is discarded
until the remaining input is exactly the maximum input token length for the model"; ``NONE``:
an error); ``output_dimension`` only for embed-v4.0 (256, 512, 1024, 1536). The answer is
``{"id", "embeddings": {"float": [[...]]}, "texts", "meta": {"api_version", "billed_units":
{"input_tokens"}}, "response_type": "embeddings_by_type"}``, vectors in the order of
``texts`` (there is no index field).

Models and context lengths: https://docs.cohere.com/docs/cohere-embed. Errors are
``{"message": ...}`` (https://docs.cohere.com/reference/errors): 400 "invalid request: ..."
(its examples include "total number of texts must be at most 96 - received 104" and "valid
input_type must be provided with the provided model"), 401 "invalid api token" / "no api key
supplied", 429 "You are past the per minute request limit, please wait and try again later.",
500. No rate-limit headers are documented (https://docs.cohere.com/docs/rate-limits), so none
are sent, on a 200 or a 429. The wording of refusals the pages do not quote is this server's.
Tokens are the server's cl100k counts, standing in for Cohere's tokenizer.
"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any

import numpy as np

from ..vectors import server_vectors

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ..server import EmbeddingServer

#: model -> (output sizes, the first the default; context length in tokens)
MODELS: dict[str, tuple[tuple[int, ...], int]] = {
    "embed-v4.0": ((1536, 256, 512, 1024), 128_000),
    "embed-english-v3.0": ((1024,), 512),
    "embed-multilingual-v3.0": ((1024,), 512),
    "embed-english-light-v3.0": ((384,), 512),
    "embed-multilingual-light-v3.0": ((384,), 512),
}
INPUT_TYPES = ("search_document", "search_query", "classification", "clustering", "image")
EMBEDDING_TYPES = ("float", "int8", "uint8", "binary", "ubinary", "base64")
MAX_TEXTS = 96
RATE_LIMITED = "You are past the per minute request limit, please wait and try again later."
SERVER_ERROR = "internal server error, this has been reported to our developers"

Answer = tuple[int, dict[str, str], bytes | None, str | None, Any]


def error(message: str) -> bytes:
    """Cohere's error body."""
    return json.dumps({"message": message}).encode()


def _refuse(message: str, status: int = 400) -> Answer:
    return status, {}, error(message), None, None


class CohereWire:
    """Answers ``/v2/embed`` (under any path prefix a ``base_url`` may have)."""

    def match(self, path: str) -> bool:
        return path.partition("?")[0].rstrip("/").endswith("/v2/embed")

    def handle(self, server: EmbeddingServer, path: str, headers: Mapping[str, str], body: bytes) -> Answer:
        auth = headers.get("authorization") or ""
        key = auth[len("Bearer "):] if auth.startswith("Bearer ") else ""
        if not key:
            return _refuse("no api key supplied", 401)
        if server.api_key is not None and key != server.api_key:
            return _refuse("invalid api token", 401)
        parsed = self._parse(server, body, key)
        if isinstance(parsed[0], int):
            return parsed  # type: ignore[return-value]
        req, texts, embedded, counts = parsed
        return self._answer(server, req, texts, embedded, sum(counts))

    def _parse(self, server: EmbeddingServer, body: bytes, key: str) -> tuple[Any, ...]:
        """The checks of the body: an answer when refused, else ``(request, texts, the texts as
        embedded after truncation, their tokens)``."""
        try:
            req = json.loads(body)
        except ValueError:
            return _refuse("invalid request: could not parse the JSON body")
        if not isinstance(req, dict):
            return _refuse("invalid request: the body must be a JSON object")
        refused = _check_settings(req)
        if refused is not None:
            return _refuse(*refused)
        texts = req.get("texts")
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            return _refuse("invalid request: texts must be a non-empty list of strings")
        if len(texts) > MAX_TEXTS:
            return _refuse(f"invalid request: total number of texts must be at most {MAX_TEXTS} - received {len(texts)}")
        if any(not t for t in texts):
            return _refuse("invalid request: texts must not contain empty strings")
        with server._lock:
            faults = server.faults
        if faults.refuse_all is not None:
            return _refuse(faults.refuse_all)
        if any(p in t for p in faults.poison for t in texts):
            echo = {"full": f" (key {key})", "masked": f" (key {key[:3]}...{key[-4:]})"}.get(faults.echo_key or "", "")
            return _refuse(f"invalid request: a text contains a forbidden sequence{echo}")
        return _truncate(server, req, texts)

    def _answer(self, server: EmbeddingServer, req: dict[str, Any], texts: list[str], embedded: list[str],
                total: int) -> Answer:
        adm = server.admit(total)
        faults = server.faults
        extra = dict(faults.headers)
        if adm.outcome in ("down", "5xx"):
            return 500, extra, error(SERVER_ERROR), adm.outcome, None
        if adm.outcome in ("ratelimit", "storm_429"):
            return 429, extra, error(RATE_LIMITED), adm.outcome, None
        processed = (len(texts), total, texts)  # billed for what was embedded, answered or not
        if adm.outcome in ("hang", "drop"):
            return 200, extra, None, adm.outcome, processed
        model, dim = req["model"], req.get("output_dimension") or MODELS[req["model"]][0][0]
        vectors = server_vectors(f"{model}|{req['input_type']}", dim, embedded)
        for i, t in enumerate(texts):
            kind = next((k for needle, k in faults.bad_vectors.items() if needle in t), None)
            if kind is not None:
                vectors[i] = vectors[i] * 3e38 if kind == "huge" else {"nan": np.nan, "inf": np.inf, "zero": 0.0}[kind]
        rows = vectors.tolist()
        fault = None
        if adm.roll["short"] and len(rows) > 1:
            rows, fault = rows[:-1], "short"
        elif adm.roll["wrong_dim"]:
            rows, fault = [r[:-1] for r in rows], "wrong_dim"
        billed = total if faults.usage is None else faults.usage
        payload = json.dumps({
            "id": str(uuid.uuid4()), "embeddings": {"float": rows}, "texts": texts,
            "meta": {"api_version": {"version": "2"}, "billed_units": {"input_tokens": billed}},
            "response_type": "embeddings_by_type",
        }).encode()
        if adm.roll["bad_json"]:
            payload, fault = payload[: len(payload) // 2], "bad_json"
        return 200, extra, payload, fault, processed


def _check_settings(req: dict[str, Any]) -> tuple[str, int] | None:
    """The request's settings other than its texts: (message, status) when refused."""
    model = req.get("model")
    if not isinstance(model, str) or not model:
        return "invalid request: model must be specified", 400
    if model not in MODELS:
        return f"model '{model}' not found, make sure the correct model ID was used and that you have access to the model.", 404
    if req.get("input_type") not in INPUT_TYPES:
        return "invalid request: valid input_type must be provided with the provided model", 400
    if req["input_type"] == "image":
        return "invalid request: input_type 'image' needs images, not texts", 400
    types = req.get("embedding_types", ["float"])
    if not isinstance(types, list) or not types or any(t not in EMBEDDING_TYPES for t in types):
        return f"invalid request: embedding_types must be some of {', '.join(EMBEDDING_TYPES)}", 400
    if types != ["float"]:
        return "invalid request: this test server answers embedding_types ['float'] only", 400
    if req.get("truncate", "END") not in ("NONE", "START", "END"):
        return "invalid request: truncate must be one of NONE, START, END", 400
    sizes = MODELS[model][0]
    dim = req.get("output_dimension")
    if dim is not None and len(sizes) == 1:
        return f"invalid request: output_dimension is not supported for model '{model}'", 400
    if dim is not None and dim not in sizes:
        return f"invalid request: output_dimension must be one of {sorted(sizes)} - received {dim}", 400
    max_tokens = req.get("max_tokens")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        return "invalid request: max_tokens must be a positive integer", 400
    return None


def _truncate(server: EmbeddingServer, req: dict[str, Any], texts: list[str]) -> tuple[Any, ...]:
    """Each text cut to the model's context (or ``max_tokens``) as ``truncate`` says: its end
    discarded (END), its start (START), or a refusal (NONE)."""
    limit = MODELS[req["model"]][1]
    if req.get("max_tokens") is not None:
        limit = min(limit, req["max_tokens"])
    mode = req.get("truncate", "END")
    embedded, counts = [], []
    for i, text in enumerate(texts):
        ids = server._enc.encode_ordinary(text)
        if len(ids) > limit:
            if mode == "NONE":
                return _refuse(f"invalid request: text {i} has {len(ids)} tokens, over the maximum of {limit} "
                               f"for model '{req['model']}'; shorten it or set truncate to START or END")
            ids = ids[:limit] if mode == "END" else ids[-limit:]
            text = server._enc.decode(ids)
        embedded.append(text)
        counts.append(len(ids))
    return req, texts, embedded, counts


WIRE = CohereWire()
