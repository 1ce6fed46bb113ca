"""The default backend: ``diskcache`` (SQLite + files) in a local directory.

Values are written in the layout of ``caches/base.py``. A cache that cannot be written (a
full disk, a read-only directory) is still read; what is fetched meanwhile is returned, not
cached.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import CacheError
from .base import decode_value, encode_block, encode_value
from .disk_sqlite import Checkpointer, create, store

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    import polars as pl

_UNWRITABLE = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.EDQUOT}


def _cannot_write(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk refuses writes (full, read-only), not that data is damaged."""
    if isinstance(exc, OSError) and exc.errno in _UNWRITABLE:
        return True
    text = str(exc).lower()
    return any(s in text for s in ("disk is full", "readonly", "read-only", "disk i/o error", "unable to open"))


def _reason(exc: BaseException) -> str:
    return exc.strerror or str(exc) if isinstance(exc, OSError) else str(exc)


def _tag_parts(tag: str | None) -> tuple[str | None, str | None, int | None]:
    """``"local:local:all-MiniLM-L6-v2:384"`` -> ``("local", "local:all-MiniLM-L6-v2", 384)``."""
    if not tag or tag.count(":") < 2:
        return None, tag, None
    provider, rest = tag.split(":", 1)
    model, dims = rest.rsplit(":", 1)
    return provider, model, int(dims) if dims.isdigit() else None


def default_cache_dir() -> Path:
    """``$POLARS_EMBED_CACHE``, else the user cache directory (``~/.cache/polars-embed``)."""
    env = os.environ.get("POLARS_EMBED_CACHE")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("polars-embed"))



def _raw_only_disk() -> type:
    import diskcache

    class RawOnlyDisk(diskcache.Disk):
        """A diskcache ``Disk`` that refuses to unpickle: keys and values must be bytes."""

        def get(self, key: Any, raw: bool) -> Any:
            if not raw:
                raise CacheError("cache holds a pickled key; refusing to unpickle it")
            return super().get(key, raw)

        def fetch(self, mode: int, filename: Any, value: Any, read: bool) -> Any:
            if mode == diskcache.core.MODE_PICKLE:
                raise CacheError("cache holds a pickled value; refusing to unpickle it")
            return super().fetch(mode, filename, value, read)

    return RawOnlyDisk


def _encoded(items: Sequence[tuple[bytes, np.ndarray, int]]) -> Iterator[tuple[bytes, Any]]:
    """Each item's key and stored value: values of one size are rows of one encoded block
    (views, not copies; and numpy arrays, which the garbage collector does not track, so a
    run's writes do not promote thousands of objects towards a full collection)."""
    if len({len(vector) for _, vector, _ in items}) != 1:
        return ((key, encode_value(v, t)) for key, v, t in items)
    block = encode_block([v for _, v, _ in items], [t for _, _, t in items])
    return ((key, row) for (key, _, _), row in zip(items, block))  # numpy rows: bound as blobs, never tracked by gc


class DiskCache:
    """The default backend: ``diskcache`` (SQLite + files) in a local directory.

    Safe for several threads and several processes at once. Nothing is evicted
    automatically (``eviction_policy="none"``): ``polars-embed cache prune`` does that.
    The handle opens lazily, so a ``DiskCache`` pickles as its path. A cache that exists but
    cannot be written (a full disk, a read-only directory) opens read-only, with a warning.
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        self._cache: Any = None
        self._read_only: sqlite3.Connection | None = None
        #: Why this cache cannot be written, if it cannot (then it is only read).
        self.unwritable: str | None = None
        #: Damaged entries met (each read as a miss, then overwritten).
        self.damaged = 0
        self._lock = threading.Lock()
        # Writers of this process take turns here: waiting on SQLite's own lock would mean
        # its busy handler's sleeps (1, 2, 5, ... 100 ms), which cost a cold run ~10%.
        self._write_lock = threading.Lock()
        self._checkpointer: Checkpointer | None = None

    def __repr__(self) -> str:
        return f"DiskCache({str(self.directory)!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {"directory": self.directory}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["directory"])  # type: ignore[misc]

    @property
    def _db(self) -> Any:
        """diskcache's handle; None when the cache is open read-only (``_read_only``)."""
        if self._cache is None and self._read_only is None:
            with self._lock:
                if self._cache is None and self._read_only is None:
                    self._open()
        return self._cache

    def _open(self) -> None:
        import diskcache

        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            create(self.directory / "cache.db")  # a new cache, with large pages (an old one is kept as it is)
            # No checkpoint in a writer's commit: a ``Checkpointer`` copies the log in a thread of
            # its own. 8 MiB of page cache a connection (diskcache's 8,192 pages would be 256 MiB
            # of 32 KB pages): diskcache opens one per thread, a run's pool has 16, and each
            # drops its cache when another commits; 32 MiB each added 215 MB to the peak of
            # 1,000,000 rows through `polars-embed run`, for no speed.
            self._cache = diskcache.Cache(str(self.directory), disk=_raw_only_disk(), eviction_policy="none",
                                          size_limit=2**62, statistics=False, sqlite_wal_autocheckpoint=0,
                                          sqlite_cache_size=-(2**13))  # KiB
            self._checkpointer = Checkpointer(self._cache)
            return
        except Exception as exc:  # noqa: BLE001 - sorted out below: unwritable, or damaged
            error = exc
        database = self.directory / "cache.db"
        if _cannot_write(error) and database.is_file() and self._open_read_only(database):
            self.unwritable = _reason(error)
            warnings.warn(f"polars-embed: the cache at {self.directory} cannot be written ({self.unwritable}); "
                          f"it is read, and what is fetched is returned but not cached", stacklevel=4)
            return
        if _cannot_write(error) or not database.is_file():
            msg = (f"cannot create or write the cache at {self.directory} ({_reason(error)}); free some space, "
                   f"fix its permissions, or use another cache directory (cache=False for none)")
        else:
            msg = (f"cannot open the cache at {self.directory} ({error}): it is damaged; "
                   f"`polars-embed cache clear --yes --force --cache {self.directory}` rebuilds it")
        raise CacheError(msg) from error

    def _open_read_only(self, database: Path) -> bool:
        for mode in ("mode=ro", "immutable=1"):  # immutable: a WAL nobody can write cannot be read otherwise
            try:
                con = sqlite3.connect(f"{database.as_uri()}?{mode}", uri=True, check_same_thread=False)
                con.execute("SELECT COUNT(*) FROM Cache").fetchone()
            except sqlite3.Error:
                continue
            self._read_only = con
            return True
        return False

    def _rows(self, keys: list[bytes]) -> list[tuple[Any, ...]]:
        marks = ",".join("?" * len(keys))
        sql = f"SELECT key, mode, filename, value FROM Cache WHERE raw = 1 AND key IN ({marks})"
        db = self._db
        if db is not None:
            return db._sql(sql, keys).fetchall()  # type: ignore[no-any-return]
        assert self._read_only is not None
        with self._lock:
            return self._read_only.execute(sql, keys).fetchall()

    def _value(self, mode: int, filename: Any, value: Any) -> object:
        """A row's value as bytes (None for a value that is not raw bytes: never unpickled)."""
        if mode == 1:  # MODE_RAW: inline bytes
            return bytes(value) if value is not None else None
        if mode == 2 and filename:  # MODE_BINARY: a file of diskcache's
            try:
                return (self.directory / filename).read_bytes()
            except OSError:
                return None
        return None  # a pickle, text or anything else: not ours

    def get_many(self, keys: Sequence[bytes]) -> list[tuple[np.ndarray, int] | None]:
        """One SQL query per 500 keys instead of one per key (a warm rerun is all reads).

        Rows are read without diskcache's ``Disk.fetch``: only raw bytes are taken, a
        pickled value is never unpickled (it is a damaged entry); expiry is not used.
        """
        found: dict[bytes, object] = {}
        try:
            for start in range(0, len(keys), 500):
                for key, mode, filename, value in self._rows(list(keys[start : start + 500])):
                    found[bytes(key)] = self._value(mode, filename, value)
        except CacheError:
            raise
        except Exception as exc:
            msg = (f"cannot read the cache at {self.directory} ({exc}); if it is damaged, "
                   f"`polars-embed cache clear --yes --force --cache {self.directory}` rebuilds it")
            raise CacheError(msg) from exc
        out: list[tuple[np.ndarray, int] | None] = []
        damaged = 0
        for k in keys:
            value = decode_value(found[k]) if k in found else None
            damaged += k in found and value is None
            out.append(value)
        if damaged:
            with self._lock:
                self.damaged += damaged
        return out

    def set_many(self, items: Sequence[tuple[bytes, np.ndarray, int]], *, tag: str | None = None) -> None:
        """Store entries in one transaction; ``tag`` (provider:model:dimensions) lets
        ``inspect()`` break the cache down by model without storing any text.

        Values that diskcache keeps inline (under its 32 KiB file threshold: vectors of up
        to 8,188 dimensions) are upserted with one ``executemany`` into its own table,
        which its triggers keep counted; larger ones go through ``Cache.set``.
        """
        import time

        db = self._writable()
        limit = db.disk_min_file_size
        now = time.time()
        inline: list[Any] = []  # the statements' parameters, 5 an entry
        large: list[tuple[bytes, bytes]] = []
        written = 0
        for key, value in _encoded(items):
            written += len(value)
            if len(value) < limit:
                inline += (key, now, now, tag, value)
            else:
                large.append((key, bytes(value)))
        try:
            with self._write_lock, db.transact():
                store(db._con, inline)
                for key, value in large:
                    db.set(key, value, tag=tag)
            if self._checkpointer is not None:
                self._checkpointer.poke(written)
        except Exception as exc:
            kind = "full or read-only" if _cannot_write(exc) else "failed"
            msg = f"cannot write to the cache at {self.directory} ({kind}: {_reason(exc)})"
            raise CacheError(msg) from exc

    def stats(self) -> dict[str, Any]:
        db = self._db
        if db is None:
            assert self._read_only is not None
            entries = self._read_only.execute("SELECT COUNT(*) FROM Cache").fetchone()[0]
            return {"backend": "diskcache", "path": str(self.directory), "entries": entries, "bytes": None,
                    "damaged": self.damaged, "unwritable": self.unwritable}
        return {"backend": "diskcache", "path": str(self.directory), "entries": len(db), "bytes": db.volume(),
                "damaged": self.damaged, "unwritable": self.unwritable}

    def ledger_path(self) -> Path:
        """The run ledger lives beside the cache it records."""
        return self.directory / "ledger.sqlite"

    def inspect(self) -> pl.DataFrame:
        """Entries, bytes and oldest/newest entry per provider:model:dimensions."""
        import polars as pl

        sql = ("SELECT tag, COUNT(*), SUM(LENGTH(value)) + SUM(size), MIN(store_time), MAX(store_time)"
               " FROM Cache GROUP BY tag ORDER BY tag")
        db = self._db
        rows = db._sql(sql).fetchall() if db is not None else self._read_only.execute(sql).fetchall()  # type: ignore[union-attr]
        df = pl.DataFrame(rows, schema={"tag": pl.String, "entries": pl.Int64, "bytes": pl.Int64,
                                        "oldest": pl.Float64, "newest": pl.Float64}, orient="row")
        parts = [_tag_parts(tag) for tag in df["tag"].to_list()]  # provider:model:dimensions
        return df.select(
            pl.Series("provider", [p[0] for p in parts], pl.String),
            pl.Series("model", [p[1] for p in parts], pl.String),
            pl.Series("dimensions", [p[2] for p in parts], pl.Int64),
            "entries", "bytes",
            pl.from_epoch(pl.col("oldest", "newest") * 1e6, time_unit="us").dt.replace_time_zone("UTC"),
        )

    def remove_files(self) -> None:
        """Delete the cache's own files (a damaged cache that cannot be opened); the
        ledger and anything else in the directory stay."""
        import shutil

        self.close()
        for path in self.directory.glob("cache.db*"):
            path.unlink()
        for sub in self.directory.iterdir():  # diskcache keeps large values in 2-hex-digit folders
            if sub.is_dir() and len(sub.name) == 2 and all(c in "0123456789abcdef" for c in sub.name):
                shutil.rmtree(sub)

    def _writable(self) -> Any:
        db = self._db
        if db is None:
            raise CacheError(f"cannot write to the cache at {self.directory} ({self.unwritable})")
        return db

    def delete_many(self, keys: Sequence[bytes]) -> None:
        db = self._writable()
        for key in keys:
            db.delete(key)

    def clear(self) -> int:
        """Remove every entry; returns how many there were."""
        return int(self._writable().clear())

    def prune(self, older_than_seconds: float) -> int:
        """Remove entries stored more than ``older_than_seconds`` ago; returns the count."""
        import time

        db = self._writable()
        cutoff = time.time() - older_than_seconds
        rows = db._sql("SELECT key, raw FROM Cache WHERE store_time < ?", (cutoff,)).fetchall()
        removed = 0
        for key, raw in rows:
            if raw:  # our keys are bytes, stored raw; anything else is not ours to touch
                removed += bool(db.delete(bytes(key)))
        return removed

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.close()
            self._checkpointer = None
        if self._cache is not None:
            self._cache.close()
            self._cache = None
        if self._read_only is not None:
            self._read_only.close()
            self._read_only = None
