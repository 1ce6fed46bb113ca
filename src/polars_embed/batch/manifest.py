"""The batch manifest: what was uploaded and created on the Batch API, written **before**
each step, so a process killed at any point re-attaches on rerun (``batch/fetch.py``).

SQLite beside the cache (``batches.sqlite``), one short transaction per step. A job (one
input file, one batch) goes ``prepared`` (its content keys written, nothing sent) ->
``uploading`` -> ``uploaded`` (file id) -> ``creating`` -> ``submitted`` (batch id) ->
``ended`` (its results are in the cache; ``status`` says how the batch ended). Every text a
batch paid for is written to ``paid`` before it is cached; a row that shows its cost claims
it (``claim_paid``), and the claim is settled only once that row is delivered (the
call returned, or ``polars-embed run``'s output is in place). A claim of a process that died
is free again, so a killed run's rerun shows the cost it never delivered. A job found
``uploading`` or ``creating`` is looked up on the server by its file name or its batch
metadata before anything is sent again, so nothing is uploaded or paid for twice. It holds
content keys and ids, no text and no key.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CacheError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job TEXT PRIMARY KEY, tag TEXT NOT NULL, state TEXT NOT NULL, file_id TEXT, batch_id TEXT,
    lines INTEGER NOT NULL, tokens INTEGER NOT NULL, created REAL NOT NULL, updated REAL NOT NULL,
    status TEXT, detail TEXT, pid INTEGER
);
CREATE TABLE IF NOT EXISTS job_keys (job TEXT NOT NULL, key BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS job_keys_job ON job_keys (job);
CREATE TABLE IF NOT EXISTS paid (key BLOB PRIMARY KEY, tokens INTEGER NOT NULL, cost REAL NOT NULL,
                                 claimed_by TEXT, claimer_pid INTEGER, batch_id TEXT,
                                 settled INTEGER NOT NULL DEFAULT 0, settled_at REAL);
"""
#: Settled claims are kept a month (a batch read again must not add its cost again), then forgotten.
KEEP_SETTLED = 30 * 86400
LIVE = ("prepared", "uploading", "uploaded", "creating", "submitted")
_PAID_COLUMNS = (("claimed_by", "TEXT"), ("claimer_pid", "INTEGER"), ("batch_id", "TEXT"),
                 ("settled", "INTEGER NOT NULL DEFAULT 0"), ("settled_at", "REAL"))


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
    pid: int | None = None  # the process that took its last step

    @property
    def busy(self) -> bool:
        """Being sent by another process that is alive (it is awaited, not taken over)."""
        return self.state not in ("submitted", "ended") and self.pid != os.getpid() and _alive(self.pid)

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
            self._setup()
        except (OSError, sqlite3.Error) as exc:
            msg = f"cannot open the batch manifest {self.path} ({exc}); batch mode needs it to resume"
            raise CacheError(msg) from None

    def _setup(self) -> None:
        """WAL and the tables. Switching the journal mode fails at once with "database is
        locked" while another process does the same (SQLite does not wait), so it is retried."""
        for attempt in range(100):
            try:
                con = sqlite3.connect(self.path, timeout=30.0)
                try:
                    con.execute("PRAGMA journal_mode=WAL")
                finally:
                    con.close()
                break
            except sqlite3.OperationalError as exc:
                if attempt == 99 or "locked" not in str(exc):  # a full disk or a bad path: at once
                    raise
                time.sleep(0.05)
        con = self._connect()
        try:
            with con:
                con.executescript(_SCHEMA)
                for table, columns in (("paid", _PAID_COLUMNS), ("jobs", (("pid", "INTEGER"),))):
                    have = {row[1] for row in con.execute(f"PRAGMA table_info({table})")}
                    for column, kind in columns:
                        if column not in have:  # a manifest of an earlier version
                            try:
                                con.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
                            except sqlite3.OperationalError as exc:  # another process added it just now
                                if "duplicate column" not in str(exc):
                                    raise
                con.execute("DELETE FROM paid WHERE settled = 1 AND settled_at < ?", (time.time() - KEEP_SETTLED,))
        finally:
            con.close()

    def __repr__(self) -> str:
        return f"Manifest({str(self.path)!r})"

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=30.0)  # WAL, set once by ``_setup``
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

    def prepare(self, tag: str, keys: list[bytes], tokens: int) -> tuple[Job | None, list[bytes]]:
        """A new job holding those of ``keys`` no live job holds (another process may be
        sending them), written before anything is sent; returns it (None if no key is left)
        and the keys left out."""
        now = time.time()
        with self._lock:
            con = self._connect()
            try:
                con.execute("BEGIN IMMEDIATE")  # one process at a time decides who sends a text
                held = self._held(con)
                mine = [k for k in keys if k not in held]
                job = None
                if mine:
                    job = Job(uuid.uuid4().hex[:16], tag, "prepared", None, None, len(mine), tokens, now, now,
                              pid=os.getpid())
                    con.execute("INSERT INTO jobs (job, tag, state, lines, tokens, created, updated, pid) "
                                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                (job.job, tag, job.state, job.lines, job.tokens, now, now, job.pid))
                    con.executemany("INSERT INTO job_keys (job, key) VALUES (?, ?)", ((job.job, k) for k in mine))
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK") if con.in_transaction else None
                raise
            finally:
                con.close()
        return job, [k for k in keys if k in held]

    def adopt(self, tag: str, job: str, batch_id: str, file_id: str, keys: list[bytes], tokens: int) -> None:
        """A batch no manifest here knew, found on the server (``recover.py``): recorded as
        submitted, with its texts, so it is polled and collected as if sent from here."""
        now = time.time()
        with self._lock:
            con = self._connect()
            try:
                with con:
                    new = con.execute("INSERT OR IGNORE INTO jobs (job, tag, state, file_id, batch_id, lines, tokens, "
                                      "created, updated, pid) VALUES (?, ?, 'submitted', ?, ?, ?, ?, ?, ?, ?)",
                                      (job, tag, file_id, batch_id, len(keys), tokens, now, now, os.getpid())).rowcount
                    if new:  # another process here may have recorded it just now
                        con.executemany("INSERT INTO job_keys (job, key) VALUES (?, ?)", ((job, k) for k in keys))
            finally:
                con.close()

    @staticmethod
    def _held(con: sqlite3.Connection) -> set[bytes]:
        marks = ",".join("?" * len(LIVE))
        return {bytes(k) for (k,) in con.execute(
            f"SELECT k.key FROM job_keys k JOIN jobs j ON j.job = k.job WHERE j.state IN ({marks})", LIVE)}

    def set_tokens(self, job: Job, tokens: int) -> None:
        job.tokens = tokens
        self._write("UPDATE jobs SET tokens = ? WHERE job = ?", tokens, job.job)

    def drop_keys(self, job: Job, keys: list[bytes]) -> None:
        """Keys of a job not sent yet that it will not send after all."""
        with self._lock:
            con = self._connect()
            try:
                with con:
                    con.executemany("DELETE FROM job_keys WHERE job = ? AND key = ?", ((job.job, k) for k in keys))
                    (job.lines,) = con.execute("SELECT COUNT(*) FROM job_keys WHERE job = ?", (job.job,)).fetchone()
                    con.execute("UPDATE jobs SET lines = ? WHERE job = ?", (job.lines, job.job))
            finally:
                con.close()

    def step(self, job: Job, state: str, **ids: str | None) -> None:
        """Record that ``job`` reached ``state`` (with its file or batch id)."""
        job.state, job.updated, job.pid = state, time.time(), os.getpid()
        for name, value in ids.items():
            setattr(job, name, value)
        self._write("UPDATE jobs SET state = ?, file_id = ?, batch_id = ?, status = ?, detail = ?, updated = ?, pid = ? "
                    "WHERE job = ?", state, job.file_id, job.batch_id, job.status, job.detail, job.updated, job.pid,
                    job.job)

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
                                   "status, detail, pid FROM jobs " + ("WHERE tag = ? " if tag else "") +
                                   "ORDER BY created", (tag,) if tag else ()).fetchall()
            finally:
                con.close()
        return [Job(*row) for row in rows]

    def add_paid(self, items: list[tuple[bytes, int, float]], batch_id: str) -> None:
        """Texts ``batch_id`` paid for: their tokens and cost wait for the row that shows them.
        The same batch read again (by a rerun, or by another process that awaited it) adds
        nothing; a text paid again by another batch is shown again."""
        with self._lock:
            con = self._connect()
            try:
                with con:
                    con.executemany(
                        "INSERT INTO paid (key, tokens, cost, batch_id) VALUES (?, ?, ?, ?) ON CONFLICT (key) DO UPDATE "
                        "SET tokens = excluded.tokens, cost = excluded.cost, batch_id = excluded.batch_id, "
                        "claimed_by = NULL, claimer_pid = NULL, settled = 0, settled_at = NULL "
                        "WHERE paid.batch_id IS NOT excluded.batch_id",
                        [(k, t, c, batch_id) for k, t, c in items])
            finally:
                con.close()

    def claim_paid(self, keys: list[bytes], claimer: str) -> dict[bytes, tuple[int, float]]:
        """The tokens and cost of those of ``keys`` paid and shown by no row yet, now held by
        ``claimer`` (free again if its process dies before ``settle``)."""
        found: dict[bytes, tuple[int, float]] = {}
        with self._lock:
            con = self._connect()
            try:
                with con:
                    con.execute("BEGIN IMMEDIATE")  # read and claim in one step: two processes never take the same row
                    if not con.execute("SELECT 1 FROM paid WHERE settled = 0 LIMIT 1").fetchone():
                        return found
                    dead = {c for c, pid in con.execute("SELECT DISTINCT claimed_by, claimer_pid FROM paid "
                                                        "WHERE claimed_by IS NOT NULL AND settled = 0") if not _alive(pid)}
                    for start in range(0, len(keys), 500):
                        chunk = keys[start : start + 500]
                        marks = ",".join("?" * len(chunk))
                        rows = con.execute(f"SELECT key, tokens, cost, claimed_by FROM paid WHERE settled = 0 "
                                           f"AND key IN ({marks})", chunk)
                        free = [(bytes(k), int(t), float(c)) for k, t, c, by in rows if by is None or by in dead]
                        found.update({k: (t, c) for k, t, c in free})
                        con.executemany("UPDATE paid SET claimed_by = ?, claimer_pid = ? WHERE key = ?",
                                        ((claimer, os.getpid(), k) for k, _, _ in free))
            finally:
                con.close()
        return found

    def settle(self, claimer: str) -> None:
        """The rows that show ``claimer``'s claims are delivered: the claims are done."""
        self._write("UPDATE paid SET settled = 1, settled_at = ? WHERE claimed_by = ? AND settled = 0", time.time(), claimer)

    def release(self, claimer: str) -> None:
        """``claimer``'s rows were not delivered: its claims are free for a later row."""
        self._write("UPDATE paid SET claimed_by = NULL, claimer_pid = NULL WHERE claimed_by = ? AND settled = 0", claimer)

    def keys(self, job: Job) -> list[bytes]:
        with self._lock:
            con = self._connect()
            try:
                return [bytes(k) for (k,) in con.execute("SELECT key FROM job_keys WHERE job = ?", (job.job,))]
            finally:
                con.close()


def _one_sentence(method: Any) -> Any:
    """A manifest step that SQLite cannot take (a full disk, a read-only or damaged file) is a
    ``CacheError`` in one sentence (exit 2 from the command), never a traceback."""

    @functools.wraps(method)
    def step(self: Manifest, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as exc:
            msg = (f"cannot write the batch manifest {self.path} ({exc}): make room on its disk (or mend it) and "
                   "rerun; what was collected is cached, and batches already submitted are found again on the server")
            raise CacheError(msg) from None

    return step


for _name in ("prepare", "adopt", "set_tokens", "drop_keys", "step", "end", "live", "jobs", "add_paid", "claim_paid",
              "settle", "release", "keys"):
    setattr(Manifest, _name, _one_sentence(getattr(Manifest, _name)))
