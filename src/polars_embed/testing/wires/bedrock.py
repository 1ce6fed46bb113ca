"""Amazon Bedrock Runtime's ``InvokeModel`` for embedding models, as the test server answers it.

``POST /model/{modelId}/invoke`` (the model id URL-encoded: ``amazon.titan-embed-text-v2%3A0``),
as documented in https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_InvokeModel.html:

* auth: an ``Authorization: AWS4-HMAC-SHA256 Credential=...`` header, whose signature is checked
  against the test credentials below (``ACCESS_KEY_ID``/``SECRET_ACCESS_KEY``): none is a 403
  ``MissingAuthenticationTokenException``, another key id a 403 ``UnrecognizedClientException``,
  a wrong signature a 403 ``InvalidSignatureException``;
* errors as Bedrock sends them: the code in the ``x-amzn-ErrorType`` header, ``{"message": ...}``
  as the body; 400 ``ValidationException`` (bad body, unknown model, an input over a limit),
  429 ``ThrottlingException`` (quota, storms; no rate-limit headers, no retry-after), 500
  ``InternalServerException``, 503 ``ServiceUnavailableException``
  (https://docs.aws.amazon.com/bedrock/latest/userguide/troubleshooting-api-error-codes.html);
* Titan (https://docs.aws.amazon.com/bedrock/latest/userguide/model-parameters-titan-embed-text.html,
  titan-embedding-models.html): ``{"inputText", "dimensions", "normalize", "embeddingTypes"}``
  (v1: ``inputText`` only), one text of at most 8,192 tokens and 50,000 characters; answers
  ``{"embedding", "inputTextTokenCount", "embeddingsByType"}``;
* Cohere Embed v3 (https://docs.aws.amazon.com/bedrock/latest/userguide/model-parameters-embed-v3.html):
  ``{"texts", "input_type", "truncate", "embedding_types"}``, at most 96 texts of at most 2,048
  characters; the model reads 512 tokens (``truncate`` NONE: a 400 beyond them, END/START: cut);
  answers ``{"embeddings", "id", "response_type", "texts"}`` with no usage in the body;
* every 200 carries ``X-Amzn-Bedrock-Input-Token-Count`` (set ``WIRE.token_header = False`` to
  leave it out, as an answer may).

Tokens are counted with the server's tiktoken; vectors are ``server_vectors(model, dim, texts)``
for Titan (no roles) and ``server_vectors(f"{model}|{input_type}", dim, texts)`` for Cohere, of
the text as embedded (after the server's truncation). A Titan ``normalize: false`` vector is the
unit vector times ``UNNORMALIZED_NORM``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from ..vectors import server_vectors

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ..server import EmbeddingServer

#: The credentials the wire accepts (tests export them as AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY).
ACCESS_KEY_ID = "AKIAPOLARSEMBEDTEST0"
SECRET_ACCESS_KEY = "polars-embed-bedrock-test-secret-0123456789"
#: model id -> (kind, native dimensions)
MODELS = {"amazon.titan-embed-text-v2:0": ("titan", 1024), "amazon.titan-embed-text-v1": ("titan", 1536),
          "cohere.embed-english-v3": ("cohere", 1024), "cohere.embed-multilingual-v3": ("cohere", 1024)}
TITAN_V2_KEYS = {"inputText", "dimensions", "normalize", "embeddingTypes"}
COHERE_KEYS = {"texts", "input_type", "truncate", "embedding_types", "images"}
INPUT_TYPES = ("search_document", "search_query", "classification", "clustering")
UNNORMALIZED_NORM = 2.5
_AUTH = re.compile(r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, ?"
                   r"SignedHeaders=([^,]+), ?Signature=([0-9a-f]{64})$")

Answer = tuple[int, dict[str, str], "bytes | None", "str | None", Any]


class Refused(Exception):
    """A request Bedrock refuses: its status, error code and message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error(status: int, code: str, message: str, fault: str | None = None) -> Answer:
    headers = {"x-amzn-ErrorType": f"{code}:http://internal.amazon.com/coral/com.amazon.bedrock/",
               "x-amzn-RequestId": str(uuid.uuid4())}
    return status, headers, json.dumps({"message": message}).encode(), fault, None


def malformed(detail: str) -> Refused:
    message = f"Malformed input request: {detail}, please reformat your input and try again."
    return Refused(400, "ValidationException", message)


def check_signature(path: str, headers: Mapping[str, str], body: bytes) -> None:
    """SigV4 as AWS checks it: the key id, the scope's service, then the signature itself."""
    auth = headers.get("authorization") or ""
    if not auth:
        raise Refused(403, "MissingAuthenticationTokenException", "Missing Authentication Token")
    m = _AUTH.match(auth)
    if m is None:
        raise Refused(403, "IncompleteSignatureException",
                      "Authorization header requires 'Credential', 'Signature' and 'SignedHeaders'.")
    key_id, date, region, service, signed, signature = m.groups()
    if key_id != ACCESS_KEY_ID:
        raise Refused(403, "UnrecognizedClientException", "The security token included in the request is invalid.")
    if service != "bedrock":
        raise Refused(403, "InvalidSignatureException", "Credential should be scoped to correct service: 'bedrock'.")
    raw_path, _, query = path.partition("?")
    pairs = sorted(p.partition("=")[::2] for p in query.split("&") if p)
    canonical = "\n".join([
        "POST", quote(raw_path, safe="/~"), "&".join(f"{k}={v}" for k, v in pairs),
        "".join(f"{n}:{' '.join((headers.get(n) or '').split())}\n" for n in signed.split(";")),
        signed, headers.get("x-amz-content-sha256") or hashlib.sha256(body).hexdigest(),
    ])
    scope = f"{date}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", headers.get("x-amz-date") or "", scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + SECRET_ACCESS_KEY).encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest(), signature):
        raise Refused(403, "InvalidSignatureException",
                      "The request signature we calculated does not match the signature you provided. Check your "
                      "AWS Secret Access Key and signing method. Consult the service documentation for details.")


Read = tuple[list[str], list[int], str, int, float]  # texts as embedded, tokens, vector key, dimensions, norm


def read_titan(server: EmbeddingServer, model: str, native: int, req: dict[str, Any]) -> Read:
    """Titan's body checked: (texts, tokens, vector key, dimensions, norm)."""
    allowed = TITAN_V2_KEYS if model.endswith("v2:0") else {"inputText"}
    extra = sorted(set(req) - allowed)
    if extra:
        raise malformed(f"extraneous key [{extra[0]}] is not permitted")
    text = req.get("inputText")
    if not isinstance(text, str):
        raise malformed("#: required key [inputText] not found" if text is None
                        else "#/inputText: expected type: String")
    if not text:
        raise malformed("expected minLength: 1, actual: 0")
    if len(text) > 50_000:
        raise malformed(f"expected maxLength: 50000, actual: {len(text)}")
    dim = req.get("dimensions", native)
    if "dimensions" in req and (dim not in (256, 512, 1024) or isinstance(dim, bool)):
        raise malformed(f"#/dimensions: {dim} is not a valid enum value")
    if req.get("embeddingTypes", ["float"]) != ["float"]:
        raise malformed("#/embeddingTypes: only [\"float\"] is served here")
    normalize = req.get("normalize", True)
    if not isinstance(normalize, bool):
        raise malformed("#/normalize: expected type: Boolean")
    count = len(server._enc.encode_ordinary(text))
    if count > 8192:
        raise Refused(400, "ValidationException",
                      "400 Bad Request: Too many input tokens. Max input tokens: 8192, "
                      f"request input token count: {count} ")
    return [text], [count], model, dim, 1.0 if normalize else UNNORMALIZED_NORM


def read_cohere(server: EmbeddingServer, model: str, native: int, req: dict[str, Any]) -> Read:
    """Cohere's body checked, and its texts over 512 tokens cut as ``truncate`` says."""
    extra = sorted(set(req) - COHERE_KEYS)
    if extra:
        raise malformed(f"extraneous key [{extra[0]}] is not permitted")
    texts, role = req.get("texts"), req.get("input_type")
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise malformed("#: required key [texts] not found" if texts is None
                        else "#/texts: expected type: JSONArray of String")
    if len(texts) > 96:
        raise malformed(f"#/texts: expected maxItems: 96, actual: {len(texts)}")
    if role not in INPUT_TYPES:
        raise malformed("#: required key [input_type] not found" if role is None
                        else f"#/input_type: {role} is not a valid enum value")
    truncate = req.get("truncate", "NONE")
    if truncate not in ("NONE", "START", "END"):
        raise malformed(f"#/truncate: {truncate} is not a valid enum value")
    if req.get("embedding_types", ["float"]) != ["float"]:
        raise malformed("#/embedding_types: only [\"float\"] is served here")
    for i, t in enumerate(texts):
        if len(t) > 2048:
            raise malformed(f"#/texts/{i}: expected maxLength: 2048, actual: {len(t)}")
    embedded, counts = [], []
    for t in texts:
        ids = server._enc.encode_ordinary(t)
        if len(ids) > 512 and truncate == "NONE":
            raise Refused(400, "ValidationException",
                          f"invalid request: text is {len(ids)} tokens, over the model's 512; use truncate")
        if len(ids) > 512:
            ids = ids[:512] if truncate == "END" else ids[-512:]
            t = server._enc.decode(ids)
        embedded.append(t)
        counts.append(len(ids))
    return embedded, counts, f"{model}|{role}", native, 1.0


class BedrockWire:
    """The ``Wire`` of Bedrock Runtime's InvokeModel (see the module's docstring)."""

    #: Whether a 200 carries ``X-Amzn-Bedrock-Input-Token-Count`` (Cohere's only usage).
    token_header = True

    def match(self, path: str) -> bool:
        p = path.partition("?")[0]
        return p.startswith("/model/") and p.endswith("/invoke")

    def handle(self, server: EmbeddingServer, path: str, headers: Mapping[str, str], body: bytes) -> Answer:
        try:
            check_signature(path, headers, body)
            model = unquote(path.partition("?")[0][len("/model/"):-len("/invoke")])
            if model not in MODELS:
                raise Refused(400, "ValidationException", "The provided model identifier is invalid.")
            kind, native = MODELS[model]
            try:
                req = json.loads(body)
            except ValueError:
                raise malformed("the body is not JSON") from None
            if not isinstance(req, dict):
                raise malformed("#: expected type: JSONObject")
            read = read_titan if kind == "titan" else read_cohere
            texts, counts, key, dim, norm = read(server, model, native, req)
            with server._lock:
                faults = server.faults
            if faults.refuse_all is not None or any(p in t for p in faults.poison for t in texts):
                raise Refused(400, "ValidationException",
                              faults.refuse_all or "Malformed input request: forbidden sequence.")
        except Refused as r:
            return error(r.status, r.code, r.message)
        return self.answer(server, kind, texts, counts, key, dim, norm, req)

    def answer(self, server: EmbeddingServer, kind: str, texts: list[str], counts: list[int], key: str,
               dim: int, norm: float, req: dict[str, Any]) -> Answer:
        """Quota, faults, then the model's answer."""
        total = sum(counts)
        adm = server.admit(total)
        extra = dict(server.faults.headers)
        if adm.outcome in ("ratelimit", "storm_429"):
            throttled = error(429, "ThrottlingException", "Too many requests, please wait before trying again.")
            return 429, {**throttled[1], **extra}, throttled[2], adm.outcome, None
        if adm.outcome == "5xx":
            return error(500, "InternalServerException",
                         "The server encountered an internal error while processing the request.", "5xx")
        if adm.outcome == "down":
            return error(503, "ServiceUnavailableException", "Service is temporarily unavailable.", "down")
        processed = (len(texts), total, texts)
        if adm.outcome in ("hang", "drop"):
            return 200, {}, None, adm.outcome, processed
        roll = adm.roll
        vectors = server_vectors(key, dim, texts)[:, : dim - 1 if roll["wrong_dim"] else dim] * norm
        fault = "wrong_dim" if roll["wrong_dim"] else None
        rows = [[float(x) for x in v] for v in vectors]
        if kind == "titan":
            payload: dict[str, Any] = {"embedding": rows[0], "inputTextTokenCount": total,
                                       "embeddingsByType": {"float": rows[0]}}
        else:
            if roll["short"] and len(rows) > 1:
                rows, fault = rows[:-1], "short"
            by_type = "embedding_types" in req
            payload = {"embeddings": {"float": rows} if by_type else rows, "id": str(uuid.uuid4()),
                       "response_type": "embeddings_by_type" if by_type else "embeddings_floats", "texts": req["texts"]}
        data = json.dumps(payload).encode()
        if roll["bad_json"]:
            data, fault = data[: len(data) // 2], "bad_json"
        headers = {"content-type": "application/json", "x-amzn-RequestId": str(uuid.uuid4()),
                   "X-Amzn-Bedrock-Invocation-Latency": "5", **extra}
        if self.token_header:
            headers["X-Amzn-Bedrock-Input-Token-Count"] = str(total)
        return 200, headers, data, fault, processed


WIRE = BedrockWire()
