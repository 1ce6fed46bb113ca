"""The SQLite under the disk cache: the page size of a new cache, the statements that store
entries, and the thread that copies the write-ahead log into the database.

SQLite's own checkpoint runs in the commit that grows the log past its limit: that writer
copies 64 MiB into the database and syncs it (0.14 s on this project's test machine) while
every other answer of the run waits for the write lock behind it, at the end of a cold run
where nothing else can happen. ``DiskCache`` turns the automatic checkpoint off on its
connections and pokes a ``Checkpointer`` after each write instead: every ``LIMIT`` bytes
written, a thread of its own runs a passive checkpoint, which never blocks a writer or a reader.
When the last connection to a cache closes, SQLite copies what is left and removes the log.
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

#: Page size of a new cache. A vector of 1,536 dimensions (6 KB stored) fits in one page with
#: four others instead of spilling into an overflow page of SQLite's default 4 KB: a cold
#: 1,536-dimension run spends about a third less CPU writing, and the file is ~20% smaller. A
#: cache created before keeps its pages (SQLite changes them only by a VACUUM out of WAL mode).
PAGE_SIZE = 32768


def create(database: Path) -> None:
    """A new cache's database, with ``PAGE_SIZE`` pages; an existing one is left as it is (a
    process creating it at the same moment finds the header written and changes nothing)."""
    if database.exists():
        return
    con = sqlite3.connect(database)
    try:
        con.execute(f"PRAGMA page_size = {PAGE_SIZE}")
        con.execute("PRAGMA auto_vacuum = FULL")  # diskcache's, which it can no longer set once the file exists
        con.execute("PRAGMA journal_mode = wal")  # writes the header: the page size is fixed
    finally:
        con.close()


# Inline raw-bytes entries exactly as diskcache's Cache.set writes one (mode 1 = MODE_RAW).
_INSERT = ("INSERT INTO Cache(key, raw, store_time, expire_time, access_time, access_count, tag, size, mode, filename, value)"
           " VALUES ")
_ROW = "(?, 1, ?, NULL, ?, 0, ?, 0, 1, NULL, ?)"
_ON_CONFLICT = (" ON CONFLICT(key, raw) DO UPDATE SET store_time = excluded.store_time, access_time = excluded.access_time,"
                " tag = excluded.tag, size = 0, mode = 1, filename = NULL, value = excluded.value")


#: Entries a statement stores: one step of SQLite, so the writer gives up the GIL and takes
#: it back once a statement instead of once an entry. Under ``executemany`` (once an entry),
#: while two other threads parsed JSON, storing one request of 824 vectors took 17 s instead
#: of 0.01 (each wait lasts as long as the other thread's parse). Statements of 64 entries
#: cost what ``executemany`` costs alone; much longer ones cost more (512: 2.5x).
ROWS_PER_STATEMENT = 64


@functools.cache
def _upsert(rows: int) -> str:
    """One statement storing ``rows`` entries."""
    return _INSERT + ",".join([_ROW] * rows) + _ON_CONFLICT


def store(con: sqlite3.Connection, params: list[Any]) -> None:
    """Upsert entries given as ``_ROW``'s 5 parameters each, one after the other."""
    for start, rows in _statements(len(params) // 5, con):
        con.execute(_upsert(rows), params[5 * start : 5 * (start + rows)])


def _statements(n: int, con: sqlite3.Connection) -> Iterator[tuple[int, int]]:
    """(start, rows) of the statements storing ``n`` entries: ``ROWS_PER_STATEMENT`` at most
    (fewer where the connection allows fewer variables, 5 an entry), in powers of two so
    that few statement texts are compiled and cached."""
    getlimit = getattr(con, "getlimit", None)  # Python 3.11+; SQLite's default before 3.32 was 999
    most = min(ROWS_PER_STATEMENT, (getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) if getlimit else 999) // 5)
    start = 0
    while start < n:
        rows = 1 << min(n - start, most).bit_length() - 1
        yield start, rows
        start += rows


#: Bytes of log after which it is copied into the database (SQLite's default is 4 MiB; a
#: larger log lets a cold run write its vectors about twice as fast).
LIMIT = 64 * 2**20


class Checkpointer:
    """Runs ``PRAGMA wal_checkpoint(PASSIVE)`` on ``db`` in a thread of its own when asked."""

    def __init__(self, db: Any) -> None:
        self.db = db
        self._written = 0  # bytes stored since the last checkpoint was asked for
        self._wanted = threading.Event()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.done = 0  # checkpoints run (for tests)

    def poke(self, written: int) -> None:
        """After a write of ``written`` bytes: start a checkpoint once ``LIMIT`` bytes were
        written since the last one. (Not the log's size: SQLite writes it again from its
        start after a checkpoint, and the file keeps its largest size.)"""
        with self._lock:
            self._written += written
            if self._written < LIMIT or self._closing:
                return
            self._written = 0
            if self._thread is None or not self._thread.is_alive():  # (not alive: a forked process)
                self._thread = threading.Thread(target=self._run, name="polars-embed-checkpoint", daemon=True)
                self._thread.start()
        self._wanted.set()

    def _run(self) -> None:
        try:
            while True:
                self._wanted.wait()
                self._wanted.clear()
                if self._closing:
                    return
                with contextlib.suppress(Exception):  # tried again at the next poke; the last close copies it all
                    self.db._sql("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.done += 1
        finally:
            with contextlib.suppress(Exception):
                self.db.close()  # this thread's connection (diskcache keeps one per thread)

    def close(self) -> None:
        """Stop the thread (a checkpoint under way finishes first)."""
        with self._lock:
            self._closing = True
            thread = self._thread
        self._wanted.set()
        if thread is not None:
            thread.join(timeout=30)
