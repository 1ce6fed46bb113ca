"""The local limiter: token buckets in this process (``RateLimiter``), and the adaptive cap on
requests in flight (``AdaptiveConcurrency``).
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from .base import MIN_TPM, header_number

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping


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
        self._clock, self._sleep = clock, sleep
        self._observed = False
        self._init_sync()
        now = clock()
        self._req, self._tok = float(rpm or 0), float(tpm or 0)
        self._last = now
        self._paused_until = now

    def _init_sync(self) -> None:
        self._lock = threading.Lock()
        self._probe = threading.Condition(self._lock)  # notified when a response is seen or a probe ends
        self._probe_claimed = False
        self._observed = getattr(self, "_observed", False)  # has any response been seen?

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for name in ("_lock", "_probe", "_probe_claimed"):
            del state[name]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_sync()

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self._last)
        self._last = now
        if self.rpm:
            self._req = min(self.rpm, self._req + elapsed * self.rpm / 60.0)
        if self.tpm:
            self._tok = min(self.tpm, self._tok + elapsed * self.tpm / 60.0)

    def observe(self, headers: Mapping[str, str]) -> None:
        """Learn limits and the remaining quota from a response's rate-limit headers."""
        with self._lock:
            if headers:
                self._refill(self._clock())
                for kind in ("requests", "tokens"):
                    limit = header_number(headers.get(f"x-ratelimit-limit-{kind}"))
                    remaining = header_number(headers.get(f"x-ratelimit-remaining-{kind}"))
                    attr, level = ("rpm", "_req") if kind == "requests" else ("tpm", "_tok")
                    if limit is not None and limit < (1 if kind == "requests" else MIN_TPM):
                        limit = None  # no API's quota is this small: a header that says so is ignored
                    if limit and attr not in self._configured:
                        if getattr(self, attr) is None:  # first sight: start from what is left
                            setattr(self, level, float(remaining if remaining is not None else limit))
                        setattr(self, attr, limit)
                    if remaining is not None and getattr(self, attr):
                        setattr(self, level, min(getattr(self, level), remaining))
            self._observed = True
            self._probe.notify_all()

    @property
    def knows_quota(self) -> bool:
        """Limits configured, or a response seen (which carries them, if the server has any)."""
        return self._observed or bool(self._configured)

    def claim_probe(self) -> bool:
        """True for the one caller that sends the first request alone, while the quota is unknown."""
        with self._lock:
            if self.knows_quota or self._probe_claimed:
                return False
            self._probe_claimed = True
            return True

    def end_probe(self) -> None:
        """The probe has ended, answered or not (a failed one leaves the next call to probe)."""
        with self._lock:
            self._probe_claimed = False
            self._probe.notify_all()

    def wait_for_quota(self) -> None:
        """Block while another caller's probe is finding the quota out."""
        with self._lock:
            while self._probe_claimed and not self._observed:
                self._probe.wait()

    def pause(self, seconds: float) -> None:
        with self._lock:
            self._paused_until = max(self._paused_until, self._clock() + seconds)

    def settle(self, reserved: int, billed: int) -> None:
        """A request is answered: the tokens it was billed replace the estimate it reserved."""
        if self.tpm and reserved != billed:
            with self._lock:
                self._refill(self._clock())
                self._tok = min(float(self.tpm), self._tok + reserved - billed)

    def try_reserve(self, tokens: int) -> float:
        """Take one request of ``tokens`` if the quota has room now (returns 0), else take
        nothing and return the seconds until it would have room (the proxy's 429 says it)."""
        with self._lock:
            now = self._clock()
            self._refill(now)
            wait = self._paused_until - now
            if wait > 0:
                return wait
            need_tok = min(float(tokens), float(self.tpm)) if self.tpm else 0.0
            short_req = 1.0 - self._req if self.rpm else 0.0
            short_tok = need_tok - self._tok if self.tpm else 0.0
            if short_req <= 0 and short_tok <= 0:
                if self.rpm:
                    self._req -= 1
                if self.tpm:
                    self._tok -= tokens
                return 0.0
            return max(short_req * 60.0 / self.rpm if self.rpm else 0.0,
                       short_tok * 60.0 / self.tpm if self.tpm else 0.0)

    def acquire(self, tokens: int) -> float:
        """Block until one request of ``tokens`` may go; returns the seconds waited."""
        waited = 0.0
        while True:
            wait = self.try_reserve(tokens)
            if wait <= 0:
                return waited
            wait = max(wait, 0.001)
            self._sleep(wait)
            waited += wait


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

    @property
    def in_flight(self) -> int:
        """Requests being sent or answered right now."""
        return self._in_flight

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
