"""The Gemini API's ``models.batchEmbedContents``, as the test server answers it.

From the API reference, https://ai.google.dev/api/embeddings ("Method:
models.batchEmbedContents"): ``POST /v1beta/{model=models/*}:batchEmbedContents`` (the
``google-genai`` SDK 3.x sends ``/v1/``; both are answered) with the key in the
``x-goog-api-key`` header (or ``?key=``), a body ``{"requests": [{"model": "models/<m>",
"content": {"parts": [{"text": ...}]}, "taskType": ..., "outputDimensionality": ...}]}``
and an answer ``{"embeddings": [{"values": [...]}]}`` in request order, with no usage (the
documented answer has none; the server still bills, so its log counts the tokens).

Limits and errors, as the API gives them (Google's error body
``{"error": {"code", "message", "status", "details"}}``, https://ai.google.dev/gemini-api/docs/troubleshooting):

* 100 requests per batch: ``400 INVALID_ARGUMENT "* BatchEmbedContentsRequest.requests: at
  most 100 requests can be in one batch"`` (quoted in github.com/langchain-ai/langchainjs/issues/4491);
* tokens per input: 2,048 for gemini-embedding-001, 8,192 for gemini-embedding-2
  (https://ai.google.dev/gemini-api/docs/models/gemini-embedding-001); over it, a 400 (the
  Gemini API documents no truncation switch, so none is assumed);
* ``outputDimensionality`` 128..3072; a ``taskType`` from the ``TaskType`` enum, and none for
  gemini-embedding-2, which takes its task as an instruction in the text;
* a wrong key: ``400 INVALID_ARGUMENT "API key not valid..."`` with an ``ErrorInfo`` of reason
  ``API_KEY_INVALID``; no key: ``403 PERMISSION_DENIED``;
* a quota: ``429 RESOURCE_EXHAUSTED`` with a ``QuotaFailure`` (the quota's id and value) and a
  ``RetryInfo`` (``retryDelay``) in ``details``, and no rate-limit headers, on a 429 or a 200
  (the shape quoted in github.com/googleapis/python-genai/issues/2044).
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from ..vectors import server_vectors

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ..server import EmbeddingServer

#: model -> (default dimensions, tokens per input, takes a taskType)
MODELS: dict[str, tuple[int, int, bool]] = {
    "gemini-embedding-001": (3072, 2048, True),
    "gemini-embedding-2": (3072, 8192, False),
    "gemini-embedding-2-preview": (3072, 8192, False),
}
TASK_TYPES = ("RETRIEVAL_QUERY", "RETRIEVAL_DOCUMENT", "SEMANTIC_SIMILARITY", "CLASSIFICATION", "CLUSTERING",
              "QUESTION_ANSWERING", "FACT_VERIFICATION", "CODE_RETRIEVAL_QUERY")
MAX_REQUESTS = 100
_PATH = re.compile(r"^/(v1|v1beta)/models/([^/:?]+):batchEmbedContents(\?.*)?$")
_HELP = "https://ai.google.dev/gemini-api/docs/rate-limits"

Answer = tuple[int, dict[str, str], bytes | None, str | None, Any]


def error(code: int, status: str, message: str, details: list[dict[str, Any]] | None = None) -> bytes:
    """Google's error body."""
    body: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        body["details"] = details
    return json.dumps({"error": body}).encode()


def _refuse(message: str) -> Answer:
    return 400, {}, error(400, "INVALID_ARGUMENT", message), None, None


class GeminiWire:
    """Answers ``models/<m>:batchEmbedContents`` for the models of ``MODELS``."""

    def match(self, path: str) -> bool:
        return _PATH.match(path) is not None

    def handle(self, server: EmbeddingServer, path: str, headers: Mapping[str, str], body: bytes) -> Answer:
        match = _PATH.match(path)
        if match is None:  # match() chose this wire: not reached
            return 404, {}, error(404, "NOT_FOUND", f"Unknown path {path}"), None, None
        refused = self._auth(server, headers.get("x-goog-api-key") or _query_key(match.group(3) or ""))
        if refused is not None:
            return refused
        model = match.group(2)
        if model not in MODELS:
            msg = (f"models/{model} is not found for API version {match.group(1)}, or is not supported for "
                   "embedContent. Call ListModels to see the list of available models and their supported methods.")
            return 404, {}, error(404, "NOT_FOUND", msg), None, None
        parsed = self._parse(server, model, body)
        if isinstance(parsed[0], int):
            return parsed  # type: ignore[return-value]
        groups, texts, total = parsed
        return self._answer(server, model, groups, texts, total)

    @staticmethod
    def _auth(server: EmbeddingServer, key: str) -> Answer | None:
        if not key:
            msg = ("Method doesn't allow unregistered callers (callers without established identity). "
                   "Please use API Key or other form of API consumer identity to call this API.")
            return 403, {}, error(403, "PERMISSION_DENIED", msg), None, None
        if server.api_key is not None and key != server.api_key:
            info = {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                    "domain": "googleapis.com", "metadata": {"service": "generativelanguage.googleapis.com"}}
            return 400, {}, error(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.", [info]), None, None
        return None

    def _parse(self, server: EmbeddingServer, model: str, body: bytes) -> tuple[Any, ...]:
        """The checks of the body: an answer when refused, else ``(groups, texts, tokens)``
        where ``groups`` maps (taskType, dimensions) to the positions that share them."""
        try:
            requests = json.loads(body)["requests"]
        except (ValueError, KeyError, TypeError):
            return _refuse("Invalid JSON payload received. Unknown name or missing field \"requests\".")
        if not isinstance(requests, list) or not requests:
            return _refuse("* BatchEmbedContentsRequest.requests: must not be empty")
        if len(requests) > MAX_REQUESTS:
            return _refuse(f"* BatchEmbedContentsRequest.requests: at most {MAX_REQUESTS} requests can be in one batch")
        full, limit, takes_task = MODELS[model]
        groups: dict[tuple[str, int], list[int]] = {}
        texts: list[str] = []
        for i, req in enumerate(requests):
            checked = _request(req, i, model, full, takes_task)
            if isinstance(checked, str):
                return _refuse(checked)
            text, task, dim = checked
            texts.append(text)
            groups.setdefault((task, dim), []).append(i)
        with server._lock:
            faults = server.faults
        if faults.refuse_all is not None:
            return _refuse(faults.refuse_all)
        if any(p in t for p in faults.poison for t in texts):
            return _refuse(f"* BatchEmbedContentsRequest.requests: an input contains a forbidden sequence ({faults.poison[0]!r})")
        counts = [len(server._enc.encode_ordinary(t)) for t in texts]
        longest = max(counts)
        if longest > limit:
            return _refuse(f"The input token count ({longest}) exceeds the maximum number of tokens allowed ({limit}).")
        return groups, texts, sum(counts)

    def _answer(self, server: EmbeddingServer, model: str, groups: dict[tuple[str, int], list[int]],
                texts: list[str], total: int) -> Answer:
        adm = server.admit(total)
        extra = dict(server.faults.headers)
        if adm.outcome in ("down", "5xx"):
            msg = "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting"
            return 500, extra, error(500, "INTERNAL", msg), adm.outcome, None
        if adm.outcome == "ratelimit":
            return 429, extra, _quota_error(adm.quota, adm.retry_after, total), "ratelimit", None
        if adm.outcome == "storm_429":
            details = [_retry_info(0.05)] if server.faults.storm_retry_after else None
            return 429, extra, error(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota).", details), "storm_429", None
        processed = (len(texts), total, texts)
        if adm.outcome in ("hang", "drop"):
            return 200, extra, None, adm.outcome, processed
        vectors: list[list[float]] = [[] for _ in texts]
        for (task, dim), positions in groups.items():
            made = server_vectors(f"{model}|{task}", dim, [texts[i] for i in positions])
            for i, vec in zip(positions, made):
                vectors[i] = vec.tolist()
        fault = None
        if adm.roll["short"] and len(vectors) > 1:
            vectors, fault = vectors[:-1], "short"
        elif adm.roll["wrong_dim"]:
            vectors[0], fault = vectors[0][:-1], "wrong_dim"
        payload = json.dumps({"embeddings": [{"values": v} for v in vectors]}).encode()
        if adm.roll["bad_json"]:
            payload, fault = payload[: len(payload) // 2], "bad_json"
        return 200, extra, payload, fault, processed


def _request(req: Any, i: int, model: str, full: int, takes_task: bool) -> tuple[str, str, int] | str:
    """One ``EmbedContentRequest``: (text, taskType, dimensions), or why it is refused."""
    where = f"* BatchEmbedContentsRequest.requests[{i}]"
    if not isinstance(req, dict):
        return f"{where}: must be an EmbedContentRequest object"
    if req.get("model") != f"models/{model}":
        return f"{where}.model: the model of each request must match the batch's models/{model}"
    parts = (req.get("content") or {}).get("parts") if isinstance(req.get("content"), dict) else None
    if not isinstance(parts, list) or not parts or not all(isinstance(p, dict) and isinstance(p.get("text"), str) for p in parts):
        return f"{where}.content.parts: a text part is required"
    text = "".join(p["text"] for p in parts)
    if not text:
        return f"{where}.content.parts[0].data: required oneof field 'data' must have one initialized field"
    task = req.get("taskType", "")
    if task and (task not in TASK_TYPES or not takes_task):
        why = f"Invalid value at 'requests[{i}].task_type' ({task!r})" if takes_task else \
            f"{where}.task_type: {model} does not support task types; give the task as an instruction in the text"
        return why
    dim = req.get("outputDimensionality", full)
    if not isinstance(dim, int) or isinstance(dim, bool) or not 128 <= dim <= full:
        return f"{where}.output_dimensionality: must be between 128 and {full}, got {dim!r}"
    return text, task, dim


def _query_key(query: str) -> str:
    for pair in query.lstrip("?").split("&"):
        name, _, value = pair.partition("=")
        if name == "key":
            return value
    return ""


def _retry_info(seconds: float) -> dict[str, str]:
    return {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{seconds:.3f}s"}


def _quota_error(quota: dict[str, tuple[float, float, float]], wait: float, tokens: int) -> bytes:
    """The 429 of an exceeded per-minute quota: which one (its id and value, per real minute)
    in a ``QuotaFailure``, and when to come back in a ``RetryInfo``."""
    ids = {"requests": "EmbedContentRequestsPerMinutePerProjectPerModel",
           "tokens": "EmbedContentInputTokensPerModelPerMinute"}
    needed = {"requests": 1, "tokens": tokens}
    over = [k for k, (_, remaining, _) in quota.items() if remaining < needed[k]] or list(quota)
    violations = [{"quotaMetric": f"generativelanguage.googleapis.com/embed_content_{kind}",
                   "quotaId": ids[kind], "quotaDimensions": {"location": "global"},
                   "quotaValue": str(int(quota[kind][0]))} for kind in over]
    details: list[dict[str, Any]] = [{"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": violations},
               {"@type": "type.googleapis.com/google.rpc.Help", "links": [{"description": "Learn more about Gemini API quotas", "url": _HELP}]},
               _retry_info(max(wait, 0.001))]
    msg = f"You exceeded your current quota, please check your plan and billing details. For more information on this error, head to: {_HELP}."
    return error(429, "RESOURCE_EXHAUSTED", msg, details)


WIRE = GeminiWire()
