"""Batches no manifest knows: found on the server before anything is sent again.

A manifest lost or deleted, or a batch submitted from another machine that shares the cache
(``run --batch --detach`` on host A, the same run on host B): the server still lists the
batch, with the job and the identity tag it was created for in its metadata
(``api.JOB_FIELD``, ``api.TAG_FIELD``). Before a call sends its texts, the batches of the
last ``RECENT_SECONDS`` that carry its tag and are not failed, expired or cancelled are
looked at; one whose input holds texts the call wants is recorded in this manifest as
submitted and collected like its own (an ended one is downloaded again, not paid again),
and the user is told. https://platform.openai.com/docs/api-reference/batch/list
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .api import JOB_FIELD, TAG_FIELD

if TYPE_CHECKING:
    from .api import BatchAPI
    from .manifest import Manifest

log = logging.getLogger("polars_embed")

#: How far back the server's batches are looked at: a batch runs 24 h at most, and its
#: results stay to be collected a while after.
RECENT_SECONDS = 48 * 3600
GONE = ("failed", "expired", "cancelled")


def recover(api: BatchAPI, manifest: Manifest, tag: str, wanted: set[bytes], tokens: dict[bytes, int]) -> list[str]:
    """Record in ``manifest`` the server's batches of ``tag`` that it does not know and that
    hold texts of ``wanted``; returns their ids (said in the log)."""
    if not wanted:
        return []
    known = {j.job for j in manifest.jobs()}
    found = []
    for batch in api.recent(RECENT_SECONDS):
        meta: dict[str, Any] = dict(batch.metadata or {})
        job = meta.get(JOB_FIELD)
        if not job or job in known or meta.get(TAG_FIELD) != tag or batch.status in GONE:
            continue
        keys = api.input_keys(batch.input_file_id)
        if wanted.isdisjoint(keys):
            continue
        manifest.adopt(tag, job, batch.id, batch.input_file_id, keys, sum(tokens.get(k, 0) for k in keys))
        found.append(batch.id)
    if found:
        log.warning(f"{len(found)} batches on the server hold texts of this run that the manifest {manifest.path} "
                    f"did not know (it was lost or deleted, or they were sent from another machine): "
                    f"{', '.join(found)}; they are collected, their texts not sent again")
    return found
