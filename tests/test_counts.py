"""Every row of a run is counted once, in the same words wherever it is shown: the summary,
`--log-json`, the ledger (CLI and Python) and `Embedder.stats()`. Three runs: an empty cache
in small partitions (repeats across partitions are repeats, not cache entries), the same run
again (everything cached), and a file with null and blank rows."""

from __future__ import annotations

import csv
import io
import json

import polars as pl
import pytest

from polars_embed import Embedder, ledger
from polars_embed.cli import main

DISTINCT, COPIES, BLANKS = 1000, 3, 150
API_KEY = "sk-test"  # not `from conftest import`: a full run finds tests/reliability's conftest first


@pytest.fixture
def corpus(tmp_path):
    texts = [f"text number {i % DISTINCT}" for i in range(DISTINCT * COPIES)]
    texts += [None, "", "   "] * (BLANKS // 3)
    path = tmp_path / "in.parquet"
    pl.DataFrame({"text": texts}).write_parquet(path)
    return path


def run_cli(server, tmp_path, corpus, capsys) -> tuple[dict, str]:
    args = ["--log-json", "run", str(corpus), str(tmp_path / "out.parquet"), "--model", "text-embedding-3-small",
            "--dimensions", "8", "--base-url", server.url, "--cache", str(tmp_path / "cache"), "--partition-rows", "500"]
    assert main(args) == 0
    captured = capsys.readouterr()
    events = [json.loads(line) for line in captured.err.splitlines() if line.startswith("{")]
    return next(e for e in events if e.get("event") == "summary"), captured.out


def expect(summary: dict, printed: str, record: dict, *, new: int, cached: int) -> None:
    with_vector = DISTINCT * COPIES
    hits = with_vector - new
    assert summary["new_texts"] == new and summary["blank_rows"] == BLANKS
    assert summary["hits"] == hits and summary["cached_rows"] == cached and summary["repeated_rows"] == hits - cached
    assert summary["hit_rate"] == pytest.approx(hits / with_vector)
    assert f"cache hits     {hits:,} rows ({hits / with_vector:.0%} of the {with_vector:,} rows with a vector)" in printed
    assert f"{cached:,} in the cache before this run, {hits - cached:,} repeats within it" in printed
    assert f"null or blank  {BLANKS:,} rows" in printed
    assert record["blank_rows"] == BLANKS and record["hit_rows"] == hits and record["cached_rows"] == cached
    assert record["hit_rate"] == pytest.approx(hits / with_vector)


def test_the_breakdown_is_right_and_the_same_everywhere(server, tmp_path, corpus, capsys, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    summary, printed = run_cli(server, tmp_path, corpus, capsys)  # an empty cache, six partitions
    first = ledger(tmp_path / "cache" / "ledger.sqlite").row(-1, named=True)
    expect(summary, printed, first, new=DISTINCT, cached=0)
    figures = [(f"empty cache, 500-row partitions: {summary['cached_rows']} cached before, "
                f"{summary['repeated_rows']:,} repeats, {summary['blank_rows']} null or blank")]

    summary, printed = run_cli(server, tmp_path, corpus, capsys)  # again: every text cached
    second = ledger(tmp_path / "cache" / "ledger.sqlite").row(-1, named=True)
    expect(summary, printed, second, new=0, cached=DISTINCT)
    figures.append(f"rerun: {summary['cached_rows']:,} cached before, {summary['repeated_rows']:,} repeats")

    assert main(["ledger", "--cache", str(tmp_path / "cache"), "--csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [int(r["blank_rows"]) for r in rows] == [BLANKS, BLANKS]
    assert [int(r["cached_rows"]) for r in rows] == [0, DISTINCT]
    print("\n" + "\n".join(figures))


def test_streaming_slices_in_parallel_count_repeats_as_repeats(make_embedder, corpus):
    """The streaming engine embeds slices at once: a text another slice is paying for is a
    repeat of the run, not an entry the cache had before it."""
    emb = make_embedder(dimensions=8)
    out = emb.collect(pl.scan_parquet(corpus), "text", engine="streaming")
    s = emb.last_stats
    assert s.misses == DISTINCT and s.cached_rows == 0 and s.blank_rows == BLANKS
    assert s.hit_rows == DISTINCT * (COPIES - 1) and s.hit_rate == out["embedding_cache_hit"].mean()
    stats = emb.stats(full=True).row(0, named=True)
    assert stats["blank_rows"] == BLANKS and stats["hit_rate"] == pytest.approx(s.hit_rate)
    again = Embedder(emb.model, base_url=emb.provider.base_url, api_key=API_KEY, dimensions=8, cache=emb.cache)
    again.collect(pl.scan_parquet(corpus), "text", engine="streaming")
    assert again.last_stats.cached_rows == DISTINCT and again.last_stats.hit_rate == 1.0
