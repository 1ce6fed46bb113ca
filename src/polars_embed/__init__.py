"""polars-embed: embed a Polars text column cheaply, fast and without losing work."""

from __future__ import annotations

__version__ = "0.1.0"

from .batch import BatchSettings
from .caches import Cache, DiskCache, MemoryCache
from .caches.redis import RedisCache
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
from .limiters.redis import RedisLimiter
from .pipeline.run import Run
from .providers import Limits
from .scale.ray_engine import EmbedBatch, embed_dataset

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
