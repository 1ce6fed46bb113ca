"""Voyage AI's embeddings endpoint in the test server, under ``/voyage/v1`` (OpenAI's format
has ``/v1/embeddings``): give the SDK ``base_url=f"http://127.0.0.1:{port}/voyage/v1"``.

As https://docs.voyageai.com/reference/embeddings-api documents it: ``POST .../embeddings``
with ``Authorization: Bearer <key>`` (401 otherwise); a body of ``input`` (a text or 1 to
1,000 non-empty texts), ``model``, ``input_type`` (null, "query", "document"),
``truncation`` (default true), ``output_dimension`` (256, 512, 1024 or 2048 on the models
that have it), ``output_dtype`` and ``encoding_format`` (null or "base64"); a 400 for a
request over the model's tokens per request (counted before truncation) or, with
``truncation`` false, a text over its context length; with it true such a text is cut to the
context. Answers ``{"object": "list", "data": [{"object": "embedding", "embedding", "index"}],
"model", "usage": {"total_tokens"}}``; errors ``{"detail": "..."}`` (what the SDK reads). A
429 carries no rate-limit headers: https://docs.voyageai.com/docs/rate-limits documents none.

Tokens are counted with the server's cl100k tokenizer; a vector is
``server_vectors(f"{model}|{input_type or ''}", dimensions, [the text embedded])``. Only
``output_dtype`` "float" is answered (the client asks for nothing else).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ...providers.voyage import FLEXIBLE_DIMENSIONS, MAX_INPUTS, MODELS
from ..vectors import server_vectors

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ..server import EmbeddingServer

PATH = "/voyage/v1/embeddings"
Answer = tuple[int, dict[str, str], bytes | None, str | None, Any]


@dataclass
class Request:
    """A request that passed its checks: what is embedded, and what is billed."""

    model: str
    dimensions: int
    role: str
    texts: list[str]  # as sent
    embedded: list[str]  # after truncation
    tokens: int  # billed: the tokens embedded
    base64: bool


def _detail(message: str) -> bytes:
    return json.dumps({"detail": message}).encode()


def _refuse(status: int, message: str, headers: dict[str, str] | None = None) -> Answer:
    return status, dict(headers or {}), _detail(message), None, None


def _fields(body: bytes) -> tuple[dict[str, Any], list[str]] | Answer:
    """The body's fields, checked as the reference states them, or the 400 that refuses it."""
    try:
        req = json.loads(body)
    except ValueError:
        return _refuse(400, "Request body is not valid JSON.")
    if not isinstance(req, dict) or not isinstance(req.get("model"), str):
        return _refuse(400, "Field 'model' is required.")
    if req["model"] not in MODELS:
        return _refuse(400, f"Model {req['model']} is not supported.")
    inputs = req.get("input")
    inputs = [inputs] if isinstance(inputs, str) else inputs
    if not isinstance(inputs, list) or not inputs or not all(isinstance(t, str) and t for t in inputs):
        return _refuse(400, "Field 'input' must be a text or a list of 1 to 1000 non-empty texts.")
    if len(inputs) > MAX_INPUTS:
        return _refuse(400, f"The input list has {len(inputs)} items, over the limit of {MAX_INPUTS}.")
    if req.get("input_type") not in (None, "query", "document"):
        return _refuse(400, "Field 'input_type' must be null, 'query' or 'document'.")
    if not isinstance(req.get("truncation", True), bool):
        return _refuse(400, "Field 'truncation' must be a boolean.")
    if req.get("output_dtype") not in (None, "float"):
        return _refuse(400, "This test server answers output_dtype 'float' only.")
    if req.get("encoding_format") not in (None, "base64"):
        return _refuse(400, "Field 'encoding_format' must be null or 'base64'.")
    return req, inputs


def _parse(server: EmbeddingServer, body: bytes) -> Request | Answer:
    """A request to answer, or the 400 that refuses it (limits included)."""
    fields = _fields(body)
    if not isinstance(fields[0], dict):
        return fields  # type: ignore[return-value]
    req, texts = fields
    spec = MODELS[req["model"]]
    dim = req.get("output_dimension")
    if dim is None:
        dim = spec.dimensions
    elif dim != spec.dimensions and (not spec.flexible or dim not in FLEXIBLE_DIMENSIONS):
        return _refuse(400, f"Model {req['model']} does not support output_dimension={dim}.")
    ids = [server._enc.encode_ordinary(t) for t in texts]  # a thread per request: one call a text
    total = sum(map(len, ids))
    if total > spec.request_tokens:
        return _refuse(400, f"The input has {total} tokens, over the limit of {spec.request_tokens} for {req['model']}.")
    over = next((i for i, x in enumerate(ids) if len(x) > spec.context), None)
    truncation = req.get("truncation", True)
    if over is not None and not truncation:
        msg = (f"Input {over} has {len(ids[over])} tokens, over the context length of {spec.context} "
               f"for {req['model']}; shorten it or set truncation to true.")
        return _refuse(400, msg)
    embedded = [server._enc.decode(x[: spec.context]) if len(x) > spec.context else t for t, x in zip(texts, ids)]
    billed = sum(min(len(x), spec.context) for x in ids)
    return Request(req["model"], dim, req.get("input_type") or "", texts, embedded, billed,
                   req.get("encoding_format") == "base64")


def _payload(server: EmbeddingServer, req: Request, roll: dict[str, bool]) -> tuple[bytes, str | None]:
    """The 200's body, with the malformed-answer faults the admission rolled."""
    faults = server.faults
    vectors = server_vectors(f"{req.model}|{req.role}", req.dimensions, req.embedded)
    if roll["wrong_dim"]:
        vectors = vectors[:, :-1]
    for i, t in enumerate(req.texts):
        kind = next((k for needle, k in faults.bad_vectors.items() if needle in t), None)
        if kind is not None:
            vectors[i] = vectors[i] * 3e38 if kind == "huge" else {"nan": np.nan, "inf": np.inf, "zero": 0.0}[kind]
    data = [{"object": "embedding", "index": i,
             "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode() if req.base64 else [float(x) for x in v]}
            for i, v in enumerate(vectors)]
    fault = "wrong_dim" if roll["wrong_dim"] else None
    if roll["short"] and len(data) > 1:
        data, fault = data[:-1], "short"
    if roll["shuffle"]:
        server._rng.shuffle(data)  # indices stay right: a correct client copes
    billed = req.tokens if faults.usage is None else faults.usage
    body = json.dumps({"object": "list", "data": data, "model": req.model, "usage": {"total_tokens": billed}}).encode()
    if roll["bad_json"]:
        body, fault = body[: len(body) // 2], "bad_json"
    return body, fault


class VoyageWire:
    """``POST /voyage/v1/embeddings`` answered as Voyage does, with the server's quota and faults."""

    def match(self, path: str) -> bool:
        return path.partition("?")[0].rstrip("/") == PATH

    def handle(self, server: EmbeddingServer, path: str, headers: Mapping[str, str], body: bytes) -> Answer:
        auth = headers.get("authorization") or ""
        if not auth.startswith("Bearer ") or auth == "Bearer " or (
                server.api_key is not None and auth != f"Bearer {server.api_key}"):
            return _refuse(401, "Provided API key is invalid.")
        req = _parse(server, body)
        if not isinstance(req, Request):
            return req
        faults = server.faults
        extra = dict(faults.headers)
        if faults.refuse_all is not None:
            return _refuse(400, faults.refuse_all, extra)
        if any(p in t for p in faults.poison for t in req.texts):
            return _refuse(400, "Input contains a forbidden sequence.", extra)
        adm = server.admit(req.tokens)
        if adm.outcome == "down":
            return 503, extra, _detail("Service unavailable."), "down", None
        if adm.outcome in ("ratelimit", "storm_429"):
            message = "Rate limit exceeded: too many requests or tokens per minute for this model."
            return 429, extra, _detail(message), adm.outcome, None
        if adm.outcome == "5xx":
            return 500, extra, _detail("Internal server error."), "5xx", None
        processed = (len(req.texts), req.tokens, req.texts)  # billed once processed, answered or not
        if adm.outcome in ("hang", "drop"):
            return 200, {}, None, adm.outcome, processed
        payload, fault = _payload(server, req, adm.roll)
        return 200, extra, payload, fault, processed


WIRE = VoyageWire()
