"""A cache in Redis that many workers share (``cache="redis://host:port/db"``).

The same content keys as the disk cache (scoped by provider, model and dimensions), under
``<prefix>:v:``; values in the same layout (``caches.base.encode_value``: a header, the token
count, a CRC32, float32 bytes), never pickles. An entry that does not decode is a miss,
fetched again and overwritten. Reads are ``MGET`` of up to ``CHUNK`` keys; writes one
pipeline a request.

**Claims**: a text one worker is fetching is claimed (``SET <prefix>:c:<key> <worker> NX PX``),
so another worker that misses it waits for the value instead of paying twice. A claim holds
while its worker is alive: the worker keeps one heartbeat key (``<prefix>:w:<worker>``,
expiring after ``alive_seconds``, renewed by a thread every third of that while it holds
claims), and a claim whose worker has no heartbeat is taken over at once. A killed worker's
texts are therefore fetched by another one within ``alive_seconds``, and renewing costs one
command however many texts are claimed. ``claim_seconds`` is only a backstop on the claim
key itself (a claim is deleted when its fetch ends).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

from ..errors import SharedCacheError
from ..scale.redis_link import Linked, connect, redis_errors, unreachable, where
from .base import decode_value, encode_values

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    import numpy as np

#: Keys a round trip (MGET, a pipeline of SETs, a claim script).
CHUNK = 1000
#: Seconds writes are skipped after one failed (Redis away for longer than its retries).
WRITE_PAUSE = 30.0

# Claim each key unless a live worker holds it (ours again: renewed). KEYS: the claim keys;
# ARGV[1]: this worker, ARGV[2]: the claim's backstop expiry (ms), ARGV[3]: the heartbeat's
# expiry (ms), ARGV[4]: the heartbeat keys' prefix. Returns 1/0 per key. The holder's heartbeat
# key is built here, so this runs on one Redis, not a Redis Cluster.
_CLAIM = """
redis.call('SET', ARGV[4] .. ARGV[1], '1', 'PX', ARGV[3])
local out = {}
for i, key in ipairs(KEYS) do
  if redis.call('SET', key, ARGV[1], 'NX', 'PX', ARGV[2]) then out[i] = 1
  else
    local holder = redis.call('GET', key)
    if holder == ARGV[1] or redis.call('EXISTS', ARGV[4] .. holder) == 0 then
      redis.call('SET', key, ARGV[1], 'PX', ARGV[2]); out[i] = 1  -- ours, or its worker is dead
    else out[i] = 0 end
  end
end
return out
"""
# Drop (ARGV[2] == "") or renew (ARGV[2] = ms) the claims that are still this worker's.
_RELEASE = """
local n = 0
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then
    if ARGV[2] == '' then redis.call('DEL', key) else redis.call('PEXPIRE', key, ARGV[2]) end
    n = n + 1
  end
end
return n
"""


class RedisCache(Linked):
    """The ``Cache`` protocol over one Redis, plus claims (``claim``/``release``/``wait``).

    Picklable as its settings (a Ray actor or a process opens its own connection).
    ``ttl_seconds`` expires entries (default: never; Redis's ``maxmemory-policy`` may evict).
    ``retry_seconds``: how long a command is retried while Redis cannot be reached (a batch
    job rides through a restart; the proxy, where a client waits, gives up at once).
    """

    def __init__(self, url: str, *, prefix: str = "polars-embed", alive_seconds: float = 5.0,
                 claim_seconds: float = 3600.0, ttl_seconds: float | None = None,
                 retry_seconds: float | None = None) -> None:
        self.url, self.prefix, self.retry_seconds = url, prefix, retry_seconds
        self.alive_seconds, self.claim_seconds, self.ttl_seconds = alive_seconds, claim_seconds, ttl_seconds
        self._init_state()
        self._client = connect(url, retry_seconds)  # a URL redis-py cannot parse is refused now, not at the first request

    def _init_state(self) -> None:
        self.worker = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"  # whose claims these are
        self._pid = os.getpid()
        self.damaged = 0
        self._client: Any = None
        self._lock = threading.Lock()
        self._held: set[bytes] = set()  # claim keys this worker holds (kept alive by _renewer)
        self._renewer: threading.Thread | None = None
        self._closed = threading.Event()  # ends the running renewer (each renewer has its own)
        self._scripts: dict[str, Any] = {}
        self._down_until = 0.0  # after a failed write, writes are skipped until then (see ``unwritable``)

    def _own(self) -> None:
        """A process forked from the one that made this cache is another worker: its own
        identity, claims and connection (two processes that think they are one would both
        win every claim, and both pay)."""
        if self._pid != os.getpid():
            self._init_state()

    def __repr__(self) -> str:
        return f"RedisCache({self.location!r})"

    @property
    def location(self) -> str:
        """The URL without its password."""
        return where(self.url)

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "prefix": self.prefix, "alive_seconds": self.alive_seconds,
                "claim_seconds": self.claim_seconds, "ttl_seconds": self.ttl_seconds, "retry_seconds": self.retry_seconds}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_state()

    def _script(self, name: str) -> Any:
        """A Lua script by name (EVALSHA, loaded again after a restart)."""
        if name not in self._scripts:
            self._scripts[name] = self.client.register_script(_CLAIM if name == "claim" else _RELEASE)
        return self._scripts[name]

    def _value_key(self, key: bytes) -> bytes:
        return self.prefix.encode() + b":v:" + key

    def _claim_key(self, key: bytes) -> bytes:
        return self.prefix.encode() + b":c:" + key

    @property
    def _heartbeat_prefix(self) -> str:
        return self.prefix + ":w:"

    def _call(self, doing: str, fn: Any, *args: Any) -> Any:
        """``fn(*args)``, with a Redis failure said in one sentence (``CacheError``)."""
        try:
            return fn(*args)
        except redis_errors() as exc:
            raise SharedCacheError(unreachable(self.url, exc, doing)) from None

    # -- the Cache protocol ------------------------------------------------------------------
    def get_many(self, keys: Sequence[bytes]) -> list[tuple[np.ndarray, int] | None]:
        self._own()
        out: list[tuple[np.ndarray, int] | None] = []
        damaged = 0
        for start in range(0, len(keys), CHUNK):
            chunk = [self._value_key(k) for k in keys[start : start + CHUNK]]
            for raw in self._call("reading the cache", self.client.mget, chunk):
                value = decode_value(raw, legacy=False) if raw is not None else None  # checksummed only
                damaged += raw is not None and value is None
                out.append(value)
        if damaged:
            with self._lock:
                self.damaged += damaged
        return out

    def set_many(self, items: Sequence[tuple[bytes, np.ndarray, int]], *, tag: str | None = None) -> None:
        """Store entries, one pipeline (no transaction) per ``CHUNK``; ``tag`` is not stored.
        A write that fails (Redis away past the retries) raises, and the writes of the next
        ``WRITE_PAUSE`` seconds are skipped (``unwritable``): what is fetched meanwhile is
        returned, not cached, instead of each request waiting for Redis again."""
        if not items:
            return
        self._own()
        sizes = {len(v) for _, v, _ in items}
        if len(sizes) == 1:
            values = encode_values([v for _, v, _ in items], [t for _, _, t in items])
        else:
            values = [encode_values([v], [t])[0] for _, v, t in items]
        px = int(self.ttl_seconds * 1000) if self.ttl_seconds else None

        def write() -> None:
            for start in range(0, len(items), CHUNK):
                pipe = self.client.pipeline(transaction=False)
                for (key, _, _), value in zip(items[start : start + CHUNK], values[start : start + CHUNK]):
                    pipe.set(self._value_key(key), value, px=px)
                pipe.execute()

        try:
            self._call("writing the cache", write)
        except SharedCacheError:
            self._down_until = time.monotonic() + WRITE_PAUSE
            raise

    @property
    def unwritable(self) -> bool:
        """True for ``WRITE_PAUSE`` seconds after a write failed."""
        return time.monotonic() < self._down_until

    def stats(self) -> dict[str, Any]:
        info = self._call("reading its statistics", self.client.info, "memory")
        entries = self._call("reading its statistics", self.client.dbsize)
        return {"backend": "redis", "path": self.location, "entries": entries,
                "bytes": info.get("used_memory"), "damaged": self.damaged, "unwritable": None}

    def _values(self) -> Any:
        return self.client.scan_iter(match=self.prefix.encode() + b":v:*", count=1000)

    def entries(self) -> int:
        """Entries of this cache (its prefix's values; Redis may hold other keys too)."""
        return int(self._call("counting its entries", lambda: sum(1 for _ in self._values())))

    def clear(self) -> int:
        """Delete every entry of this cache (its prefix's values, nothing else); how many."""
        def remove() -> int:
            removed, batch = 0, []
            for key in self._values():
                batch.append(key)
                if len(batch) == CHUNK:
                    removed += self.client.unlink(*batch)
                    batch = []
            return removed + (self.client.unlink(*batch) if batch else 0)

        return int(self._call("deleting its entries", remove))

    def ledger_path(self) -> Path | None:
        """No directory of its own: the ledger stays on the machine of the run (the default one)."""
        return None

    def close(self) -> None:
        """Release this worker's claims and close the connection; the cache can be used
        again afterwards (it reconnects, and renews new claims)."""
        self._closed.set()
        renewer, self._renewer, self._closed = self._renewer, None, threading.Event()
        if renewer is not None:
            renewer.join(timeout=1.0)
        if self._held:
            self.release(list(self._held), raw=True)
        if renewer is not None:
            with contextlib.suppress(*redis_errors()):
                self.client.delete(self._heartbeat_prefix + self.worker)
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- claims ------------------------------------------------------------------------------
    def claim(self, keys: Sequence[bytes]) -> list[bool]:
        """Claim ``keys`` for this worker; False for a key another worker holds, or another
        thread of this one (it is fetching that text: wait for it)."""
        self._own()
        won: list[bool] = []
        argv = [self.worker, str(int(self.claim_seconds * 1000)), str(int(self.alive_seconds * 1000)),
                self._heartbeat_prefix]
        try:
            for start in range(0, len(keys), CHUNK):
                claim_keys = [self._claim_key(k) for k in keys[start : start + CHUNK]]
                with self._lock:  # taken here first, so two threads of this worker never both win
                    fresh = [k not in self._held for k in claim_keys]
                    self._held.update(k for k, f in zip(claim_keys, fresh) if f)
                asked = [k for k, f in zip(claim_keys, fresh) if f]
                try:
                    got = iter(self._call("claiming texts", self._script("claim"), asked, argv) if asked else [])
                except BaseException:
                    with self._lock:
                        self._held.difference_update(asked)
                    raise
                outcome = [bool(next(got)) if f else False for f in fresh]
                with self._lock:
                    self._held.difference_update(k for k, w, f in zip(claim_keys, outcome, fresh) if f and not w)
                won += outcome
                if any(outcome):
                    self._start_renewer()
        except BaseException:
            self.release([k for k, w in zip(keys, won) if w])  # the chunks claimed before the failure
            raise
        return won

    def fence(self, keys: Sequence[bytes]) -> list[bool]:
        """Whether each claim on ``keys`` is still this worker's, asked right before a request
        leaves: a worker paused past its heartbeat (a VM pause, SIGSTOP, a swap storm) may
        have had them taken over, and then sends none of them."""
        self._own()
        me = self.worker.encode()
        held: list[bool] = []
        for start in range(0, len(keys), CHUNK):
            chunk = [self._claim_key(k) for k in keys[start : start + CHUNK]]
            held += [v == me for v in self._call("checking its claims", self.client.mget, chunk)]
        return held

    def release(self, keys: Sequence[bytes], *, raw: bool = False) -> None:
        """Drop this worker's claims on ``keys`` (best effort: a claim left behind is taken
        over once this worker's heartbeat stops)."""
        claim_keys = list(keys) if raw else [self._claim_key(k) for k in keys]
        try:
            for start in range(0, len(claim_keys), CHUNK):
                chunk = claim_keys[start : start + CHUNK]
                self._script("release")(chunk, [self.worker, ""])
        except redis_errors():
            pass
        finally:  # only now: a thread of this worker that claims them meanwhile waits instead of winning
            with self._lock:
                self._held.difference_update(claim_keys)

    def wait(self, keys: Sequence[bytes], stop: threading.Event | None = None
             ) -> tuple[dict[int, tuple[np.ndarray, int]], list[int]]:
        """Wait for texts other workers hold claims on: returns ``{position: value}`` of
        those stored, and the positions whose claim ended without a value (the worker failed,
        or died: its heartbeat stopped), which the caller must fetch (claiming them again:
        this returns holding no claim)."""
        found: dict[int, tuple[np.ndarray, int]] = {}
        mine: list[int] = []
        pending = list(range(len(keys)))
        delay = 0.02
        try:
            while pending:
                values = self.get_many([keys[i] for i in pending])
                missing = [i for i, v in zip(pending, values) if v is None]
                found.update((i, v) for i, v in zip(pending, values) if v is not None)
                won = self.claim([keys[i] for i in missing]) if missing else []
                mine += [i for i, w in zip(missing, won) if w]
                pending = [i for i, w in zip(missing, won) if not w]
                if pending:
                    if stop is not None and stop.wait(delay):
                        break
                    if stop is None:
                        time.sleep(delay)
                    delay = min(0.25, delay * 1.5)
        finally:
            self.release([keys[i] for i in mine])
        return found, mine

    def _start_renewer(self) -> None:
        with self._lock:
            if self._renewer is not None:
                return
            self._renewer = threading.Thread(target=self._renew, args=(self._closed,), name="polars-embed-claims",
                                             daemon=True)
            self._renewer.start()

    def _renew(self, closed: threading.Event) -> None:
        """While this worker holds claims: its heartbeat every third of ``alive_seconds`` (one
        command), the claims' backstop expiry every third of ``claim_seconds``."""
        beat, backstop = self.alive_seconds / 3, self.claim_seconds / 3
        heartbeat = self._heartbeat_prefix + self.worker
        renewed = time.monotonic()
        while not closed.wait(beat):
            with self._lock:
                held = list(self._held)
                if not held:
                    if self._renewer is threading.current_thread():
                        self._renewer = None  # the next claim starts another
                    return
            try:
                self.client.set(heartbeat, "1", px=int(self.alive_seconds * 1000))
                if time.monotonic() - renewed >= backstop:
                    renewed = time.monotonic()
                    ms = str(int(self.claim_seconds * 1000))
                    for start in range(0, len(held), CHUNK):
                        self._script("release")(held[start : start + CHUNK], [self.worker, ms])
            except redis_errors():
                continue  # Redis is away: the claims may be taken over, and another worker may pay too
