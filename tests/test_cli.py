"""`polars-embed`: the scheduled-pipeline command, its exit codes and one-line errors."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys

import polars as pl
import pytest

from polars_embed import read_metadata
from polars_embed.cli import build_parser, main
from polars_embed.testing import Faults, server_vector

TEXTS = [f"pipeline text {i % 300}" for i in range(1000)]


@pytest.fixture
def env(server, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("POLARS_EMBED_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "in.parquet"
    pl.DataFrame({"id": range(len(TEXTS)), "text": TEXTS}).write_parquet(src)
    return {"src": src, "out": tmp_path / "out" / "emb.parquet", "tmp": tmp_path,
            "model": ["--model", "text-embedding-3-small", "--dimensions", "16", "--base-url", server.url]}


def test_run_writes_the_contract_and_a_rerun_is_free(env, server, capsys):
    assert main(["run", str(env["src"]), str(env["out"]), *env["model"], "--partition-rows", "256"]) == 0
    out = pl.read_parquet(env["out"])
    assert out.columns == ["id", "text", "embedding", "embedding_cache_hit", "embedding_tokens",
                           "embedding_cost_usd", "embedding_error"]
    assert out["id"].to_list() == list(range(1000))
    assert len(server.texts_seen()) == 300
    row = out.row(7, named=True)
    assert row["embedding"] == pytest.approx(server_vector("text-embedding-3-small", 16, row["text"]).tolist())
    assert read_metadata(env["out"])["polars_embed.model"] == "text-embedding-3-small"
    printed = capsys.readouterr().out
    assert "new texts      300 embedded" in printed and str(env["out"]) in printed
    assert "(300 distinct texts)" in printed
    before = server.requests
    assert main(["run", str(env["src"]), str(env["out"]), *env["model"]]) == 0
    assert server.requests == before
    assert pl.read_parquet(env["out"])["embedding_cache_hit"].all()


@pytest.mark.parametrize("fmt", ["csv", "ndjson"])
def test_csv_and_ndjson_inputs(env, server, fmt):
    src = env["tmp"] / f"in.{fmt}"
    df = pl.DataFrame({"text": ["a, quoted \"text\"", "second"]})
    df.write_csv(src) if fmt == "csv" else df.write_ndjson(src)
    assert main(["run", str(src), str(env["out"]), *env["model"]]) == 0
    assert pl.read_parquet(env["out"])["embedding"].null_count() == 0


def test_dry_run_makes_no_request_and_matches_the_real_bill(env, server, capsys):
    assert main(["run", str(env["src"]), str(env["out"]), *env["model"], "--dry-run", "--tpm", "60000"]) == 0
    printed = capsys.readouterr().out
    assert server.requests == 0 and not env["out"].exists()
    tokens = int(next(line for line in printed.splitlines() if "tokens to pay" in line).split()[-1].replace(",", ""))
    assert "distinct texts  300" in printed and "estimated time" in printed
    main(["run", str(env["src"]), str(env["out"]), *env["model"]])
    assert tokens == server.billed_tokens


def test_max_cost_stops_keeps_the_work_and_exits_3(env, server, capsys):
    code = main(["run", str(env["src"]), str(env["out"]), *env["model"], "--max-cost", "0.00001",
                 "--partition-rows", "50", "--workers", "1"])
    err = capsys.readouterr().err
    assert code == 3
    assert "max_cost" in err and len(err.strip().splitlines()) == 2  # the start line and the error
    assert not env["out"].exists()
    first = set(server.texts_seen())
    assert 0 < server.billed_tokens * 0.02 / 1e6 <= 0.00001
    server.reset_log()
    assert main(["run", str(env["src"]), str(env["out"]), *env["model"]]) == 0
    second = set(server.texts_seen())
    assert not first & second and len(first | second) == 300  # the rerun pays only for the rest


def test_second_run_on_a_locked_output_exits_4(env, server, capsys):
    env["out"].parent.mkdir(parents=True)
    with open(str(env["out"]) + ".lock", "w") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        assert main(["run", str(env["src"]), str(env["out"]), *env["model"]]) == 4
    assert "another polars-embed run is writing" in capsys.readouterr().err
    assert server.requests == 0


def test_failed_rows_exit_1_and_keep_a_reason(env, server):
    server.configure(faults=Faults(poison=["text 299"]))
    assert main(["run", str(env["src"]), str(env["out"]), *env["model"]]) == 1
    out = pl.read_parquet(env["out"])
    bad = out.filter(pl.col("embedding").is_null())
    assert set(bad["text"]) == {"pipeline text 299"}
    assert bad["embedding_error"].str.contains("forbidden").all()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--column", "body"], "column 'body' is not in the input"),
        (["--model", "no-such-model", "--base-url", "http://127.0.0.1:9/v1"], "pass --dimensions"),
        (["--partition-rows", "0"], "--partition-rows must be at least 1"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(env, args, message, capsys):
    model = [] if "--model" in args else env["model"]
    assert main(["run", str(env["src"]), str(env["out"]), *model, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_missing_key_is_one_line_without_traceback(env, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    proc = subprocess.run([sys.executable, "-m", "polars_embed.cli", "run", str(env["src"]), str(env["out"]),
                           *env["model"]], check=False, capture_output=True, text=True, env=os.environ.copy())
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("polars-embed: error: no API key: set OPENAI_API_KEY")
    assert "Traceback" not in proc.stderr


def test_log_json_lines_on_stderr(env, capsys):
    assert main(["run", str(env["src"]), str(env["out"]), *env["model"], "--log-json"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    summary = next(e for e in events if e.get("event") == "summary")
    assert summary["rows"] == 1000 and summary["new_texts"] == 300


def test_cache_stats_clear_prune(env, capsys):
    main(["run", str(env["src"]), str(env["out"]), *env["model"]])
    capsys.readouterr()
    assert main(["cache", "stats"]) == 0
    assert "entries  300" in capsys.readouterr().out
    assert main(["cache", "prune", "--older-than", "30d"]) == 0
    assert "removed 0 entries" in capsys.readouterr().out
    assert main(["cache", "prune", "--older-than", "0s"]) == 0
    assert "removed 300 entries" in capsys.readouterr().out
    main(["run", str(env["src"]), str(env["out"]), *env["model"]])
    capsys.readouterr()
    assert main(["cache", "clear"]) == 2  # no terminal to confirm at: nothing is deleted
    assert "pass --yes" in capsys.readouterr().err
    assert main(["cache", "clear", "--yes"]) == 0
    assert "removed 300 entries" in capsys.readouterr().out


def test_doctor(env, server, capsys):
    assert main(["doctor", "--base-url", server.url]) == 0
    out = capsys.readouterr().out
    assert "ok    API key      OPENAI_API_KEY is set" in out and "sk-test" not in out
    assert "ok    local model" in out and "ok    endpoint" in out


def test_every_command_has_help():
    parser = build_parser()
    commands = [["run"], ["cache"], ["cache", "stats"], ["cache", "clear"], ["cache", "prune"], ["doctor"]]
    for cmd in commands:
        with pytest.raises(SystemExit) as info:
            parser.parse_args([*cmd, "--help"])
        assert info.value.code == 0


def test_the_shipped_pipeline_script_runs(server, tmp_path):
    import pathlib

    repo = pathlib.Path(__file__).parent.parent
    env = {**os.environ, "OPENAI_API_KEY": "k", "POLARS_EMBED_OUT": str(tmp_path / "out"),
           "POLARS_EMBED_CACHE": str(tmp_path / "cache"), "POLARS_EMBED_EXE": str(pathlib.Path(sys.executable).parent / "polars-embed")}
    args = ["--model", "text-embedding-3-small", "--dimensions", "8", "--base-url", server.url]
    proc = subprocess.run(["bash", str(repo / "pipelines" / "embed_sample.sh"), *args], check=False, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = pl.read_parquet(tmp_path / "out" / "sample_embedded.parquet")
    assert out.height == pl.read_parquet(repo / "data" / "sample.parquet").height
    log = [json.loads(line) for line in (tmp_path / "out" / "pipeline.log").read_text().splitlines()]
    assert any(e.get("event") == "summary" for e in log)


def test_options_before_the_command_are_taken(env, capsys):
    assert main(["-q", "run", str(env["src"]), str(env["out"]), *env["model"]]) == 0
    assert main(["--log-json", "run", str(env["src"]), str(env["out"]), *env["model"]]) == 0
    assert '"event": "summary"' in capsys.readouterr().err


def test_a_dry_run_with_nothing_to_embed_says_about_no_time(env, capsys):
    assert main(["run", str(env["src"]), str(env["out"]), *env["model"]]) == 0
    capsys.readouterr()
    assert main(["run", str(env["src"]), str(env["out"]), *env["model"], "--dry-run"]) == 0
    assert "estimated time  ~0 s (nothing to embed)" in capsys.readouterr().out


def test_a_dry_run_without_limits_speaks_of_the_options(env, tmp_path, capsys):
    assert main(["run", str(env["src"]), str(env["out"]), *env["model"], "--dry-run"]) == 0
    assert "unknown (no --rpm or --tpm given: nothing bounds the time)" in capsys.readouterr().out


def test_doctor_fails_with_the_host_port_and_reason_of_an_endpoint_it_cannot_reach(env, capsys):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["doctor", "--base-url", f"http://127.0.0.1:{port}/v1"]) == 2
    out = capsys.readouterr().out
    assert f"FAIL  endpoint     http://127.0.0.1:{port}/v1 is not reachable: 127.0.0.1:{port} refused" in out


def test_doctor_without_key_or_endpoint_checks_the_rest(env, monkeypatch, capsys):
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    assert main(["doctor"]) == 0
    assert "--    endpoint     https://api.openai.com/v1 not checked" in capsys.readouterr().out


def test_the_ledger_shows_no_bill_for_a_local_model(tmp_path, capsys):
    src = tmp_path / "in.parquet"
    pl.DataFrame({"text": ["a cat", "a dog"]}).write_parquet(src)
    assert main(["run", str(src), str(tmp_path / "out.parquet"), "--cache", str(tmp_path / "cache")]) == 0
    capsys.readouterr()
    assert main(["ledger", "--cache", str(tmp_path / "cache")]) == 0
    assert "none (local)" in capsys.readouterr().out
