"""The caching proxy's core: an OpenAI ``POST /v1/embeddings`` answered from the cache,
with only the misses sent upstream (``polars-embed serve``; the HTTP side is ``app.py``).

A request is parsed and checked as OpenAI checks it (``wire.parse_request``), its inputs become
one ``Embedder.embed`` call of the embedder for its model and dimensions: the same plan,
cache keys, packing, limiter and in-flight dedupe as ``embed_column``, so a proxy and a
dataframe job on the same cache share entries, and two clients asking for the same text at
once pay for it once. The answer keeps the input order and indices, in ``float`` or
``base64`` (not part of the cache key, nor is ``user``), and says in headers whether it
was a ``HIT``, a ``MISS`` or ``PARTIAL``, how many inputs were hits and what it cost.

Clients present proxy keys (stored hashed, ``keys.Keys``); the upstream key stays here. Usage
is kept per proxy key: in the metrics and in one ledger record per key and model,
updated every few seconds (``Proxy.flush``).
"""

from __future__ import annotations

import copy
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import polars as pl

from ..errors import (
    ConfigurationError,
    LongInputError,
    PolarsEmbedError,
    ProviderError,
    RequestRefusedError,
)
from ..pipeline.run import Run
from ..pipeline.runner import status_of
from .keys import Keys
from .wire import EmbeddingRequest, OpenAIError, bad_request, encode_vector

if TYPE_CHECKING:
    from ..caches import Cache
    from ..embedder import Embedder
    from ..ledger import Ledger
    from ..limiters import Limiter
    from ..providers.base import BatchResult, Provider

log = logging.getLogger("polars_embed.proxy")

#: Embedders (model x dimensions) one proxy keeps; more is a client trying every size.
MAX_EMBEDDERS = 32
#: A key's ledger record is a run of at most this many rows; then a new record starts.
RUN_ROWS = 1_000_000
ANONYMOUS = "anonymous"


@dataclass
class ProxyConfig:
    """What ``polars-embed serve`` is started with (see ``polars-embed serve --help``)."""

    upstream_base_url: str | None = None  # default: $OPENAI_BASE_URL or OpenAI
    upstream_api_key: str | None = None  # default: $OPENAI_API_KEY; never leaves the proxy
    cache: Cache | str | os.PathLike[str] | bool | None = None
    keys: Keys | None = None  # None: any client (the proxy listens on loopback then)
    on_long_input: str = "error"  # OpenAI's answer (400); or "truncate"
    rpm: float | None = None
    tpm: float | None = None
    max_workers: int = 16
    timeout: float = 60.0  # per upstream request
    max_retry_seconds: float = 30.0  # a client is waiting: retries end sooner than a batch job's
    ledger: str | os.PathLike[str] | bool | None = None
    dimensions: dict[str, int] = field(default_factory=dict)  # model -> native size, for models not in the table
    price_per_million: dict[str, float] = field(default_factory=dict)
    flush_seconds: float = 2.0


class _Timed:
    """The upstream provider, with each request's latency and 429s counted in the metrics."""

    def __init__(self, inner: Provider, metrics: Any) -> None:
        self._inner, self._metrics = inner, metrics

    def __getattr__(self, name: str) -> Any:
        if name == "_inner":  # a copy being built has no inner provider yet
            raise AttributeError(name)
        return getattr(self._inner, name)

    def __copy__(self) -> _Timed:  # an Embedder copies its provider: copy the one inside too
        return _Timed(copy.copy(self._inner), self._metrics)

    def embed(self, texts: list[str]) -> BatchResult:
        started = time.perf_counter()
        try:
            result = self._inner.embed(texts)
            self._metrics.upstream_tokens.inc(result.billed_tokens)
            return result
        except Exception as exc:
            if status_of(exc) == 429:
                self._metrics.upstream_429.inc()
            raise
        finally:
            self._metrics.upstream_seconds.observe(time.perf_counter() - started)


class Proxy:
    """Answers embedding requests from the cache and the upstream (framework-free)."""

    def __init__(self, config: ProxyConfig, metrics: Any | None = None) -> None:
        from ..caches import open_cache
        from ..ledger import open_ledger
        from ..validate import check_number, check_settings

        check_settings(rpm=config.rpm, tpm=config.tpm, price_per_million=None, max_cost=None, max_attempts=8,
                       max_workers=config.max_workers, timeout=config.timeout,
                       max_retry_seconds=config.max_retry_seconds)
        for model, price in config.price_per_million.items():
            check_number(f"the price of {model!r}", price, at_least=0, unit=" (US dollars per 1M tokens)")
        for model, size in config.dimensions.items():
            check_number(f"the dimensions of {model!r}", size, at_least=1)
        if config.on_long_input not in ("error", "truncate"):
            msg = f"on_long_input must be 'error' or 'truncate' for the proxy, got {config.on_long_input!r}"
            raise ConfigurationError(msg)
        self.config = config
        self.metrics = metrics
        self.api_key = config.upstream_api_key or os.environ.get("OPENAI_API_KEY")
        self.base_url = config.upstream_base_url or os.environ.get("OPENAI_BASE_URL")
        self.cache = open_cache(config.cache)
        self.ledger: Ledger | None = open_ledger(config.ledger, self.cache)
        self._limiters: dict[str, Limiter] = {}  # a quota per model, as OpenAI's are
        self._embedders: dict[tuple[str, int | None], Embedder] = {}
        self._served: set[tuple[str, int | None]] = set()  # slots that answered a request
        self._runs: dict[tuple[str, int | None, str], Run] = {}
        self._dirty: set[tuple[str, int | None, str]] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._flusher = threading.Thread(target=self._flush_loop, name="polars-embed-ledger", daemon=True)
        self._flusher.start()

    # -- who -----------------------------------------------------------------------------------
    def authenticate(self, authorization: str | None) -> str:
        """The proxy key's name; 401 for a missing or unknown key (when keys are configured)."""
        keys = self.config.keys
        if keys is None:
            return ANONYMOUS
        scheme, _, token = (authorization or "").strip().partition(" ")
        key = token.strip() if scheme.lower() == "bearer" else (authorization or "").strip()  # the scheme: any case
        name = keys.name_of(key) if key else None
        if name is None:
            msg = "You didn't provide an API key." if not key else "Incorrect API key provided."
            raise OpenAIError(401, msg, code="invalid_api_key")
        return name

    # -- embeddings ----------------------------------------------------------------------------
    def embedder(self, model: str, dimensions: int | None) -> Embedder:
        from ..embedder import Embedder
        from ..limiters import RateLimiter
        from ..providers import OpenAIProvider

        with self._lock:
            emb = self._embedders.get((model, dimensions))
            if emb is not None:
                return emb
            if len(self._embedders) >= MAX_EMBEDDERS:
                raise bad_request(f"this proxy serves at most {MAX_EMBEDDERS} model and dimensions pairs", "model")
            if model.startswith("local:"):
                raise bad_request("the proxy serves the upstream's models, not local ones", "model")
            cfg = self.config
            dims = dimensions if dimensions is not None else cfg.dimensions.get(model)
            try:
                provider = OpenAIProvider(model, dimensions=dims, base_url=self.base_url, api_key=self.api_key,
                                          timeout=cfg.timeout, send_dimensions=dimensions is not None,
                                          find_dimensions=False)  # a client's model name never costs a request
            except ConfigurationError as exc:
                raise bad_request(str(exc).replace("pass dimensions= with it", "send dimensions, or start the proxy "
                                            "with --model-dimensions MODEL=N"), "model") from None
            emb = Embedder(provider=_Timed(provider, self.metrics) if self.metrics else provider, cache=self.cache,
                           ledger=False, on_long_input=cfg.on_long_input,  # type: ignore[arg-type]
                           on_error="null", max_workers=cfg.max_workers, max_retry_seconds=cfg.max_retry_seconds,
                           limiter=self._limiters.setdefault(model, RateLimiter(cfg.rpm, cfg.tpm)),
                           price_per_million=cfg.price_per_million.get(model), source="serve")
            self._embedders[(model, dimensions)] = emb
            return emb

    def _run(self, req: EmbeddingRequest, key: str) -> Run:
        """The open ledger run of this key for this model (a new one after RUN_ROWS rows)."""
        slot = (req.model, req.dimensions, key)
        with self._lock:
            run = self._runs.get(slot)
            if run is None or run.stats.rows >= RUN_ROWS:
                if run is not None:
                    run.close("ok")
                    self._dirty.add(slot)
                    self._write(slot, run)
                run = self._runs[slot] = Run(f"serve:{key}", open_ended=True)
            self._dirty.add(slot)
            return run

    def all_cached(self, req: EmbeddingRequest) -> bool:
        """Whether every input is in the cache (a quick look, to pick the thread pool)."""
        if not all(isinstance(x, str) for x in req.inputs):
            return False
        try:
            emb = self.embedder(req.model, req.dimensions)
        except OpenAIError:
            return True  # answered at once with the error
        keys = emb.keys(list(dict.fromkeys(req.inputs)))  # type: ignore[arg-type]
        return all(v is not None for v in self.cache.get_many(keys))

    def embed(self, req: EmbeddingRequest, key: str = ANONYMOUS) -> tuple[dict[str, Any], dict[str, str]]:
        """The answer body and headers of one request, or an ``OpenAIError`` (which carries
        the cost header too: a request refused after part of it was paid says so)."""
        emb = self.embedder(req.model, req.dimensions)
        texts = [x if isinstance(x, str) else self._decode(emb, x, i) for i, x in enumerate(req.inputs)]
        call = Run(f"serve:{key}")  # this request's figures; folded into the key's run below
        try:
            out = emb.embed(pl.Series("input", texts, dtype=pl.String), column="input", run=call)
        except PolarsEmbedError as exc:
            self._forget(req, emb)
            error = self._error(emb, exc)
            error.headers = self._account(emb, req, key, call, texts, hits=0)
            raise error from None
        self._served.add((req.model, req.dimensions))
        hits = int(out["embedding_cache_hit"].sum())
        headers = self._account(emb, req, key, call, texts, hits=hits)
        errors = out["embedding_error"]
        if errors.null_count() < len(errors):
            i = int(errors.is_not_null().arg_max())  # type: ignore[arg-type]
            others = len(errors) - errors.null_count() - 1
            more = f" ({others} other inputs failed too; the rest are cached)" if others else ""
            error = bad_request(f"'$.input[{i}]' was refused upstream: {self._scrub(emb, errors[i])}{more}", "input")
            error.headers = headers
            raise error
        tokens = int(out["embedding_tokens"].sum())
        vectors = out["embedding"].to_numpy()
        body = {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": encode_vector(v, req.encoding_format)}
                     for i, v in enumerate(vectors)],
            "model": req.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        state = "HIT" if hits == len(texts) else "MISS" if hits == 0 else "PARTIAL"
        return body, {"x-polars-embed-cache": state, "x-polars-embed-cache-hits": str(hits), **headers}

    def _account(self, emb: Embedder, req: EmbeddingRequest, key: str, call: Run, texts: list[str], *,
                 hits: int) -> dict[str, str]:
        """Fold one request's figures into its key's run and the metrics; its cost header."""
        figures = call.stats.copy()
        self._run(req, key).add(figures, emb.keys(list(dict.fromkeys(texts))), [])
        if self.metrics is not None:
            m = self.metrics
            m.inputs.labels(key, "hit").inc(hits)
            m.inputs.labels(key, "miss").inc(len(texts) - hits)
            m.cost.labels(key).inc(figures.cost_usd)
            m.tokens.labels(key).inc(figures.tokens_billed)
        return {"x-polars-embed-cost-usd": repr(figures.cost_usd)}

    def _forget(self, req: EmbeddingRequest, emb: Embedder) -> None:
        """A model and size that never worked does not keep its slot (a client trying
        names or sizes the upstream refuses would fill them all)."""
        slot = (req.model, req.dimensions)
        with self._lock:
            if slot not in self._served and self._embedders.get(slot) is emb:
                del self._embedders[slot]  # not closed: a request of it may still be in flight

    def _decode(self, emb: Embedder, ids: list[int], i: int) -> str:
        """A token array as the text it encodes, when that text encodes back to the same tokens
        (then the upstream embeds the same tokens and the cache entry is the text's)."""
        tokenizer = emb.provider.tokenizer()
        try:
            text = tokenizer.decode(ids)  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - ids outside the vocabulary
            raise bad_request(f"'$.input[{i}]' is invalid: token ids outside the model's vocabulary.", "input") from None
        if not text.strip() or tokenizer.encode_batch([text])[0] != ids:
            raise bad_request(f"'$.input[{i}]' is invalid here: these tokens are not the encoding of a text (split in the "
                       "middle of a character?); send the text instead.", "input")
        return text

    def _error(self, emb: Embedder, exc: PolarsEmbedError) -> OpenAIError:
        message = self._scrub(emb, str(exc).splitlines()[0])
        if isinstance(exc, LongInputError):
            m = re.search(r"row (\d+) .* has (\d+) tokens, over the limit of (\d+)", message)
            if m:
                message = (f"This model's maximum context length is {m[3]} tokens, however '$.input[{m[1]}]' has "
                           f"{m[2]} tokens. Please reduce your input.")
            return OpenAIError(400, message, param="input", code="context_length_exceeded")
        if isinstance(exc, RequestRefusedError):
            if exc.status_code and 400 <= exc.status_code < 500:
                return OpenAIError(exc.status_code, message)
            return OpenAIError(502, f"the upstream's answers cannot be true: {message}", kind="upstream_error")
        if isinstance(exc, ProviderError):
            code = exc.status_code
            if code in (401, 403):  # the proxy's credentials, not the client's
                return OpenAIError(502, "the upstream refused the proxy's credentials", kind="upstream_error")
            if code == 404:
                return OpenAIError(404, message, code="model_not_found")
            if code == 429:
                return OpenAIError(429, f"the upstream's rate limit: {message}", kind="rate_limit_exceeded")
            return OpenAIError(502, f"the upstream failed: {message}", kind="upstream_error")
        if isinstance(exc, ConfigurationError):
            return OpenAIError(400, message)
        return OpenAIError(503, message, kind="server_error")

    def _scrub(self, emb: Embedder, text: str) -> str:
        """Never the upstream key in an answer, a log or the metrics (the provider redacts it
        too; this is the last line)."""
        redact = getattr(emb.provider, "redact", None)
        text = redact(text) if callable(redact) else text
        return text.replace(self.api_key, "[upstream key]") if self.api_key else text

    # -- ledger --------------------------------------------------------------------------------
    def _write(self, slot: tuple[str, int | None, str], run: Run) -> None:
        emb = self._embedders.get(slot[:2])
        if self.ledger is None or emb is None:
            return
        meta = {"provider": emb.provider.name, "model": emb.model, "dimensions": str(emb.dimensions)}
        self.ledger.record(run, meta)

    def flush(self) -> None:
        """Write the records of the keys that were used since the last flush."""
        with self._lock:
            dirty, self._dirty = self._dirty, set()
            runs = [(slot, self._runs[slot]) for slot in dirty if slot in self._runs]
        for slot, run in runs:
            self._write(slot, run)

    def _flush_loop(self) -> None:
        while not self._stop.wait(self.config.flush_seconds):
            self.flush()

    def close(self) -> None:
        """Close every key's run (written with its final figures), the clients and the cache."""
        self._stop.set()
        with self._lock:
            for slot, run in self._runs.items():
                run.close("ok")
                self._dirty.add(slot)
        self.flush()
        for emb in list(self._embedders.values()):
            emb.runner.close()
        self.cache.close()
