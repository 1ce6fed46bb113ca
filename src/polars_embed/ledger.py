"""The run ledger: one record per run (an ``embed()`` call, an expression, a ``run()``
block, a ``polars-embed run``).

Stored in SQLite (``ledger.sqlite`` beside the cache) rather than Parquet files: appends
from several processes at once are safe (one short transaction each, WAL journal, busy
timeout), a record is never half-written, and years of runs stay one small file instead of
thousands of tiny Parquet files. Nothing in it is executable or pickled; it holds no text
and no key.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import uuid
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from .caches import default_cache_dir
from .errors import LedgerError
from .pipeline.stats import RunStats, hit_rate_expr

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .caches import Cache
    from .pipeline.run import Run

_FIELDS = [f for f in RunStats.__dataclass_fields__]
_COLUMNS = ["run_id", "started_at", "ended_at", "source", "provider", "model", "dimensions", *_FIELDS, "status",
            "mode", "price_per_million", "batch_ids"]
_REAL = ("cost_usd", "cost_saved_usd", "wall_seconds", "price_per_million")
_TYPES = {"dimensions": "INTEGER", "price_per_million": "REAL"} | {f: "REAL" if f in _REAL else "INTEGER" for f in _FIELDS}
_SCHEMA = "CREATE TABLE IF NOT EXISTS runs ({})".format(
    ", ".join(f'"{c}" {_TYPES.get(c, "TEXT")}' + (" PRIMARY KEY" if c == "run_id" else "") for c in _COLUMNS)
)


def default_ledger_path() -> Path:
    return default_cache_dir() / "ledger.sqlite"


class Ledger:
    """Append-only records of runs; ``frame()`` returns them as a Polars DataFrame."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else default_ledger_path()
        self._ready = False
        self._warned = False
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, object]:
        return {"path": self.path}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__init__(state["path"])  # type: ignore[misc, arg-type]

    def __repr__(self) -> str:
        return f"Ledger({str(self.path)!r})"

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=30.0)
        if not self._ready:
            self._setup(con)
        return con

    def _setup(self, con: sqlite3.Connection) -> None:
        """WAL and the table, once per instance. Switching the journal mode can fail at
        once with "database is locked" while another process does the same (SQLite does
        not wait for it), so that step is retried."""
        with self._lock:
            if self._ready:
                return
            for attempt in range(100):
                try:
                    con.execute("PRAGMA journal_mode=WAL")
                    con.execute(_SCHEMA)
                    have = {row[1] for row in con.execute("PRAGMA table_info(runs)")}
                    for column in _COLUMNS:
                        if column not in have:  # a ledger written by an older version
                            con.execute(f'ALTER TABLE runs ADD COLUMN "{column}" {_TYPES.get(column, "TEXT")}')
                    break
                except sqlite3.OperationalError as exc:
                    if attempt == 99 or "locked" not in str(exc):  # a full disk or a bad path: at once
                        raise
                    time.sleep(0.05)
            self._ready = True

    def append(self, stats: RunStats, *, started: float, ended: float, source: str,
               meta: Mapping[str, str], run_id: str | None = None, status: str = "ok",
               batch_ids: list[str] | None = None) -> str:
        """Write the record of run ``run_id`` (a new id if None), replacing an earlier
        version of it: a run's record is updated as its slices finish."""
        run_id = run_id or uuid.uuid4().hex
        row = [run_id, _iso(started), _iso(ended), source, meta["provider"], meta["model"], int(meta["dimensions"]),
               *(getattr(stats, f) for f in _FIELDS), status, meta.get("mode", "sync"),
               float(meta["price_per_million"]) if "price_per_million" in meta else None,
               ",".join(dict.fromkeys(batch_ids)) if batch_ids else None]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = self._connect()
        try:
            with con:
                columns = ", ".join(f'"{c}"' for c in _COLUMNS)
                con.execute(f"INSERT OR REPLACE INTO runs ({columns}) VALUES ({','.join('?' * len(row))})", row)
        finally:
            con.close()
        return run_id

    def record(self, run: Run, meta: Mapping[str, str]) -> None:
        """Write ``run``'s record as it stands. Best effort: a ledger that cannot be written
        (a full disk, a read-only home) is warned about once, and the run goes on."""
        try:
            self.append(run.stats.copy(), started=run.started_at, ended=run.ended_at or time.time(),
                        source=run.source, meta=meta, run_id=run.run_id, status=run.status,
                        batch_ids=list(run.batch_ids))
        except Exception as exc:  # noqa: BLE001 - never lose a paid result to the ledger
            if not self._warned:
                self._warned = True
                warnings.warn(f"polars-embed: cannot write the run ledger {self.path} ({exc}); "
                              f"results are returned, the record is skipped", stacklevel=3)

    def _rows(self) -> list[tuple[object, ...]]:
        """Every record; read-only when the ledger cannot be written (a full disk): then the
        columns an older version did not write are null."""
        try:
            return self._select(self._connect())
        except sqlite3.OperationalError:
            try:
                return self._select(sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True))
            except sqlite3.OperationalError:  # a WAL nobody can write is read as it stands
                return self._select(sqlite3.connect(f"{self.path.resolve().as_uri()}?immutable=1", uri=True))

    @staticmethod
    def _select(con: sqlite3.Connection) -> list[tuple[object, ...]]:
        try:
            have = {row[1] for row in con.execute("PRAGMA table_info(runs)")}
            columns = ", ".join(f'"{c}"' if c in have else "NULL" for c in _COLUMNS)
            return con.execute(f"SELECT {columns} FROM runs ORDER BY started_at").fetchall()
        finally:
            con.close()

    def frame(self) -> pl.DataFrame:
        """Every record, oldest first, with a derived ``hit_rate`` column (``stats.HIT_RATE``)."""
        rows: list[tuple[object, ...]] = []
        if self.path.exists():
            try:
                rows = self._rows()
            except (sqlite3.Error, OSError) as exc:
                msg = f"cannot read the run ledger at {self.path} ({exc})"
                raise LedgerError(msg) from exc
        schema: dict[str, Any] = {c: pl.String for c in _COLUMNS[:6]} | {"dimensions": pl.Int64}
        schema |= {f: pl.Float64 if f in _REAL else pl.Int64 for f in _FIELDS} | {"status": pl.String}
        schema |= {"mode": pl.String, "price_per_million": pl.Float64, "batch_ids": pl.String}
        df = pl.DataFrame(rows, schema=schema, orient="row")
        return df.with_columns(
            pl.col("started_at", "ended_at").str.to_datetime(time_zone="UTC"),
            hit_rate=hit_rate_expr(),
        )


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="milliseconds")


def ledger(path: str | os.PathLike[str] | None = None) -> pl.DataFrame:
    """The run ledger as a DataFrame (default: ``ledger.sqlite`` in the cache directory)."""
    return Ledger(path).frame()


def open_ledger(ledger: str | os.PathLike[str] | bool | None, cache: Cache) -> Ledger | None:
    """``False``: none; a path; else the ledger the cache names, or the default one."""
    if ledger is False:
        return None
    if ledger is None or ledger is True:
        where = getattr(cache, "ledger_path", None)
        return Ledger(where() if callable(where) else None)
    return Ledger(ledger)
