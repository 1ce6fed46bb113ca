"""A real ``redis-server`` on a free loopback port, for tests and benchmarks.

Debian's ``redis-server`` package (``make test`` installs it when missing). Nothing is
persisted: a restart (``restart()``) comes back empty, as a Redis without persistence does.

    with RedisServer() as r:
        Embedder(..., cache=r.url, limiter=r.url)
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """Starts ``redis-server`` (``binary``) on ``port`` (default: a free one); ``url`` is its address."""

    def __init__(self, port: int | None = None, *, binary: str = "redis-server") -> None:
        path = shutil.which(binary)
        if path is None:
            msg = f"{binary} is not installed (Debian: apt-get install redis-server; `make test` does it)"
            raise RuntimeError(msg)
        self.binary, self.port = path, port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._dir = tempfile.TemporaryDirectory(prefix="polars-embed-redis-")
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> RedisServer:  # noqa: PYI034 - a final class in all but name
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._dir.cleanup()

    def start(self) -> None:
        self._proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self._dir.name, "--protected-mode", "yes", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self._proc.returncode} on port {self.port}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"redis-server did not answer on port {self.port}")

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None

    def restart(self, down_seconds: float = 0.0) -> None:
        """Kill it and start it again on the same port, empty, after ``down_seconds``."""
        self.stop()
        time.sleep(down_seconds)
        self.start()
