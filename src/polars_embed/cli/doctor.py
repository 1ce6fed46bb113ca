"""``polars-embed doctor``: can a run work here? Key, endpoint, cache, tokenizer, local model."""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from ..errors import PolarsEmbedError
from .common import DEFAULT_MODEL, EXIT_OK, EXIT_USAGE, add_common, without_credentials


def add_parser(sub: Any) -> None:
    doctor = sub.add_parser("doctor", help="check key, endpoint, cache, tokenizer and local model",
                            description="Check that a run can work: API key present (never printed), endpoint "
                            "reachable, cache writable, tokenizer and local model load.")
    doctor.add_argument("--base-url", default=None, help="endpoint to check (default: $OPENAI_BASE_URL or OpenAI)")
    doctor.add_argument("--cache", default=None, metavar="DIR", help="cache directory to check")
    add_common(doctor)


def command(args: argparse.Namespace) -> int:
    checks: list[tuple[str, bool | None, str]] = []  # None: information, not a check
    key = os.environ.get("OPENAI_API_KEY")
    checks.append(("API key", True if key else None,
                   "OPENAI_API_KEY is set" if key else "OPENAI_API_KEY is not set: only --model local:... will work"))
    base = args.base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
    if key or args.base_url or os.environ.get("OPENAI_BASE_URL"):  # the endpoint matters to someone who means to use it
        ok, detail = _reachable(base)
        checks.append(("endpoint", ok, detail.replace(base, without_credentials(base))))
    else:
        checks.append(("endpoint", None, f"{base} not checked: no key, and no --base-url or OPENAI_BASE_URL"))
    try:
        import numpy as np

        from ..caches import DiskCache

        cache = DiskCache(args.cache)
        probe = b"polars-embed doctor probe"
        cache.set_many([(probe, np.zeros(2, np.float32), 0)])
        ok = cache.get_many([probe])[0] is not None
        cache.delete_many([probe])
        checks.append(("cache", ok, f"{cache.directory} is writable"))
        cache.close()
    except PolarsEmbedError as exc:
        checks.append(("cache", False, str(exc)))
    try:
        from ..pipeline.tokens import TiktokenTokenizer

        n = len(TiktokenTokenizer().encode_batch(["hello world"])[0])
        checks.append(("tokenizer", n == 2, "cl100k_base loads offline"))
    except Exception as exc:  # noqa: BLE001 - doctor reports, never raises
        checks.append(("tokenizer", False, str(exc)))
    try:
        from ..providers.local import LocalProvider

        t = time.perf_counter()
        vec = LocalProvider().embed(["hello world"]).vectors
        checks.append(("local model", vec.shape == (1, 384), f"{DEFAULT_MODEL} loads (sha256 verified, {time.perf_counter() - t:.1f} s)"))
    except Exception as exc:  # noqa: BLE001
        checks.append(("local model", False, str(exc)))
    for name, passed, detail in checks:
        print(f"{'--  ' if passed is None else 'ok  ' if passed else 'FAIL'}  {name:<12} {detail}")
    return EXIT_USAGE if any(passed is False for _, passed, _ in checks) else EXIT_OK


def _reachable(base_url: str) -> tuple[bool, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(base_url.rstrip("/") + "/models", timeout=5.0) as r:
            status = r.status
    except urllib.error.HTTPError as exc:  # an answer all the same (401 without a key)
        status = exc.code
    except Exception as exc:  # noqa: BLE001 - doctor reports, never raises
        return False, f"{base_url} is not reachable: {_where(base_url)} {_reason(exc)}"
    return True, f"{base_url} answers (HTTP {status})"


def _where(url: str) -> str:
    """``host:port`` of ``url`` (the scheme's port when none is given)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    try:
        port = parts.port or {"https": 443, "http": 80}.get(parts.scheme, 0)
    except ValueError:
        return "(a port that is not a number)"
    return f"{parts.hostname or '?'}:{port}"


def _reason(exc: BaseException) -> str:
    """What the resolver or the socket said, not only the exception's name."""
    import socket
    import urllib.error

    cause = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(cause, socket.gaierror):
        return f"cannot be resolved ({cause.strerror or cause})"
    if isinstance(cause, ConnectionRefusedError):
        return "refused the connection (nothing listens there)"
    if isinstance(cause, (TimeoutError, socket.timeout)):
        return "did not answer within 5 s"
    if isinstance(cause, OSError) and cause.strerror:
        return f"failed: {cause.strerror}"
    return f"failed: {cause}" if str(cause) else f"failed: {type(cause).__name__}"
