"""What each proxy key may spend and send: a budget in dollars per day and per month (UTC),
requests and tokens per minute, and a share of the requests in flight.

Spending is reserved before each upstream request and settled with what it was billed
(``KeyBudget``, the run's own budget beside the embedder's), so a key never spends past its
budget, however many requests it has in flight; a key at its budget is refused before
anything is sent. What each key spent is kept per period in a file beside the keys file
(``FileSpend``, SQLite) or, when proxies share a Redis (``--limiter redis://``), in Redis
(``RedisSpend``, one atomic script): it survives a restart, and several proxy processes
spend one budget. Requests and tokens per minute are a limiter of the library's per key
(in Redis when shared): a request over them is answered 429 with ``retry-after`` at once.
The share of requests in flight is per proxy process.
"""

from __future__ import annotations

import calendar
import contextlib
import logging
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import BudgetExceededError, ConfigurationError, SharedStateError
from .wire import OpenAIError, shared_down

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

log = logging.getLogger("polars_embed.proxy")

PERIODS = ("day", "month")


@dataclass(frozen=True)
class KeyLimits:
    """A proxy key's limits; ``None``: none of that kind."""

    usd_per_day: float | None = None
    usd_per_month: float | None = None
    rpm: float | None = None
    tpm: float | None = None
    concurrency: int | None = None

    @classmethod
    def from_dict(cls, name: str, data: Any) -> KeyLimits:
        if not isinstance(data, dict) or set(data) - set(cls.__dataclass_fields__):
            fields = ", ".join(cls.__dataclass_fields__)
            msg = f"the limits of proxy key {name!r} must be an object of {fields}, got {data!r}"
            raise ConfigurationError(msg)
        for field, value in data.items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0
                                      or (field == "concurrency" and not isinstance(value, int))):
                msg = f"the limit {field} of proxy key {name!r} must be a positive number, got {value!r}"
                raise ConfigurationError(msg)
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def caps(self) -> dict[str, float]:
        """The budget per period that has one."""
        return {p: v for p, v in (("day", self.usd_per_day), ("month", self.usd_per_month)) if v is not None}


def period_names(now: float) -> dict[str, str]:
    """The UTC day and month ``now`` falls in, as the spend is filed."""
    t = time.gmtime(now)
    return {"day": time.strftime("%Y-%m-%d", t), "month": time.strftime("%Y-%m", t)}


def seconds_left(period: str, now: float) -> float:
    """Seconds until ``period`` ("day" or "month") ends, in UTC."""
    t = time.gmtime(now)
    if period == "day":
        end = calendar.timegm((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0)) + 86_400
    else:
        year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
        end = calendar.timegm((year, month, 1, 0, 0, 0))
    return max(1.0, end - now)


class Spend(Protocol):
    """Dollars spent per key and period, kept where every proxy sharing it sees them."""

    def reserve(self, key: str, usd: float, caps: dict[str, float], now: float) -> str | None:
        """Add ``usd`` to the key's periods unless one would pass its cap: then add nothing
        and return that period."""
        ...

    def add(self, key: str, usd: float, now: float) -> None: ...

    def spent(self, key: str, now: float) -> dict[str, float]: ...


class FileSpend:
    """``Spend`` in a SQLite file (one proxy process, or several on one machine)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            with self._connect() as con:
                con.execute("CREATE TABLE IF NOT EXISTS spend (key TEXT, period TEXT, usd REAL, PRIMARY KEY (key, period))")
        except sqlite3.Error as exc:
            msg = f"cannot keep the proxy keys' spending in {path} ({exc})"
            raise ConfigurationError(msg) from None

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30.0, isolation_level=None)

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            con = self._connect()
            try:
                con.execute("BEGIN IMMEDIATE")
                yield con
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            finally:
                con.close()

    def _get(self, con: sqlite3.Connection, key: str, name: str) -> float:
        row = con.execute("SELECT usd FROM spend WHERE key = ? AND period = ?", (key, name)).fetchone()
        return float(row[0]) if row else 0.0

    def reserve(self, key: str, usd: float, caps: dict[str, float], now: float) -> str | None:
        names = period_names(now)
        try:
            with self._write() as con:
                for period, cap in caps.items():
                    if self._get(con, key, names[period]) + usd > cap + 1e-12:
                        return period
                self._add(con, key, usd, names)
        except sqlite3.Error as exc:
            raise unkept(self.path, exc) from None
        return None

    def add(self, key: str, usd: float, now: float) -> None:
        if usd:
            with self._write() as con:
                self._add(con, key, usd, period_names(now))

    def _add(self, con: sqlite3.Connection, key: str, usd: float, names: dict[str, str]) -> None:
        for name in names.values():
            con.execute("INSERT INTO spend VALUES (?, ?, ?) ON CONFLICT (key, period) DO UPDATE SET usd = usd + ?",
                        (key, name, usd, usd))

    def spent(self, key: str, now: float) -> dict[str, float]:
        names = period_names(now)
        try:
            con = self._connect()
            try:
                return {p: self._get(con, key, n) for p, n in names.items()}
            finally:
                con.close()
        except sqlite3.Error as exc:
            raise unkept(self.path, exc) from None


def unkept(path: Path, exc: sqlite3.Error) -> OpenAIError:
    """The keys' spending cannot be read or written: nothing is sent for a key with a budget
    (a 503 the client retries; the cause goes to the log)."""
    log.warning("the proxy keys' spending in %s cannot be kept: %s", path, exc)
    return OpenAIError(503, "The proxy cannot keep its keys' spending right now; try again shortly.",
                       kind="server_error")


# KEYS: the key's spend in each capped period, then in every period; ARGV[1]: dollars, ARGV[2..]:
# the caps (in the order of the first keys). Returns the index of the period over its cap, or 0.
_RESERVE = """
local usd = tonumber(ARGV[1])
for i = 2, #ARGV do
  if (tonumber(redis.call('GET', KEYS[i - 1])) or 0) + usd > tonumber(ARGV[i]) + 1e-12 then return i - 1 end
end
for i = #ARGV, #KEYS do
  redis.call('INCRBYFLOAT', KEYS[i], usd)
  redis.call('EXPIRE', KEYS[i], 5356800)
end
return 0
"""


class RedisSpend:
    """``Spend`` in Redis, for proxy processes on several machines (keys expire after 62 days)."""

    def __init__(self, url: str, prefix: str = "polars-embed") -> None:
        from ..scale.redis_link import connect

        self.url, self.prefix = url, prefix
        self._client = connect(url, retry_seconds=0.5)
        self._script = self._client.register_script(_RESERVE)

    def _keys(self, key: str, now: float) -> dict[str, str]:
        return {p: f"{self.prefix}:proxy-spend:{key}:{n}" for p, n in period_names(now).items()}

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from ..scale.redis_link import redis_errors

        try:
            return fn(*args, **kwargs)
        except redis_errors():
            raise OpenAIError(503, "The proxy cannot reach its shared budget store; try again shortly.",
                              kind="server_error") from None

    def reserve(self, key: str, usd: float, caps: dict[str, float], now: float) -> str | None:
        keys = self._keys(key, now)
        capped = list(caps)
        found = self._call(self._script, keys=[keys[p] for p in capped] + [keys[p] for p in PERIODS],
                           args=[repr(float(usd)), *(repr(float(caps[p])) for p in capped)])
        return capped[int(found) - 1] if int(found) else None

    def add(self, key: str, usd: float, now: float) -> None:
        if usd:
            with self._client.pipeline() as pipe:
                for name in self._keys(key, now).values():
                    pipe.incrbyfloat(name, usd)
                self._call(pipe.execute)

    def spent(self, key: str, now: float) -> dict[str, float]:
        keys = self._keys(key, now)
        values = self._call(self._client.mget, [keys[p] for p in PERIODS])
        return {p: float(v or 0) for p, v in zip(PERIODS, values, strict=True)}


class OverBudget(BudgetExceededError):
    """A key's budget stopped a request before it was sent; ``answer`` is what the client gets."""

    def __init__(self, answer: OpenAIError) -> None:
        super().__init__(answer.message)
        self.answer = answer


class KeyBudget:
    """A key's budget for one request's calls: ``reserve``/``settle`` as ``pipeline.budget.Budget``.
    The request's spending is filed under the day and month it began (a request that ends
    after midnight settles where it reserved, not in the new day)."""

    max_cost = 0.0  # not None: requests are counted before they leave (their estimate is reserved)

    def __init__(self, spend: Spend, key: str, limits: KeyLimits) -> None:
        self.spend, self.key, self.caps = spend, key, limits.caps()
        self.now = time.time()
        self.unpriced: str | None = None  # a model with no price: nothing may be sent upstream for the key

    def reserve(self, estimate: float) -> None:
        if self.unpriced is not None:
            raise OverBudget(OpenAIError(400, f"Proxy key {self.key!r} has a budget and {self.unpriced} has no price "
                                         f"here: start the proxy with --price {self.unpriced}=USD_PER_1M"))
        try:
            period = self.spend.reserve(self.key, estimate, self.caps, self.now)
        except OpenAIError as answer:  # the spending cannot be kept: nothing is sent (what was paid is still said)
            raise OverBudget(answer) from None
        if period is not None:
            raise OverBudget(over_budget(self.key, period, self.caps[period], time.time()))

    def settle(self, estimate: float, actual: float) -> None:
        """What was billed replaces the estimate. Best effort: the request was paid and its
        vectors stored; a store that fails now keeps the estimate (never less than the bill
        for a counted request)."""
        try:
            self.spend.add(self.key, actual - estimate, self.now)
        except (OpenAIError, sqlite3.Error) as exc:
            log.warning("could not settle the spending of proxy key %r: %s", self.key, exc)


def over_budget(key: str, period: str, cap: float, now: float) -> OpenAIError:
    """OpenAI's answer to a quota spent (429 ``insufficient_quota``), with when it renews."""
    wait = seconds_left(period, now)
    error = OpenAIError(429, f"Proxy key {key!r} has spent its budget of ${cap:g} per {period}; it renews at "
                        f"00:00 UTC{' on the 1st' if period == 'month' else ''} (in {wait / 3600:.1f} h).",
                        kind="insufficient_quota", code="insufficient_quota")
    error.headers = {"retry-after": str(int(wait))}
    return error


class Accounts:
    """Every proxy key's limits, enforced: ``admit(key)`` around each request."""

    def __init__(self, limits: dict[str, KeyLimits], *, spend_path: Path | None, shared: str | None) -> None:
        from ..limiters import RateLimiter
        from ..limiters.redis import RedisLimiter

        self.limits = {k: v for k, v in limits.items() if v.to_dict()}
        self.spend: Spend | None = None
        if any(v.caps() for v in self.limits.values()):
            self.spend = RedisSpend(shared) if shared else FileSpend(spend_path) if spend_path else None
        self._quotas: dict[str, Any] = {
            k: RedisLimiter(shared, v.rpm, v.tpm, scope=f"proxy key {k}", retry_seconds=0.5) if shared
            else RateLimiter(v.rpm, v.tpm)
            for k, v in self.limits.items() if v.rpm or v.tpm}
        self._in_flight: dict[str, int] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def admit(self, key: str) -> Iterator[KeyBudget | None]:
        """Hold one of the key's requests: 429 at once when it is over a limit; yields the
        budget its upstream requests reserve on (None without one)."""
        limits = self.limits.get(key)
        if limits is None:
            yield None
            return
        with self._lock:
            if limits.concurrency and self._in_flight.get(key, 0) >= limits.concurrency:
                raise too_many(f"Proxy key {key!r} has {limits.concurrency} requests in flight, its share; "
                               "send the next when one is answered.", 1.0)
            self._in_flight[key] = self._in_flight.get(key, 0) + 1
        try:
            quota = self._quotas.get(key)
            try:
                wait = quota.try_reserve(0) if quota is not None else 0.0
            except SharedStateError as exc:
                raise shared_down(exc) from None
            if wait > 0:
                per = ", ".join(f"{v:g} {n}" for n, v in (("requests", limits.rpm), ("tokens", limits.tpm)) if v)
                raise too_many(f"Rate limit reached for proxy key {key!r} ({per} per minute). "
                               f"Please try again in {wait:.1f}s.", wait)
            caps = limits.caps()
            if caps and self.spend is not None:
                now = time.time()
                spent = self.spend.spent(key, now)
                for period, cap in caps.items():
                    if spent[period] >= cap - 1e-12:
                        raise over_budget(key, period, cap, now)
            yield KeyBudget(self.spend, key, limits) if caps and self.spend is not None else None
        finally:
            with self._lock:
                self._in_flight[key] -= 1

    def used(self, key: str, tokens: int) -> None:
        """A request of the key sent ``tokens`` upstream: they count against its tokens per
        minute (best effort: the request is paid and answered)."""
        quota = self._quotas.get(key)
        if quota is not None and tokens:
            with contextlib.suppress(SharedStateError):
                quota.settle(0, tokens)

    def spent(self, key: str) -> dict[str, float] | None:
        """What a key with a budget spent this day and month (None: no budget, or the store
        cannot say right now)."""
        if self.spend is None or not self.limits.get(key, KeyLimits()).caps():
            return None
        try:
            return self.spend.spent(key, time.time())
        except (OpenAIError, sqlite3.Error):
            return None


def too_many(message: str, wait: float) -> OpenAIError:
    error = OpenAIError(429, message, kind="requests", code="rate_limit_exceeded")
    error.headers = {"retry-after": str(max(1, round(wait + 0.5))), "retry-after-ms": str(int(wait * 1000) + 1)}
    return error
