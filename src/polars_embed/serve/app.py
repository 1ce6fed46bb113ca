"""``polars-embed serve``: the caching proxy (``proxy.py``) over HTTP, on Starlette under uvicorn.

Routes: ``POST /v1/embeddings`` (as OpenAI answers it), ``GET /v1/models`` (passed through
from the upstream), ``GET /health`` and ``GET /metrics`` (Prometheus). Every error is in
OpenAI's shape and status; a bad request is a 4xx, never a 500.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import time
import uuid
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError
from .proxy import ANONYMOUS, Proxy, ProxyConfig
from .wire import OpenAIError, parse_request

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

log = logging.getLogger("polars_embed.serve")

#: Largest request body read. OpenAI takes at most 300,000 tokens a request: as token arrays
#: about 2 MiB of JSON, as text (escaped) rarely more than 8 MiB. A body of 32 MiB parses
#: into many times its size (a Python object per token id), and ``LARGE_BODIES`` are answered
#: at once: the worst case is about 2 GB, wherever the proxy runs.
MAX_BODY = 32 * 2**20
#: Seconds a request's body may take to arrive, plus one per MiB (``body_seconds``).
BODY_SECONDS = 10.0
#: Bytes of bodies being read at once (what has arrived of them), a quarter of it per proxy key.
READING = 256 * 2**20


class Metrics:
    """The proxy's Prometheus metrics, in a registry of their own."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        r = self.registry = CollectorRegistry()
        self.requests = Counter("polars_embed_proxy_requests", "Embedding requests answered, by proxy key and status",
                                ["key", "status"], registry=r)
        self.inputs = Counter("polars_embed_proxy_inputs", "Inputs answered, by proxy key and cache result (hit, miss)",
                              ["key", "result"], registry=r)
        self.tokens = Counter("polars_embed_proxy_tokens", "Tokens of the inputs paid for, by proxy key", ["key"],
                              registry=r)
        self.cost = Counter("polars_embed_proxy_cost_usd", "US dollars paid upstream, by proxy key", ["key"], registry=r)
        self.upstream_tokens = Counter("polars_embed_proxy_upstream_tokens_billed",
                                       "Tokens the upstream billed (its usage field)", registry=r)
        self.upstream_seconds = Histogram("polars_embed_proxy_upstream_request_seconds",
                                          "Latency of each upstream request (retries each counted)", registry=r,
                                          buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.key_spent = Gauge("polars_embed_proxy_key_spent_usd", "US dollars a proxy key with a budget has spent, "
                               "this UTC day or month", ["key", "period"], registry=r)
        self.upstream_429 = Counter("polars_embed_proxy_upstream_429", "429 answers from the upstream", registry=r)
        self.seconds = Histogram("polars_embed_proxy_request_seconds", "Latency of each embedding request",
                                 ["cache"], registry=r,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))


#: Worker threads for requests that are all cache hits, and for those that go upstream: a
#: crowd of slow misses never makes a hit wait for a thread.
HIT_THREADS, MISS_THREADS = 16, 64
#: Requests of a body over 1 MiB parsed and answered at once: each takes up to 16 times its
#: body in memory (12x measured for token arrays, tests/test_serve_hostile.py), so at most
#: about 2 GB between them at ``MAX_BODY``.
LARGE_BODIES = 4


def create_app(config: ProxyConfig) -> Starlette:
    """The ASGI app; the proxy is closed (every key's ledger record written) at shutdown."""
    import anyio
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    metrics = Metrics()
    proxy = Proxy(config, metrics)
    limits: dict[str, Any] = {}

    async def embeddings(request: Request) -> Response:
        started, key, cache = time.perf_counter(), ANONYMOUS, "none"
        try:
            key = proxy.authenticate(request.headers.get("authorization"))
            body = await _read(request, limits["reading"], key)
            large = len(body) > 2**20
            async with limits["bodies"] if large else contextlib.nullcontext():  # a large one, whole, a few at once
                req = await anyio.to_thread.run_sync(parse_request, body) if large else parse_request(body)
                del body
                hit = await anyio.to_thread.run_sync(proxy.all_cached, req, limiter=limits["hits"])
                payload, headers = await anyio.to_thread.run_sync(proxy.embed, req, key,
                                                                  limiter=limits["hits" if hit else "misses"])
            cache = headers["x-polars-embed-cache"].lower()
            response: Response = Response(json.dumps(payload), media_type="application/json", headers=headers)
        except OpenAIError as exc:
            response = error(exc)
        except Exception:  # a bug of ours: said once in the log, never the key, never a traceback to the client
            log.exception(f"embedding request {request.scope.get('state', {}).get('request_id', '')} failed")
            response = error(OpenAIError(500, "the proxy failed on this request; see its log", kind="server_error"))
        metrics.requests.labels(key, str(response.status_code)).inc()
        if response.status_code == 200:
            metrics.seconds.labels(cache).observe(time.perf_counter() - started)
        return response

    async def models(request: Request) -> Response:
        try:
            proxy.authenticate(request.headers.get("authorization"))
            status, body = await anyio.to_thread.run_sync(_models, proxy, limiter=limits["hits"])
        except OpenAIError as exc:
            return error(exc)
        return Response(body, status_code=status, media_type="application/json")

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "cache": str(getattr(proxy.cache, "directory", "none"))})

    async def metrics_route(request: Request) -> Response:
        """Prometheus text; with proxy keys, for a holder of one (it names them and their usage)."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        try:
            proxy.authenticate(request.headers.get("authorization"))
        except OpenAIError as exc:
            return error(exc)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        limits.update(hits=anyio.CapacityLimiter(HIT_THREADS), misses=anyio.CapacityLimiter(MISS_THREADS),
                      bodies=anyio.Semaphore(LARGE_BODIES), reading=Reading())
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(proxy.close)

    app = Starlette(middleware=[Middleware(RequestIds)], routes=[
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/embeddings", embeddings, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics_route, methods=["GET"]),
    ], lifespan=lifespan, exception_handlers={HTTPException: http_error})
    app.state.proxy = proxy
    return app


class RequestIds:
    """Every answer carries an ``x-request-id`` (``req_`` and 32 hex digits), as OpenAI's do:
    the SDK's ``_request_id``, and what a client quotes when it reports a failure (the log of
    a failed request names it)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = f"req_{uuid.uuid4().hex}"
        scope.setdefault("state", {})["request_id"] = rid

        async def send_with_id(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", rid.encode())]}
            await send(message)

        await self.app(scope, receive, send_with_id)


def error(exc: OpenAIError) -> Response:
    """An ``OpenAIError`` as OpenAI answers it (with its cost header, if it paid)."""
    from starlette.responses import JSONResponse

    headers = {"www-authenticate": "Bearer"} if exc.status == 401 else {}
    return JSONResponse(exc.body(), status_code=exc.status, headers={**headers, **exc.headers})


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 in OpenAI's shape."""
    status = getattr(exc, "status_code", 500)
    detail = getattr(exc, "detail", None) or "error"
    return error(OpenAIError(status, f"{request.method} {request.url.path}: {detail}"))


def body_seconds(length: int | None) -> float:
    """How long a body may take to arrive: ``BODY_SECONDS``, plus a second per MiB it announces."""
    return BODY_SECONDS + (length or MAX_BODY) / 2**20


class Reading:
    """Bytes of request bodies being read, counted as they arrive: over ``READING`` between
    them, or a quarter of it for one proxy key, the body that would pass it is a 503 at once.
    A slow sender holds what it sent, never what it announced."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = READING if limit is None else limit
        self.held = 0
        self.by_key: dict[str, int] = {}

    def take(self, key: str, size: int) -> None:  # the event loop's thread only: no lock
        mine = self.by_key.get(key, 0)
        if self.held + size > self.limit or (key != ANONYMOUS and mine + size > self.limit // 4):
            raise OpenAIError(503, "the proxy is reading too many large requests at once; try again shortly",
                              kind="server_error")
        self.held += size
        self.by_key[key] = mine + size

    def give(self, key: str, size: int) -> None:
        self.held -= size
        self.by_key[key] -= size
        if not self.by_key[key]:
            del self.by_key[key]


async def _read(request: Request, reading: Reading, key: str) -> bytes:
    """The body, within its deadline (``body_seconds``) and the limits on its size."""
    import anyio
    from starlette.requests import ClientDisconnect

    length = request.headers.get("content-length")
    announced = int(length) if length is not None and length.isdigit() else None
    if announced is not None and announced > MAX_BODY:
        raise OpenAIError(413, f"the request body is over {MAX_BODY // 2**20} MiB")
    chunks, size = [], 0
    try:
        with anyio.move_on_after(body_seconds(announced)) as deadline:
            async for chunk in request.stream():
                if size + len(chunk) > MAX_BODY or (announced is not None and size + len(chunk) > announced):
                    raise OpenAIError(413, f"the request body is over {MAX_BODY // 2**20} MiB")
                reading.take(key, len(chunk))
                chunks.append(chunk)
                size += len(chunk)
    except ClientDisconnect:
        raise OpenAIError(400, "the client closed the connection before its body arrived") from None
    finally:
        if size:
            reading.give(key, size)
    if deadline.cancelled_caught:
        raise OpenAIError(408, f"the request body did not arrive within {body_seconds(announced):.0f} s")
    return b"".join(chunks)


def _models(proxy: Proxy) -> tuple[int, bytes]:
    """``GET /v1/models``: the upstream's list (its answer as it is), with the provider-prefixed
    models the proxy was started with (``--model``) added in the spec's shape."""
    status, body = proxy.upstream.models()
    if status != 200 or not proxy.config.models:
        return status, body
    try:
        listing = json.loads(body)
        data = listing["data"]
    except (ValueError, KeyError, TypeError):
        return status, body
    started = int(proxy.started)
    data += [{"id": m, "object": "model", "created": started, "owned_by": m.partition(":")[0]}
             for m in proxy.config.models if m not in {d.get("id") for d in data if isinstance(d, dict)}]
    return status, json.dumps(listing).encode()


def listen(host: str, port: int) -> socket.socket:
    """A listening socket whose connections send small writes at once: uvicorn writes the
    headers and the body of an answer separately, and with Nagle on, every answer on a
    kept-alive connection (what the ``openai`` client keeps) waited 40 ms for the client's
    delayed ACK. Accepted connections inherit TCP_NODELAY from it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        msg = f"cannot listen on {host}:{port} ({exc.strerror or exc})"
        raise ConfigurationError(msg) from None
    return sock


def serve(config: ProxyConfig, *, host: str = "127.0.0.1", port: int = 8080, log_level: str = "info") -> None:
    """Run the proxy under uvicorn until Ctrl-C or SIGTERM."""
    import uvicorn

    sock = listen(host, port)
    server = uvicorn.Server(uvicorn.Config(create_app(config), log_level=log_level, access_log=False, backlog=512))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


class Serving:
    """The proxy under uvicorn in a background thread, on a free loopback port (tests,
    benchmarks, a notebook): ``with Serving(config) as s: OpenAI(base_url=s.url, ...)``."""

    def __init__(self, config: ProxyConfig, *, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn

        self.app = create_app(config)
        self._socket = listen(host, port)
        self.host, self.port = host, self._socket.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", access_log=False,
                                                    backlog=512, timeout_keep_alive=30))
        self._thread: Any = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def proxy(self) -> Proxy:
        return self.app.state.proxy  # type: ignore[no-any-return]

    def __enter__(self) -> Serving:  # noqa: PYI034 - returns the running proxy itself
        import threading

        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._socket]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                msg = "the proxy did not start"
                raise RuntimeError(msg)
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=30)
        self._socket.close()
