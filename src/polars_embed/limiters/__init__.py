"""Limiters: requests/min and tokens/min quotas that every request of a run waits on.

The protocol is in ``base.py``; an implementation is one file (``local``: this process,
``redis``: one quota for a cluster), and ``shared_limiter`` below picks one.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigurationError
from .base import Limiter
from .local import AdaptiveConcurrency, RateLimiter

__all__ = ["AdaptiveConcurrency", "Limiter", "RateLimiter", "shared_limiter"]


def shared_limiter(limiter: Limiter | str | None, rpm: float | None, tpm: float | None, provider: Any,
                   **options: Any) -> Limiter | None:
    """``limiter="redis://host:port/db"``: one quota in Redis for every worker that names it,
    per endpoint and model (``limiters.redis.RedisLimiter``); a ``Limiter`` object as it is."""
    if not isinstance(limiter, str):
        return limiter
    from ..scale.redis_link import is_redis_url, where

    if not is_redis_url(limiter):
        raise ConfigurationError(f"limiter= must be a Limiter object or a redis:// URL, got {where(limiter)!r}")
    from .redis import RedisLimiter

    scope = f"{getattr(provider, 'endpoint', None) or provider.name} {provider.model}"
    return RedisLimiter(limiter, rpm, tpm, scope=scope, **options)
