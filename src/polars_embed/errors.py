"""One error family: every failure the library raises on purpose is a ``PolarsEmbedError``.

Each message is one sentence naming the column, the row or the setting at fault, so the
CLI can print it as a single line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import polars as pl


class PolarsEmbedError(Exception):
    """Base class of every error polars-embed raises on purpose."""


class ConfigurationError(PolarsEmbedError, ValueError):
    """A setting is missing or invalid (model, dimensions, key, base URL, limits)."""


class InputError(PolarsEmbedError, ValueError):
    """The input column or one of its rows cannot be embedded as given."""


class ColumnTypeError(InputError, TypeError):
    """The column to embed is not text."""


class LongInputError(InputError):
    """A row is over the provider's per-input token limit and the policy is ``"error"``."""


class ProviderError(PolarsEmbedError):
    """The provider failed a request for good (a 4xx, or retries exhausted)."""

    def __init__(self, message: str, *, status_code: int | None = None, blames_input: bool = False) -> None:
        super().__init__(message)
        self.status_code = status_code
        #: Whether the failure may be caused by an input of the request (a 400 or 422, an
        #: answer that stays malformed): then the request is bisected to find the row.
        self.blames_input = blames_input


class RequestRefusedError(ProviderError, ConfigurationError):
    """The request fails whatever its inputs (a setting the model refuses, answers that
    cannot be true): raised after a request per halving, not one per row."""


class RowsFailedError(ProviderError):
    """Some rows could not be embedded; every other row was embedded and cached."""

    def __init__(self, message: str, *, failures: pl.DataFrame | None = None) -> None:
        super().__init__(message)
        #: ``row`` (null where the slice cannot know it), ``text``, ``error``.
        self.failures = failures


class BatchPendingError(PolarsEmbedError):
    """Batch mode without waiting (``BatchSettings(wait=False)``, ``run --batch --detach``):
    batches are submitted and not all back yet; a later call collects them (what ended is cached)."""

    def __init__(self, message: str, *, batch_ids: list[str] | None = None) -> None:
        super().__init__(message)
        self.batch_ids = batch_ids or []


class BudgetExceededError(PolarsEmbedError):
    """The next request would take the run past ``max_cost``; finished work is cached."""


class CacheError(PolarsEmbedError):
    """The cache cannot be opened or holds an entry that is not ours."""


class OutputError(PolarsEmbedError):
    """The output file cannot be written (finished work is cached all the same)."""


class LedgerError(PolarsEmbedError):
    """The run ledger cannot be read (writing it is best effort and never raises)."""


class SharedStateError(PolarsEmbedError):
    """What the workers of a cluster share (a Redis cache, a Redis quota) failed mid-run."""


class LimiterError(SharedStateError):
    """The shared rate limiter (Redis) cannot be reached."""


class SharedCacheError(CacheError, SharedStateError):
    """The shared cache (Redis) failed mid-run (its claims included)."""
