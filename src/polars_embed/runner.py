"""Send requests: one thread pool, a proactive rate limiter, and tenacity retries.

Retried: 429 (waiting what ``retry-after-ms`` / ``retry-after`` says), 5xx, timeouts,
dropped connections and malformed 200 answers, with exponential backoff and jitter, for a
bounded number of attempts and a bounded total time. Any other 4xx fails at once with the
server's message.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

from .errors import PolarsEmbedError, ProviderError
from .providers.openai import MalformedResponse

if TYPE_CHECKING:
    from collections.abc import Callable


def status_of(exc: BaseException) -> int | None:
    return getattr(exc, "status_code", None)


def is_retryable(exc: BaseException) -> bool:
    """429, 5xx, timeouts, dropped connections and malformed answers are worth another try."""
    import openai

    if isinstance(exc, (MalformedResponse, openai.APIConnectionError)):  # timeouts included
        return True
    status = status_of(exc)
    return status is not None and (status == 429 or status >= 500)


def retry_after_seconds(exc: BaseException) -> float | None:
    """The server's requested wait, from ``retry-after-ms`` or ``retry-after`` (seconds)."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if not headers:
        return None
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is not None:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                continue
    return None


class wait_retry_after:
    """Wait what the server asked for (plus a little jitter), else fall back to ``fallback``."""

    def __init__(self, fallback: Any, max_wait: float = 60.0) -> None:
        self.fallback = fallback
        self.max_wait = max_wait

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        asked = retry_after_seconds(exc) if exc is not None else None
        if asked is not None:
            return min(self.max_wait, asked)
        return float(self.fallback(state))


class RateLimiter:
    """Token buckets for requests/min and tokens/min, shared by every thread of a runner.

    Limits come from configuration or, when not configured, are learned from the
    server's ``x-ratelimit-limit-*`` headers; ``x-ratelimit-remaining-*`` pulls a bucket
    down to what the server says is left (other clients may share the quota).
    ``pause(seconds)`` holds every thread (a 429's ``retry-after`` applies to the pool,
    not to one thread). A request larger than the whole bucket is let through when the
    bucket is full, so it cannot wait forever.
    """

    def __init__(
        self,
        rpm: float | None = None,
        tpm: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rpm, self.tpm = rpm, tpm
        self._configured = {name for name, v in (("rpm", rpm), ("tpm", tpm)) if v}
        self.observed = False  # has any response been seen (and its headers read)?
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()
        now = clock()
        self._req, self._tok = float(rpm or 0), float(tpm or 0)
        self._last = now
        self._paused_until = now

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self._last)
        self._last = now
        if self.rpm:
            self._req = min(self.rpm, self._req + elapsed * self.rpm / 60.0)
        if self.tpm:
            self._tok = min(self.tpm, self._tok + elapsed * self.tpm / 60.0)

    def observe(self, headers: dict[str, str]) -> None:
        """Learn limits and the remaining quota from a response's rate-limit headers."""
        self.observed = True
        if not headers:
            return
        with self._lock:
            self._refill(self._clock())
            for kind in ("requests", "tokens"):
                limit = _number(headers.get(f"x-ratelimit-limit-{kind}"))
                remaining = _number(headers.get(f"x-ratelimit-remaining-{kind}"))
                attr, level = ("rpm", "_req") if kind == "requests" else ("tpm", "_tok")
                if limit and attr not in self._configured:
                    if getattr(self, attr) is None:  # first sight: start from what is left
                        setattr(self, level, float(remaining if remaining is not None else limit))
                    setattr(self, attr, limit)
                if remaining is not None and getattr(self, attr):
                    setattr(self, level, min(getattr(self, level), remaining))

    @property
    def knows_quota(self) -> bool:
        """Limits configured, or a response seen (which carries them, if the server has any)."""
        return self.observed or bool(self._configured)

    def request_token_cap(self) -> int | None:
        """Under a tokens/min limit, requests of about a quarter second of quota (but big
        enough that requests/min never binds first) keep the flow smooth: no burst that
        empties the bucket, and the last request ends close to the quota's ideal time."""
        if not self.tpm:
            return None
        cap = self.tpm / 240.0
        if self.rpm:
            cap = max(cap, 2.0 * self.tpm / self.rpm)
        return int(cap)

    def pause(self, seconds: float) -> None:
        with self._lock:
            self._paused_until = max(self._paused_until, self._clock() + seconds)

    def acquire(self, tokens: int) -> float:
        """Block until one request of ``tokens`` may go; returns the seconds waited."""
        waited = 0.0
        while True:
            with self._lock:
                now = self._clock()
                self._refill(now)
                wait = self._paused_until - now
                if wait <= 0:
                    need_req = 1.0 if self.rpm else 0.0
                    need_tok = min(float(tokens), float(self.tpm)) if self.tpm else 0.0
                    short_req = need_req - self._req if self.rpm else 0.0
                    short_tok = need_tok - self._tok if self.tpm else 0.0
                    if short_req <= 0 and short_tok <= 0:
                        if self.rpm:
                            self._req -= 1
                        if self.tpm:
                            self._tok -= tokens
                        return waited
                    wait = max(
                        short_req * 60.0 / self.rpm if self.rpm else 0.0,
                        short_tok * 60.0 / self.tpm if self.tpm else 0.0,
                    )
            wait = max(wait, 0.001)
            self._sleep(wait)
            waited += wait


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class AdaptiveConcurrency:
    """How many requests may be in flight: halved on a 429, grown by one per success.

    Starts at the pool size; never below 1. Together with the limiter this keeps a run
    at the quota without a storm of 429s.
    """

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self.limit = maximum
        self._in_flight = 0
        self._cond = threading.Condition()

    def __getstate__(self) -> dict[str, Any]:
        return {"maximum": self.maximum}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["maximum"])  # type: ignore[misc]

    def acquire(self) -> None:
        with self._cond:
            while self._in_flight >= self.limit:
                self._cond.wait()
            self._in_flight += 1

    def release(self, *, throttled: bool) -> None:
        with self._cond:
            self._in_flight -= 1
            if throttled:
                self.limit = max(1, self.limit // 2)
            elif self.limit < self.maximum:
                self.limit += 1
            self._cond.notify_all()


class Runner:
    """Runs provider calls on a shared pool with rate limiting and retries.

    The pool is created on first use and dropped on pickling, so the owner stays picklable.
    """

    def __init__(
        self,
        *,
        max_workers: int = 8,
        max_attempts: int = 8,
        max_retry_seconds: float = 300.0,
        rpm: float | None = None,
        tpm: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.max_workers = max_workers
        self.max_attempts = max_attempts
        self.max_retry_seconds = max_retry_seconds
        self.sleep = sleep
        self.limiter = RateLimiter(rpm, tpm)  # real time: `sleep` is for retry waits
        self.concurrency = AdaptiveConcurrency(max_workers)
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_pool"] = None
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self.max_workers, thread_name_prefix="polars-embed")
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def call(
        self,
        fn: Callable[[], Any],
        tokens: int,
        on_retry: Callable[[BaseException], None] | None = None,
    ) -> Any:
        """Call ``fn`` under the limiter, retrying transient failures.

        Raises ``ProviderError`` (with the status code) when the failure is permanent or
        the retries are used up. ``on_retry`` sees each exception that is retried.
        """

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            if exc is None:
                return
            if status_of(exc) == 429:
                response = getattr(exc, "response", None)
                headers = getattr(response, "headers", None) or {}
                self.limiter.observe({k.lower(): v for k, v in headers.items()})
                asked = retry_after_seconds(exc)
                if asked:
                    self.limiter.pause(asked)
            if on_retry is not None:
                on_retry(exc)

        retrying = Retrying(
            stop=stop_after_attempt(self.max_attempts) | stop_after_delay(self.max_retry_seconds),
            wait=wait_retry_after(wait_exponential_jitter(multiplier=0.25, max=20.0, jitter=0.5)),
            retry=retry_if_exception(is_retryable),
            sleep=self.sleep,
            before_sleep=before_sleep,
            reraise=True,
        )

        def attempt() -> Any:
            self.limiter.acquire(tokens)
            self.concurrency.acquire()
            throttled = False
            try:
                result = fn()
            except Exception as exc:
                throttled = status_of(exc) == 429
                raise
            finally:
                self.concurrency.release(throttled=throttled)
            self.limiter.observe(getattr(result, "headers", None) or {})
            return result

        try:
            return retrying(attempt)
        except PolarsEmbedError:
            raise
        except Exception as exc:
            raise to_provider_error(exc) from exc


def to_provider_error(exc: BaseException) -> ProviderError:
    status = status_of(exc)
    message = server_message(exc)
    if is_retryable(exc):
        text = f"request still failing after retries: {message}"
    else:
        text = f"the server refused the request ({status}): {message}"
    return ProviderError(text, status_code=status)


def server_message(exc: BaseException) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
    return str(exc) or type(exc).__name__
