"""The stages of one call, in the order a column goes through them: plan, cache lookup (in
``embedder.py``), tokens, pack, fetch (with runner, inflight and budget), assemble.

``run.py`` holds a run (what one call or expression asked for) and ``stats.py`` its figures.
Nothing here knows which provider, cache or limiter is plugged in: each is a protocol.
"""
