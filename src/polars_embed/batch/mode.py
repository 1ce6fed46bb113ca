"""What batch mode is set with (``BatchSettings``) and what the batch fetches of one embedder
share (``BatchMode``: the settings, the manifest beside the cache, texts refused for good).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError

if TYPE_CHECKING:
    from ..caches import Cache
    from ..pipeline.fetch import Stage
    from .manifest import Manifest


@dataclass
class BatchSettings:
    """Limits and pacing of batch mode (the Batch API's limits by default)."""

    max_lines: int = 50_000  # requests (= inputs: one text a line) per batch
    max_file_bytes: int = 200 * 2**20
    enqueued_tokens: int = 20_000_000  # your organization's enqueued-token limit for the model
    max_in_flight: int = 4  # batches submitted and not ended
    poll_seconds: float = 2.0  # first wait between polls (a small batch may end in seconds); grows 1.5x while nothing ends
    max_poll_seconds: float = 600.0
    max_tries: int = 3  # batches a text may go out in before it fails for good
    wait: bool = True  # False: submit, collect what ended, raise BatchPendingError (cron)

    def __post_init__(self) -> None:
        from ..validate import check_number

        for name in ("max_lines", "max_file_bytes", "enqueued_tokens", "max_in_flight", "max_tries"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                msg = f"{name} must be a whole number of at least 1, got {value!r}"
                raise ConfigurationError(msg)
        for name in ("poll_seconds", "max_poll_seconds"):
            check_number(name, getattr(self, name), above=0, unit=" (seconds)")


class BatchMode:
    """What the batch fetches of one embedder share: settings, manifest, refused texts."""

    def __init__(self, settings: BatchSettings) -> None:
        self.settings = settings
        self.refused: dict[bytes, str] = {}
        self.prefetch = False  # set by ``polars-embed run --batch`` while it collects (see ``job.py``)
        self.defer = False  # claims settled when the run's output is in place (``job.py``)
        self._manifest: Manifest | None = None

    def manifest(self, cache: Cache) -> Manifest:
        """Beside the cache (its ledger's directory), else in the default cache directory."""
        from pathlib import Path

        from ..caches import default_cache_dir
        from .manifest import Manifest

        if self._manifest is None:
            where = getattr(cache, "ledger_path", None)
            path = where() if callable(where) else None
            self._manifest = Manifest((Path(path).parent if path else default_cache_dir()) / "batches.sqlite")
        return self._manifest

    def options(self, cache: Cache, run: Any) -> dict[str, Any]:
        return {"manifest": self.manifest(cache), "settings": self.settings, "refused": self.refused,
                "batch_ids": run.batch_ids, "prefetch": self.prefetch}

    def claim(self, cache: Cache, call: Any) -> None:
        """The rows of ``call`` show what batches paid for their texts and no row has shown
        yet (collected earlier, maybe by another process): a cached text's first row takes
        its cost. Settled at once, or with ``defer`` when ``settle`` is called (once
        ``polars-embed run``'s output is in place; ``release`` if it never is)."""
        if self.prefetch:
            return
        keys = [k for i, k in enumerate(call.keys) if i not in call.res.errors]
        paid = self.manifest(cache).claim_paid(keys, call.run.run_id) if keys else {}
        where = {k: i for i, k in enumerate(call.keys)} if paid else {}
        for key, value in paid.items():
            i = where[key]
            if call.from_cache[i] or not call.res.cost[i]:  # cached, or fetched by another process
                call.stats.misses += int(call.from_cache[i])
                call.from_cache[i] = False
                call.res.tokens[i], call.res.cost[i] = value
                call.stats.tokens_billed += value[0]
                call.stats.cost_usd += value[1]
        if paid and not self.defer:
            self.manifest(cache).settle(call.run.run_id)


def batch_mode(provider: Any, mode: str, settings: BatchSettings | None, on_long_input: str) -> BatchMode | None:
    """The batch state of an embedder in ``mode``, or None for synchronous requests."""
    if mode != "batch":
        if settings is not None:
            raise ConfigurationError("batch= settings need mode='batch'")
        return None
    if not callable(getattr(provider, "client", None)):
        raise ConfigurationError("mode='batch' needs the OpenAI Batch API (or a server that has it), not a local model")
    if getattr(provider, "name", "openai") != "openai":
        raise ConfigurationError(f"mode='batch' is OpenAI's Batch API, which {provider.name}: models do not have; "
                                 f"drop mode='batch' (their requests are synchronous)")
    if on_long_input == "chunk":
        raise ConfigurationError("mode='batch' sends one line per text, so not on_long_input='chunk': use 'truncate' or 'error'")
    return BatchMode(settings or BatchSettings())


def batch_tag(stage: Stage) -> str:
    """What the manifest files this embedder's jobs under: ``provider:model:dims@namespace``
    (as before identities, so pending jobs of today's default identities are found), with
    the identity's fingerprint when it has more fields (a role, a policy): a job's vectors
    are taken only by the identity that sent it."""
    identity = stage.identity
    if identity is None:
        return f"{stage.tag}@{getattr(stage.provider, 'cache_namespace', '')}"
    tag = f"{stage.tag}@{identity.namespace}"
    extended = identity.role or identity.prefix or identity.params or identity.long_input
    return f"{tag}#{identity.fingerprint()}" if extended else tag
