"""The Batch API's calls that batch mode makes (files and batches), each retried a few times on
what is worth retrying, and refused for good as one ``ProviderError`` with the key redacted.

https://platform.openai.com/docs/api-reference/batch and
https://platform.openai.com/docs/api-reference/files
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from ..errors import ProviderError
from ..pipeline.runner import is_retryable

if TYPE_CHECKING:
    from collections.abc import Callable

#: The metadata fields naming the manifest's job a batch was created for, and the identity
#: tag of its vectors (``mode.batch_tag``): how a batch is found when no manifest knows it.
JOB_FIELD, TAG_FIELD = "polars_embed_job", "polars_embed_tag"


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

    def create(self, file_id: str, job: str, tag: str = "") -> str:
        client = self.provider.client()
        metadata = {JOB_FIELD: job, TAG_FIELD: tag[:512]} if tag else {JOB_FIELD: job}  # values: 512 chars at most
        return self.call(lambda: client.batches.create(input_file_id=file_id, endpoint="/v1/embeddings",
                                                       completion_window="24h", metadata=metadata)).id

    def recent(self, seconds: float) -> list[Any]:
        """The batches created in the last ``seconds`` (the list is newest first: paging stops there)."""
        client = self.provider.client()
        since = time.time() - seconds

        def read() -> list[Any]:
            found = []
            for batch in client.batches.list(limit=100):
                if batch.created_at < since:
                    break
                found.append(batch)
            return found

        return self.call(read)  # type: ignore[no-any-return]

    def input_keys(self, file_id: str) -> list[bytes]:
        """The content keys of a batch's input file (each line's ``custom_id``)."""
        keys = []
        for raw in self.content(file_id).splitlines():
            try:
                keys.append(bytes.fromhex(json.loads(raw)["custom_id"]))
            except (ValueError, KeyError, TypeError):
                continue
        return keys

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
