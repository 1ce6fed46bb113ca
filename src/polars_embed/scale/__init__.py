"""Many workers, one job: Ray as the engine (``ray_engine.py``: the actors, ``ray_job.py``:
``run --engine ray``) and the Redis connection (``redis_link.py``) through which workers share
a cache (``caches/redis.py``) and a quota (``limiters/redis.py``). See ``docs/scale.md``.
"""
