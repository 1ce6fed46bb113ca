"""The Batch API's calls that batch mode makes (files and batches), each retried a few times on
what is worth retrying, and refused for good as one ``ProviderError`` with the key redacted.

https://platform.openai.com/docs/api-reference/batch and
https://platform.openai.com/docs/api-reference/files
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ..errors import ProviderError
from ..pipeline.runner import is_retryable

if TYPE_CHECKING:
    from collections.abc import Callable

#: The metadata field naming the manifest's job a batch was created for.
JOB_FIELD = "polars_embed_job"


class BatchAPI:
    """The Batch API of ``provider`` (an OpenAI-compatible one: its ``client()``)."""

    def __init__(self, provider: Any) -> None:
        self.provider = provider

    def call(self, fn: Callable[[], Any]) -> Any:
        """A Batch API call, retried a few times on what is worth retrying."""
        for attempt in range(6):
            try:
                return fn()
            except Exception as exc:  # noqa: BLE001 - sorted by is_retryable; ours is raised
                if attempt == 5 or not is_retryable(exc):
                    redact = getattr(self.provider, "redact", str)
                    msg = f"the Batch API failed: {redact(str(exc))}"
                    raise ProviderError(msg, status_code=getattr(exc, "status_code", None)) from None
                time.sleep(min(30.0, 0.5 * 2**attempt))
        raise AssertionError("unreachable")

    def upload(self, filename: str, data: bytes) -> str:
        client = self.provider.client()
        return self.call(lambda: client.files.create(file=(filename, data), purpose="batch")).id

    def create(self, file_id: str, job: str) -> str:
        client = self.provider.client()
        return self.call(lambda: client.batches.create(input_file_id=file_id, endpoint="/v1/embeddings",
                                                       completion_window="24h", metadata={JOB_FIELD: job})).id

    def retrieve(self, batch_id: str) -> Any:
        client = self.provider.client()
        return self.call(lambda: client.batches.retrieve(batch_id))

    def content(self, file_id: str) -> bytes:
        client = self.provider.client()
        return self.call(lambda: client.files.content(file_id).content)

    def find_file(self, filename: str) -> str | None:
        """The id of an uploaded file named ``filename`` (an upload cut short may have landed)."""
        client = self.provider.client()
        return next((f.id for f in self.call(lambda: list(client.files.list(purpose="batch")))
                     if f.filename == filename), None)

    def find_batch(self, job: str) -> str | None:
        """The id of a batch created for ``job`` (a create cut short may have landed)."""
        client = self.provider.client()
        return next((b.id for b in self.call(lambda: list(client.batches.list(limit=100)))
                     if (b.metadata or {}).get(JOB_FIELD) == job), None)
