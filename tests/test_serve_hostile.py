"""Clients that try to take the proxy from everyone else: slow bodies, huge bodies, bodies that
parse into much more memory than they take on the wire. Each is answered in OpenAI's shape
(408, 413), never a 500, and other clients are served meanwhile."""

from __future__ import annotations

import json
import random
import socket
import time
import urllib.request

import openai
import pytest
from proxies import serve_process

from polars_embed.serve import app
from polars_embed.serve.app import Serving
from polars_embed.serve.proxy import ProxyConfig
from polars_embed.testing import EmbeddingServer

MODEL = "text-embedding-3-small"


@pytest.fixture
def upstream():
    with EmbeddingServer() as srv:
        yield srv


def slow_sender(port: int, announced: int) -> socket.socket:
    """A connection that announces ``announced`` bytes of body and sends the first one."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(f"POST /v1/embeddings HTTP/1.1\r\nhost: x\r\nauthorization: Bearer k\r\n"
                 f"content-type: application/json\r\ncontent-length: {announced}\r\n\r\n{{".encode())
    return sock


def answer(sock: socket.socket) -> bytes:
    sock.settimeout(30)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_slow_bodies_keep_no_one_waiting_and_are_cut_off_at_their_deadline(upstream, tmp_path, monkeypatch):
    monkeypatch.setattr(app, "BODY_SECONDS", 2.0)
    config = ProxyConfig(upstream_base_url=upstream.url, upstream_api_key="up", cache=tmp_path / "cache")
    with Serving(config) as s:
        c = openai.OpenAI(base_url=s.url, api_key="k", max_retries=0, timeout=30)
        big = [f"a large request, text {i} " + "padding " * 80 for i in range(2000)]  # ~1.4 MiB of JSON
        t = time.perf_counter()
        c.embeddings.create(model=MODEL, input=big, dimensions=16)
        alone = time.perf_counter() - t
        slow = [slow_sender(s.port, 2 * 2**20) for _ in range(4)]  # the old limit of large bodies read at once
        slow += [slow_sender(s.port, 32 * 2**20) for _ in range(8)]  # announcing all the reading room: held is what came
        try:
            t = time.perf_counter()
            c.embeddings.create(model=MODEL, input=big[::-1], dimensions=16)  # all hits, as large
            beside = time.perf_counter() - t
            print(f"a 1.4 MiB request: cold, alone {alone:.2f} s; all hits, beside 12 slow senders {beside:.2f} s")
            assert beside < alone + 2.0  # it used to wait 25 s and time out
            for sock in slow[:4]:  # deadline: 2 s + 2 s for the 2 MiB announced
                assert answer(sock).startswith(b"HTTP/1.1 408"), "a slow body is cut off with a 408"
        finally:
            for sock in slow:
                sock.close()
        with pytest.raises(openai.APIStatusError) as info:
            c.embeddings.create(model=MODEL, input=["x"] * 2048, extra_body={"user": "x" * (33 * 2**20)})
        assert info.value.status_code == 413


def test_a_large_body_of_token_arrays_takes_a_bounded_multiple_of_its_size(upstream, tmp_path):
    proc, port = serve_process("--upstream-base-url", upstream.url, "--cache", str(tmp_path / "cache"))

    def peak() -> int:
        with open(f"/proc/{proc.pid}/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))

    try:
        def send(arrays: list[list[int]]) -> int:
            body = json.dumps({"model": MODEL, "input": arrays, "dimensions": 16}).encode()
            req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/embeddings", data=body,
                                         headers={"content-type": "application/json", "authorization": "Bearer k"})
            with urllib.request.urlopen(req, timeout=120) as r:
                assert len(json.loads(r.read())["data"]) == len(arrays)
            return len(body)

        rnd = random.Random(0)
        send([[rnd.randrange(1, 100_000) for _ in range(600)] for _ in range(8)])  # the tokenizer and client loaded
        before = peak()
        size = send([[rnd.randrange(1, 100_000) for _ in range(600)] for _ in range(2048)])  # 1.2M tokens, ~8 MiB
        grew = peak() - before
        print(f"a {size / 2**20:.1f} MiB body of token arrays: peak memory grew {grew / 2**20:.0f} MiB "
              f"({grew / size:.1f}x the body)")
        assert grew <= 16 * size
    finally:
        proc.terminate()
        proc.wait(timeout=30)
