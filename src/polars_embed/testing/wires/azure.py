"""Azure OpenAI's embeddings, as the test server answers them (driven by ``openai.AzureOpenAI``).

* ``POST /openai/deployments/{deployment}/embeddings?api-version=YYYY-MM-DD[-preview]``; without
  one (or another form): 404 "Resource not found". Auth: ``api-key: <key>`` or ``Authorization: Bearer <token>`` (Entra);
  with ``server.api_key`` set, anything else is Azure's 401 ``{"error": {"code": "401",
  "message": "Access denied due to invalid subscription key or wrong API endpoint..."}}``.
  REST reference: https://learn.microsoft.com/en-us/azure/ai-foundry/openai/reference.
* A deployment is a model of ``server.models`` (its name, its full size); another is 404
  ``DeploymentNotFound``. Vectors are ``server_vectors(deployment, dim, texts)``.
* Body and answer are OpenAI's: ``input``, ``dimensions`` (refused for a model that cannot
  shorten), ``encoding_format``; ``data[].index/embedding``, ``usage.prompt_tokens`` counted with
  cl100k_base. Refused inputs get OpenAI's 400 shape (Azure passes those through): more than
  ``server.max_inputs`` inputs is Azure's "Too many inputs. The max number of inputs is N."
  (2,048 by default: https://learn.microsoft.com/en-us/azure/ai-services/openai/quotas-limits),
  an input over ``server.max_input_tokens`` or a request over ``server.max_request_tokens``.
* Quotas (``server.admit``): every answer has ``x-ratelimit-remaining-requests`` (what is left of
  the 10-second window, a sixth of the requests/min) and ``x-ratelimit-remaining-tokens``; with
  ``server.azure_limit_headers`` (default True) also ``x-ratelimit-limit-requests`` per
  10-second window and ``x-ratelimit-limit-tokens`` per minute, as some versions send them
  (see ``providers/azure.py`` for the sources). A 429 has ``retry-after`` (whole seconds) and
  ``retry-after-ms``, and Azure's message. Faults: 5xx, hang, drop, bad JSON, short, shuffled,
  wrong-dimension answers, storms of 429.
"""

from __future__ import annotations

import base64
import json
import math
import re
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np

from ..vectors import MODELS, SHORTENABLE, server_vectors

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ..server import EmbeddingServer

PATH = re.compile(r"/openai/deployments/([^/]+)/embeddings")
VERSION = re.compile(r"20\d\d-\d\d-\d\d(-preview)?")
ACCESS_DENIED = ("Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid "
                 "key for an active subscription and use a correct regional API endpoint for your resource.")
NOT_DEPLOYED = ("The API deployment for this resource does not exist. If you created the deployment within the "
                "last 5 minutes, please wait a moment and try again.")
TOO_MANY = ("Too many inputs. The max number of inputs is {n}.  We hope to increase the number of inputs per "
            "request soon. Please contact us through an Azure support request at: "
            "https://go.microsoft.com/fwlink/?linkid=2213926 for further questions.")
THROTTLED = ("Requests to the Embeddings_Create Operation under Azure OpenAI API version {version} have exceeded "
             "call rate limit of your current OpenAI S0 pricing tier. Please retry after {seconds} second{s}. "
             "Please go here: https://aka.ms/oai/quotaincrease if you would like to further increase the default rate limit.")

Answer = tuple[int, dict[str, str], "bytes | None", "str | None", Any]


class Request(NamedTuple):
    """A request that passed its checks."""

    dimensions: int
    texts: list[str]
    tokens: int
    encoding_format: str | None


class AzureWire:
    def match(self, path: str) -> bool:
        return PATH.fullmatch(urlsplit(path).path.rstrip("/")) is not None

    def handle(self, server: EmbeddingServer, path: str, headers: Mapping[str, str], body: bytes) -> Answer:
        url = urlsplit(path)
        deployment = unquote(PATH.fullmatch(url.path.rstrip("/")).group(1))  # type: ignore[union-attr]
        version = parse_qs(url.query).get("api-version", [""])[0]
        if not VERSION.fullmatch(version):  # none, or not a version Azure has
            return 404, {}, _azure_error("404", "Resource not found"), None, None
        if not _authorized(server, headers):
            return 401, {}, _azure_error("401", ACCESS_DENIED), None, None
        if deployment not in server.models:
            return 404, {}, _azure_error("DeploymentNotFound", NOT_DEPLOYED), None, None
        parsed = _parse(server, deployment, body)
        if not isinstance(parsed, Request):
            return parsed
        dim, texts, total, fmt = parsed
        with server._lock:
            faults = server.faults
        if faults.refuse_all is not None:
            return 400, {}, _openai_error(faults.refuse_all), None, None
        if any(p in t for p in faults.poison for t in texts):
            return 400, {}, _openai_error("'$.input' is invalid: input contains a forbidden sequence."), None, None
        adm = server.admit(total)
        quota = quota_headers(adm.quota, limits=getattr(server, "azure_limit_headers", True))
        return _answer(server, adm, quota, version, deployment, dim, texts, total, fmt)


def _answer(server: EmbeddingServer, adm: Any, quota: dict[str, str], version: str, deployment: str, dim: int,
            texts: list[str], total: int, fmt: str | None) -> Answer:
    """The admitted request's answer: a fault, a 429, or the vectors."""
    faults = server.faults
    if adm.outcome in ("down", "5xx"):
        return 500, {}, _azure_error("InternalServerError", "The server had an error processing your request."), adm.outcome, None
    if adm.outcome in ("ratelimit", "storm_429"):
        wait = adm.retry_after if adm.outcome == "ratelimit" else 0.05
        seconds = max(1, math.ceil(wait))
        limited = {"retry-after": str(seconds), "retry-after-ms": str(int(wait * 1000) + 1)}
        if adm.outcome == "storm_429" and not faults.storm_retry_after:
            limited = {}
        message = THROTTLED.format(version=version, seconds=seconds, s="" if seconds == 1 else "s")
        return 429, {**quota, **limited, **faults.headers}, _azure_error("429", message), adm.outcome, None
    processed = (len(texts), total, texts)  # billed when processed, answered or not
    if adm.outcome in ("hang", "drop"):
        return 200, {}, None, adm.outcome, processed
    roll = adm.roll
    vectors = server_vectors(deployment, dim, texts)[:, : dim - 1 if roll["wrong_dim"] else dim]
    for i, t in enumerate(texts):
        kind = next((k for needle, k in faults.bad_vectors.items() if needle in t), None)
        if kind is not None:
            vectors[i] = vectors[i] * 3e38 if kind == "huge" else {"nan": np.nan, "inf": np.inf, "zero": 0.0}[kind]
    data = [{"object": "embedding", "index": i, "embedding": _encode(v, fmt)} for i, v in enumerate(vectors)]
    fault = "wrong_dim" if roll["wrong_dim"] else None
    if roll["short"] and len(data) > 1:
        data, fault = data[:-1], "short"
    if roll["shuffle"]:
        server._rng.shuffle(data)  # indices stay right: a correct client copes
    billed = total if faults.usage is None else faults.usage
    payload = json.dumps({"object": "list", "data": data, "model": deployment,
                          "usage": {"prompt_tokens": billed, "total_tokens": billed}}).encode()
    if roll["bad_json"]:
        payload, fault = payload[: len(payload) // 2], "bad_json"
    return 200, {**quota, **faults.headers}, payload, fault, processed


def _authorized(server: EmbeddingServer, headers: Mapping[str, str]) -> bool:
    key = headers.get("api-key") or ""
    bearer = (headers.get("authorization") or "").removeprefix("Bearer ")
    if server.api_key is None:
        return bool(key or bearer)
    return server.api_key in (key, bearer)


def _parse(server: EmbeddingServer, deployment: str, body: bytes) -> Answer | Request:
    """The request's checks: an answer when refused, else the ``Request``."""
    try:
        req = json.loads(body)
        inputs = req["input"]
    except (ValueError, KeyError, TypeError):
        return 400, {}, _openai_error("We could not parse the JSON body of your request."), None, None
    full = server.models[deployment]
    dim = req.get("dimensions")
    if dim is None:
        dim = full
    elif (deployment in MODELS and deployment not in SHORTENABLE) or not isinstance(dim, int) or not 1 <= dim <= full:
        return 400, {}, _openai_error(f"This model does not support specifying dimensions={dim}."), None, None
    inputs = [inputs] if isinstance(inputs, str) else inputs
    if not isinstance(inputs, list) or not inputs or not all(isinstance(x, str) and x for x in inputs):
        return 400, {}, _openai_error("'$.input' is invalid. Please check the API reference."), None, None
    if len(inputs) > server.max_inputs:
        return 400, {}, _openai_error(TOO_MANY.format(n=server.max_inputs)), None, None
    counts = [len(server._enc.encode_ordinary(t)) for t in inputs]
    longest, total = max(counts), sum(counts)
    if longest > server.max_input_tokens:
        msg = (f"This model's maximum context length is {server.max_input_tokens} tokens, however you requested "
               f"{longest} tokens ({longest} in your prompt; 0 for the completion). Please reduce your prompt; "
               f"or completion length.")
        return 400, {}, _openai_error(msg), None, None
    if total > server.max_request_tokens:
        return 400, {}, _openai_error(f"Requested {total} tokens, max {server.max_request_tokens} tokens per request"), None, None
    return Request(dim, inputs, total, req.get("encoding_format"))


def quota_headers(quota: Mapping[str, tuple[float, float, float]], *, limits: bool) -> dict[str, str]:
    """Azure's headers of the server's quota: requests per 10-second window, tokens per minute."""
    headers = {}
    if "requests" in quota:
        limit, remaining, _ = quota["requests"]
        window = limit / 6.0
        headers["x-ratelimit-remaining-requests"] = str(int(min(remaining, window)))
        if limits:
            headers["x-ratelimit-limit-requests"] = str(max(1, int(window)))
    if "tokens" in quota:
        limit, remaining, _ = quota["tokens"]
        headers["x-ratelimit-remaining-tokens"] = str(int(remaining))
        if limits:
            headers["x-ratelimit-limit-tokens"] = str(int(limit))
    return headers


def _encode(vec: np.ndarray, fmt: str | None) -> Any:
    if fmt == "base64":
        return base64.b64encode(vec.astype("<f4").tobytes()).decode()
    return [float(x) for x in vec]


def _azure_error(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


def _openai_error(message: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}).encode()


WIRE = AzureWire()
