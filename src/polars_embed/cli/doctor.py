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
    ok, detail = _reachable(base)
    checks.append(("endpoint", ok, detail.replace(base, without_credentials(base))))
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
    # the endpoint matters only to someone who means to use it
    required = [p for name, p, _ in checks if p is not None and (name != "endpoint" or key or args.base_url)]
    return EXIT_OK if all(required) else EXIT_USAGE


def _reachable(base_url: str) -> tuple[bool, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(base_url.rstrip("/") + "/models", timeout=5.0) as r:
            status = r.status
    except urllib.error.HTTPError as exc:  # an answer all the same (401 without a key)
        status = exc.code
    except Exception as exc:  # noqa: BLE001
        return False, f"{base_url} is not reachable ({type(exc).__name__})"
    return True, f"{base_url} answers (HTTP {status})"
