"""One cache shared by several processes; a damaged cache; planted pickles."""

from __future__ import annotations

import multiprocessing as mp
import pickle
import sqlite3

import numpy as np
import polars as pl
import pytest

from polars_embed import CacheError, DiskCache, Embedder
from polars_embed.cli import main
from polars_embed.identity import VectorIdentity, content_keys
from polars_embed.testing import server_vector

MODEL = "text-embedding-3-small"


def _worker(url: str, cache: str, offset: int, queue) -> None:
    try:
        texts = [f"shared text {i}" for i in range(offset, offset + 1500)]
        emb = Embedder(MODEL, base_url=url, api_key="k", dimensions=16, cache=cache, max_workers=4)
        out = emb.embed(pl.Series("text", texts))
        bad = sum(not np.array_equal(v, server_vector(MODEL, 16, t)) for t, v in zip(texts, out["embedding"].to_numpy()))
        queue.put(("ok", bad))
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails the test
        queue.put(("error", repr(exc)))


def test_four_processes_share_one_cache(server, tmp_path, report):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(server.url, str(tmp_path / "c"), 500 * k, queue)) for k in range(4)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    assert all(kind == "ok" and bad == 0 for kind, bad in results), results
    cache = DiskCache(tmp_path / "c")
    texts = [f"shared text {i}" for i in range(3000)]
    emb = Embedder(MODEL, base_url=server.url, api_key="k", dimensions=16, cache=False, ledger=False)
    values = cache.get_many(emb.keys(texts))
    assert all(v is not None and np.array_equal(v[0], server_vector(MODEL, 16, t)) for t, v in zip(texts, values))
    report(processes=4, rows_each=1500, distinct_in_all=3000, requested_distinct=len(set(server.texts_seen())),
           entries=cache.stats()["entries"])


def test_garbage_cache_file_is_one_clear_error_and_clear_force_rebuilds(tmp_path, capsys):
    directory = tmp_path / "c"
    directory.mkdir()
    (directory / "cache.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(CacheError, match=rf"cannot open the cache at {directory}.*cache clear --yes --force"):
        DiskCache(directory).get_many([b"k"])
    assert main(["cache", "clear", "--yes", "--cache", str(directory)]) == 2
    assert "cache clear --yes --force" in capsys.readouterr().err
    assert main(["cache", "clear", "--yes", "--force", "--cache", str(directory)]) == 0
    assert DiskCache(directory).get_many([b"k"]) == [None]


def test_truncated_cache_file(tmp_path, server):
    emb = Embedder(MODEL, base_url=server.url, api_key="k", dimensions=16, cache=tmp_path / "c")
    emb.embed(pl.Series("text", [f"t{i}" for i in range(2000)]))
    emb.close()
    db = tmp_path / "c" / "cache.db"
    db.write_bytes(db.read_bytes()[: db.stat().st_size // 3])
    with pytest.raises(CacheError, match=str(tmp_path / "c")):
        Embedder(MODEL, base_url=server.url, api_key="k", dimensions=16, cache=tmp_path / "c").embed(
            pl.Series("text", [f"t{i}" for i in range(2000)]))


def test_an_entry_we_did_not_write_is_a_damaged_miss_not_misread(tmp_path):
    cache = DiskCache(tmp_path / "c")
    key = content_keys(["x"], VectorIdentity("openai", MODEL, 4))[0]
    cache._db.set(key, b"\x00" * 24)  # raw bytes, but not our layout
    assert cache.get_many([key]) == [None] and cache.damaged == 1


class _Payload:
    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(_Payload.target),))


def test_a_planted_pickle_is_never_unpickled(tmp_path, report):
    import diskcache

    target = tmp_path / "pwned"
    _Payload.target = str(target)
    directory = tmp_path / "c"
    DiskCache(directory).stats()  # create it as polars-embed would
    key = content_keys(["hello"], VectorIdentity("openai", MODEL, 4))[0]
    with diskcache.Cache(str(directory)) as plain:  # an attacker's write with the stock (pickling) Disk
        plain.set(key, _Payload())
    assert sqlite3.connect(directory / "cache.db").execute("SELECT mode FROM Cache").fetchall() == [(4,)]
    cache = DiskCache(directory)
    assert cache.get_many([key]) == [None] and cache.damaged == 1  # a damaged entry: a miss, never unpickled
    assert not target.exists()
    pickle.loads(pickle.dumps(_Payload()))  # the payload does work when unpickled...
    assert target.exists()  # ...so the refusal above is what protected us
    report(planted="pickle payload that creates a file", executed_by_polars_embed=False)


def test_a_new_cache_has_large_pages_and_an_old_one_keeps_its_own(tmp_path):
    """New caches hold a 1,536-dimension vector in one 32 KB page (one write, no overflow
    page); a cache made before (SQLite's 4 KB pages, by diskcache) is read and written as it is."""
    import diskcache

    old = diskcache.Cache(str(tmp_path / "old"))  # how every cache was created before
    old.close()
    vector = np.linspace(-1, 1, 1536, dtype=np.float32)
    for name, page in (("new", 32768), ("old", 4096)):
        cache = DiskCache(tmp_path / name)
        cache.set_many([(b"k%d" % i, vector, 7) for i in range(50)], tag="t")
        got = cache.get_many([b"k3", b"nope"])
        assert np.array_equal(got[0][0], vector) and got[0][1] == 7 and got[1] is None
        pragmas = [cache._db._sql(f"PRAGMA {p}").fetchone()[0] for p in ("page_size", "auto_vacuum", "journal_mode")]
        assert pragmas == [page, 1, "wal"], name
        cache.close()
        assert DiskCache(tmp_path / name).stats()["entries"] == 50


def test_the_log_is_copied_into_the_database_by_a_thread_of_its_own(tmp_path, monkeypatch):
    """No writer pays for a checkpoint (it held every other answer behind the write lock for
    0.14 s at the end of a cold run): past the limit a thread copies the log, and closing
    the cache leaves no log behind."""
    from polars_embed.caches import disk_sqlite as wal

    monkeypatch.setattr(wal, "LIMIT", 2**20)
    cache = DiskCache(tmp_path / "c")
    vectors = np.random.default_rng(0).standard_normal((400, 1536)).astype(np.float32)
    for start in range(0, 400, 40):  # 2.5 MB in all
        cache.set_many([(b"k%d" % i, vectors[i], 1) for i in range(start, start + 40)], tag="t")
    assert cache._db._sql("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    checkpointer = cache._checkpointer
    cache.close()
    assert checkpointer.done >= 1 and not (tmp_path / "c" / "cache.db-wal").exists()
    again = DiskCache(tmp_path / "c")
    got = again.get_many([b"k%d" % i for i in range(400)])
    assert all(np.array_equal(g[0], v) for g, v in zip(got, vectors))
    again.close()
