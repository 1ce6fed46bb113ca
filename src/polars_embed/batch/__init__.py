"""Batch mode: the texts the cache did not have go out as Batch API jobs at half the price.

``fetch.py`` is the batch twin of the pipeline's fetch stage; ``manifest.py`` records every
upload and batch before it is made, so a killed run re-attaches instead of paying again.
"""

from __future__ import annotations

from .mode import BatchMode, BatchSettings, batch_mode

__all__ = ["BatchMode", "BatchSettings", "batch_mode"]
