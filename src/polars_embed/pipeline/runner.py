"""Send requests: one thread pool, the rate limiter (``limiters/``), and tenacity retries.

Retried: 429 (waiting what ``retry-after-ms`` / ``retry-after`` says), 5xx, timeouts,
dropped connections and malformed 200 answers, with exponential backoff and jitter, for a
bounded number of attempts and a bounded total time. Any other 4xx fails at once with the
server's message.
"""

from __future__ import annotations

import logging
import math
import random
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
    stop_any,
)
from tenacity.stop import stop_base

from ..errors import PolarsEmbedError, ProviderError
from ..limiters import AdaptiveConcurrency, RateLimiter
from ..providers.openai import MalformedResponse

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..limiters import Limiter


def status_of(exc: BaseException) -> int | None:
    return getattr(exc, "status_code", None)


def is_retryable(exc: BaseException) -> bool:
    """429, 5xx, timeouts, dropped connections and malformed answers are worth another try."""
    import openai

    if isinstance(exc, (MalformedResponse, openai.APIConnectionError)):  # timeouts included
        return True
    retryable = getattr(exc, "retryable", None)  # providers.base.ProviderFailure says
    if isinstance(retryable, bool):
        return retryable
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
                seconds = float(value) * scale
            except ValueError:
                continue
            if math.isfinite(seconds):  # "inf" or "nan" is no answer: back off instead
                return max(0.0, seconds)
    return None


log = logging.getLogger("polars_embed")


class Stopped(Exception):
    """The run was stopped (Ctrl-C, a signal, or an error in another slice): nothing more is sent."""

#: Attempts at most for a request whose answers are malformed (a real API bills each).
MALFORMED_ATTEMPTS = 3
#: The longest wait between two attempts, and the longest pause a 429 may impose (seconds).
MAX_WAIT = 60.0


class stop_malformed(stop_base):
    """An answer that cannot be true is retried less than other failures: each is billed."""

    def __call__(self, retry_state: RetryCallState) -> bool:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        return isinstance(exc, MalformedResponse) and retry_state.attempt_number >= MALFORMED_ATTEMPTS


class wait_backoff:
    """Exponential backoff with jitter: ``initial * 2**(attempt - 1)``, capped at ``max``,
    plus up to ``jitter`` seconds.

    Written here rather than taken from tenacity's ``wait_exponential_jitter``, whose
    ``multiplier`` keyword exists only from tenacity 9.2: Google's ``google-genai`` pins
    ``tenacity<9.2``, and the first request must not crash beside it.
    """

    def __init__(self, initial: float = 0.25, max: float = 20.0, jitter: float = 0.5) -> None:
        self.initial, self.max, self.jitter = initial, max, jitter

    def __call__(self, state: RetryCallState) -> float:
        exponent = min(state.attempt_number - 1, 64)  # 2.0**1024 overflows a float
        return min(self.max, self.initial * 2.0**exponent) + random.uniform(0, self.jitter)


class wait_retry_after:
    """Wait what the server asked for (plus a little jitter), else fall back to ``fallback``."""

    def __init__(self, fallback: Any, max_wait: float = 60.0) -> None:
        self.fallback = fallback
        self.max_wait = max_wait

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        asked = retry_after_seconds(exc) if exc is not None else None
        wait = asked if asked is not None else float(self.fallback(state))
        return min(self.max_wait, wait)


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
        limiter: Limiter | None = None,
        sleep: Callable[[float], None] = time.sleep,
        redact: Callable[[str], str] | None = None,
        endpoint: str | None = None,
    ) -> None:
        self.redact = redact  # removes the API key from what a server says
        self.endpoint = endpoint  # where requests go, for messages (no credentials)
        self._said = 0.0  # when a retry was last logged
        self.max_workers = max_workers
        self.max_attempts = max_attempts
        self.max_retry_seconds = max_retry_seconds
        self.sleep = sleep
        self.limiter: Limiter = limiter or RateLimiter(rpm, tpm)  # real time: `sleep` is for retry waits
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
        stop: threading.Event | None = None,
    ) -> Any:
        """Call ``fn`` under the limiter, retrying transient failures.

        Raises ``ProviderError`` (with the status code) when the failure is permanent or
        the retries are used up. ``on_retry`` sees each exception that is retried. Once
        ``stop`` is set nothing more is sent: a wait between attempts ends at once, and a
        request that waited for the quota raises ``Stopped`` instead of leaving.
        """

        # What the closures below reach, emptied once the call ends: tenacity keeps a call's
        # state in a reference cycle, which lives until the garbage collector runs, and through
        # them it would hold the caller (a fetch and its call's vectors: 60 MB a partition of
        # 5,000 rows at 1,536 dimensions, several partitions at once).
        held: dict[str, Any] = {"fn": fn, "on_retry": on_retry}

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            if exc is None:
                return
            if status_of(exc) == 429:
                response = getattr(exc, "response", None)
                headers = getattr(response, "headers", None) or {}
                self.limiter.observe({k.lower(): v for k, v in headers.items()})
                asked = retry_after_seconds(exc)
                if asked:  # never longer than the retries may take, nor than the longest wait
                    self.limiter.pause(min(asked, self.max_retry_seconds, MAX_WAIT))
            if held.get("on_retry") is not None:
                held["on_retry"](exc)
            self._say_retrying(exc, state.attempt_number)

        retrying = Retrying(
            stop=stop_any(stop_after_attempt(self.max_attempts), stop_after_delay(self.max_retry_seconds), stop_malformed()),
            wait=wait_retry_after(wait_backoff(initial=0.25, max=20.0, jitter=0.5),
                                 min(MAX_WAIT, self.max_retry_seconds)),
            retry=retry_if_exception(is_retryable),
            sleep=self.sleep if stop is None or self.sleep is not time.sleep else lambda s: _nap(stop, s),
            before_sleep=before_sleep,
            reraise=True,
        )

        def attempt() -> Any:
            self.limiter.acquire(tokens)
            self.concurrency.acquire()
            if stop is not None and stop.is_set():
                self.concurrency.release(throttled=False)
                raise Stopped("the run was stopped")
            throttled = False
            try:
                result = held["fn"]()
            except Exception as exc:
                throttled = status_of(exc) == 429
                raise
            finally:
                self.concurrency.release(throttled=throttled)
            self.limiter.observe(getattr(result, "headers", None) or {})
            billed, settle = getattr(result, "billed_tokens", None), getattr(self.limiter, "settle", None)
            if billed is not None and settle is not None:  # a Limiter of before settle() has none
                settle(tokens, billed)
            return result

        try:
            return retrying(attempt)
        except (PolarsEmbedError, Stopped):
            raise
        except Exception as exc:  # noqa: BLE001 - every failure of the client becomes one ProviderError
            # not chained: the client's exception quotes the server, which may quote the key
            raise to_provider_error(exc, self.redact, self.endpoint) from None
        finally:
            held.clear()

    def _say_retrying(self, exc: BaseException, attempt: int) -> None:
        """Log that requests are being retried (at most every 5 s), so a run that waits on a
        failing endpoint says so instead of sitting silent."""
        now = time.monotonic()
        if now - self._said < 5.0:
            return
        self._said = now
        message = server_message(exc)
        if self.redact is not None:
            message = self.redact(message)
        where = f" to {self.endpoint}" if self.endpoint else ""
        log.info(f"retrying a request{where} (attempt {attempt + 1} of {self.max_attempts}): {message}")


def _nap(stop: threading.Event, seconds: float) -> None:
    """A wait between attempts that a stop ends at once."""
    stop.wait(seconds)


def to_provider_error(exc: BaseException, redact: Callable[[str], str] | None = None,
                      endpoint: str | None = None) -> ProviderError:
    import openai

    status = status_of(exc)
    message = server_message(exc)
    if redact is not None:
        message = redact(message)
    if is_retryable(exc):
        where = f" to {endpoint}" if endpoint else ""
        text = f"request{where} still failing after retries: {message}"
        if isinstance(exc, openai.APIConnectionError):
            text += " (`polars-embed doctor` checks the endpoint)"
    else:
        text = f"the server refused the request ({status}): {message}"
    return ProviderError(text, status_code=status,
                         blames_input=status in (400, 422) or isinstance(exc, MalformedResponse))


def server_message(exc: BaseException) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
    return str(exc) or type(exc).__name__
