"""The caching proxy's core: an OpenAI ``POST /v1/embeddings`` answered from the cache,
with only the misses sent upstream (``polars-embed serve``; the HTTP side is ``app.py``).

A request is parsed and checked as OpenAI checks it (``wire.parse_request``), its inputs become
one ``Embedder.embed`` call of the embedder for its model, dimensions and role (``slots.py``;
token arrays that are no text's encoding, a second one: ``tokens.py``), whatever provider
answers the model (``routes.py``): the same plan, cache keys, packing, limiter and in-flight
dedupe as ``embed_column``, so a proxy and a dataframe job on the same cache share entries,
and two clients asking for the same text at once pay for it once. The answer keeps the input order and indices, in ``float`` or
``base64`` (not part of the cache key, nor is ``user``), and says in headers whether it
was a ``HIT``, a ``MISS`` or ``PARTIAL``, how many inputs were hits and what it cost.

Clients present proxy keys (stored hashed, ``keys.Keys``), each with its limits enforced before
anything is paid (``accounts.py``); the upstream key stays here. Usage is kept per proxy key:
in the metrics and in one ledger record per key and model, updated every few seconds
(``Proxy.flush``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from ..errors import (
    CacheError,
    ConfigurationError,
    LongInputError,
    PolarsEmbedError,
    ProviderError,
    RequestRefusedError,
    SharedStateError,
)
from ..pipeline.run import Run
from .accounts import Accounts, OverBudget
from .keys import Keys
from .routes import (
    ROLE_BLIND,
    Timed,
    Upstream,
    family_of,
    make_routed,
    normal_dimensions,
    not_found,
)
from .slots import SHARE, SlotKey, Slots
from .tokens import TokenArrays, split_inputs
from .wire import EmbeddingRequest, OpenAIError, bad_request, encode_vector, shared_down

if TYPE_CHECKING:
    from ..caches import Cache
    from ..embedder import Embedder
    from ..ledger import Ledger
    from ..limiters import Limiter

log = logging.getLogger("polars_embed.proxy")

#: A key's ledger record is a run of at most this many rows; then a new record starts.
RUN_ROWS = 1_000_000
ANONYMOUS = "anonymous"
#: Seconds a shared cache's command is retried: a client is waiting, so a Redis that is away
#: is a 503 at once (the client retries), not a request held for the library's 10 s.
REDIS_RETRY_SECONDS = 0.5


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
    provider_urls: dict[str, str] = field(default_factory=dict)  # family -> base URL (e.g. a Cohere-compatible server)
    provider_options: dict[str, dict[str, Any]] = field(default_factory=dict)  # family -> its provider_options
    models: list[str] = field(default_factory=list)  # provider-prefixed models /v1/models lists beside the upstream's
    limiter: str | None = None  # redis://: the upstream quota and the keys' limits and spending, shared by proxies


class Proxy:
    """Answers embedding requests from the cache and the upstream (framework-free)."""

    def __init__(self, config: ProxyConfig, metrics: Any | None = None) -> None:
        from ..caches import open_cache
        from ..caches.redis import RedisCache
        from ..ledger import open_ledger
        from ..scale.redis_link import is_redis_url, where
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
        if config.limiter is not None and not is_redis_url(config.limiter):
            raise ConfigurationError(f"--limiter must be a redis:// URL (the Redis proxies share), got {where(config.limiter)!r}")
        self.config = config
        self.metrics = metrics
        self.started = time.time()
        self.api_key = config.upstream_api_key or os.environ.get("OPENAI_API_KEY")
        self.base_url = config.upstream_base_url or os.environ.get("OPENAI_BASE_URL")
        self.upstream = Upstream(self.base_url, self.api_key, config.timeout, config.dimensions)
        self.cache = open_cache(config.cache if not is_redis_url(config.cache) else
                                RedisCache(str(config.cache), retry_seconds=REDIS_RETRY_SECONDS))
        self.ledger: Ledger | None = open_ledger(config.ledger, self.cache)
        self._limiters: dict[str, Limiter] = {}  # a quota per model, as OpenAI's are
        self._role_blind: set[str] = set()  # models whose vectors do not depend on the role
        keys = config.keys
        self.accounts = Accounts(keys.limits if keys else {}, spend_path=keys.spend_path if keys else None,
                                 shared=config.limiter)
        self.slots = Slots(self._make, share=SHARE if config.keys is not None else None)
        self._runs: dict[tuple[str, int | None, str], tuple[Run, dict[str, str]]] = {}
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

    # -- embedders -----------------------------------------------------------------------------
    def route(self, req: EmbeddingRequest) -> tuple[str, int | None, str]:
        """The slot of a request, less its input kind: (model, dimensions, role). The role is
        part of it only for a model that has roles, and a model's own size asked for is no
        size (either way, one embedder: one in-flight set for one cache entry)."""
        family = family_of(req.model)
        blind = family in ROLE_BLIND or req.model in self._role_blind
        native = self.upstream.sizes.get(req.model) if not family else None
        return req.model, normal_dimensions(req.model, req.dimensions, native), "document" if blind else req.input_type

    def _make(self, slot: SlotKey) -> Embedder:
        from ..embedder import Embedder
        from ..limiters import RateLimiter, shared_limiter

        model, dimensions, role, kind = slot
        cfg = self.config
        provider: Any = make_routed(model, dimensions, role, upstream=self.upstream, timeout=cfg.timeout,
                                    urls=cfg.provider_urls, options=cfg.provider_options)
        if kind == "tokens":
            if provider.name != "openai":
                raise bad_request(f"{model} takes text: send strings, not token arrays", "input")
            provider = TokenArrays(provider)
        with self._lock:
            limiter = self._limiters.get(model)
            if limiter is None:
                limiter = self._limiters[model] = (shared_limiter(cfg.limiter, cfg.rpm, cfg.tpm, provider,
                                                                  retry_seconds=REDIS_RETRY_SECONDS)
                                                   or RateLimiter(cfg.rpm, cfg.tpm))
        try:
            emb = Embedder(provider=Timed(provider, self.metrics) if self.metrics else provider, cache=self.cache,
                           ledger=False, on_long_input=cfg.on_long_input,  # type: ignore[arg-type]
                           on_error="null", max_workers=cfg.max_workers, max_retry_seconds=cfg.max_retry_seconds,
                           limiter=limiter, price_per_million=cfg.price_per_million.get(model), source="serve")
        except ConfigurationError as exc:  # a provider setting this proxy's --on-long-input cannot use
            raise OpenAIError(400, str(exc)) from None
        if not emb.identity.role:  # its vectors are the same in every role: one slot for them all
            self._role_blind.add(model)
        return emb

    def _run(self, base: tuple[str, int | None, str], emb: Embedder, key: str) -> Run:
        """The open ledger run of this key for this model (a new one after RUN_ROWS rows)."""
        slot = (base[0], base[1], key)
        with self._lock:
            run = self._runs.get(slot, (None, {}))[0]
            if run is None or run.stats.rows >= RUN_ROWS:
                if run is not None:
                    run.close("ok")
                    self._write(slot)
                meta = {"provider": emb.provider.name, "model": emb.model, "dimensions": str(emb.dimensions)}
                run = Run(f"serve:{key}", open_ended=True)
                self._runs[slot] = (run, meta)
            self._dirty.add(slot)
            return run

    # -- embeddings ----------------------------------------------------------------------------
    def all_cached(self, req: EmbeddingRequest) -> bool:
        """Whether every input is in the cache (a quick look, to pick the thread pool): only
        texts, of a model already in use; a failing cache is answered at once (503)."""
        emb = self.slots.peek((*self.route(req), "text"))
        if emb is None or not all(isinstance(x, str) and x.strip() for x in req.inputs):
            return False
        keys = emb.keys(list(dict.fromkeys(req.inputs)))  # type: ignore[arg-type]
        try:
            return all(v is not None for v in self.cache.get_many(keys))
        except PolarsEmbedError as exc:
            raise shared_down(exc) from None

    def embed(self, req: EmbeddingRequest, key: str = ANONYMOUS) -> tuple[dict[str, Any], dict[str, str]]:
        """The answer body and headers of one request, or an ``OpenAIError`` (which carries
        the cost header too: a request refused after part of it was paid says so)."""
        with self.accounts.admit(key) as budget:
            call = Run(f"serve:{key}")  # this request's figures; folded into the key's run below
            call.budget = budget  # the key's, if it has one: reserved before each upstream request
            try:
                return self._embed(req, key, call)
            finally:
                self.accounts.used(key, call.stats.tokens_billed)

    def _embed(self, req: EmbeddingRequest, key: str, call: Run) -> tuple[dict[str, Any], dict[str, str]]:
        base = self.route(req)
        failure: PolarsEmbedError | None = None
        with self.slots.use((*base, "text"), key) as slot:
            if call.budget is not None and slot.embedder.price == 0 and not self._priced(base[0]):
                call.budget.unpriced = base[0]
            parts = split_inputs(slot.embedder, req.inputs)
            n = len(req.inputs)
            req.inputs.clear()  # a token array is a Python int per id: held as text from here on
            outs: list[tuple[Embedder, list[int], list[str], pl.DataFrame]] = []
            try:
                for kind, (rows, texts) in parts.items():
                    with contextlib.ExitStack() as stack:
                        used = slot if kind == "text" else stack.enter_context(self.slots.use((*base, kind), key))
                        out = used.embedder.embed(pl.Series("input", texts, dtype=pl.String), column="input", run=call)
                        used.served = True
                        outs.append((used.embedder, rows, texts, out))
            except PolarsEmbedError as exc:
                failure, failed_rows = exc, rows
            headers = self._account(base, slot.embedder, key, call, outs, served=failure is None)
        if failure is not None:
            self.slots.forget((*base, "text"), slot)
            error = self._error(slot.embedder, failure, failed_rows)
            error.headers = {**error.headers, **headers}
            raise error from None
        return self._answer(req, n, slot.embedder, outs, headers)

    def _answer(self, req: EmbeddingRequest, n: int, emb: Embedder, outs: list[Any],
                headers: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
        errors: list[str | None] = [None] * n
        vectors = np.empty((n, emb.dimensions), dtype=np.float32)
        hits = tokens = 0
        for part, rows, _, out in outs:
            vectors[rows] = out["embedding"].to_numpy()
            for i, e in zip(rows, out["embedding_error"].to_list(), strict=True):
                errors[i] = e if e is None else self._scrub(part, e)
            hits += int(out["embedding_cache_hit"].sum())
            tokens += int(out["embedding_tokens"].sum())
        failed = [i for i, e in enumerate(errors) if e is not None]
        if failed:
            i = failed[0]
            if len(failed) == n and len(set(errors)) == 1:  # the request as a whole: as the upstream said it
                error = OpenAIError(400, str(errors[i]))
            else:
                others = len(failed) - 1
                more = f" ({others} other inputs failed too; the rest are cached)" if others else ""
                error = bad_request(f"'$.input[{i}]' was refused upstream: {errors[i]}{more}", "input")
            error.headers = headers
            raise error
        body = {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": encode_vector(v, req.encoding_format)}
                     for i, v in enumerate(vectors)],
            "model": req.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        state = "HIT" if hits == n else "MISS" if hits == 0 else "PARTIAL"
        return body, {"x-polars-embed-cache": state, "x-polars-embed-cache-hits": str(hits), **headers}

    def _account(self, base: tuple[str, int | None, str], emb: Embedder, key: str, call: Run,
                 outs: list[Any], *, served: bool) -> dict[str, str]:
        """Fold one request's figures into its key's run and the metrics (inputs counted
        only when the request was served); its cost header."""
        figures = call.stats.copy()
        keys = [k for part, _, texts, _ in outs for k in part.keys(list(dict.fromkeys(texts)))]
        self._run(base, emb, key).add(figures, keys, [])
        if self.metrics is not None:
            m = self.metrics
            if served:
                hits = sum(int(out["embedding_cache_hit"].sum()) for *_, out in outs)
                m.inputs.labels(key, "hit").inc(hits)
                m.inputs.labels(key, "miss").inc(sum(len(rows) for _, rows, _, _ in outs) - hits)
            m.cost.labels(key).inc(figures.cost_usd)
            m.tokens.labels(key).inc(figures.tokens_billed)
            for period, usd in (self.accounts.spent(key) or {}).items():
                m.key_spent.labels(key, period).set(usd)
        return {"x-polars-embed-cost-usd": repr(figures.cost_usd)}

    def _priced(self, model: str) -> bool:
        """Whether a model has a price here (given, or in the table; Ollama's are free)."""
        return model in self.config.price_per_million or family_of(model) == "ollama"

    def _error(self, emb: Embedder, exc: PolarsEmbedError, rows: list[int]) -> OpenAIError:
        """The answer to a failed request; ``rows``: the request's indices of the inputs that failed."""
        message = self._scrub(emb, str(exc).splitlines()[0])
        if isinstance(exc, LongInputError):
            m = re.search(r"row (\d+) .* has (\d+) tokens, over the limit of (\d+)", message)
            if m:
                message = (f"This model's maximum context length is {m[3]} tokens, however '$.input[{rows[int(m[1])]}]' "
                           f"has {m[2]} tokens. Please reduce your input.")
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
                return not_found(emb.model) if family_of(emb.model) == "" else OpenAIError(404, message,
                                                                                           code="model_not_found")
            if code == 429:
                return OpenAIError(429, f"the upstream's rate limit: {message}", kind="rate_limit_exceeded")
            if code is None:  # no answer at all: where it is stays here
                return OpenAIError(502, "The upstream cannot be reached; try again shortly.", kind="upstream_error")
            return OpenAIError(502, f"the upstream failed: {message}", kind="upstream_error")
        if isinstance(exc, OverBudget):  # a key's budget (the embedders have none of their own)
            return exc.answer
        if isinstance(exc, (CacheError, SharedStateError)):
            return shared_down(exc)
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
    def _write(self, slot: tuple[str, int | None, str]) -> None:
        entry = self._runs.get(slot)
        if self.ledger is not None and entry is not None:
            self.ledger.record(*entry)

    def flush(self) -> None:
        """Write the records of the keys that were used since the last flush; give back the
        embedders idle for long."""
        with self._lock:
            dirty, self._dirty = self._dirty, set()
        for slot in dirty:
            self._write(slot)
        self.slots.sweep()

    def _flush_loop(self) -> None:
        while not self._stop.wait(self.config.flush_seconds):
            self.flush()

    def close(self) -> None:
        """Close every key's run (written with its final figures), the clients and the cache."""
        self._stop.set()
        with self._lock:
            for slot, (run, _) in self._runs.items():
                run.close("ok")
                self._dirty.add(slot)
        self.flush()
        self.slots.close()
        self.cache.close()
