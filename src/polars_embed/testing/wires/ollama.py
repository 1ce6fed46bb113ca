"""Ollama's ``/api/embed``, as the test server answers it (driven by the ``ollama`` SDK).

* ``POST /api/embed`` ``{"model", "input": str | [str], "truncate": bool = true, "dimensions"?,
  "keep_alive"?, "options"?}`` -> ``{"model", "embeddings": [[...]], "total_duration",
  "load_duration", "prompt_eval_count"}``. Errors are ``{"error": "..."}``: 400 "missing request
  body" / "invalid input type", 404 ``model "x" not found, try pulling it first``, 400 "the
  input length exceeds the context length" (``truncate: false``). References:
  https://github.com/ollama/ollama/blob/main/docs/api.md ("Generate Embeddings"),
  https://github.com/ollama/ollama/blob/main/docs/openapi.yaml, and ``EmbedHandler`` in
  server/routes.go for the messages.
* No auth (unless ``server.api_key`` is set: then ``Authorization: Bearer <key>``, as behind a
  proxy or on ollama.com, else 401 ``{"error": "unauthorized"}``).
* A model is one of ``server.models`` (its name, its size); its context is
  ``server.max_input_tokens`` tokens of cl100k_base, which also counts ``prompt_eval_count``.
  ``truncate`` keeps an input's first tokens that fit; ``dimensions`` below the model's size
  gives a vector of that size. Vectors: ``server_vectors(model, dim, texts as embedded)``.
* No quotas in Ollama: the server's own (``rpm``/``tpm``) answer 503 "server busy" as a full
  queue does; a ``storm_429`` is 429. Faults: 5xx, hang, drop, bad JSON, short, wrong-dimension
  answers, bad vectors. ``server.ollama_reports_usage = False`` leaves ``prompt_eval_count``
  out, as old servers did.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import urlsplit

import numpy as np

from ..vectors import server_vectors

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ..server import EmbeddingServer

Answer = tuple[int, dict[str, str], "bytes | None", "str | None", Any]
BUSY = "server busy, please try again.  maximum pending requests exceeded"
TOO_LONG = "the input length exceeds the context length"


class Request(NamedTuple):
    """A request that passed its checks: what is embedded, and its tokens."""

    model: str
    dimensions: int
    texts: list[str]
    counts: list[int]


class OllamaWire:
    def match(self, path: str) -> bool:
        return urlsplit(path).path.rstrip("/") == "/api/embed"

    def handle(self, server: EmbeddingServer, path: str, headers: Mapping[str, str], body: bytes) -> Answer:
        if server.api_key is not None and headers.get("authorization") != f"Bearer {server.api_key}":
            return 401, {}, _error("unauthorized"), None, None
        parsed = _parse(server, body)
        if not isinstance(parsed, Request):
            return parsed
        with server._lock:
            faults = server.faults
        if faults.refuse_all is not None:
            return 400, {}, _error(faults.refuse_all), None, None
        if any(p in t for p in faults.poison for t in parsed.texts):
            return 400, {}, _error("input contains a forbidden sequence"), None, None
        total = sum(parsed.counts)
        adm = server.admit(total)
        if adm.outcome in ("down", "5xx"):
            return 500, {}, _error("llama runner process has terminated: exit status 2"), adm.outcome, None
        if adm.outcome == "ratelimit":
            return 503, {}, _error(BUSY), adm.outcome, None
        if adm.outcome == "storm_429":
            return 429, dict(faults.headers), _error("too many requests"), adm.outcome, None
        processed = (len(parsed.texts), total, parsed.texts)
        if adm.outcome in ("hang", "drop"):
            return 200, {}, None, adm.outcome, processed
        return _answer(server, adm.roll, parsed, total, processed)


def _answer(server: EmbeddingServer, roll: dict[str, bool], req: Request, total: int, processed: Any) -> Answer:
    faults = server.faults
    dim = req.dimensions
    vectors = server_vectors(req.model, dim, req.texts)[:, : dim - 1 if roll["wrong_dim"] else dim]
    for i, t in enumerate(req.texts):
        kind = next((k for needle, k in faults.bad_vectors.items() if needle in t), None)
        if kind is not None:
            vectors[i] = vectors[i] * 3e38 if kind == "huge" else {"nan": np.nan, "inf": np.inf, "zero": 0.0}[kind]
    embeddings = [[float(x) for x in v] for v in vectors]
    fault = "wrong_dim" if roll["wrong_dim"] else None
    if roll["short"] and len(embeddings) > 1:
        embeddings, fault = embeddings[:-1], "short"
    answer: dict[str, Any] = {"model": req.model, "embeddings": embeddings, "total_duration": 14143917,
                              "load_duration": 1019500}
    if getattr(server, "ollama_reports_usage", True):
        answer["prompt_eval_count"] = total if faults.usage is None else faults.usage
    payload = json.dumps(answer).encode()
    if roll["bad_json"]:
        payload, fault = payload[: len(payload) // 2], "bad_json"
    return 200, dict(faults.headers), payload, fault, processed


def _parse(server: EmbeddingServer, body: bytes) -> Answer | Request:
    """Ollama's checks, in its order; an input over the context is truncated or refused."""
    if not body:
        return 400, {}, _error("missing request body"), None, None
    try:
        req = json.loads(body)
    except ValueError as exc:
        return 400, {}, _error(str(exc)), None, None
    inputs = req.get("input")
    if isinstance(inputs, str):
        inputs = [inputs] if inputs else []
    if inputs is not None and not (isinstance(inputs, list) and all(isinstance(x, str) for x in inputs)):
        return 400, {}, _error("invalid input type"), None, None
    model = str(req.get("model") or "").removesuffix(":latest")
    if model not in server.models:
        return 404, {}, _error(f'model "{req.get("model")}" not found, try pulling it first'), None, None
    full = server.models[model]
    asked = req.get("dimensions") or 0
    dim = asked if isinstance(asked, int) and 0 < asked < full else full
    texts, counts = [], []
    for text in inputs or []:
        ids = server._enc.encode_ordinary(text)
        if len(ids) > server.max_input_tokens:
            if req.get("truncate") is False:
                return 400, {}, _error(TOO_LONG), None, None
            ids = ids[: server.max_input_tokens]
            text = server._enc.decode(ids)
        texts.append(text)
        counts.append(len(ids))
    return Request(model, dim, texts, counts)


def _error(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


WIRE = OllamaWire()
