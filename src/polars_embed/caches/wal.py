"""The disk cache's write-ahead log, copied into the database off the writers' path.

SQLite's own checkpoint runs in the commit that grows the log past its limit: that writer
copies 64 MiB into the database and syncs it (0.14 s on this project's test machine) while
every other answer of the run waits for the write lock behind it, at the end of a cold run
where nothing else can happen. ``DiskCache`` turns the automatic checkpoint off on its
connections and pokes a ``Checkpointer`` after each write instead: past ``LIMIT`` bytes of
log, a thread of its own runs a passive checkpoint, which never blocks a writer or a reader.
When the last connection to a cache closes, SQLite copies what is left and removes the log.
"""

from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

#: Bytes of log after which it is copied into the database (SQLite's default is 4 MiB; a
#: larger log lets a cold run write its vectors about twice as fast).
LIMIT = 64 * 2**20


class Checkpointer:
    """Runs ``PRAGMA wal_checkpoint(PASSIVE)`` on ``db`` in a thread of its own when asked."""

    def __init__(self, db: Any, log: Path) -> None:
        self.db, self.log = db, log
        self._wanted = threading.Event()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.done = 0  # checkpoints run (for tests)

    def poke(self) -> None:
        """After a write: start a checkpoint if the log has grown past ``LIMIT``."""
        try:
            if self.log.stat().st_size < LIMIT:
                return
        except OSError:
            return
        with self._lock:
            if self._closing:
                return
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
