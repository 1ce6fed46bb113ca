"""Cost and cache you can see: stats, the run ledger, cache inspection, estimates."""

from __future__ import annotations

import multiprocessing as mp

import polars as pl
import pytest

from polars_embed import Embedder, Ledger, estimate, ledger
from polars_embed.cli import main

TEXTS = [f"observed text {i % 400} " + "word " * (i % 400 % 23) for i in range(1500)]  # 400 distinct


def test_stats_frame_has_last_call_and_total(make_embedder):
    emb = make_embedder()
    df = pl.DataFrame({"text": TEXTS})
    df.with_columns(emb.expr("text"))
    df.with_columns(emb.expr("text"))
    st = emb.stats(full=True)
    assert st["scope"].to_list() == ["last run", "total"]
    last, total = st.row(0, named=True), st.row(1, named=True)
    assert last["misses"] == 0 and last["hit_rows"] == 1500 and last["cost_usd"] == 0
    assert total["rows"] == 3000 and total["misses"] == 400
    assert last["cost_saved_usd"] == pytest.approx(sum_tokens(df, emb) * 0.02 / 1e6)


def sum_tokens(df: pl.DataFrame, emb: Embedder) -> int:
    return int(df.with_columns(emb.expr("text"))["embedding_tokens"].sum())


def test_every_call_appends_a_ledger_record(make_embedder, tmp_path):
    emb = make_embedder(source="test")
    df = pl.DataFrame({"text": TEXTS})
    df.with_columns(emb.expr("text"))
    df.with_columns(emb.expr("text"))
    runs = ledger(tmp_path / "cache" / "ledger.sqlite")
    assert runs.height == 2
    assert runs["hit_rate"].to_list()[1] == 1.0 and runs["hit_rate"].to_list()[0] < 1.0
    assert runs["source"].to_list() == ["test", "test"]
    assert runs["cost_usd"][0] > 0 and runs["cost_usd"][1] == 0
    assert runs["model"][0] == "text-embedding-3-small" and runs["dimensions"][0] == 64
    assert runs.schema["started_at"] == pl.Datetime("us", "UTC")


def _append_many(path: str, n: int) -> None:
    from polars_embed.pipeline.stats import RunStats

    led = Ledger(path)
    for i in range(n):
        led.append(RunStats(rows=i), started=0.0, ended=1.0, source="proc",
                   meta={"provider": "openai", "model": "m", "dimensions": "8"})


def test_ledger_is_safe_with_several_processes(tmp_path):
    path = str(tmp_path / "ledger.sqlite")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(path, 50)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        assert p.exitcode == 0
    assert ledger(path).height == 200


def test_cli_run_appends_one_record_and_ledger_prints_it(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    monkeypatch.setenv("POLARS_EMBED_CACHE", str(tmp_path / "c"))
    src = tmp_path / "in.parquet"
    pl.DataFrame({"text": TEXTS}).write_parquet(src)
    args = ["run", str(src), str(tmp_path / "out.parquet"), "--model", "text-embedding-3-small", "--dimensions", "8",
            "--base-url", server.url, "--partition-rows", "300"]
    assert main(args) == 0
    runs = ledger(tmp_path / "c" / "ledger.sqlite")
    assert runs.height == 1 and runs["rows"][0] == 1500 and runs["source"][0].startswith("polars-embed run")
    assert runs["tokens_billed"][0] == server.billed_tokens
    capsys.readouterr()
    assert main(["ledger"]) == 0
    assert "polars-embed run" in capsys.readouterr().out
    assert main(["ledger", "--csv"]) == 0
    assert pl.read_csv(capsys.readouterr().out.encode()).height == 1


def test_cache_inspection_by_model(make_embedder):
    a, b = make_embedder(dimensions=64), make_embedder(dimensions=32)
    pl.DataFrame({"text": TEXTS[:50]}).with_columns(a.expr("text"))
    pl.DataFrame({"text": TEXTS[:20]}).with_columns(b.expr("text"))
    info = a.cache.inspect()
    assert info["model"].to_list() == ["text-embedding-3-small"] * 2 and info["dimensions"].to_list() == [32, 64]
    assert info["provider"].to_list() == ["openai", "openai"]
    assert info["entries"].to_list() == [20, 50]
    assert info["bytes"].to_list()[1] > 50 * 64 * 4
    assert (info["oldest"] <= info["newest"]).all()


def test_estimate_matches_the_real_bill_within_one_percent(make_embedder, server):
    emb = make_embedder()
    df = pl.DataFrame({"text": TEXTS})
    pl.DataFrame({"text": TEXTS[:100]}).with_columns(emb.expr("text"))  # some already cached
    before = server.billed_tokens
    est = estimate(df, "text", embedder=emb)
    assert server.billed_tokens == before  # no request
    assert est.rows == 1500 and est.distinct == 400 and est.cached == 100 and est.to_embed == 300
    df.with_columns(emb.expr("text"))
    billed = server.billed_tokens - before
    assert abs(est.tokens_to_pay - billed) <= 0.01 * billed
    assert est.cost_usd == pytest.approx(billed * 0.02 / 1e6, rel=0.01)
    assert est.seconds is None
    limited = estimate(df, "text", embedder=make_embedder(tpm=60_000))
    assert limited.seconds == pytest.approx(limited.tokens_to_pay / 60_000 * 60, abs=0.1)


def test_stats_read_first_what_people_come_for(make_embedder):
    emb = make_embedder()
    pl.DataFrame({"text": TEXTS}).with_columns(emb.expr("text"))
    readable = emb.stats()
    assert readable.columns == ["scope", "rows", "hit rate (%)", "cost (USD)", "saved by the cache (USD)",
                                "tokens billed", "requests", "seconds"]
    assert "…" not in repr(readable)  # nothing hidden
    last = readable.row(0, named=True)
    assert last["rows"] == 1500 and last["hit rate (%)"] == pytest.approx(100 * (1500 - 400) / 1500, abs=0.05)


def test_the_cli_ledger_shows_cost_and_hit_rate(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    monkeypatch.setenv("POLARS_EMBED_CACHE", str(tmp_path / "c"))
    src = tmp_path / "in.parquet"
    pl.DataFrame({"text": TEXTS}).write_parquet(src)
    main(["run", str(src), str(tmp_path / "o.parquet"), "--model", "text-embedding-3-small", "--dimensions", "8",
          "--base-url", server.url])
    capsys.readouterr()
    assert main(["ledger"]) == 0
    out = capsys.readouterr().out
    for column in ("hit rate (%)", "cost (USD)", "saved (USD)", "tokens billed", "status"):
        assert column in out
    assert "…" not in out and "1,500" in out


def test_main_gives_the_logger_and_warnings_back(tmp_path, capsys, caplog):
    """A program (or a test) that calls ``main()`` keeps its own logging: the command's stderr
    handler goes when it returns, and it writes to the stderr of the moment, so a swapped and
    closed one (pytest's capture) raises no logging error while the command runs."""
    import logging
    import warnings

    library = logging.getLogger("polars_embed")
    before = library.handlers[:], library.propagate, library.level, warnings.showwarning
    assert main(["cache", "stats", "--cache", str(tmp_path / "cache")]) == 0
    assert (library.handlers, library.propagate, library.level, warnings.showwarning) == before
    with caplog.at_level(logging.INFO, logger="polars_embed"):
        library.info("after the command")
    assert "after the command" in caplog.text and "polars-embed:" not in capsys.readouterr().err


def test_cache_stats_names_model_and_dimensions(make_embedder, capsys, tmp_path):
    emb = make_embedder(model="text-embedding-3-small", dimensions=16)
    emb.embed(pl.Series("text", ["one", "two"]))
    assert main(["cache", "stats", "--cache", str(tmp_path / "cache")]) == 0
    out = capsys.readouterr().out
    assert "text-embedding-3-small" in out and " 16 " in out and "…" not in out


def test_embedder_renders_in_a_notebook(make_embedder):
    emb = make_embedder()
    pl.DataFrame({"text": ["a"]}).with_columns(emb.expr("text"))
    page = emb._repr_html_()
    assert "text-embedding-3-small" in page and "<table" in page and "1 runs" in page
