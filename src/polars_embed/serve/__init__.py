"""``polars-embed serve``: an OpenAI-compatible caching proxy.

``proxy.py`` answers an embeddings request from the cache and the pipeline (no HTTP in it);
``app.py`` is the ASGI app (Starlette under uvicorn) that carries it over HTTP.
"""
