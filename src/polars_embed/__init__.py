"""polars-embed: embed a Polars text column cheaply, fast and without losing work."""

from __future__ import annotations

__version__ = "0.1.0"

from .batch import BatchSettings
from .cache import Cache, DiskCache, MemoryCache
from .embedder import Embedder
from .errors import (
    BatchPendingError,
    BudgetExceededError,
    CacheError,
    ColumnTypeError,
    ConfigurationError,
    InputError,
    LedgerError,
    LimiterError,
    LongInputError,
    OutputError,
    PolarsEmbedError,
    ProviderError,
    RequestRefusedError,
    RowsFailedError,
    SharedCacheError,
    SharedStateError,
)
from .estimate import Estimate, estimate
from .expr import embed_column
from .io import read_metadata, write_parquet
from .ledger import Ledger, ledger
from .providers import Limits
from .ray_engine import EmbedBatch, embed_dataset
from .redis_cache import RedisCache
from .redis_limiter import RedisLimiter
from .run import Run

__all__ = [
    "BatchPendingError",
    "BatchSettings",
    "BudgetExceededError",
    "Cache",
    "CacheError",
    "ColumnTypeError",
    "ConfigurationError",
    "DiskCache",
    "EmbedBatch",
    "Embedder",
    "Estimate",
    "InputError",
    "Ledger",
    "LedgerError",
    "LimiterError",
    "Limits",
    "LongInputError",
    "MemoryCache",
    "OutputError",
    "PolarsEmbedError",
    "ProviderError",
    "RedisCache",
    "RedisLimiter",
    "RequestRefusedError",
    "RowsFailedError",
    "Run",
    "SharedCacheError",
    "SharedStateError",
    "__version__",
    "embed_column",
    "embed_dataset",
    "estimate",
    "ledger",
    "read_metadata",
    "write_parquet",
]
