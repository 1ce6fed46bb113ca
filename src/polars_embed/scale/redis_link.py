"""One connection to the Redis that a cluster's workers share (``redis://host:port/db``).

A Redis that restarts, or a network that blinks, is ridden through: each command is
retried with backoff for about ``RETRY_SECONDS``; after that the caller gets one sentence
naming the Redis (its password left out) and what was being done, and until a command
succeeds again the others on that Redis are tried once, not retried: a run stops about
``RETRY_SECONDS`` after Redis went away (12 s measured), not that again for each claim
it releases on the way out.
"""

from __future__ import annotations

import re
import threading
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..errors import ConfigurationError

#: How long a command is retried while Redis cannot be reached (a restart takes about a second).
RETRY_SECONDS = 10.0


def is_redis_url(value: object) -> bool:
    return isinstance(value, str) and value.lower().startswith(("redis://", "rediss://", "unix://"))


def looks_like_url(value: object) -> bool:
    """A ``scheme://`` string: meant as a URL, not a path (``--cache http://...`` is a mistake)."""
    return isinstance(value, str) and re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", value) is not None


def where(url: str) -> str:
    """``url`` without its password (in the authority or a ``password=`` query), for messages."""
    try:
        parts = urlsplit(url)
        query = "&".join(p if not p.lower().startswith("password=") else "password=***"
                         for p in parts.query.split("&")) if parts.query else ""
        parts = parts._replace(query=query)
        if parts.password is not None or "@" in parts.netloc:
            host = parts.netloc.rpartition("@")[2]
            parts = parts._replace(netloc=f"{parts.username or ''}:***@{host}")
        return urlunsplit(parts)
    except ValueError:  # not a URL that parses: say only its scheme
        return url.partition("://")[0] + "://***"


def connect(url: str, retry_seconds: float | None = None) -> Any:
    """A redis-py client for ``url`` that retries through a restart for about ``retry_seconds``
    (default ``RETRY_SECONDS``)."""
    try:
        import redis
        from redis.backoff import ExponentialBackoff
        from redis.retry import Retry
    except ImportError as exc:
        msg = f"{where(url)} needs redis-py: pip install 'polars-embed[redis]'"
        raise ConfigurationError(msg) from exc
    seconds = RETRY_SECONDS if retry_seconds is None else retry_seconds
    retry = _retry_class(Retry)(url, ExponentialBackoff(cap=1.0, base=0.05), retries=int(seconds) + 4 if seconds >= 1 else 1)
    try:
        return redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=2, retry=retry,
                                    retry_on_error=[redis.ConnectionError, redis.TimeoutError],
                                    health_check_interval=30)
    except ValueError as exc:
        msg = f"{where(url)} is not a Redis URL redis-py understands ({exc}); use redis://host:port/db"
        raise ConfigurationError(msg) from exc


#: Redis URLs on which a command has just given up: their commands are tried once, not
#: retried, until one succeeds (a run that is stopping does not wait the retries again for each
#: claim it releases; a proxy answers 503 at once).
_GONE: set[str] = set()


def _retry_class(base: type) -> type:
    """redis-py's ``Retry`` with the loop written here (the same in every redis-py version):
    a connection error or timeout is retried with backoff for ``retries`` tries; once a
    command has given up on ``url``, every command on it, those retrying already included,
    gives up at its next failure, until one succeeds."""

    class Retry(base):  # type: ignore[valid-type, misc]
        def __init__(self, url: str, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._url = url

        def call_with_retry(self, do: Any, fail: Any, *args: Any, **kwargs: Any) -> Any:
            import redis

            counted = kwargs.get("with_failure_count") or (len(args) > 1 and args[1])
            failures = 0
            while True:
                try:
                    result = do()
                except (redis.ConnectionError, redis.TimeoutError) as exc:
                    failures += 1
                    if counted:
                        fail(exc, failures)  # the connection is dropped: the next try opens one
                    else:
                        fail(exc)
                    if self._url in _GONE or failures > self._retries:
                        _GONE.add(self._url)
                        raise
                    time.sleep(self._backoff.compute(failures))
                    continue
                _GONE.discard(self._url)
                return result

    return Retry


def unreachable(url: str, exc: BaseException, doing: str) -> str:
    """One sentence: which Redis, what was being done, what it said, and what to do: a full
    Redis (``maxmemory`` with ``noeviction``) answers, so waiting for it does not help."""
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if reason.startswith("OOM") or type(exc).__name__ == "OutOfMemoryError":
        return (f"the Redis at {where(url)} is full (its maxmemory, with maxmemory-policy noeviction) while {doing}: "
                f"raise its maxmemory, let it evict (maxmemory-policy allkeys-lru), or clear this library's entries "
                f"(polars-embed cache clear --cache URL)")
    return f"the Redis at {where(url)} failed while {doing} ({reason}); rerun once it answers again"


def redis_errors() -> tuple[type[BaseException], ...]:
    import redis

    return (redis.RedisError,)


class Linked:
    """A client for ``self.url`` opened on first use (by one thread), so that an object that
    holds one pickles as its settings and opens its own connection where it lands."""

    url: str
    retry_seconds: float | None = None  # None: RETRY_SECONDS
    _client: Any
    _lock: threading.Lock

    @property
    def client(self) -> Any:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = connect(self.url, self.retry_seconds)
        return self._client
