"""Fail closed where money is at stake: no paid work lost, no request storm, no hang, no
poisoned cache, no secret leaked. Each test is one promise, over real HTTP to the project's
server (docs/reliability.md lists them with their figures)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time

import numpy as np
import polars as pl
import pytest

from polars_embed import ConfigurationError, Embedder, RequestRefusedError, ledger
from polars_embed.caches.base import encode_value
from polars_embed.cli import main
from polars_embed.testing import EmbeddingServer, Faults, server_vector

MODEL = "text-embedding-3-small"
PRICE = 0.02 / 1e6
KEY = "sk-canary-9d8c7b6a5f4e3d2c"


def make(server, tmp_path, **kw):
    kw.setdefault("cache", tmp_path / "cache")
    kw.setdefault("sleep", lambda s: None)
    return Embedder(MODEL, base_url=server.url, api_key=kw.pop("api_key", "k"), dimensions=8, **kw)


def exact(out: pl.DataFrame, texts: list[str]) -> bool:
    return all(v is not None and np.array_equal(v, server_vector(MODEL, 8, t))
               for t, v in zip(texts, out["embedding"].to_list()))


# -- paid work is never lost ------------------------------------------------------------------
def test_a_ledger_that_cannot_be_written_costs_no_result(server, tmp_path, monkeypatch, report):
    texts = [f"ledger text {i}" for i in range(50)]
    emb = make(server, tmp_path, ledger=tmp_path)  # a directory, not a file
    with pytest.warns(UserWarning, match="cannot write the run ledger"):
        out = emb.embed(pl.Series("text", texts))
    assert exact(out, texts)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("POLARS_EMBED_CACHE", str(blocker / "cache"))  # the default ledger lives under a file
    with pytest.warns(UserWarning, match="cannot write the run ledger"):
        out = make(server, tmp_path, cache=False).embed(pl.Series("text", texts))
    assert exact(out, texts)
    report(ledger="a directory; under a file", results_returned=True)


LIMITED = """
import json, resource, signal, sys, warnings
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1, 1))  # no file may grow: a full disk, for this process
import polars as pl
from polars_embed import Embedder
texts = json.loads(sys.argv[2])
with warnings.catch_warnings(record=True) as seen:
    warnings.simplefilter("always")
    emb = Embedder("text-embedding-3-small", base_url=sys.argv[1], api_key="k", dimensions=8, cache=sys.argv[3])
    out = emb.embed(pl.Series("text", texts))
s = emb.last_stats
print(json.dumps({"vectors": out["embedding"].to_list(), "hits": out["embedding_cache_hit"].to_list(),
                  "uncached": s.uncached, "requests": s.requests, "tokens_billed": s.tokens_billed,
                  "warnings": [str(w.message) for w in seen]}))
"""


def _limited(server, texts, cache):
    proc = subprocess.run([sys.executable, "-c", LIMITED, server.url, json.dumps(texts), str(cache)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_a_full_disk_returns_what_was_paid_and_still_serves_the_cache(server, tmp_path, report):
    cache = tmp_path / "cache"
    cached = [f"already cached {i}" for i in range(100)]
    make(server, tmp_path).embed(pl.Series("text", cached))
    server.reset_log()
    new = [f"paid on a full disk {i}" for i in range(200)]
    got = _limited(server, cached + new, cache)
    assert all(np.array_equal(v, server_vector(MODEL, 8, t)) for t, v in zip(cached + new, got["vectors"]))
    assert got["hits"] == [True] * 100 + [False] * 200 and got["uncached"] == 200
    assert sorted(server.texts_seen()) == sorted(new)  # the cached texts were read, not paid again
    assert any("cannot be written" in w and "not cached" in w for w in got["warnings"])
    assert not any("clear" in w for w in got["warnings"])  # never advice to delete what is readable
    server.reset_log()
    again = _limited(server, cached, cache)  # a fully cached rerun on the full disk: no request, no error
    assert again["requests"] == 0 and all(again["hits"]) and server.requests == 0
    report(paid_texts=200, returned=200, uncached=200, cached_rerun_requests=0)


def test_damaged_entries_are_misses_fetched_again_and_overwritten(server, tmp_path, report):
    texts = ["truncated value", "four dimensions", "flipped bit", "fine"]
    emb = make(server, tmp_path)
    emb.embed(pl.Series("text", texts))
    keys = dict(zip(texts, emb.keys(texts)))
    db = emb.cache._db
    db.set(keys["truncated value"], db.get(keys["truncated value"])[:20])
    db.set(keys["four dimensions"], encode_value(np.ones(4, np.float32), 3))
    raw = bytearray(db.get(keys["flipped bit"]))
    raw[30] ^= 0x01  # one bit inside the vector
    db.set(keys["flipped bit"], bytes(raw))
    emb.close()
    server.reset_log()
    emb = make(server, tmp_path)
    out = emb.embed(pl.Series("text", texts))
    assert exact(out, texts)
    assert sorted(server.texts_seen()) == sorted(texts[:3]) and emb.last_stats.cache_damaged == 3
    assert out["embedding_cache_hit"].to_list() == [False, False, False, True]
    server.reset_log()
    assert make(server, tmp_path).embed(pl.Series("text", texts))["embedding_cache_hit"].all()  # overwritten
    assert server.requests == 0
    report(damaged=3, fetched_again=3, second_run_requests=0)


@pytest.fixture
def inputs(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    src = tmp_path / "in.parquet"
    pl.DataFrame({"id": range(300), "text": [f"cli text {i}" for i in range(300)]}).write_parquet(src)
    return src


def _cli(server, *args):
    return main(["run", *map(str, args), "--model", MODEL, "--dimensions", "8", "--base-url", server.url])


def test_the_cli_checks_what_it_can_before_paying(server, tmp_path, inputs, capsys, report):
    (tmp_path / "a-dir.parquet").mkdir()
    (tmp_path / "a-file").write_text("")
    cases = {
        "a directory": (tmp_path / "a-dir.parquet", [], "is a directory"),
        "under a file": (tmp_path / "a-file" / "out.parquet", [], "is a file"),
        "an input column": (tmp_path / "o.parquet", ["--name", "id"], "already has the output column 'id'"),
    }
    for output, extra, message in cases.values():
        assert _cli(server, inputs, output, *extra) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert message in err and "Traceback" not in err
    assert _cli(server, inputs, tmp_path / "o.parquet") == 0
    capsys.readouterr()
    assert _cli(server, tmp_path / "o.parquet", tmp_path / "o.parquet") == 2  # a rerun on its own output
    assert "is the input" in capsys.readouterr().err
    assert _cli(server, tmp_path / "o.parquet", tmp_path / "o2.parquet") == 2  # embedding an output again
    assert "already has the output column 'embedding'" in capsys.readouterr().err
    assert server.requests == 1  # only the one good run paid
    report(refused_before_paying=5, requests=server.requests)


def _twice() -> bytes:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.table([pa.array(["a"]), pa.array(["b"])], names=["text", "text"]), buf)
    return buf.getvalue()


@pytest.mark.parametrize(("name", "content"), [("garbage.parquet", b"not parquet"), ("empty.parquet", b""),
                                               ("broken.csv", b'text,id\n"unclosed,1\n'),
                                               ("twice.parquet", "duplicate columns")])
def test_unreadable_inputs_are_one_sentence_and_exit_2(server, tmp_path, inputs, capsys, name, content):
    bad = tmp_path / name
    bad.write_bytes(_twice() if content == "duplicate columns" else content)
    assert _cli(server, bad, tmp_path / "o.parquet") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("polars-embed: error: ") and "Traceback" not in "\n".join(err)
    assert server.requests == 0


def test_another_outputs_temporary_file_is_left_alone(server, tmp_path, inputs):
    out = tmp_path / "out" / "emb.parquet"
    out.parent.mkdir()
    mine, theirs = out.parent / ".emb.parquet.abcd1234.tmp", out.parent / ".emb.parquet.v2.abcd1234.tmp"
    mine.write_text("left by a killed run")
    theirs.write_text("another run's work in progress")
    assert _cli(server, inputs, out) == 0
    assert not mine.exists() and theirs.exists()


def test_outputs_honour_the_umask_and_keep_a_replaced_files_mode(server, tmp_path, inputs):
    old = os.umask(0o022)
    try:
        out = tmp_path / "o.parquet"
        assert _cli(server, inputs, out) == 0
        assert stat.S_IMODE(out.stat().st_mode) == 0o644
        out.chmod(0o640)
        assert _cli(server, inputs, out) == 0
        assert stat.S_IMODE(out.stat().st_mode) == 0o640
    finally:
        os.umask(old)


def test_the_output_cannot_be_the_input(server, tmp_path, inputs, capsys):
    csv = tmp_path / "in.csv"
    csv.write_text("text\nhello\n")
    assert _cli(server, csv, csv) == 2
    assert "is the input" in capsys.readouterr().err and csv.read_text() == "text\nhello\n"


def test_an_unreadable_ledger_is_one_sentence(tmp_path, capsys):
    (tmp_path / "ledger.sqlite").write_bytes(b"not a database" * 100)
    assert main(["ledger", "--cache", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("polars-embed: error: cannot read the run ledger") and len(err.splitlines()) == 1


def test_a_failed_run_is_recorded_as_failed(server, tmp_path, inputs, monkeypatch):
    monkeypatch.setenv("POLARS_EMBED_CACHE", str(tmp_path / "c"))
    server.configure(faults=Faults(fail_after=0))
    assert main(["run", str(inputs), str(tmp_path / "o.parquet"), "--model", MODEL, "--dimensions", "8",
                 "--base-url", server.url]) == 5
    record = ledger(tmp_path / "c" / "ledger.sqlite").row(0, named=True)
    assert record["status"] == "failed: ProviderError" and record["requests"] == 0 and record["rows"] == 300


# -- no request storm, no hang ----------------------------------------------------------------
def test_a_request_refused_whole_is_one_error_not_a_request_per_row(server, tmp_path, report):
    server.configure(faults=Faults(refuse_all="This model does not support specifying dimensions=8."))
    emb = make(server, tmp_path, on_error="null")
    texts = [f"refused text {i}" for i in range(5000)]
    started = time.perf_counter()
    with pytest.raises(RequestRefusedError, match="whatever its inputs.*dimensions=8"):
        emb.embed(pl.Series("text", texts))
    assert server.requests <= 30
    report(rows=5000, requests=server.requests, seconds=round(time.perf_counter() - started, 2))


def test_the_cli_says_a_refused_request_is_a_configuration_error(server, tmp_path, inputs, capsys):
    server.configure(faults=Faults(refuse_all="This model does not support specifying dimensions=8."))
    assert _cli(server, inputs, tmp_path / "o.parquet") == 2
    assert "whatever its inputs" in capsys.readouterr().err


def test_a_request_refused_whole_after_others_were_taken_is_still_one_error(server, tmp_path):
    emb = make(server, tmp_path)
    emb.embed(pl.Series("text", ["taken first"]))
    server.configure(faults=Faults(refuse_all="The model is gone."))
    server.reset_log()
    with pytest.raises(RequestRefusedError):
        emb.embed(pl.Series("text", [f"after {i}" for i in range(200)]))
    assert server.requests <= 10


def test_a_first_half_of_bad_rows_is_rows_not_a_refused_request(server, tmp_path):
    server.configure(faults=Faults(poison=["BAD"]))
    texts = [f"BAD {i}" for i in range(500)] + [f"good {i}" for i in range(499)] + ["BAD last"]
    out = make(server, tmp_path, on_error="null").embed(pl.Series("text", texts))
    assert out["embedding_error"].is_not_null().sum() == 501 and exact(out[500:999], texts[500:999])


def test_two_bad_rows_in_the_first_request_are_rows_not_a_refused_request(server, tmp_path):
    server.configure(faults=Faults(poison=["BAD"]))
    out = make(server, tmp_path, on_error="null").embed(pl.Series("text", ["BAD a", "hello", "x y z", "BAD b"]))
    assert out["embedding_error"].is_not_null().to_list() == [True, False, False, True]


@pytest.mark.parametrize("setting", [{"rpm": -5}, {"tpm": 0}, {"max_workers": 0}, {"price_per_million": -1},
                                     {"price_per_million": float("nan")}, {"max_cost": -0.5}, {"timeout": 0}])
def test_impossible_settings_are_refused_before_anything(server, tmp_path, setting):
    with pytest.raises(ConfigurationError, match=next(iter(setting))):
        make(server, tmp_path, **setting)
    assert server.requests == 0


def test_impossible_limits_are_refused():
    from polars_embed import Limits

    for bad in ({"max_inputs": 0}, {"max_request_tokens": -1}, {"encoding_format": "hex"}):
        with pytest.raises(ConfigurationError):
            Limits(**bad)


def test_what_a_server_says_about_its_quota_is_clamped(server, tmp_path, report):
    texts = [f"quota text {i}" for i in range(10)]
    server.configure(faults=Faults(headers={"x-ratelimit-limit-tokens": "100", "x-ratelimit-remaining-tokens": "100",
                                            "x-ratelimit-limit-requests": "-1"}))
    emb = make(server, tmp_path)
    started = time.perf_counter()
    assert exact(emb.embed(pl.Series("text", texts)), texts)  # no division by zero
    # 100 tokens/min is no API's quota (a 3,000-token request would wait half an hour): not believed;
    # -1 requests/min is no quota either
    assert emb.runner.limiter.tpm is None and emb.runner.limiter.rpm is None
    more = [f"second call {i}" for i in range(5)]
    assert exact(emb.embed(pl.Series("text", more)), more)
    assert time.perf_counter() - started < 10
    report(header_limit_tokens=100, header_limit_requests=-1, seconds=round(time.perf_counter() - started, 2))
    emb.runner.limiter.observe({"x-ratelimit-limit-tokens": "40000", "x-ratelimit-remaining-tokens": "40000"})
    assert emb.runner.limiter.tpm == 40000  # a real quota is learned


@pytest.mark.parametrize("retry_after", ["3601", "inf", "nan", "-3"])
def test_a_429_cannot_pause_longer_than_the_retries_may_take(tmp_path, retry_after, report):
    """Waits and the pool's pause are capped by ``max_retry_seconds``; a value that is no
    number of seconds is no answer (backoff instead). The call ends in seconds either way:
    embedded, or one error after the retries."""
    from polars_embed import ProviderError

    with EmbeddingServer() as server:
        server.configure(faults=Faults(storm_429=0.5, storm_retry_after=False, seed=3,
                                       headers={"retry-after": retry_after}))
        emb = Embedder(MODEL, base_url=server.url, api_key="k", dimensions=8, cache=tmp_path / retry_after,
                       max_retry_seconds=2.0, max_attempts=20)
        texts = [f"paused text {i}" for i in range(20)]
        started = time.perf_counter()
        try:
            ended = "embedded" if exact(emb.embed(pl.Series("text", texts)), texts) else "wrong"
        except ProviderError as exc:
            ended = "retries used up" if "still failing after retries" in str(exc) else str(exc)
        elapsed = time.perf_counter() - started
        assert ended in ("embedded", "retries used up") and server.count(429) > 0 and elapsed < 10
        report(retry_after=retry_after, seconds=round(elapsed, 2), status_429=server.count(429), ended=ended)


# -- no poisoned results -------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["nan", "inf", "zero"])
def test_impossible_vectors_are_a_row_error_and_never_cached(server, tmp_path, kind, report):
    server.configure(faults=Faults(bad_vectors={"POISONED": kind}))
    texts = [f"fine {i}" for i in range(30)] + ["a POISONED vector"]
    emb = make(server, tmp_path, on_error="null", max_attempts=2)
    out = emb.embed(pl.Series("text", texts))
    assert exact(out.head(30), texts[:30])
    assert out["embedding"][30] is None and "not finite or is all zeros" in out["embedding_error"][30]
    server.configure(faults=Faults())
    again = make(server, tmp_path, on_error="null").embed(pl.Series("text", texts))
    assert again["embedding_cache_hit"].to_list() == [True] * 30 + [False]  # nothing of it was cached
    assert exact(again, texts)
    report(vector=kind, failed_rows=1, cached=False)


def test_chunks_that_do_not_combine_into_a_finite_vector_are_a_row_error(server, tmp_path):
    server.configure(faults=Faults(bad_vectors={"word": "huge"}))  # finite, but their weighted sum overflows
    long = " ".join(f"word{i}" for i in range(9000))
    emb = make(server, tmp_path, on_error="null", on_long_input="chunk")
    out = emb.embed(pl.Series("text", [long, "fine"]))
    assert out["embedding"][0] is None and "finite" in out["embedding_error"][0]
    assert emb.cache.get_many(emb.keys([long])) == [None]


@pytest.mark.parametrize("usage", [-5, 1e30, 2.5])
def test_impossible_usage_is_not_believed(server, tmp_path, usage):
    server.configure(faults=Faults(usage=usage))
    emb = make(server, tmp_path, max_attempts=2)
    with pytest.raises(RequestRefusedError, match="cannot be"):
        emb.embed(pl.Series("text", [f"usage {i}" for i in range(8)]))
    assert emb.cache.stats()["entries"] == 0


def test_the_same_model_name_on_two_endpoints_shares_no_entry(tmp_path):
    with EmbeddingServer() as a, EmbeddingServer() as b:
        cache = tmp_path / "shared"
        make(a, tmp_path, cache=cache).embed(pl.Series("text", ["same text"]))
        assert not make(b, tmp_path, cache=cache).embed(pl.Series("text", ["same text"]))["embedding_cache_hit"][0]
        make(a, tmp_path, cache=cache, cache_namespace="one model").embed(pl.Series("text", ["named"]))
        hit = make(b, tmp_path, cache=cache, cache_namespace="one model").embed(pl.Series("text", ["named"]))
        assert hit["embedding_cache_hit"][0] and b.requests == 1


# -- no secret leaks -------------------------------------------------------------------------------
@pytest.mark.parametrize("echo", ["full", "masked"])
def test_a_key_the_server_echoes_is_redacted_everywhere(server, tmp_path, echo, report):
    server.configure(faults=Faults(poison=["BAD"], echo_key=echo))
    src = tmp_path / "in.parquet"
    pl.DataFrame({"text": ["fine", "a BAD row"]}).write_parquet(src)
    env = {**os.environ, "OPENAI_API_KEY": KEY, "POLARS_EMBED_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "polars_embed.cli", "run", str(src), str(tmp_path / "o.parquet"),
                           "--model", MODEL, "--dimensions", "8", "--base-url", server.url, "--debug", "--log-json"],
                          env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 1, proc.stderr
    error = pl.read_parquet(tmp_path / "o.parquet")["embedding_error"][1]
    assert "forbidden" in error and "[key]" in error
    for text in (proc.stdout, proc.stderr, error):
        assert KEY not in text and KEY[-4:] not in text
    for path in tmp_path.rglob("*"):
        if path.is_file() and path != src:
            assert KEY.encode() not in path.read_bytes() and KEY[-4:].encode() not in path.read_bytes(), path
    report(echo=echo, key_found=0)


def test_redaction_covers_keys_ending_in_any_character():
    from polars_embed.providers.openai import OpenAIProvider

    key = "sk-proj-Zq81xYwAbC-"
    provider = OpenAIProvider(base_url="http://x/v1", dimensions=8, api_key=key)
    said = provider.redact(f"Incorrect API key provided: sk-************AbC-. Also {key}.")
    assert "AbC-" not in said and key not in said


def test_doctor_never_prints_credentials_in_a_url(server, capsys):
    url = server.url.replace("http://", "http://user:hunter2@")
    main(["doctor", "--base-url", url])
    out = capsys.readouterr().out
    assert "hunter2" not in out and "user:" not in out and "127.0.0.1" in out


def test_values_written_before_the_checksum_are_still_read():
    """``PEv1`` entries (no checksum) decode; a wrong length is still damaged."""
    from polars_embed.caches.base import decode_value

    v1 = b"PEv1" + (3).to_bytes(4, "little") + (2).to_bytes(4, "little") + np.ones(2, np.float32).tobytes()
    vec, tokens = decode_value(v1)
    assert tokens == 3 and vec.tolist() == [1.0, 1.0]
    assert decode_value(v1[:-1]) is None
