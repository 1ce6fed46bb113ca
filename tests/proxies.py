"""What the proxy's test modules share: proxies started in this process against a test server
(``starter``), and ``polars-embed serve`` as a process of its own, waited for until it answers
(``serve_process``)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from typing import TYPE_CHECKING, Any

from polars_embed.serve.app import Serving
from polars_embed.serve.proxy import ProxyConfig

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from polars_embed.testing import EmbeddingServer

UPSTREAM_KEY = "sk-upstream-secret-0123456789abcdef"


def starter(upstream: EmbeddingServer, tmp_path: Path) -> Iterator[Callable[..., Serving]]:
    """A ``start`` fixture's body: ``start(**config)`` runs a proxy (kwargs override the
    config) in front of ``upstream``; every one started is stopped at the end of the test."""
    running: list[Serving] = []

    def make(**kwargs: Any) -> Serving:
        kwargs.setdefault("upstream_base_url", upstream.url)
        kwargs.setdefault("upstream_api_key", UPSTREAM_KEY)
        kwargs.setdefault("cache", tmp_path / "cache")
        kwargs.setdefault("flush_seconds", 0.2)
        s = Serving(ProxyConfig(**kwargs)).__enter__()
        running.append(s)
        return s

    try:
        yield make
    finally:
        for s in running:
            s.__exit__(None, None, None)


def serve_process(*args: str, upstream_key: str = UPSTREAM_KEY, stderr: Any = subprocess.DEVNULL,
                  ) -> tuple[subprocess.Popen[str], int]:
    """``polars-embed serve --port PORT *args`` on a free port, once ``/health`` answers."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "polars_embed.cli", "serve", "--port", str(port), *args],
                            env={**os.environ, "OPENAI_API_KEY": upstream_key}, stderr=stderr, text=True)
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()
            return proc, port
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "the proxy did not start"
            time.sleep(0.1)
