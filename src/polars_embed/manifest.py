"""The batch manifest: what was uploaded and created on the Batch API, written **before**
each step, so a process killed at any point re-attaches on rerun (``batch.py``).

SQLite beside the cache (``batches.sqlite``), one short transaction per step. A job (one
input file, one batch) goes ``prepared`` (its content keys written, nothing sent) ->
``uploading`` -> ``uploaded`` (file id) -> ``creating`` -> ``submitted`` (batch id) ->
``ended`` (its results are in the cache; ``status`` says how the batch ended). Texts paid
by a batch and not yet on an output row (``polars-embed run --batch`` collects before it
writes, maybe in a later process) are kept in ``paid`` until a row claims their cost. A job found
``uploading`` or ``creating`` is looked up on the server by its file name or its batch
metadata before anything is sent again, so nothing is uploaded or paid for twice. It holds
content keys and ids, no text and no key.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from .errors import CacheError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job TEXT PRIMARY KEY, tag TEXT NOT NULL, state TEXT NOT NULL, file_id TEXT, batch_id TEXT,
    lines INTEGER NOT NULL, tokens INTEGER NOT NULL, created REAL NOT NULL, updated REAL NOT NULL,
    status TEXT, detail TEXT
);
CREATE TABLE IF NOT EXISTS job_keys (job TEXT NOT NULL, key BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS job_keys_job ON job_keys (job);
CREATE TABLE IF NOT EXISTS paid (key BLOB PRIMARY KEY, tokens INTEGER NOT NULL, cost REAL NOT NULL);
"""
LIVE = ("prepared", "uploading", "uploaded", "creating", "submitted")


@dataclass
class Job:
    job: str
    tag: str
    state: str
    file_id: str | None
    batch_id: str | None
    lines: int
    tokens: int
    created: float
    updated: float
    status: str | None = None
    detail: str | None = None

    @property
    def filename(self) -> str:
        """The name of its input file on the server (how an upload cut short is found)."""
        return f"polars-embed-{self.job}.jsonl"


class Manifest:
    """The jobs of one cache directory (thread-safe; several processes may share it)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._connect() as con:
                con.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            msg = f"cannot open the batch manifest {self.path} ({exc}); batch mode needs it to resume"
            raise CacheError(msg) from None

    def __repr__(self) -> str:
        return f"Manifest({str(self.path)!r})"

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=30.0)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=FULL")  # a step is on disk before the request it announces
        return con

    def _write(self, sql: str, *args: object) -> None:
        with self._lock:
            con = self._connect()
            try:
                with con:
                    con.execute(sql, args)
            finally:
                con.close()

    def prepare(self, tag: str, keys: list[bytes], tokens: int) -> Job:
        """A new job holding ``keys``, written before anything is sent."""
        now = time.time()
        job = Job(uuid.uuid4().hex[:16], tag, "prepared", None, None, len(keys), tokens, now, now)
        with self._lock:
            con = self._connect()
            try:
                with con:
                    con.execute("INSERT INTO jobs (job, tag, state, lines, tokens, created, updated) "
                                "VALUES (?, ?, ?, ?, ?, ?, ?)", (job.job, tag, job.state, job.lines, tokens, now, now))
                    con.executemany("INSERT INTO job_keys (job, key) VALUES (?, ?)", ((job.job, k) for k in keys))
            finally:
                con.close()
        return job

    def step(self, job: Job, state: str, **ids: str | None) -> None:
        """Record that ``job`` reached ``state`` (with its file or batch id)."""
        job.state, job.updated = state, time.time()
        for name, value in ids.items():
            setattr(job, name, value)
        self._write("UPDATE jobs SET state = ?, file_id = ?, batch_id = ?, status = ?, detail = ?, updated = ? "
                    "WHERE job = ?", state, job.file_id, job.batch_id, job.status, job.detail, job.updated, job.job)

    def end(self, job: Job, status: str, detail: str | None = None) -> None:
        job.status, job.detail = status, detail
        self.step(job, "ended")

    def live(self, tag: str | None = None) -> list[Job]:
        """Jobs not ended (of ``tag``, or all), oldest first."""
        return [j for j in self.jobs(tag) if j.state in LIVE]

    def jobs(self, tag: str | None = None) -> list[Job]:
        with self._lock:
            con = self._connect()
            try:
                rows = con.execute("SELECT job, tag, state, file_id, batch_id, lines, tokens, created, updated, "
                                   "status, detail FROM jobs " + ("WHERE tag = ? " if tag else "") +
                                   "ORDER BY created", (tag,) if tag else ()).fetchall()
            finally:
                con.close()
        return [Job(*row) for row in rows]

    def add_paid(self, items: list[tuple[bytes, int, float]]) -> None:
        """Texts paid for and not on a row yet: their tokens and cost wait for one."""
        with self._lock:
            con = self._connect()
            try:
                with con:
                    con.executemany("INSERT OR IGNORE INTO paid (key, tokens, cost) VALUES (?, ?, ?)", items)
            finally:
                con.close()

    def claim_paid(self, keys: list[bytes]) -> dict[bytes, tuple[int, float]]:
        """The tokens and cost of those of ``keys`` paid and not yet on a row, now taken."""
        found: dict[bytes, tuple[int, float]] = {}
        with self._lock:
            con = self._connect()
            try:
                with con:
                    if not con.execute("SELECT 1 FROM paid LIMIT 1").fetchone():
                        return found
                    for start in range(0, len(keys), 500):
                        chunk = keys[start : start + 500]
                        marks = ",".join("?" * len(chunk))
                        for key, tokens, cost in con.execute(f"SELECT key, tokens, cost FROM paid WHERE key IN ({marks})", chunk):
                            found[bytes(key)] = (int(tokens), float(cost))
                        con.execute(f"DELETE FROM paid WHERE key IN ({marks})", chunk)
            finally:
                con.close()
        return found

    def keys(self, job: Job) -> list[bytes]:
        with self._lock:
            con = self._connect()
            try:
                return [bytes(k) for (k,) in con.execute("SELECT key FROM job_keys WHERE job = ?", (job.job,))]
            finally:
                con.close()
