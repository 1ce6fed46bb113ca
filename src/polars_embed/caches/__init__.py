"""Caches: where paid vectors are kept, so no text is paid twice.

The protocol is in ``base.py``; a backend is one file (``disk``, ``memory``, ``redis``), and
``open_cache`` below is the one place that picks one from what the user passed.
"""

from __future__ import annotations

import os

from ..errors import CacheError, ConfigurationError
from .base import Cache
from .disk import DiskCache, default_cache_dir
from .memory import MemoryCache, NoCache

__all__ = ["Cache", "DiskCache", "MemoryCache", "NoCache", "default_cache_dir", "open_cache"]


def open_cache(cache: Cache | str | os.PathLike[str] | bool | None) -> Cache:
    """``None``/``True``: the default directory; ``False``: no cache; ``"redis://host:port/db"``:
    a Redis many workers share (``caches.redis.RedisCache``); a path or an object."""
    if cache is None or cache is True:
        return DiskCache()
    if cache is False:
        return NoCache()
    from ..scale.redis_link import is_redis_url, looks_like_url, where

    if is_redis_url(cache):
        from .redis import RedisCache

        return RedisCache(str(cache))
    if looks_like_url(cache):
        msg = f"cache {where(str(cache))!r} is neither a directory nor a Redis URL (redis://, rediss://, unix://)"
        raise ConfigurationError(msg)
    if isinstance(cache, (str, os.PathLike)):
        return DiskCache(cache)
    for method in ("get_many", "set_many", "stats", "close"):
        if not callable(getattr(cache, method, None)):
            msg = f"cache= must be a path, True/False or an object with {method}(); got {type(cache).__name__}"
            raise CacheError(msg)
    return cache
