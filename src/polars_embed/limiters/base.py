"""The ``Limiter`` protocol: what a run needs to stay under a requests/min and tokens/min quota.

A limiter is shared by every thread of an embedder (``limiters/redis.py`` shares one between
machines). It learns the quota from the server's ``x-ratelimit-*`` headers when none is
configured; until then, the first request of an embedder goes alone (the probe) and the
others wait for its answer, so a run starts at the quota instead of storming it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Mapping


#: A tokens/min limit below this, said by a server, is not believed (no API's quota is as small;
#: at 100 tokens/min a 3,000-token request would wait half an hour).
MIN_TPM = 1000


class Limiter(Protocol):
    """What a run needs from a rate limiter."""

    rpm: float | None  # requests per minute, configured or learned (None: unknown or none)
    tpm: float | None  # tokens per minute

    @property
    def knows_quota(self) -> bool: ...

    def acquire(self, tokens: int) -> float: ...

    def settle(self, reserved: int, billed: int) -> None: ...

    def observe(self, headers: Mapping[str, str]) -> None: ...

    def pause(self, seconds: float) -> None: ...

    def claim_probe(self) -> bool: ...

    def end_probe(self) -> None: ...

    def wait_for_quota(self) -> None: ...


def header_number(value: str | None) -> float | None:
    """A header's number, if it is one a quota can be: finite and not negative."""
    try:
        number = float(value) if value is not None else None
    except ValueError:
        return None
    return number if number is not None and math.isfinite(number) and number >= 0 else None
