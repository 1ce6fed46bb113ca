"""One requests/min and tokens/min quota for every worker of a cluster (``limiter="redis://..."``).

The buckets live in one Redis hash; every change is one Lua script (atomic in Redis, with
Redis's clock, so workers on different machines agree):

* ``reserve``: refill, then take one request and the request's token estimate, or say how
  long to wait;
* ``settle``: give back (or take) the difference between the estimate and the billed usage;
* ``observe``: a response's ``x-ratelimit-*`` headers set the limits (unless configured) and
  pull the buckets down to what the server says remains, for every worker at once;
* ``pause``: a 429's ``retry-after`` holds every worker;
* ``read``: only refill (to learn what other workers learned).

The first request of the cluster goes alone while the quota is unknown (the probe, a key
with an expiry), exactly as one process's ``RateLimiter`` does.
"""

from __future__ import annotations

import hashlib
import threading
import time
from typing import TYPE_CHECKING, Any

from ..errors import LimiterError
from ..scale.redis_link import Linked, connect, redis_errors, unreachable, where
from .base import MIN_TPM, header_number

if TYPE_CHECKING:
    from collections.abc import Mapping

#: A probe's key lapses after this long, so a worker that died probing does not stall the rest.
PROBE_SECONDS = 30.0
#: A quota nobody used for this long is forgotten (seconds).
IDLE_SECONDS = 86_400

# KEYS[1]: the quota's hash. ARGV[1]: the operation; ARGV[2], ARGV[3]: configured rpm, tpm ('' if
# none); ARGV[4], ARGV[5]: limits this worker learned before ('' if none: used when Redis has
# none, as after a restart); ARGV[6..]: the operation's arguments.
_SCRIPT = """
local h = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local s = redis.call('HMGET', h, 'rpm', 'tpm', 'req', 'tok', 'last', 'paused', 'observed')
local rpm = tonumber(ARGV[2]) or tonumber(s[1]) or tonumber(ARGV[4])
local tpm = tonumber(ARGV[3]) or tonumber(s[2]) or tonumber(ARGV[5])
local req = tonumber(s[3]) or rpm or 0
local tok = tonumber(s[4]) or tpm or 0
local last = tonumber(s[5]) or now
local paused = tonumber(s[6]) or 0
local observed = s[7] or '0'
local elapsed = math.max(0, now - last)
if rpm then req = math.min(rpm, req + elapsed * rpm / 60) end
if tpm then tok = math.min(tpm, tok + elapsed * tpm / 60) end
local op = ARGV[1]
local wait = 0
if op == 'reserve' then
  local tokens = tonumber(ARGV[6])
  wait = paused - now
  if wait <= 0 then
    local short_req, short_tok = 0, 0
    if rpm then short_req = 1 - req end
    if tpm then short_tok = math.min(tokens, tpm) - tok end
    wait = 0
    if short_req <= 0 and short_tok <= 0 then
      if rpm then req = req - 1 end
      if tpm then tok = tok - tokens end
    else
      if short_req > 0 then wait = short_req * 60 / rpm end
      if short_tok > 0 then wait = math.max(wait, short_tok * 60 / tpm) end
    end
  end
elseif op == 'settle' then
  if tpm then tok = math.min(tpm, tok + tonumber(ARGV[6]) - tonumber(ARGV[7])) end
elseif op == 'pause' then
  paused = math.max(paused, now + tonumber(ARGV[6]))
elseif op == 'observe' then
  observed = '1'
  local lr, rr, lt, rt = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
  if lr and ARGV[2] == '' then
    if not rpm then req = rr or lr end
    rpm = lr
  end
  if lt and ARGV[3] == '' then
    if not tpm then tok = rt or lt end
    tpm = lt
  end
  if rr and rpm then req = math.min(req, rr) end
  if rt and tpm then tok = math.min(tok, rt) end
end
redis.call('HSET', h, 'req', tostring(req), 'tok', tostring(tok), 'last', tostring(now),
           'paused', tostring(paused), 'observed', observed)
if rpm then redis.call('HSET', h, 'rpm', tostring(rpm)) end
if tpm then redis.call('HSET', h, 'tpm', tostring(tpm)) end
redis.call('EXPIRE', h, ARGV[#ARGV])
return {tostring(wait), tostring(rpm or ''), tostring(tpm or ''), observed}
"""


class RedisLimiter(Linked):
    """The ``Limiter`` protocol with its buckets in Redis, shared by every worker that
    names the same Redis and ``scope`` (an endpoint and model: a quota is per model)."""

    def __init__(self, url: str, rpm: float | None = None, tpm: float | None = None, *, scope: str = "default",
                 prefix: str = "polars-embed", retry_seconds: float | None = None) -> None:
        self.url, self.scope, self.prefix, self.retry_seconds = url, scope, prefix, retry_seconds
        self.configured = (rpm or None, tpm or None)
        self.rpm, self.tpm = rpm or None, tpm or None
        self._init_state()
        self._client = connect(url, retry_seconds)  # a URL redis-py cannot parse is refused now, not at the first request

    def _init_state(self) -> None:
        self._client: Any = None
        self._lock = threading.Lock()
        self._observed = False
        self._script: Any = None
        name = hashlib.sha256(self.scope.encode()).hexdigest()[:16]
        self.key = f"{self.prefix}:quota:{name}"

    def __repr__(self) -> str:
        return f"RedisLimiter({where(self.url)!r}, scope={self.scope!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {k: self.__dict__[k] for k in ("url", "scope", "prefix", "configured", "rpm", "tpm", "retry_seconds")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_state()

    def _run(self, op: str, *args: float | str, doing: str, best_effort: bool = False) -> float:
        """One atomic step of the quota; returns the seconds to wait (``reserve``). With
        ``best_effort`` (what follows a paid answer), a Redis that fails is passed over: the
        answer is kept, and the next ``reserve`` says whether Redis is back."""
        conf = ["" if v is None else repr(float(v)) for v in self.configured]
        learned = ["" if v is None else repr(float(v)) for v in (self.rpm, self.tpm)]
        argv = [op, *conf, *learned, *(a if isinstance(a, str) else repr(float(a)) for a in args), str(IDLE_SECONDS)]
        try:
            if self._script is None:
                self._script = self.client.register_script(_SCRIPT)  # EVALSHA, loaded again after a restart
            wait, rpm, tpm, observed = self._script(keys=[self.key], args=argv)
        except redis_errors() as exc:
            if best_effort:
                return 0.0
            raise LimiterError(unreachable(self.url, exc, f"keeping the shared quota ({doing})")) from None
        self.rpm, self.tpm = header_number(rpm.decode()) or None, header_number(tpm.decode()) or None
        self._observed = self._observed or observed == b"1"
        return float(wait)

    # -- the Limiter protocol ----------------------------------------------------------------
    @property
    def knows_quota(self) -> bool:
        return self._observed or any(self.configured)

    def try_reserve(self, tokens: int) -> float:
        """Take one request of ``tokens`` if the quota has room now (returns 0), else take
        nothing and return the seconds until it would have room."""
        return self._run("reserve", tokens, doing="reserving a request")

    def acquire(self, tokens: int) -> float:
        """Block until the cluster's quota lets one request of ``tokens`` go; returns the seconds waited."""
        waited = 0.0
        while True:
            wait = self.try_reserve(tokens)
            if wait <= 0:
                return waited
            wait = max(wait, 0.002)
            time.sleep(wait)
            waited += wait

    def settle(self, reserved: int, billed: int) -> None:
        """The request is answered: its billed tokens replace the estimate it reserved."""
        if self.tpm and reserved != billed:
            self._run("settle", reserved, billed, doing="settling a request", best_effort=True)

    def observe(self, headers: Mapping[str, str]) -> None:
        values = []
        for kind, floor in (("requests", 1), ("tokens", MIN_TPM)):
            limit = header_number(headers.get(f"x-ratelimit-limit-{kind}"))
            remaining = header_number(headers.get(f"x-ratelimit-remaining-{kind}"))
            values += ["" if limit is None or limit < floor else repr(limit), "" if remaining is None else repr(remaining)]
        if any(values) or not self._observed:
            self._run("observe", *values, doing="reading a response's rate-limit headers", best_effort=True)

    def pause(self, seconds: float) -> None:
        self._run("pause", seconds, doing="pausing after a 429", best_effort=True)

    def claim_probe(self) -> bool:
        """True for the one worker of the cluster that sends the first request alone."""
        if self.knows_quota:
            return False
        self._run("read", doing="reading the quota")  # learns whether another worker has seen it
        if self._observed:
            return False
        return bool(self._redis("probing the quota", self.client.set, self.key + ":probe", "1", nx=True,
                                px=int(PROBE_SECONDS * 1000)))

    def end_probe(self) -> None:
        try:
            self.client.delete(self.key + ":probe")
        except redis_errors():
            pass  # it lapses

    def wait_for_quota(self) -> None:
        """Block while another worker's probe is finding the quota out."""
        while not self.knows_quota:
            self._run("read", doing="reading the quota")
            if self.knows_quota or not self._redis("waiting for the probe", self.client.exists, self.key + ":probe"):
                return
            time.sleep(0.02)

    def _redis(self, doing: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except redis_errors() as exc:
            raise LimiterError(unreachable(self.url, exc, f"keeping the shared quota ({doing})")) from None
