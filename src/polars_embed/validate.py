"""Settings checked before anything is paid for: one sentence naming the setting."""

from __future__ import annotations

import math

from .errors import ConfigurationError


def check_number(name: str, value: float | None, *, above: float | None = None, at_least: float | None = None,
                 unit: str = "") -> None:
    """``value`` is None or a finite number ``> above`` / ``>= at_least``, else one clear error."""
    if value is None:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and above is not None:
        ok = value > above
    if ok and at_least is not None:
        ok = value >= at_least
    if not ok:
        bound = f"above {above:g}" if above is not None else f"at least {at_least:g}"
        msg = f"{name} must be a finite number {bound}{unit}, got {value!r}"
        raise ConfigurationError(msg)


def check_settings(*, rpm: float | None, tpm: float | None, price_per_million: float | None, max_cost: float | None,
                   max_workers: int, timeout: float, max_attempts: int, max_retry_seconds: float) -> None:
    check_number("rpm", rpm, above=0, unit=" (requests per minute)")
    check_number("tpm", tpm, above=0, unit=" (tokens per minute)")
    check_number("price_per_million", price_per_million, at_least=0, unit=" (US dollars)")
    check_number("max_cost", max_cost, at_least=0, unit=" (US dollars)")
    check_number("max_workers", max_workers, at_least=1)
    check_number("timeout", timeout, above=0, unit=" (seconds)")
    check_number("max_attempts", max_attempts, at_least=1)
    check_number("max_retry_seconds", max_retry_seconds, at_least=0, unit=" (seconds)")


#: The values each choice of ``Embedder`` takes.
CHOICES = {"on_long_input": ("truncate", "chunk", "error"), "on_error": ("raise", "null"), "mode": ("sync", "batch")}


def check_choices(**settings: str) -> None:
    for setting, value in settings.items():
        allowed = CHOICES[setting]
        if value not in allowed:
            msg = f"{setting} must be one of {', '.join(map(repr, allowed))}, got {value!r}"
            raise ConfigurationError(msg)
